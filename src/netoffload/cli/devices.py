"""`netoffload caps` and `netoffload enable`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from netoffload.control import ControlError, request
from netoffload.device.base import Device, DeviceError
from netoffload.device.names import open_device
from netoffload.offload import CapabilityStatus, OffloadError, Task

T = TypeVar("T")


@contextmanager
def _device(spec: str) -> Iterator[Device]:
    """Open ``spec`` for querying; every expected failure becomes one line on stderr."""
    try:
        device = open_device(spec, data_path=False)
    except (DeviceError, OffloadError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{spec}: {exc.strerror or exc}") from None
    try:
        yield device
    finally:
        device.close()


def _call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (DeviceError, OffloadError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(exc.strerror or str(exc)) from None


def _format_value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(value) if value else "none"
    return str(value)


def _format_params(params: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {_format_value(v)}" for k, v in params.items())


def _state(record: dict[str, Any]) -> str:
    if not record["enabled"]:
        state = "off"
    elif record["enabled_params"] in (None, record["params"]):
        state = "on"
    else:
        state = "partly on"
    return state if record["changeable"] else f"{state} (fixed)"


def render_status(name: str, status: list[CapabilityStatus], console: Console) -> None:
    """The capability chain as a table, one task per row (like `ethtool -k`, by task)."""
    render_records(name, [line.as_json() for line in status], console)


def render_records(name: str, records: list[dict[str, Any]], console: Console) -> None:
    """The table of ``CapabilityStatus.as_json()`` records, from a device or a process.

    A task enabled with less than it offers shows what is enabled under its
    parameters. Cells are plain text: parameter values never go through
    rich's markup.
    """
    table = Table(title=f"{name}: offload capabilities", title_justify="left")
    table.add_column("task")
    table.add_column("state")
    table.add_column("parameters")
    for record in records:
        params = _format_params(record["params"])
        enabled = record["enabled_params"]
        if record["enabled"] and enabled is not None and enabled != record["params"]:
            params += "\nenabled:\n" + _format_params(enabled)
        table.add_row(Text(record["task"]), Text(_state(record)), Text(params))
    if not records:
        table.add_row("(none)", "", "this device offers no task")
    console.print(table)


def _checked_records(value: Any, process: str) -> list[dict[str, Any]]:
    """A process's reply as capability records; one line naming the process when it is not."""
    shape = {"task": str, "enabled": bool, "changeable": bool, "params": dict}
    if isinstance(value, list) and all(
        isinstance(r, dict)
        and all(isinstance(r.get(k), t) for k, t in shape.items())
        and isinstance(r.get("enabled_params"), dict | None)
        for r in value
    ):
        return value
    raise click.ClickException(f"{process} replied with something that is not a capability table")


def _ask(process: str, op: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return _checked_records(request(process, op, args), process)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None


_PROCESS_HELP = "Ask the running netoffload process NAME about its DEVICE instead of opening it."


@click.command()
@click.argument("device")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of records.")
@click.option("--process", metavar="NAME", help=_PROCESS_HELP)
def caps(device: str, as_json: bool, process: str | None) -> None:
    """Show the capability chain of DEVICE (softnic, tap:NAME, [packet:]IFNAME, xdp:IFNAME)."""
    if process is not None:
        records = _ask(process, "caps", {"device": device})
        if as_json:
            click.echo(json.dumps(records, sort_keys=True))
        else:
            render_records(f"{device} in {process}", records, Console())
        return
    with _device(device) as dev:
        status = _call(dev.status)
        if as_json:
            click.echo(json.dumps([s.as_json() for s in status], sort_keys=True))
        else:
            render_status(dev.name, status, Console())


@click.command()
@click.argument("device")
@click.argument("task")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--json", "as_json", is_flag=True, help="Print the resulting status as JSON.")
@click.option(
    "--process",
    metavar="NAME",
    help="Change DEVICE inside the running netoffload process NAME, through its control socket.",
)
def enable(device: str, task: str, state: str, as_json: bool, process: str | None) -> None:
    """Turn TASK on or off on DEVICE and print the result."""
    try:
        wanted = Task.from_label(task)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if process is not None:
        _enable_in(process, device, wanted, state == "on", as_json)
        return
    with _device(device) as dev:
        offered = {s.advertised.task: s for s in _call(dev.status)}
        line = offered.get(wanted)
        if line is None:
            raise click.ClickException(f"{dev.name} does not offer {wanted.label}")
        current = _call(dev.enabled)
        on = state == "on"
        selection = current.with_task(line.advertised) if on else current.without(wanted)
        _call(lambda: dev.enable(selection))
        status = _call(dev.status)
        after = next((s for s in status if s.advertised.task is wanted), None)
        now_on = after is not None and after.enabled is not None
        if as_json:
            click.echo(json.dumps([s.as_json() for s in status], sort_keys=True))
        else:
            render_status(dev.name, status, Console())
        if now_on != (state == "on"):
            raise click.ClickException(
                f"{wanted.label} is still {'on' if now_on else 'off'} on {dev.name}: the kernel "
                "kept it (a feature it depends on, e.g. checksum, may be off)"
            )


def _enable_in(process: str, device: str, wanted: Task, on: bool, as_json: bool) -> None:
    """``enable --process``: the process changes its device and replies with the table."""
    records = _ask(process, "enable", {"device": device, "task": wanted.label, "on": on})
    if as_json:
        click.echo(json.dumps(records, sort_keys=True))
    else:
        render_records(f"{device} in {process}", records, Console())
    after = next((r for r in records if r["task"] == wanted.label), None)
    now_on = after is not None and after["enabled"]
    if now_on != on:
        raise click.ClickException(
            f"{wanted.label} is still {'on' if now_on else 'off'} on {device} in {process}: "
            "the device kept it (a feature it depends on, e.g. checksum, may be off)"
        )
