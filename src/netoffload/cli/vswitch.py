"""`netoffload vswitch run` and `netoffload vswitch stats`: a virtual switch with guests.

``run`` starts the switch on an uplink (``softnic``, ``tap:NAME``,
``packet:IFNAME`` or an interface name) with N guest processes, serves a
control socket (kind ``vswitch``) and runs until interrupted (or for
``--duration`` seconds). With ``--subnet`` every guest runs a netoffload
stack with an address of it (the 10th, 11th, ...) and answers ARP and ping;
without, guests are sinks that count what they get. ``stats`` asks a running
switch for its counters, per guest.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from ipaddress import ip_network
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from netoffload.cli.processes import ask_stats, timeout_option
from netoffload.control import ControlError, ControlServer, list_processes
from netoffload.device.base import DeviceError
from netoffload.device.names import open_device
from netoffload.device.vmdq.steer import PortVlans, SteerError
from netoffload.vswitch.pool import Quota
from netoffload.vswitch.switch import GuestConfig, GuestState, SwitchConfig, VSwitch
from netoffload.vswitch.uplink import LinuxUplink, SoftNicUplink, Uplink

KIND = "vswitch"


@click.group()
def vswitch() -> None:
    """A virtual switch: guests get their packets in buffers they own, without copies."""


def _uplink(spec: str) -> tuple[Uplink, Any]:
    """The uplink for ``spec``, and for a SoftNic the far end of its cable (to drain)."""
    if spec.strip() == "softnic":
        from netoffload.device.softnic.pool_nic import PoolSoftNic

        nic = PoolSoftNic(name="vswitch-uplink")
        return SoftNicUplink(nic), nic.peer
    device = open_device(spec)
    try:
        return LinuxUplink(device), None
    except BaseException:
        device.close()
        raise


def _addresses(subnet: str | None, guests: int) -> list[str | None]:
    if subnet is None:
        return [None] * guests
    try:
        network = ip_network(subnet, strict=False)
    except ValueError:
        raise click.ClickException(f"not a subnet: {subnet!r} (e.g. 198.18.0.0/24)") from None
    if network.num_addresses < guests + 12:
        raise click.ClickException(f"{subnet} is too small for {guests} guests")
    return [f"{network[10 + i]}/{network.prefixlen}" for i in range(guests)]


def _guest_argv(name: str, address: str | None) -> list[str]:
    argv = [sys.executable, "-m", "netoffload.vswitch.guest", "--name", name]
    if address is not None:
        argv += ["--mode", "stack", "--address", address]
    return argv


@vswitch.command("run")
@click.option(
    "--guests",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Guest processes to start (g0, g1, ...).",
)
@click.option(
    "--uplink",
    "uplink_spec",
    default="softnic",
    show_default=True,
    help="softnic, tap:NAME, packet:IFNAME or IFNAME.",
)
@click.option("--name", default="vswitch", show_default=True, help="The switch's name.")
@click.option(
    "--vlan",
    "vlans",
    multiple=True,
    help="A guest's VLANs: VID (access), trunk:VID,VID[+NATIVE] or untagged; "
    "one per guest, in order (the last repeats).",
)
@click.option("--subnet", default=None, help="Run a stack in each guest, addresses from this.")
@click.option("--flood", is_flag=True, help="Flood unknown unicast to the VLAN (else drop).")
@click.option("--rule", "rules", multiple=True, help="A classification rule (ethtool ntuple).")
@click.option(
    "--buffers",
    type=click.IntRange(8, 4096),
    default=64,
    show_default=True,
    help="Receive buffers per guest (its quota too).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Stop after this many seconds (default: at Ctrl-C or SIGTERM).",
)
def run_command(
    *,
    guests: int,
    uplink_spec: str,
    name: str,
    vlans: tuple[str, ...],
    subnet: str | None,
    flood: bool,
    rules: tuple[str, ...],
    buffers: int,
    duration: float | None,
) -> None:
    """Run a virtual switch on an uplink with GUESTS guest processes."""
    try:
        ports = [PortVlans.parse(v) for v in vlans] or [PortVlans()]
    except SteerError as exc:
        raise click.ClickException(str(exc)) from None
    addresses = _addresses(subnet, guests)
    if subnet is not None and any(p.native is None for p in ports):
        raise click.ClickException(
            "a guest with a stack needs untagged frames: give it VID or ...+NATIVE"
        )
    config = SwitchConfig(flood_unknown=flood, rules=rules)
    try:
        uplink, peer = _uplink(uplink_spec)
    except DeviceError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        switch = VSwitch(uplink, name=name, config=config)
    except (SteerError, DeviceError) as exc:
        uplink.close()
        raise click.ClickException(str(exc)) from None
    stopping: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, f: stopping.append(s))
    server = None
    try:
        try:
            server = ControlServer(KIND, name)
            server.register("stats", lambda args: switch.stats())
            switch.watch(server.fileno(), server.service)
        except (ControlError, ValueError) as exc:
            click.echo(f"note: no control socket ({exc})", err=True)
        if peer is not None:
            switch.watch(peer.fileno(), lambda: peer.recv_batch(256))  # the wire: a sink
        quota = Quota(rx_buffers=buffers, ring_entries=max(256, 1 << (buffers - 1).bit_length()))
        for i in range(guests):
            guest = f"g{i}"
            port = ports[min(i, len(ports) - 1)]
            argv = _guest_argv(guest, addresses[i])
            argv += ["--rx-buffers", str(buffers), "--ring-entries", str(quota.ring_entries)]
            switch.spawn_guest(GuestConfig(guest, vlans=port, quota=quota), argv)
        where = f", control socket {server.path}" if server is not None else ""
        click.echo(f"{name}: uplink {uplink.kind} {uplink.name}, {guests} guests{where}")
        _serve(switch, addresses, stopping, duration)
        summary = switch.stats()
    except DeviceError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        switch.close()
        if server is not None:
            server.close()
    rx = sum(g["rx_packets"] for g in summary["guests"])
    click.echo(
        f"{name}: stopped; {rx} packets to guests, "
        f"{summary['payload_bytes_copied_unicast_rx']} payload bytes copied on unicast receive"
    )


def _serve(
    switch: VSwitch, addresses: list[str | None], stopping: list[int], duration: float | None
) -> None:
    announced: set[str] = set()
    deadline = None if duration is None else time.monotonic() + duration
    while not stopping and (deadline is None or time.monotonic() < deadline):
        switch.step(0.2)
        for index, guest in enumerate(switch.guests.values()):
            if guest.name in announced or guest.state is GuestState.WAITING:
                continue
            announced.add(guest.name)
            if guest.state is GuestState.GONE:
                click.echo(f"guest {guest.name}: {guest.gone_reason}", err=True)
                continue
            address = addresses[index] if index < len(addresses) else None
            extra = f", {address}" if address else ""
            click.echo(
                f"guest {guest.name}: pid {guest.pid}, pool {guest.pool}, {guest.mac}, "
                f"{guest.config.vlans}{extra}"
            )


def _find_switch(name: str | None) -> str:
    if name is not None:
        return name
    try:
        found = [p for p in list_processes() if p.kind == KIND and not p.stale]
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    if not found:
        raise click.ClickException("no virtual switch is running (netoffload vswitch run)")
    if len(found) > 1:
        names = ", ".join(f"{p.name} (pid {p.pid})" for p in found)
        raise click.ClickException(f"{len(found)} virtual switches run ({names}): give a NAME")
    return f"{KIND}:{found[0].name}"


@vswitch.command("stats")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the counters as the switch sent them.")
@timeout_option(2.0)
def stats_command(name: str | None, as_json: bool, timeout_s: float) -> None:
    """Per guest: packets, bytes, buffers posted and held, copies, drops by reason."""
    target = _find_switch(name)
    result = ask_stats(target, timeout_s)
    if as_json:
        click.echo(json.dumps(result))
        return
    if not isinstance(result, dict) or "guests" not in result:
        raise click.ClickException(f"{target} is not a virtual switch")
    render(result, Console())


def _counts(table: Any) -> str:
    if not isinstance(table, dict) or not table:
        return "-"
    return ", ".join(f"{k} {v}" for k, v in sorted(table.items()))


def render(stats: dict[str, Any], console: Console) -> None:
    """The switch's counters: a row per guest, then the uplink and the switching."""
    table = Table(title=f"vswitch {stats.get('name')}", title_justify="left")
    for column in ("guest", "state", "pid", "vlans", "mac"):
        table.add_column(column)
    for column in ("rx pkts", "rx bytes", "tx pkts", "posted/held"):
        table.add_column(column, justify="right")
    for column in ("copies", "drops", "refused"):
        table.add_column(column)
    for g in stats.get("guests", []):
        buffers = g.get("buffers") or {}
        state = g.get("state", "?")
        if g.get("gone"):
            state = f"{state}: {g['gone']}"
        elif g.get("stalled"):
            state = f"{state} (stalled)"
        table.add_row(
            Text(str(g.get("name"))),
            Text(state),
            str(g.get("pid") or "-"),
            Text(str(g.get("vlans"))),
            str(g.get("mac")),
            str(g.get("rx_packets", 0)),
            str(g.get("rx_bytes", 0)),
            str(g.get("tx_packets", 0)),
            f"{buffers.get('posted', 0)}/{buffers.get('held', 0)}",
            Text(_counts(g.get("copies"))),
            Text(_counts(g.get("drops"))),
            Text(_counts(g.get("refused"))),
        )
    console.print(table)
    uplink = stats.get("uplink", {})
    maps = "maps guest windows" if uplink.get("maps_guest_windows") else "maps no guest window"
    console.print(f"uplink: {uplink.get('kind')} {uplink.get('name')} ({maps})")
    console.print(
        f"payload bytes copied on unicast receive: {stats.get('payload_bytes_copied_unicast_rx')}"
    )
    console.print(
        f"MAC table: {len(stats.get('mac_table', []))} entries; "
        f"unknown unicast {'flooded' if stats.get('flood_unknown') else 'dropped'}"
    )
    console.print(Text(f"switching: {_counts(stats.get('switching'))}"))
