"""`netoffload caps` and `netoffload enable`."""

from __future__ import annotations

import click


@click.command()
@click.argument("device")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of records.")
def caps(device: str, as_json: bool) -> None:
    """Show the capability chain of DEVICE (softnic, tap:NAME, packet:IFNAME, IFNAME)."""
    raise click.ClickException("caps is not built yet")


@click.command()
@click.argument("device")
@click.argument("task")
@click.argument("state", type=click.Choice(["on", "off"]))
def enable(device: str, task: str, state: str) -> None:
    """Turn TASK on or off on DEVICE and print the result."""
    raise click.ClickException("enable is not built yet")
