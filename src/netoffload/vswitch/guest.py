"""A guest process: ``python -m netoffload.vswitch.guest [--mode sink|stack] ...``.

The switch starts it with its end of a socket pair in ``$NETOFFLOAD_VSWITCH_FD``.
It makes its own window and rings (``GuestPort``), attaches, and then:

* ``sink``: announces itself (one frame per VLAN, so the switch can learn
  its MAC, as a virtual machine monitor announces a guest; not with
  ``--quiet``), receives everything, checks every load frame
  (``load.check_frame``) and releases it at once; with ``--check-residue``
  it also checks that nothing but the frame is in the buffer (zeroed after
  it); with ``--bare`` it checks nothing and only releases;
* ``stack``: runs a netoffload ``Stack`` on the port with ``--address``;
  ``--echo PORT`` echoes one TCP connection back, ``--connect HOST PORT
  --bytes N`` sends N bytes to such an echo and checks what comes back.
  Without either it only answers (ARP, ping) until stopped.

It reports its counters to the switch (shown by ``vswitch stats``) a few
times a second and once more when it stops (SIGTERM, or the switch going
away), then leaves.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from ipaddress import ip_address
from typing import Any

from netoffload.device.base import DeviceError
from netoffload.device.vmdq.queue import RX_COPIED, RX_GROUP, RX_LOOPBACK
from netoffload.device.vmdq.window import WindowGeometry
from netoffload.offload import Packet
from netoffload.vswitch.load import ETHERTYPE_LOAD, check_frame
from netoffload.vswitch.port import GuestPort
from netoffload.vswitch.protocol import ENV_FD
from netoffload.wire.ethernet import BROADCAST, EthernetRepr, VlanTag

REPORT_EVERY_S = 0.2


class _Stop:
    """Set by SIGTERM/SIGINT: the loop finishes its turn, reports and leaves."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, signum: int, frame: object) -> None:
        self.requested = True


def announce(port: GuestPort) -> int:
    """One broadcast frame per VLAN of the port, from its MAC; how many were sent."""
    vlans = port.attachment.vlans
    frames = []
    for vlan in sorted(vlans.members):
        tagged = vlans.egress_tagged(vlan)
        tags = (VlanTag(0, False, vlan),) if tagged else ()
        repr_ = EthernetRepr(BROADCAST, port.mac, ETHERTYPE_LOAD, tags)
        frames.append(Packet(repr_.to_bytes(b"announce".ljust(46, b"\x00"))))
    return port.send(frames)


def bare_sink(port: GuestPort, stop: _Stop) -> dict[str, Any]:
    """Receive and release at once, looking at nothing: the least a guest can cost."""
    frames = 0
    last = time.monotonic()
    while not stop.requested:
        try:
            if port.wait(0.05):
                frames += port.bounce(512)
        except DeviceError:
            break
        now = time.monotonic()
        if now - last >= REPORT_EVERY_S:
            port.report({"frames": frames})
            last = now
    return {"frames": frames}


