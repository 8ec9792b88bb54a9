"""`netoffload nc` and `netoffload ping`: the user-level stack from the command line."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import click

from netoffload.apps.nc import NcError, run_tcp_client, run_tcp_server, run_udp
from netoffload.apps.setup import RunningStack, SetupError, StackOptions, build, parse_address
from netoffload.control import ControlServer, register_device_ops
from netoffload.device.base import Device, DeviceError
from netoffload.loop import StackLoop
from netoffload.policy import LoadSampler, PolicyMode
from netoffload.stack.ping import PingError, PingReply, PingTimeout
from netoffload.stack.stack import Stack

_POLICIES = click.Choice([m.value for m in PolicyMode])


def _stack_options(f: click.decorators.FC) -> click.decorators.FC:
    """The options every stack command shares."""
    for option in reversed(
        [
            click.option(
                "--device",
                "device",
                required=True,
                help="softnic, tap:NAME (created if absent), packet:IFNAME, xdp:IFNAME or IFNAME.",
            ),
            click.option(
                "--address",
                "addresses",
                multiple=True,
                required=True,
                help="The stack's address with its prefix (198.18.0.2/24); repeatable.",
            ),
            click.option(
                "--gateway",
                "gateways",
                multiple=True,
                help="A default gateway; once per IP version.",
            ),
            click.option(
                "--peer-address",
                "peer_addresses",
                multiple=True,
                help="Give the kernel's side of a TAP this address (198.18.0.1/24); repeatable.",
            ),
            click.option(
                "--policy",
                type=_POLICIES,
                default="always",
                show_default=True,
                help="Who does the per-packet work: the device when it can, the host, or "
                "by the load.",
            ),
            click.option(
                "--sa",
                "sa_config",
                type=click.Path(dir_okay=False),
                default=None,
                help="Protect traffic with IPsec ESP: a TOML file of security policies.",
            ),
            click.option(
                "--stats", "show_stats", is_flag=True, help="Print the stack's counters on exit."
            ),
            click.option(
                "--name",
                default=None,
                help="The name `netoffload list` and `netoffload stats NAME` know it by.",
            ),
        ]
    ):
        f = option(f)
    return f


@contextmanager
def _running(options: StackOptions, kind: str, name: str | None) -> Iterator[ControlledStack]:
    try:
        running = build(options)
    except SetupError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        server = _serve(running, kind, name)
        try:
            yield ControlledStack(running.stack, running.device, server)
        finally:
            if server is not None:
                server.close()
    finally:
        running.close()


class ControlledStack(RunningStack):
    """A running stack and the control socket that serves its counters."""

    def __init__(self, stack: Stack, device: Device, server: ControlServer | None) -> None:
        super().__init__(stack, device)
        self.server = server


def _serve(running: RunningStack, kind: str, name: str | None) -> ControlServer | None:
    """The process's control socket (`netoffload list`, `stats`, `enable --process`)."""
    try:
        server = ControlServer(kind, name or f"{kind}-{os.getpid()}")
    except (OSError, ValueError) as exc:
        click.echo(f"note: no control socket ({exc})", err=True)
        return None
    server.register("stats", lambda args: running.stack.as_dict())
    hosts = {i.device.name: i.host.rules for i in running.stack.interfaces}
    register_device_ops(server, {running.device.name: running.device}, rules=hosts)
    return server


def _report(running: RunningStack, show: bool) -> None:
    if not show:
        return
    try:
        stats = running.stack.as_dict()
    except DeviceError as exc:  # the device's own counters are gone with it
        click.echo(f"note: no stats ({exc})", err=True)
        return
    click.echo(json.dumps(stats, sort_keys=True), err=True)


