"""`netoffload demo`: two SoftNics on a Wire, offload on vs off."""

from __future__ import annotations

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def demo(as_json: bool) -> None:
    """Two SoftNic endpoints on a Wire: a bulk flow with offload on and off."""
    raise click.ClickException("the demo is not built yet")
