"""`netoffload clean`: remove what killed runs left behind.

Each kind of leftover has a clean-up function returning a ``CleanReport``
(network namespaces, from ``netoffload.netns``; control sockets, from
``netoffload.control``); this command runs them all and prints one line per
item removed, then a summary.
"""

from __future__ import annotations

import json
from typing import Protocol

import click

from netoffload.control import ControlError, clean_sockets
from netoffload.device.base import DeviceError
from netoffload.leftovers import CleanReport, Leftover
from netoffload.netns import clean_leftovers


class Cleaner(Protocol):
    """Removes one kind of leftover: those whose creator is gone, or all with ``everything``."""

    def __call__(self, *, everything: bool, dry_run: bool) -> CleanReport: ...


#: Every clean-up, in the order it runs.
CLEANERS: tuple[Cleaner, ...] = (clean_leftovers, clean_sockets)

_NOUNS = {"netns": "network namespace", "socket": "control socket"}


def _describe(leftover: Leftover) -> str:
    noun = _NOUNS.get(leftover.kind, leftover.kind)
    state = "still running" if leftover.creator_alive else "gone"
    return f"{noun} {leftover.name} (creator pid {leftover.creator_pid} {state})"


def _count(n: int) -> str:
    return f"{n} leftover" if n == 1 else f"{n} leftovers"


@click.command()
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Also remove what belongs to netoffload processes that are still running.",
)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def clean(everything: bool, dry_run: bool, as_json: bool) -> None:
    """Remove netoffload's namespaces and control sockets whose process is gone."""
    reports: list[CleanReport] = []
    broken: list[str] = []  # a clean-up that could not run at all; the others still do
    for cleaner in CLEANERS:
        try:
            reports.append(cleaner(everything=everything, dry_run=dry_run))
        except (DeviceError, ControlError) as exc:
            broken.append(str(exc))
        except OSError as exc:
            broken.append(exc.strerror or str(exc))
    removed = [item for r in reports for item in r.removed]
    kept = [item for r in reports for item in r.kept]
    failed = [pair for r in reports for pair in r.failed]
    if as_json:
        result = {
            "dry_run": dry_run,
            "all": everything,
            "removed": [item.as_json() for item in removed],
            "kept": [item.as_json() for item in kept],
            "errors": [{**item.as_json(), "error": why} for item, why in failed]
            + [{"error": why} for why in broken],
        }
        click.echo(json.dumps(result, sort_keys=True))
    else:
        verb = "would remove" if dry_run else "removed"
        for item in removed:
            click.echo(f"{verb} {_describe(item)}")
        summary = f"{verb} {_count(len(removed))}" if removed or kept else "nothing to clean up"
        if kept:
            summary += f"; left {len(kept)} alone (creator still running; --all removes them)"
        if removed or kept or not broken:
            click.echo(summary)
    for item, why in failed:
        click.echo(f"Error: cannot remove {_describe(item)}: {why}", err=True)
    for why in broken:
        click.echo(f"Error: {why}", err=True)
    if failed or broken:
        raise SystemExit(1)
