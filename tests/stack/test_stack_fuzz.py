"""Bad input never breaks the stack: mangled frames are counted and dropped, never raised.

Frames start as valid traffic for a stack on a SoftNic — ARP, ICMP echo,
UDP to a bound port, TCP to a listener and to an established connection,
IPv4 fragments, IPv6 neighbour discovery and echo — then hypothesis flips,
truncates and extends them. Each goes straight into the stack's input (so
an exception would surface here instead of being counted as
``internal_error`` by ``Stack.poll``), and the stack then runs its output
and timers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from netoffload.device.cable import Cable, Impairments
from netoffload.device.softnic import SoftNic
from netoffload.offload import Packet
from netoffload.stack.interface import Interface
from netoffload.stack.stack import Stack
from netoffload.stack.tcp_layer import TcpHandle

PEER_MAC = "02:00:00:00:99:01"
PEER4, OURS4 = "198.18.0.1", "198.18.0.2"
PEER6, OURS6 = "fd00::1", "fd00::2"


class Rig:
    def __init__(self, stack: Stack, iface: Interface, conn: TcpHandle) -> None:
        self.stack, self.iface, self.conn = stack, iface, conn
        self.mac = str(iface.mac)

    def frames(self) -> list[bytes]:
        eth = Ether(src=PEER_MAC, dst=self.mac)
        local = self.conn.conn.local
        remote = self.conn.conn.remote
        big = IP(src=PEER4, dst=OURS4) / UDP(sport=40000, dport=9000) / (b"f" * 3000)
        base = [
            Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=PEER_MAC, psrc=PEER4, pdst=OURS4),
            eth / IP(src=PEER4, dst=OURS4) / ICMP(type=8, id=1, seq=1) / b"ping",
            eth / IP(src=PEER4, dst=OURS4) / UDP(sport=40000, dport=9000) / b"datagram",
            eth / IP(src=PEER4, dst=OURS4) / TCP(sport=40001, dport=80, flags="S", seq=1000),
            eth
            / IP(src=str(remote[0]), dst=str(local[0]))
            / TCP(sport=remote[1], dport=local[1], flags="PA", seq=1, ack=1)
            / (b"d" * 100),
            *[eth / f for f in fragment(big, fragsize=1000)],
            Ether(src=PEER_MAC, dst="33:33:ff:00:00:02")
            / IPv6(src=PEER6, dst="ff02::1:ff00:2", hlim=255)
            / ICMPv6ND_NS(tgt=OURS6)
            / ICMPv6NDOptSrcLLAddr(lladdr=PEER_MAC),
            eth / IPv6(src=PEER6, dst=OURS6) / ICMPv6EchoRequest(id=1, seq=1, data=b"x"),
            eth / IPv6(src=PEER6, dst=OURS6) / UDP(sport=40000, dport=9000) / b"six",
        ]
        return [bytes(f) for f in base]


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with Cable(Impairments(mtu=1500)) as cable, SoftNic(cable=cable.a, name="fuzz") as nic:
        stack = Stack(rng=random.Random(5))
        iface = stack.add_interface(nic, [f"{OURS4}/24", f"{OURS6}/64"])
        stack.tcp_listen(80)
        port = stack.udp_open(4)
        stack.udp_bind(port, None, 9000)
        conn = stack.tcp_connect(IPv4Address(PEER4), 443, time.monotonic_ns())
        yield Rig(stack, iface, conn)


@st.composite
def mangled(draw: st.DrawFn, frames: list[bytes]) -> bytes:
    frame = bytearray(draw(st.sampled_from(frames)))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(frame) - 1))
        frame[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(frame)))
    frame = frame[:cut] if draw(st.booleans()) else frame
    return bytes(frame + draw(st.binary(max_size=40)))


def test_valid_frames_are_taken(rig: Rig) -> None:
    now = time.monotonic_ns()
    before = rig.stack.stats.delivered
    for frame in rig.frames():
        rig.stack._input(rig.iface, Packet(frame), now)
    assert rig.stack.stats.delivered > before
    assert "internal_error" not in rig.stack.stats.drops


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mangled_frames_are_dropped_never_raised(rig: Rig, data: st.DataObject) -> None:
    frame = data.draw(mangled(rig.frames()))
    now = time.monotonic_ns()
    rig.stack._input(rig.iface, Packet(frame), now)  # raises here if anything is unhandled
    rig.stack.on_timer(now)
    assert "internal_error" not in rig.stack.stats.drops


def test_a_bug_costs_the_packet_not_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Stack.poll`` counts an unexpected exception as ``internal_error`` and goes on."""
    with Cable(Impairments(mtu=1500)) as cable, SoftNic(cable=cable.a, name="bug") as nic:
        assert cable.b is not None
        stack = Stack(rng=random.Random(6))
        iface = stack.add_interface(nic, [f"{OURS4}/24"])
        rig = Rig(stack, iface, stack.tcp_connect(IPv4Address(PEER4), 443, time.monotonic_ns()))
        echo = rig.frames()[1]
        real = stack._ipv4
        calls = []

        def broken(*args: object, **kwargs: object) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug")
            real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(stack, "_ipv4", broken)
        cable.b.send_batch([echo, echo])
        deadline = time.monotonic() + 10
        while len(calls) < 2 and time.monotonic() < deadline:
            stack.poll(time.monotonic_ns())
            nic.wait(0.01)
        assert stack.stats.drops["internal_error"] == 1
        assert len(calls) == 2  # the second frame was still taken