@click.command()
@click.option("-l", "--listen", is_flag=True, help="Listen on PORT for one connection.")
@click.option("-u", "--udp", is_flag=True, help="UDP instead of TCP.")
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.0),
    default=2.0,
    show_default=True,
    help="UDP: finish this long after input ended and nothing came.",
)
@click.option(
    "--timeout",
    "connect_timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="TCP: give up connecting after this many seconds.",
)
@_stack_options
@click.argument("target", nargs=-1, required=True)
def nc(
    *,
    listen: bool,
    udp: bool,
    idle_timeout: float,
    connect_timeout: float,
    device: str,
    addresses: tuple[str, ...],
    gateways: tuple[str, ...],
    peer_addresses: tuple[str, ...],
    policy: str,
    sa_config: str | None,
    show_stats: bool,
    name: str | None,
    target: tuple[str, ...],
) -> None:
    """Copy standard input to a TCP or UDP peer and the peer to standard output.

    nc [...] HOST PORT connects; nc -l [...] PORT listens for one connection.
    """
    if listen and len(target) != 1:
        raise click.UsageError("with -l give only PORT")
    if not listen and len(target) != 2:
        raise click.UsageError("give HOST PORT")
    try:
        port = int(target[-1])
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise click.ClickException(f"not a port: {target[-1]!r}") from None
    try:
        host = None if listen else parse_address(target[0])
    except SetupError as exc:
        raise click.ClickException(str(exc)) from None
    options = StackOptions(
        device=device,
        addresses=addresses,
        gateways=gateways,
        peer_addresses=peer_addresses,
        policy=policy,
        sa_config=sa_config,
    )
    sys.stdout.flush()
    with _running(options, "nc", name) as running:
        stack = running.stack
        sampler = LoadSampler() if policy == PolicyMode.ADAPTIVE.value else None
        control = running.server
        try:
            if udp:
                run_udp(
                    stack,
                    host=host,
                    port=port,
                    listen=listen,
                    idle_timeout_s=idle_timeout,
                    sampler=sampler,
                    control=control,
                )
            elif listen:
                run_tcp_server(stack, port, sampler=sampler, control=control)
            else:
                assert host is not None
                run_tcp_client(
                    stack,
                    host,
                    port,
                    connect_timeout_s=connect_timeout,
                    sampler=sampler,
                    control=control,
                )
        except (NcError, DeviceError) as exc:
            # DeviceError: the device failed under us (a TAP deleted, a firmware gone).
            _report(running, show_stats)
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            _report(running, show_stats)
            raise SystemExit(130) from None
        _report(running, show_stats)


@click.command()
@click.option("-c", "--count", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("-i", "--interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True)
@click.option("-W", "--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
@_stack_options
@click.argument("host")
def ping(
    *,
    count: int,
    interval: float,
    timeout: float,
    device: str,
    addresses: tuple[str, ...],
    gateways: tuple[str, ...],
    peer_addresses: tuple[str, ...],
    policy: str,
    sa_config: str | None,
    show_stats: bool,
    name: str | None,
    host: str,
) -> None:
    """Send ICMP echo requests to HOST through the user-level stack."""
    try:
        destination = parse_address(host)
    except SetupError as exc:
        raise click.ClickException(str(exc)) from None
    options = StackOptions(
        device=device,
        addresses=addresses,
        gateways=gateways,
        peer_addresses=peer_addresses,
        policy=policy,
        sa_config=sa_config,
    )
    with _running(options, "ping", name) as running:
        stack = running.stack
        try:
            client = stack.ping(
                destination,
                time.monotonic_ns(),
                count=count,
                interval_ns=int(interval * 1e9),
                timeout_ns=int(timeout * 1e9),
            )
        except OSError as exc:
            raise click.ClickException(f"{host}: {exc.strerror or exc}") from None
        click.echo(f"PING {destination} from {client.source}: {client.payload_bytes} data bytes")
        sampler = LoadSampler() if policy == PolicyMode.ADAPTIVE.value else None
        loop = StackLoop(stack, sampler=sampler)
        if running.server is not None:
            loop.watch(running.server.fileno(), running.server.service)

        def show() -> bool:
            for event in client.take_events():
                if isinstance(event, PingReply):
                    click.echo(
                        f"{event.data_bytes + 8} bytes from {destination}: icmp_seq={event.seq} "
                        f"ttl={event.ttl} time={event.rtt_ns / 1e6:.3f} ms"
                        + (" (DUP!)" if event.duplicate else "")
                    )
                elif isinstance(event, PingTimeout):
                    click.echo(f"no answer to icmp_seq={event.seq}")
                elif isinstance(event, PingError):
                    click.echo(f"from {event.sender}: {event.kind.value.replace('_', ' ')}")
            return client.done

        try:
            loop.run_until(show, timeout_s=count * interval + timeout + 5)
        except KeyboardInterrupt:
            client.stop()
        except DeviceError as exc:
            raise click.ClickException(str(exc)) from None
        summary = client.summary()
        click.echo(f"--- {destination} ping statistics ---")
        click.echo(
            f"{summary.transmitted} packets transmitted, {summary.received} received, "
            f"{summary.loss_percent:.0f}% packet loss"
        )
        if summary.rtt_min_ns is not None:
            rtts = (
                summary.rtt_min_ns,
                summary.rtt_avg_ns or 0,
                summary.rtt_max_ns or 0,
                summary.rtt_mdev_ns or 0,
            )
            click.echo("rtt min/avg/max/mdev = " + "/".join(f"{v / 1e6:.3f}" for v in rtts) + " ms")
        _report(running, show_stats)
        if summary.received == 0:
            raise SystemExit(1)
