"""`netoffload demo`: two SoftNics on a Cable, offload on vs off."""

from __future__ import annotations

import json

import click
from rich.console import Console

from netoffload.device.base import DeviceError
from netoffload.progress import progress_for

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
    """Two SoftNic endpoints on a Cable: a bulk flow with offload on and off."""
    from netoffload.demo.render import render
    from netoffload.demo.run import DEFAULT_BYTES, run_demo

    try:
        with progress_for(as_json) as progress:
            result = run_demo(total_bytes or DEFAULT_BYTES, progress=progress)
    except DeviceError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
    else:
        render(result, Console())
    if result["bytes_verified"] != result["bytes_sent"]:
        raise SystemExit(1)
