"""`netoffload bench synflood`: a SYN flood on a SoftNic wire, and a client that still gets in.

Two stacks on two SoftNics: the server (198.18.0.2) listens; SYNs from random
sources in 198.19.0.0/16 (routed through the client side, 198.18.0.1) are
posted into the client's SoftNic as fast as it takes them, while a legitimate
client connects and sends its data. The server's SoftNic has a SYN rate limit
(one a second per destination), so the SYNs carry the verdict SYN_COOKIE and
the server answers them statelessly; the client's SoftNic drops the SYN,ACKs
for the spoofed sources with a classification rule. Reported: SYNs a second,
and what the server kept (half-open connections, flows: bounded by the
backlog).

The flood is built with NumPy from one template (``syn_flood``): every frame
gets its own source address, port and sequence number, and both checksums
are updated for them (RFC 1624: the template's fields are zero, so each
update only adds the new words).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass
from ipaddress import IPv4Address, ip_address

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from netoffload.device.softnic import softnic_pair
from netoffload.loop import StackLoop
from netoffload.offload import Packet
from netoffload.progress import NO_PROGRESS, Progress
from netoffload.stack.stack import Stack
from netoffload.stack.tcp import TcpState
from netoffload.wire import EthernetRepr, Ipv4Repr, MacAddress, TcpFlags, TcpMss, TcpRepr

ETH_HLEN = 14
IP_HLEN = 20
_IP_CSUM = ETH_HLEN + 10
_SRC_LOW = ETH_HLEN + 14  # the low 16 bits of the source address
_SPORT = ETH_HLEN + IP_HLEN
_SEQ = _SPORT + 4
_TCP_CSUM = _SPORT + 16
PORT = 5200
BACKLOG = 64
CHUNK = 512
SOURCES = IPv4Address("198.19.0.0")
SERVER, CLIENT = "198.18.0.2", "198.18.0.1"


#: The flood stops (and says so) if this process grows by more than this.
RSS_LIMIT_BYTES = 2 << 30
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


def _fold(total: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    for _ in range(3):
        total = (total & 0xFFFF) + (total >> 16)
    return total


def syn_flood(
    count: int,
    *,
    src_mac: MacAddress,
    dst_mac: MacAddress,
    source_net: IPv4Address,
    dst: IPv4Address,
    dport: int,
    seed: int,
) -> npt.NDArray[np.uint8]:
    """``count`` SYN frames (one per row) from random sources in ``source_net``/16."""
    if int(source_net) & 0xFFFF:
        raise ValueError("the source network is a /16")
    tcp = TcpRepr(0, dport, 0, 0, TcpFlags.SYN, 64240, options=(TcpMss(1460),))
    ip = Ipv4Repr(source_net, dst, 6, tcp.buffer_len(0), ttl=64, dont_frag=True)
    eth = EthernetRepr(dst_mac, src_mac, ethertype=0x0800)
    frame = bytearray(ETH_HLEN + ip.header_len + tcp.buffer_len(0))
    eth.emit(frame)
    ip.emit(frame, ETH_HLEN)
    tcp.emit(frame, ETH_HLEN + ip.header_len, payload=b"", src=source_net, dst=dst)
    rng = np.random.default_rng(seed)
    rows = np.tile(np.frombuffer(bytes(frame), dtype=np.uint8), (count, 1))
    low = rng.integers(1, 0xFFFF, count, dtype=np.int64)
    sport = rng.integers(1024, 0x10000, count, dtype=np.int64)
    seq = rng.integers(0, 1 << 32, count, dtype=np.int64)
    words = {_SRC_LOW: low, _SPORT: sport, _SEQ: seq >> 16, _SEQ + 2: seq & 0xFFFF}
    for at, value in words.items():
        rows[:, at] = value >> 8
        rows[:, at + 1] = value & 0xFF
    ip_old = int.from_bytes(frame[_IP_CSUM : _IP_CSUM + 2], "big")
    tcp_old = int.from_bytes(frame[_TCP_CSUM : _TCP_CSUM + 2], "big")
    # ~C' = ~C + m' for every new word m' where the template held zero; the source
    # address is in the IP header and in TCP's pseudo-header.
    ip_sum = _fold((~ip_old & 0xFFFF) + low)
    tcp_sum = _fold((~tcp_old & 0xFFFF) + low + sport + (seq >> 16) + (seq & 0xFFFF))
    for at, value in ((_IP_CSUM, ~ip_sum & 0xFFFF), (_TCP_CSUM, ~tcp_sum & 0xFFFF)):
        rows[:, at] = value >> 8
        rows[:, at + 1] = value & 0xFF
    return rows


@dataclass(slots=True)
class FloodResult:
    """What one flood did: rates, what arrived, and what the server kept at most."""

    syns: int
    seconds: float
    syn_per_s: float
    transfer_bytes: int
    transfer_intact: bool
    listener: dict[str, int]
    half_open_max: int
    flows_max: int
    backlog: int
    syns_marked_by_device: int
    answers_dropped_by_rule: int
    client_rule_drops: int
    rss_growth_bytes: int


def flood(
    syns: int, transfer_bytes: int, *, timeout_s: float = 300.0, seed: int = 10
) -> FloodResult:
    """Run the flood (see the module doc) and the legitimate transfer; bounded by ``timeout_s``."""
    with softnic_pair(names=("flood-a", "flood-b")) as (nic_a, nic_b):
        client_stack = Stack(rng=random.Random(seed))
        server_stack = Stack(rng=random.Random(seed + 1))
        client_stack.add_interface(nic_a, [f"{CLIENT}/24"])
        server_stack.add_interface(nic_b, [f"{SERVER}/24"], gateways=[CLIENT])
        nic_b.rules("add dos limit syn 1 burst 1")
        drop_rule = nic_a.rules(f"add flow-type tcp4 dst-ip {SOURCES}/16 action drop")["added"]
        frames = syn_flood(
            syns,
            src_mac=nic_a.mac,
            dst_mac=nic_b.mac,
            source_net=SOURCES,
            dst=IPv4Address(SERVER),
            dport=PORT,
            seed=seed,
        )
        data = os.urandom(transfer_bytes)
        (listener,) = server_stack.tcp_listen(PORT, backlog=BACKLOG)
        loop_a, loop_b = StackLoop(client_stack), StackLoop(server_stack)
        posted = sent = 0
        client = server = None
        got = bytearray()
        half_open_max = flows_max = 0
        rss_start = rss_peak = _rss_bytes()
        steps = 0
        started = time.monotonic()
        end = started + timeout_s
        while (len(got) < transfer_bytes or posted < syns) and time.monotonic() < end:
            if posted < syns:
                rows = frames[posted : posted + CHUNK]
                posted += nic_a.send([Packet(memoryview(row)) for row in rows])
            if client is None and posted >= syns // 10:
                client = client_stack.tcp_connect(ip_address(SERVER), PORT, time.monotonic_ns())
            loop_a.step(0.0)
            loop_b.step(0.0)
            steps += 1
            if steps % 256 == 0:
                rss_peak = max(rss_peak, _rss_bytes())
                if rss_peak - rss_start > RSS_LIMIT_BYTES:
                    break  # reported: the growth is in the result
            half_open_max = max(half_open_max, listener.syn_queue_len())
            flows_max = max(flows_max, len(server_stack.tcp.flows))
            if server is None:
                server = server_stack.tcp_accept([listener])
            if client is not None and client.conn.state is TcpState.ESTABLISHED:
                sent += client.conn.send(memoryview(data)[sent : sent + (1 << 20)])
            if server is not None:
                while server.conn.readable() and len(got) <= transfer_bytes:
                    got.extend(server.conn.recv(1 << 20))
                if len(got) > transfer_bytes:
                    break  # more than was sent: reported as not intact, memory stays bounded
        seconds = time.monotonic() - started
        nic_b.stats()
        rules = {r["id"]: r for r in nic_a.rules("list")["rules"] if r["table"] == "classify"}
        return FloodResult(
            syns=posted,
            seconds=seconds,
            syn_per_s=posted / seconds,
            transfer_bytes=len(got),
            transfer_intact=bytes(got) == data,
            listener=listener.stats(),
            half_open_max=half_open_max,
            flows_max=flows_max,
            backlog=BACKLOG,
            syns_marked_by_device=int(nic_b.steering_counters()["syn_cookies"]),
            answers_dropped_by_rule=int(rules[drop_rule]["drops"]),
            client_rule_drops=nic_a.stats().drops["rule_drop"],
            rss_growth_bytes=max(rss_peak, _rss_bytes()) - rss_start,
        )


def run(quick: bool, progress: Progress = NO_PROGRESS) -> dict[str, object]:
    """The flood's result as JSON (20,000 SYNs and 1 MB with ``quick``, else 200,000 and 10 MB)."""
    progress.stage("synflood", 1)
    result = flood(20_000, 1_000_000) if quick else flood(200_000, 10_000_000)
    progress.update(1)
    return asdict(result)


def _num(result: dict[str, object], key: str) -> float:
    value = result[key]
    assert isinstance(value, int | float)
    return float(value)


def render(result: dict[str, object], console: Console) -> None:
    """Print the result as a table."""
    table = Table(title="SYN flood on a SoftNic wire, with a legitimate transfer through it")
    table.add_column("measure")
    table.add_column("value", justify="right")
    listener = result["listener"]
    assert isinstance(listener, dict)
    for label, value in (
        ("SYNs sent", f"{result['syns']:,}"),
        ("seconds", f"{result['seconds']:.1f}"),
        ("SYNs a second", f"{result['syn_per_s']:,.0f}"),
        ("SYN cookies sent", f"{listener.get('syn_cookies_sent', 0):,}"),
        ("connections opened from a cookie", f"{listener.get('syn_cookies_accepted', 0):,}"),
        ("most half-open / backlog", f"{result['half_open_max']} / {result['backlog']}"),
        ("transfer bytes (intact)", f"{result['transfer_bytes']:,} ({result['transfer_intact']})"),
        ("memory grown (MB)", f"{_num(result, 'rss_growth_bytes') / 1e6:.0f}"),
    ):
        table.add_row(label, value)
    console.print(table)
