"""`netoffload list` and `netoffload stats`: the running netoffload processes and their counters.

Both talk to the processes' control sockets (``netoffload.control``) in the
run directory (``$NETOFFLOAD_RUN_DIR``, ``/run/netoffload``, ...).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from netoffload.control import (
    BUILTIN_OPS,
    ControlError,
    ProcessInfo,
    ProcessState,
    list_processes,
    request,
)


def format_uptime(seconds: float) -> str:
    """``42s``, ``5m 02s``, ``3h 07m``, ``2d 04h``: two units at most."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _state(info: ProcessInfo) -> str:
    if info.state is ProcessState.STALE:
        return "stale: process gone"
    if info.state is ProcessState.NOT_ANSWERING:
        return f"not answering: {info.error}" if info.error else "not answering"
    return "running"


def render_processes(processes: list[ProcessInfo], console: Console) -> None:
    """One row per control socket: name, kind, pid, uptime, the ops it serves, its state."""
    table = Table(title="netoffload processes", title_justify="left")
    table.add_column("name")
    table.add_column("kind")
    table.add_column("pid", justify="right")
    table.add_column("uptime", justify="right")
    table.add_column("ops")
    table.add_column("state")
    for info in processes:
        running = info.state is ProcessState.RUNNING
        uptime = format_uptime(info.uptime_s) if info.uptime_s is not None else "-"
        ops = ", ".join(op for op in info.ops if op not in BUILTIN_OPS) if running else "-"
        table.add_row(
            Text(info.name),
            Text(info.kind),
            str(info.pid),
            uptime,
            Text(ops or "(none)"),
            Text(_state(info)),
        )
    console.print(table)


def timeout_option(default: float) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """``--timeout`` for a command that asks a running process over its control socket."""
    return click.option(
        "--timeout",
        "timeout_s",
        type=click.FloatRange(min=0.01),
        default=default,
        show_default=True,
        help="Seconds to wait for an answer.",
    )


def ask_stats(target: str, timeout_s: float) -> Any:
    """The counters the running process ``target`` sends; a failure is one line."""
    try:
        return request(target, "stats", timeout_s=timeout_s)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per process.")
@timeout_option(0.5)
def list_command(as_json: bool, timeout_s: float) -> None:
    """List running netoffload processes (and stale sockets of dead ones)."""
    try:
        processes = list_processes(timeout_s=timeout_s)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([p.as_json() for p in processes], sort_keys=True))
    elif not processes:
        click.echo("no netoffload process is running")
    else:
        render_processes(processes, Console())


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)  # true/false/null as JSON spells them; numbers as sent


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Counters as ``(a.b.c, value)`` rows: nested objects joined with dots, lists by index.

    A list of plain values stays one row (``1, 2, 3``); an empty object or list is one row.
    """
    if isinstance(value, dict):
        if not value:
            return [(prefix, "{}")]
        rows = []
        for key, item in value.items():
            rows.extend(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    if isinstance(value, list):
        if all(not isinstance(item, dict | list) for item in value):
            return [(prefix, ", ".join(_scalar(item) for item in value) if value else "[]")]
        rows = []
        for index, item in enumerate(value):
            rows.extend(flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return rows
    return [(prefix, _scalar(value))]


def render_stats(title: str, stats: Any, console: Console) -> None:
    """A process's stats as a two-column table of flattened counters."""
    table = Table(title=title, title_justify="left")
    table.add_column("counter")
    table.add_column("value", justify="right")
    for key, value in flatten(stats):
        table.add_row(Text(key), Text(value))
    console.print(table)


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as the process sent them.")
@timeout_option(2.0)
def stats(name: str, as_json: bool, timeout_s: float) -> None:
    """Show the counters of the running process NAME (a name, kind:name, pid or socket path)."""
    result = ask_stats(name, timeout_s)
    if as_json:
        click.echo(json.dumps(result))
    else:
        render_stats(f"{name}: stats", result, Console())
