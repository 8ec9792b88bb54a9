"""`netoffload rules`: classification and DoS rules of a device in a running process."""

from __future__ import annotations

import json
from typing import Any

import click

from netoffload.control import ControlError, request

_USAGE = "add WORDS (ethtool ntuple words, or dos ...), del [dos] ID, or list"


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("process")
@click.argument("action", type=click.Choice(["add", "del", "list"]))
@click.argument("words", nargs=-1, type=click.UNPROCESSED)
@click.option("--device", metavar="DEV", help="The device in PROCESS (when it holds several).")
@click.option("--json", "as_json", is_flag=True, help="Print the reply as one JSON object.")
def rules(
    process: str, action: str, words: tuple[str, ...], device: str | None, as_json: bool
) -> None:
    """Add, delete or list the rules of the device that the running PROCESS owns.

    \b
    Classification (ethtool ntuple words; the first matching rule decides):
      netoffload rules nc-1 add flow-type tcp4 dst-port 5201 action 1 mark 7
      netoffload rules nc-1 add flow-type udp4 src-ip 198.18.0.0/24 action drop
    DoS filtering:
      netoffload rules nc-1 add dos block src-ip 198.19.0.0/16
      netoffload rules nc-1 add dos limit syn 1000 burst 100
    \b
      netoffload rules nc-1 del 1        netoffload rules nc-1 del dos 2
      netoffload rules nc-1 list
    """
    if action == "list" and words:
        raise click.ClickException("list takes no words")
    if action != "list" and not words:
        raise click.ClickException(f"{action} needs words: {_USAGE}")
    args: dict[str, Any] = {"command": " ".join((action, *words))}
    if device is not None:
        args["device"] = device
    try:
        reply = request(process, "rules", args)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    if not isinstance(reply, dict):
        raise click.ClickException(f"{process} replied with something that is not a rules reply")
    if as_json:
        click.echo(json.dumps(reply, sort_keys=True))
        return
    if "added" in reply:
        click.echo(f"added {reply.get('table')} rule {reply['added']}")
    elif "deleted" in reply:
        click.echo(f"deleted {reply.get('table')} rule {reply['deleted']}")
    else:
        _print_rules(reply.get("rules", []))


def _print_rules(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no rules")
        return
    for row in rows:
        counts = f"hits {row.get('hits', 0)}"
        if row.get("table") == "classify":
            counts += f", drops {row.get('drops', 0)}, bytes {row.get('bytes', 0)}"
        click.echo(f"{row.get('table')} {row.get('id')}: {row.get('rule')}  ({counts})")