def sink(port: GuestPort, stop: _Stop, args: argparse.Namespace) -> dict[str, Any]:
    if args.bare:
        return bare_sink(port, stop)
    counters: Counter[str] = Counter(frames=0)
    if not args.quiet:
        counters["announced"] = announce(port)
    port.report(dict(counters))
    mac, vlans = port.attachment.mac, port.attachment.vlans
    last = time.monotonic()
    residue = args.check_residue
    while not stop.requested:
        try:
            if port.wait(0.05):
                packets = port.recv(256)
                for packet in packets:
                    status, marker = check_frame(packet.data, mac, vlans)
                    counters[status] += 1
                    counters["frames"] += 1
                    counters["bytes"] += len(packet.data)
                    if marker is not None:
                        counters[marker.kind.name.lower()] += 1
                    flags = port.flags(packet)
                    counters["copied"] += bool(flags & RX_COPIED)
                    counters["group"] += bool(flags & RX_GROUP)
                    counters["loopback"] += bool(flags & RX_LOOPBACK)
                    if residue and port.residue(packet):
                        counters["residue"] += 1
                port.release(packets)
        except DeviceError:
            break  # the switch is gone
        now = time.monotonic()
        if now - last >= REPORT_EVERY_S:
            port.report(dict(counters))
            last = now
    return dict(counters)


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def stack_guest(port: GuestPort, stop: _Stop, args: argparse.Namespace) -> dict[str, Any]:
    from netoffload.loop import StackLoop
    from netoffload.policy import OffloadPolicy
    from netoffload.stack.stack import Stack

    stack = Stack(rng=random.Random(args.seed), policy=OffloadPolicy(args.policy))
    stack.add_interface(port, args.address)
    loop = StackLoop(stack)
    result: dict[str, Any] = {"address": args.address}
    reporter = _Reporter(port, lambda: {**result, "stack": _stack_counters(stack)})
    try:
        if args.echo is not None:
            result.update(_echo(stack, loop, args.echo, stop, reporter))
        elif args.connect is not None:
            result.update(_client(stack, loop, args, stop, reporter))
        else:
            while not stop.requested:
                loop.step(0.1)
                reporter.maybe()
    except DeviceError as exc:
        result["error"] = str(exc)
    except (OSError, ValueError, AssertionError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["stack"] = _stack_counters(stack)
    return result


class _Reporter:
    def __init__(self, port: GuestPort, make: Callable[[], dict[str, Any]]) -> None:
        self.port = port
        self.make = make
        self.last = time.monotonic()

    def maybe(self) -> None:
        now = time.monotonic()
        if now - self.last >= REPORT_EVERY_S:
            self.last = now
            if not self.port.switch_alive():
                raise DeviceError("the switch is gone")
            self.port.report(self.make())


def _stack_counters(stack: Any) -> dict[str, Any]:
    tcp = stack.as_dict().get("tcp", {})
    keys = ("super_packets_out", "segments_out", "segments_in", "retransmits")
    return {k: tcp[k] for k in keys if k in tcp}


def _echo(stack: Any, loop: Any, port: int, stop: _Stop, reporter: _Reporter) -> dict[str, Any]:
    """Accept one connection and send everything back until the peer closes."""
    from netoffload.stack.tcp import PeerClosed

    listeners = stack.tcp_listen(port)
    handle = None
    while handle is None and not stop.requested:
        loop.step(0.05)
        handle = stack.tcp_accept(listeners)
        reporter.maybe()
    if handle is None:
        return {"echoed": 0}
    conn = handle.conn
    pending = bytearray()
    echoed = 0
    closed = shut = False
    while not stop.requested:
        loop.step(0.05)
        while conn.readable():
            pending += conn.recv(1 << 20)
        event = handle.next_event()
        while event is not None:
            closed |= isinstance(event, PeerClosed)
            event = handle.next_event()
        if pending:
            n = conn.send(memoryview(pending))
            del pending[:n]
            echoed += n
        if closed and not pending and not shut:
            conn.shutdown_write()
            shut = True
        if shut and conn.state.name in ("CLOSED", "TIME_WAIT"):
            break
        reporter.maybe()
    return {"echoed": echoed}


def _client(
    stack: Any, loop: Any, args: argparse.Namespace, stop: _Stop, reporter: _Reporter
) -> dict[str, Any]:
    """Send ``--bytes`` bytes to the echo at ``--connect``, read them back, compare."""
    host, port = args.connect[0], int(args.connect[1])
    size = args.bytes
    data = _payload(size, args.seed)
    start = time.monotonic()
    handle = stack.tcp_connect(ip_address(host), port, time.monotonic_ns())
    conn = handle.conn
    sent = 0
    got = hashlib.sha256()
    received = 0
    shut = False
    deadline = start + args.timeout
    while not stop.requested and time.monotonic() < deadline:
        loop.step(0.05)
        if sent < size and conn.state.name in ("ESTABLISHED", "CLOSE_WAIT"):
            sent += conn.send(memoryview(data)[sent : sent + (1 << 20)])
        if sent == size and not shut and conn.state.name == "ESTABLISHED":
            conn.shutdown_write()
            shut = True
        while conn.readable():
            chunk = conn.recv(1 << 20)
            got.update(chunk)
            received += len(chunk)
        handle.next_event()
        if received >= size and shut:
            break
        reporter.maybe()
    elapsed = time.monotonic() - start
    return {
        "sent": sent,
        "received": received,
        "match": received == size and got.digest() == hashlib.sha256(data).digest(),
        "elapsed_s": round(elapsed, 3),
        "state": conn.state.name,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netoffload.vswitch.guest")
    parser.add_argument("--mode", choices=("sink", "stack"), default="sink")
    parser.add_argument("--name", default=None)
    parser.add_argument("--rx-buffers", type=int, default=64)
    parser.add_argument("--tx-buffers", type=int, default=64)
    parser.add_argument("--buffer-bytes", type=int, default=69632)
    parser.add_argument("--ring-entries", type=int, default=256)
    parser.add_argument("--post", type=int, default=None, help="receive buffers to post")
    parser.add_argument("--check-residue", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="sink: send no announcement")
    parser.add_argument("--bare", action="store_true", help="sink: check nothing, only release")
    parser.add_argument("--address", action="append", default=[])
    parser.add_argument("--policy", default="always")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--echo", type=int, default=None)
    parser.add_argument("--connect", nargs=2, metavar=("HOST", "PORT"), default=None)
    parser.add_argument("--bytes", type=int, default=1 << 20)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    fd = os.environ.get(ENV_FD)
    if fd is None:
        print(f"netoffload.vswitch.guest: ${ENV_FD} is not set", file=sys.stderr)
        return 2
    stop = _Stop()
    geometry = WindowGeometry(args.rx_buffers, args.tx_buffers, args.buffer_bytes)
    name = args.name or f"guest{os.getpid()}"
    try:
        port = GuestPort(
            int(fd), name=name, geometry=geometry, ring_entries=args.ring_entries, post=args.post
        )
    except DeviceError as exc:
        print(f"netoffload.vswitch.guest: {exc}", file=sys.stderr)
        return 1
    with port:
        run = sink if args.mode == "sink" else stack_guest
        result = run(port, stop, args)
        port.report({**result, "final": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
