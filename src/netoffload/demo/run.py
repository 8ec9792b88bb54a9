"""The demo: a TCP connection and a UDP stream between two stacks on two SoftNics.

Two ``Stack``s in this process, each on its own SoftNic, the NICs joined by
a Cable with a 1500-byte MTU. Stack A connects to stack B and sends a byte
stream over real TCP (handshake, ACKs, windows, FIN); then it sends a UDP
stream of 1472-byte datagrams in ``UDP_SEGMENT`` bursts, each datagram
tagged with its offset in the stream so B can put it back in place.

* **offload on**: both stacks enable every task the stack uses and use the
  policy ``always``. TCP hands the NIC 64 KiB super-packets to segment and
  checksum; the receiving NIC verifies and coalesces (GRO), and TCP takes
  each super-packet whole with one ACK. UDP bursts go as one UDP_L4
  super-datagram; the receiving NIC coalesces them back.
* **offload off**: the same stacks with the policy ``never`` and nothing
  enabled: the host segments and checksums (the same engine, in software),
  the NICs move 1500-byte frames, and the receiving stack verifies every
  checksum and runs TCP per segment.

Host CPU is this process's CPU time (both stacks); the NICs' firmware runs
in processes of its own, the NICs' processors. Every byte that arrives is
compared with what was sent.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import numpy as np

from netoffload.control import ControlServer
from netoffload.demo.rawflow import ModeResult
from netoffload.device.base import DeviceError
from netoffload.device.cable import Impairments
from netoffload.device.softnic import SoftNic, softnic_pair
from netoffload.loop import StackLoop
from netoffload.offload import CapabilityRecord, DeviceStats
from netoffload.policy import OffloadPolicy
from netoffload.progress import NO_PROGRESS, Progress
from netoffload.stack.stack import Stack
from netoffload.stack.tcp import PeerClosed, Refused, Reset, TcpConfig, TcpState
from netoffload.stack.tcp_layer import TcpHandle

DEFAULT_BYTES = 96 * 1024 * 1024
UDP_SHARE = 0.25  # of the bytes, sent as UDP datagrams
A_ADDR, B_ADDR = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
TCP_PORT, UDP_PORT = 5201, 5202
MSS = 1448  # what TCP with timestamps carries in a 1500-byte packet
DATAGRAM = 1472  # UDP payload of a 1500-byte IPv4 packet
TAG = struct.Struct("!Q")  # a datagram's first bytes: its offset in the stream
DATA_PER_DATAGRAM = DATAGRAM - TAG.size
DATAGRAMS_PER_BURST = 44  # 44 x 1472 = 64768 bytes: one UDP_SEGMENT super-datagram
UDP_AHEAD_BYTES = 1 << 20  # datagrams in flight at most (the receiver reads as it goes)
UDP_RCVBUF_BYTES = 8 << 20
SEND_CHUNK = 1 << 20
STALL_S = 10.0
SERVICE_EVERY_NS = 50_000_000  # the control socket, while the transfer runs


@dataclass
class Side:
    """One end: its NIC, its stack and the loop that drives it."""

    nic: SoftNic
    stack: Stack
    loop: StackLoop


class Pair:
    """Two stacks on two SoftNics joined by a cable, driven together from this thread."""

    def __init__(self, a: Side, b: Side, control: ControlServer | None) -> None:
        self.a, self.b = a, b
        self.control = control
        self._fds = a.stack.filenos() + b.stack.filenos()
        if control is not None:
            self._fds.append(control.fileno())
        self._serviced_ns = 0

    def step(self) -> int:
        """One round of both stacks without waiting; frames that came in."""
        got = self.a.loop.step(0.0) + self.b.loop.step(0.0)
        control = self.control
        if control is not None:
            now = time.monotonic_ns()
            if now - self._serviced_ns > SERVICE_EVERY_NS:
                self._serviced_ns = now
                control.service()
        return got

    def wait(self, timeout_s: float) -> None:
        """Until a NIC or the control socket has something, or a timer is due."""
        for stack in (self.a.stack, self.b.stack):
            due = stack.next_timer_ns()
            if due is not None:
                timeout_s = min(timeout_s, max(0.0, (due - time.monotonic_ns()) / 1e9))
        select.select(self._fds, [], [], timeout_s)


@contextlib.contextmanager
def _pair(offload: bool, control: ControlServer | None) -> Iterator[Pair]:
    """Both ends on a fresh cable; every NIC and stack gone afterwards."""
    policy = "always" if offload else "never"
    with softnic_pair(Impairments(mtu=1500)) as (nic_a, nic_b):
        sides = []
        for seed, (nic, addr) in enumerate(((nic_a, A_ADDR), (nic_b, B_ADDR)), 1):
            stack = Stack(
                rng=random.Random(seed),
                policy=OffloadPolicy(policy),
                tcp=TcpConfig(send_buffer_bytes=4 << 20, recv_buffer_bytes=4 << 20),
            )
            stack.add_interface(nic, [f"{addr}/24"])
            sides.append(Side(nic, stack, StackLoop(stack)))
        yield Pair(sides[0], sides[1], control)


def _tcp_transfer(
    pair: Pair, stream: memoryview, sink: memoryview, report: Callable[[int], None]
) -> None:
    """A connects to B and sends ``stream``; B reads it into ``sink``; both close."""
    a, b = pair.a.stack, pair.b.stack
    listeners = b.tcp_listen(TCP_PORT, address=B_ADDR)
    client = a.tcp_connect(B_ADDR, TCP_PORT, time.monotonic_ns())
    server: TcpHandle | None = None
    sent = got = 0
    shut = peer_closed = False
    last = time.monotonic()
    while got < len(stream) or not peer_closed:
        moved = pair.step()
        conn = client.conn
        if server is None:
            server = b.tcp_accept(listeners)
        _check(client)
        if sent < len(stream) and conn.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            n = conn.send(stream[sent : sent + SEND_CHUNK])
            sent += n
            moved += n
            if sent == len(stream) and not shut:
                conn.shutdown_write()
                shut = True
        if server is not None:
            _check(server)
            while server.conn.readable() and got < len(sink):
                n = server.conn.recv_into(sink[got:])
                got += n
                moved += n
            event = server.next_event()
            while event is not None:
                peer_closed |= isinstance(event, PeerClosed)
                event = server.next_event()
            report(got)
        now = time.monotonic()
        if moved:
            last = now
        elif now - last > STALL_S:
            raise DeviceError(f"TCP transfer stalled: {got:,} of {len(stream):,} bytes arrived")
        else:
            pair.wait(0.002)
    assert server is not None
    server.conn.close()
    # The closing handshake, bounded: both ends reach TIME_WAIT or CLOSED.
    end = time.monotonic() + 5.0
    finished = (TcpState.TIME_WAIT, TcpState.CLOSED)
    while time.monotonic() < end and not (
        client.conn.state in finished and server.conn.state in finished
    ):
        if not pair.step():
            pair.wait(0.002)


def _check(handle: TcpHandle) -> None:
    for event in list(handle.events):
        if isinstance(event, Reset | Refused):
            raise DeviceError(f"TCP connection failed: {type(event).__name__}")


def _udp_bursts(stream: memoryview) -> Iterator[tuple[int, list[memoryview]]]:
    """(stream bytes, datagrams) per burst: each datagram its 8-byte offset, then data."""
    per_burst = DATA_PER_DATAGRAM * DATAGRAMS_PER_BURST
    for start in range(0, len(stream), per_burst):
        size = min(per_burst, len(stream) - start)
        full, rest = divmod(size, DATA_PER_DATAGRAM)
        buf = bytearray(full * DATAGRAM + (TAG.size + rest if rest else 0))
        if full:
            rows = np.frombuffer(buf, dtype=np.uint8, count=full * DATAGRAM).reshape(full, DATAGRAM)
            tags = (start + DATA_PER_DATAGRAM * np.arange(full, dtype=np.uint64)).astype(">u8")
            rows[:, : TAG.size] = tags.view(np.uint8).reshape(full, TAG.size)
            data = np.frombuffer(
                stream, dtype=np.uint8, count=full * DATA_PER_DATAGRAM, offset=start
            )
            rows[:, TAG.size :] = data.reshape(full, DATA_PER_DATAGRAM)
        if rest:
            at = full * DATAGRAM
            TAG.pack_into(buf, at, start + full * DATA_PER_DATAGRAM)
            buf[at + TAG.size :] = stream[start + size - rest : start + size]
        view = memoryview(buf)
        datagrams = [view[at : at + DATAGRAM] for at in range(0, full * DATAGRAM, DATAGRAM)]
        if rest:
            datagrams.append(view[full * DATAGRAM :])
        yield size, datagrams


def _udp_transfer(
    pair: Pair, stream: memoryview, sink: memoryview, report: Callable[[int], None]
) -> int:
    """A sends ``stream`` as tagged datagrams in bursts; B puts each where its tag says.

    The sender keeps at most ``UDP_AHEAD_BYTES`` ahead of what B has read
    (an application's pacing: UDP itself has none). Returns the bursts sent.
    """
    a, b = pair.a.stack, pair.b.stack
    tx = a.udp_open(4)
    a.udp_bind(tx, A_ADDR, 0)
    rx = b.udp_open(4, rcvbuf_bytes=UDP_RCVBUF_BYTES)
    b.udp_bind(rx, B_ADDR, UDP_PORT)
    bursts = _udp_bursts(stream)
    pending = next(bursts, None)
    sent = got = count = 0
    last = time.monotonic()
    unpack = TAG.unpack_from
    while got < len(stream):
        moved = pair.step()
        while pending is not None and sent - got < UDP_AHEAD_BYTES:
            size, datagrams = pending
            a.udp_send(tx, datagrams, B_ADDR, UDP_PORT, time.monotonic_ns())
            sent += size
            count += 1
            moved += 1
            pending = next(bursts, None)
        datagram = b.udp_recv(rx)
        while datagram is not None:
            payload = datagram.payload
            (offset,) = unpack(payload)
            n = len(payload) - TAG.size
            if offset + n <= len(sink):
                sink[offset : offset + n] = payload[TAG.size :]
                got += n
                moved += 1
            datagram = b.udp_recv(rx)
        report(got)
        now = time.monotonic()
        if moved:
            last = now
        elif now - last > STALL_S:
            break  # datagrams lost; the verification says how much
        else:
            pair.wait(0.002)
    return count


def run_mode(
    offload: bool,
    tcp_stream: bytes,
    udp_stream: bytes,
    *,
    control: ControlServer | None = None,
    on_pair: Callable[[Pair], None] | None = None,
    progress: Progress = NO_PROGRESS,
) -> ModeResult:
    """One mode on a fresh pair; the application's buffers are made before the clock starts."""
    result = ModeResult(offload)
    tcp_sink = bytearray(len(tcp_stream))
    udp_sink = bytearray(len(udp_stream))
    for buf in (tcp_sink, udp_sink):  # fault the pages in now, not while measuring
        np.frombuffer(buf, dtype=np.uint8)[::4096] = 0
    with _pair(offload, control) as pair:
        if on_pair is not None:
            on_pair(pair)
        result.enabled = [t.label for t in pair.a.nic.enabled()]
        total = len(tcp_stream) + len(udp_stream)
        progress.stage(f"offload {'on' if offload else 'off'}", total)
        cpu0, t0 = time.process_time(), time.perf_counter()
        _tcp_transfer(pair, memoryview(tcp_stream), memoryview(tcp_sink), progress.update)
        done = len(tcp_stream)
        bursts = _udp_transfer(
            pair,
            memoryview(udp_stream),
            memoryview(udp_sink),
            lambda n: progress.update(done + n),
        )
        result.seconds = time.perf_counter() - t0
        result.host_cpu_s = time.process_time() - cpu0
        result.bytes_sent = total
        result.bytes_verified = (len(tcp_stream) if tcp_sink == tcp_stream else 0) + (
            len(udp_stream) if udp_sink == udp_stream else 0
        )
        _collect(pair, result, bursts)
    return result


def _collect(pair: Pair, result: ModeResult, udp_bursts: int) -> None:
    a, b = pair.a, pair.b
    a.nic.flush()
    result.sender = a.nic.stats().as_dict()
    result.receiver = b.nic.stats().as_dict()
    result.wire = a.nic.cable_counters()
    host = DeviceStats()
    for side in (a, b):
        for iface in side.stack.interfaces:
            host.merge(iface.host.stats)
    result.host = host.as_dict()
    result.packets_posted = host.tx_frames
    result.packets_received = host.rx_packets
    tcp_a = a.stack.tcp.as_dict()
    result.super_packets = int(tcp_a["super_packets_out"]) + udp_bursts  # type: ignore[call-overload]
    result.extra = {
        "offload_decisions": {
            "a": dict(a.stack.policy.decisions),
            "b": dict(b.stack.policy.decisions),
        },
        "tcp": {"a": tcp_a, "b": b.stack.tcp.as_dict()},
        "udp": {"a": a.stack.udp.stats.as_dict(), "b": b.stack.udp.stats.as_dict()},
    }


def run_demo(
    total_bytes: int = DEFAULT_BYTES,
    seed: int = 1,
    progress: Progress = NO_PROGRESS,
    control: ControlServer | None = None,
) -> dict[str, Any]:
    """Both modes over the same streams; the JSON-ready result."""
    rng = np.random.default_rng(seed)  # random.randbytes stops at 256 MiB
    udp_bytes = int(total_bytes * UDP_SHARE)
    tcp_stream = rng.bytes(total_bytes - udp_bytes)
    udp_stream = rng.bytes(udp_bytes)
    caps: dict[str, Any] = {}
    current: dict[str, Any] = {"mode": "starting", "pair": None}
    if control is not None:
        control.register("stats", lambda args: _live_stats(current))

    def record_caps(pair: Pair) -> None:
        current["pair"] = pair
        for side in (pair.a, pair.b):
            chain = side.nic.capability_chain()
            caps[side.nic.name] = {
                "chain_hex": chain.hex(),
                "records": _records(side.nic.capabilities()),
            }

    def watch(pair: Pair) -> None:
        current["pair"] = pair

    current["mode"] = "offload on"
    on = run_mode(
        True, tcp_stream, udp_stream, control=control, on_pair=record_caps, progress=progress
    )
    current["mode"] = "offload off"
    off = run_mode(False, tcp_stream, udp_stream, control=control, on_pair=watch, progress=progress)
    current.update(mode="done", pair=None)
    on_j, off_j = on.as_json(), off.as_json()
    return {
        "bytes_sent": on.bytes_sent + off.bytes_sent,
        "bytes_verified": on.bytes_verified + off.bytes_verified,
        "offload_on": on_j,
        "offload_off": off_j,
        "host_cpu_ratio_off_over_on": _ratio(off_j["host_cpu_s_per_gb"], on_j["host_cpu_s_per_gb"]),
        "throughput_ratio_on_over_off": _ratio(on_j["gbit_per_s"], off_j["gbit_per_s"]),
        "capabilities": caps,
        "enabled": {"offload_on": on.enabled, "offload_off": off.enabled},
        "flows": {
            "tcp": {"bytes": len(tcp_stream), "mss": MSS},
            "udp": {"bytes": len(udp_stream), "gso_size": DATAGRAM},
        },
    }


def _live_stats(current: dict[str, Any]) -> dict[str, Any]:
    pair = current["pair"]
    out: dict[str, Any] = {"mode": current["mode"], "pid": os.getpid()}
    if pair is not None:
        out["stacks"] = {"a": pair.a.stack.as_dict(), "b": pair.b.stack.as_dict()}
    return out


def _records(records: list[Any]) -> list[dict[str, Any]]:
    return [
        {"task": r.task.label, "params": r.params()}
        for r in records
        if isinstance(r, CapabilityRecord)
    ]


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0
