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


def _state(line: CapabilityStatus) -> str:
    if line.enabled is None:
        state = "off"
    elif line.enabled == line.advertised:
        state = "on"
    else:
        state = "partly on"
    return state if line.changeable else f"{state} (fixed)"


def render_status(name: str, status: list[CapabilityStatus], console: Console) -> None:
    """The capability chain as a table, one task per row (like `ethtool -k`, by task).

    A task enabled with less than it offers shows what is enabled under its
    parameters. Cells are plain text: parameter values never go through
    rich's markup.
    """
    table = Table(title=f"{name}: offload capabilities", title_justify="left")
    table.add_column("task")
    table.add_column("state")
    table.add_column("parameters")
    for line in status:
        params = _format_params(line.advertised.params())
        if line.enabled is not None and line.enabled != line.advertised:
            params += "\nenabled:\n" + _format_params(line.enabled.params())
        table.add_row(Text(line.advertised.task.label), Text(_state(line)), Text(params))
    if not status:
        table.add_row("(none)", "", "this device offers no task")
    console.print(table)


@click.command()
@click.argument("device")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of records.")
def caps(device: str, as_json: bool) -> None:
    """Show the capability chain of DEVICE (softnic, tap:NAME, packet:IFNAME, IFNAME)."""
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
def enable(device: str, task: str, state: str, as_json: bool) -> None:
    """Turn TASK on or off on DEVICE and print the result."""
    try:
        wanted = Task.from_label(task)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
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
