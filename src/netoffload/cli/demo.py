"""`netoffload demo`: two SoftNics on a Cable, offload on vs off."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import click
from rich.console import Console

from netoffload.control import ControlServer
from netoffload.device.base import DeviceError
from netoffload.progress import progress_for


@contextlib.contextmanager
def _control() -> Iterator[ControlServer | None]:
    """The demo's control socket (`netoffload list`, `netoffload stats demo-PID`), if one
    can be made here; the demo runs without it otherwise."""
    try:
        server = ControlServer("demo", f"demo-{os.getpid()}")
    except (OSError, ValueError):
        yield None
        return
    with server:
        yield server


# The demo holds the streams and what arrived in memory: about four times this.
MAX_BYTES = 1 << 30


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--bytes",
    "total_bytes",
    type=click.IntRange(min=65536, max=MAX_BYTES),
    default=None,
    help="Payload bytes per mode, 64 KiB to 1 GiB (default 96 MiB; a quarter of it as UDP).",
)
def demo(as_json: bool, total_bytes: int | None) -> None:
    """Two stacks on two SoftNics: TCP and UDP with offload on and off."""
    from netoffload.demo.render import render
    from netoffload.demo.run import DEFAULT_BYTES, run_demo

    try:
        with _control() as control, progress_for(as_json) as progress:
            result = run_demo(total_bytes or DEFAULT_BYTES, progress=progress, control=control)
    except DeviceError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
    else:
        render(result, Console())
    if result["bytes_verified"] != result["bytes_sent"]:
        raise SystemExit(1)
