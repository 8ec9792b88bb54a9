"""`netoffload run -- python app.py ...`: an unmodified Python program on user-level sockets."""

from __future__ import annotations

import json
import sys
import tomllib
from typing import Any

import click

from netoffload.apps.setup import SetupError, StackOptions, build
from netoffload.device.base import DeviceError
from netoffload.policy import LoadSampler, PolicyMode
from netoffload.sockets._boot import CommandError, parse_command, serve, summary
from netoffload.sockets._runtime import Runtime

#: The keys a ``--config`` file may have, with the type of each value.
_CONFIG_KEYS: dict[str, type] = {
    "device": str,
    "addresses": list,
    "gateways": list,
    "peer_addresses": list,
    "policy": str,
    "name": str,
}


def load_config(path: str) -> dict[str, Any]:
    """A TOML file of the same settings as the flags (``addresses = ["198.18.0.2/24"]``...)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise SetupError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SetupError(f"{path}: {exc}") from None
    for key, value in data.items():
        wanted = _CONFIG_KEYS.get(key)
        if wanted is None:
            raise SetupError(f"{path}: unknown key {key!r} ({', '.join(_CONFIG_KEYS)})")
        if not isinstance(value, wanted) or (
            isinstance(value, list) and not all(isinstance(v, str) for v in value)
        ):
            kind = "a list of strings" if wanted is list else "a string"
            raise SetupError(f"{path}: {key} must be {kind}")
    return data


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--device", default=None, help="softnic, tap:NAME, packet:IFNAME, xdp:IFNAME.")
@click.option(
    "--address",
    "addresses",
    multiple=True,
    help="The stack's address with its prefix (198.18.0.2/24); repeatable.",
)
@click.option("--gateway", "gateways", multiple=True, help="A default gateway; once per version.")
@click.option(
    "--peer-address",
    "peer_addresses",
    multiple=True,
    help="Give the kernel's side of a TAP this address (198.18.0.1/24); repeatable.",
)
@click.option(
    "--policy",
    type=click.Choice([m.value for m in PolicyMode]),
    default=None,
    help="Who does the per-packet work: the device when it can (always), the host, or by load.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="A TOML file with the same settings (device, addresses, gateways, peer_addresses, "
    "policy, name); flags win.",
)
@click.option("--name", default=None, help="The name `netoffload stats NAME` knows it by.")
@click.option("--stats", "show_stats", is_flag=True, help="Print every counter as JSON on exit.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(
    *,
    device: str | None,
    addresses: tuple[str, ...],
    gateways: tuple[str, ...],
    peer_addresses: tuple[str, ...],
    policy: str | None,
    config_path: str | None,
    name: str | None,
    show_stats: bool,
    command: tuple[str, ...],
) -> None:
    """Run a Python program with its sockets served by the user-level stack.

    \b
    netoffload run --device tap:nsotap0 --address 198.18.0.2/24 -- python -m http.server

    TCP and UDP sockets whose destination or bound address the stack's interface
    reaches take the user-level path; every other socket (AF_UNIX, loopback,
    other destinations) goes to the OS unchanged. On exit one line on stderr
    says how many sockets and bytes took each path.
    """
    try:
        program = parse_command(command)
        config = load_config(config_path) if config_path is not None else {}
        options = StackOptions(
            device=device or config.get("device") or "",
            addresses=addresses or tuple(config.get("addresses", ())),
            gateways=gateways or tuple(config.get("gateways", ())),
            peer_addresses=peer_addresses or tuple(config.get("peer_addresses", ())),
            policy=policy or config.get("policy", "always"),
        )
        if not options.device:
            raise SetupError("give a device: --device tap:NAME (or device in --config)")
        running = build(options)
    except (CommandError, SetupError) as exc:
        raise click.ClickException(str(exc)) from None
    sampler = LoadSampler() if options.policy == PolicyMode.ADAPTIVE.value else None
    runtime = Runtime(
        running.stack,
        devices=[running.device],
        name=name or config.get("name"),
        control=True,
        kind="run",
        sampler=sampler,
    )
    try:
        status, stats = serve(runtime, program)
    except CommandError as exc:
        raise click.ClickException(str(exc)) from None
    except DeviceError as exc:
        raise click.ClickException(str(exc)) from None
    sys.stdout.flush()
    click.echo(summary(stats), err=True)
    if show_stats:
        click.echo(json.dumps(stats, sort_keys=True, default=str), err=True)
    sys.exit(status)
