"""Progress reporting for long commands: a rich bar on a terminal, nothing otherwise.

Long-running work (the demo, the benches) reports stages and how far each
has come through a ``Progress``; the command line decides where that goes.
A bar is drawn only when standard error is a terminal and the output is not
JSON, so piped or ``--json`` output stays clean.

The bar never refreshes from a thread of its own: the demo and the benches
measure this process's CPU time, and a rendering thread would be counted in
it. ``update`` redraws at most a few times a second, from the caller.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

REDRAW_S = 0.25


class Progress(Protocol):
    """Where long work reports how far it has come."""

    def stage(self, description: str, total: float) -> None:
        """Start a new stage of ``total`` units."""

    def update(self, completed: float) -> None:
        """The current stage has done ``completed`` of its units."""


class NoProgress:
    """Reports nowhere."""

    def stage(self, description: str, total: float) -> None:
        return None

    def update(self, completed: float) -> None:
        return None


NO_PROGRESS = NoProgress()


class TerminalProgress:
    """A transient rich progress bar on standard error, redrawn by ``update`` only."""

    def __init__(self, console: Console) -> None:
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            auto_refresh=False,
        )
        self._task: TaskID | None = None
        self._drawn = 0.0

    def __enter__(self) -> TerminalProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def stage(self, description: str, total: float) -> None:
        if self._task is not None:
            self._bar.update(self._task, completed=self._bar.tasks[-1].total or 0, visible=False)
        self._task = self._bar.add_task(description, total=total)
        self._bar.refresh()
        self._drawn = time.monotonic()

    def update(self, completed: float) -> None:
        if self._task is None:
            return
        self._bar.update(self._task, completed=completed)
        now = time.monotonic()
        if now - self._drawn >= REDRAW_S:
            self._drawn = now
            self._bar.refresh()


@contextlib.contextmanager
def progress_for(as_json: bool) -> Iterator[Progress]:
    """A bar when standard error is a terminal and the output is not JSON; else nothing."""
    if as_json or not sys.stderr.isatty():
        yield NO_PROGRESS
        return
    with TerminalProgress(Console(stderr=True)) as bar:
        yield bar
