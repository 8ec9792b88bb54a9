"""Stacks driven by an asyncio event loop (``netoffload.loop.attach``), nothing else.

Readers on the devices' descriptors and ``call_later`` timers are the only
things that run a stack here: no ``StackLoop``, no thread. The application
side awaits an ``asyncio.Event`` the drivers set after every round
(``on_poll``), and kicks its stack after each call that has something to send.
Two stacks over a SoftNic cable need no privileges; one test has the kernel
as the peer over a TAP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Coroutine
from ipaddress import IPv4Address
from typing import Any, TypeVar

import pytest

from netoffload.device.cable import Impairments
from netoffload.device.softnic import SoftNic
from netoffload.loop import AsyncioDriver, attach
from netoffload.policy import LoadSampler
from netoffload.stack.stack import Stack
from netoffload.stack.tcp import PeerClosed, Refused, Reset, TcpConfig, TcpState
from netoffload.stack.tcp_layer import TcpHandle
from tests.stack.kernel_peer import OURS_B, KernelSide, kernel_server, payload, rig, stack_pair

T = TypeVar("T")
B = IPv4Address(OURS_B)
_DONE = (TcpState.TIME_WAIT, TcpState.CLOSED)


class Wake:
    """What the application awaits: set by the drivers after every round they run."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def set(self) -> None:
        self.event.set()

    async def until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Wait (woken by the drivers only) until ``done()``; fail after ``timeout_s``."""
        end = time.monotonic() + timeout_s
        while not done():
            left = end - time.monotonic()
            assert left > 0, f"timed out waiting for {what}"
            self.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), min(left, 1.0))


def _run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(asyncio.wait_for(main(), 120))


async def _exchange(
    handle: TcpHandle, data: bytes, driver: AsyncioDriver, wake: Wake, timeout_s: float = 60
) -> bytes:
    """Send ``data`` then FIN, read until the peer's FIN, wait for the close; what came."""
    conn = handle.conn
    got = bytearray()
    sent = 0
    shut = peer_closed = False

    def step() -> bool:
        nonlocal sent, shut, peer_closed
        while conn.readable():
            got.extend(conn.recv(1 << 20))
        for event in iter(handle.next_event, None):
            assert not isinstance(event, Reset | Refused), event
            peer_closed |= isinstance(event, PeerClosed)
        if sent < len(data) and conn.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            sent += conn.send(memoryview(data)[sent : sent + (1 << 20)])
        if sent == len(data) and not shut and conn.state is not TcpState.SYN_SENT:
            conn.shutdown_write()
            shut = True
        driver.kick()  # what the calls above queued goes out now
        return shut and peer_closed and conn.state in _DONE and not conn.readable()

    await wake.until(step, timeout_s, f"the exchange ({conn.state}, sent {sent}, got {len(got)})")
    return bytes(got)


async def _connected(
    sa: Stack, sb: Stack, port: int, drivers: tuple[AsyncioDriver, AsyncioDriver], wake: Wake
) -> tuple[TcpHandle, TcpHandle]:
    listeners = sb.tcp_listen(port)
    client = sa.tcp_connect(B, port, time.monotonic_ns())
    drivers[0].kick()
    accepted: list[TcpHandle] = []

    def accept() -> bool:
        handle = sb.tcp_accept(listeners)
        if handle is not None:
            accepted.append(handle)
        return bool(accepted)

    await wake.until(accept, 20, "the connection")
    for listener in listeners:
        listener.close()
    return client, accepted[0]


def test_5_mb_each_way_over_softnics_and_a_clean_close() -> None:
    up, down = os.urandom(5_000_000), os.urandom(5_000_000)
    with stack_pair(31) as (sa, sb):

        async def main() -> tuple[bytes, bytes, TcpHandle, TcpHandle, list[int]]:
            wake = Wake()
            da, db = attach(sa, on_poll=wake.set), attach(sb, on_poll=wake.set)
            try:
                client, server = await _connected(sa, sb, 5300, (da, db), wake)
                got_a, got_b = await asyncio.gather(
                    _exchange(client, up, da, wake), _exchange(server, down, db, wake)
                )
                return got_a, got_b, client, server, [da.stats.steps, db.stats.steps]
            finally:
                da.close()
                db.close()

        got_a, got_b, client, server, steps = _run(main)
    assert len(got_b) == len(up) and got_b == up
    assert len(got_a) == len(down) and got_a == down
    # Closed both ways: one end in TIME_WAIT (it closed last), both past the handshake.
    assert {client.state, server.state} <= set(_DONE)
    assert TcpState.TIME_WAIT in (client.state, server.state)
    assert client.conn.info().bytes_acked >= len(up)
    assert all(n > 0 for n in steps)


def test_udp_datagrams_both_ways() -> None:
    asks = [f"question {i}".encode() * (i + 1) for i in range(5)]
    # A samples the load for its adaptive policy as it goes, as StackLoop would.
    with stack_pair(32, policies=("adaptive", "always")) as (sa, sb):

        async def main() -> tuple[list[tuple[bytes, str, int]], list[bytes], int, int]:
            wake = Wake()
            sampler = LoadSampler(interval_ns=1)
            da = attach(sa, sampler=sampler, on_poll=wake.set)
            db = attach(sb, on_poll=wake.set)
            try:
                ea, eb = sa.udp_open(4), sb.udp_open(4)
                port_a = sa.udp_bind(ea, None, 0)
                sb.udp_bind(eb, None, 5310)
                sa.udp_send(ea, asks, B, 5310, time.monotonic_ns())
                da.kick()
                heard: list[tuple[bytes, str, int]] = []
                answers: list[bytes] = []

                def serve() -> bool:
                    for d in iter(lambda: sb.udp_recv(eb), None):
                        heard.append((bytes(d.payload), str(d.src), d.src_port))
                        sb.udp_send(
                            eb, [b"answer:" + d.payload], d.src, d.src_port, time.monotonic_ns()
                        )
                        db.kick()
                    answers.extend(bytes(d.payload) for d in iter(lambda: sa.udp_recv(ea), None))
                    return len(answers) == len(asks)

                await wake.until(serve, 20, "the answers")
                return heard, answers, port_a, da.stats.samples
            finally:
                da.close()
                db.close()

        heard, answers, port_a, samples = _run(main)
    assert [h[0] for h in heard] == asks
    assert {(h[1], h[2]) for h in heard} == {("198.18.0.1", port_a)}
    assert answers == [b"answer:" + a for a in asks]
    assert samples > 0 and sa.policy.last_sample is not None
    assert sb.policy.last_sample is None  # no sampler there


def test_a_timer_alone_retransmits_the_syn() -> None:
    # B is not driven while A connects: nothing arrives at A, so only A's timer
    # (call_later) can send the SYN again. Then B is driven and answers.
    config = TcpConfig(rto_initial_ns=100_000_000, rto_min_ns=100_000_000)
    with stack_pair(33, tcp=config) as (sa, sb):

        async def main() -> tuple[int, int, TcpState]:
            wake = Wake()
            da, db = attach(sa, on_poll=wake.set), attach(sb, on_poll=wake.set)
            try:
                # Resolve the neighbours both ways first (ARP is not what is tested).
                ea, eb = sa.udp_open(4), sb.udp_open(4)
                sb.udp_bind(eb, None, 5320)
                sa.udp_send(ea, [b"hello"], B, 5320, time.monotonic_ns())
                da.kick()
                await wake.until(lambda: sb.udp_recv(eb) is not None, 20, "the datagram")
                db.close()
                listeners = sb.tcp_listen(5321)
                client = sa.tcp_connect(B, 5321, time.monotonic_ns())
                da.kick()
                timers_before = da.stats.timers
                await wake.until(
                    lambda: client.conn.info().syn_retransmits >= 2, 20, "two SYN retransmissions"
                )
                timers = da.stats.timers - timers_before
                db = attach(sb, on_poll=wake.set)
                accepted: list[TcpHandle] = []

                def handshake() -> bool:
                    handle = sb.tcp_accept(listeners)
                    if handle is not None:
                        accepted.append(handle)
                    return bool(accepted) and client.state is TcpState.ESTABLISHED

                await wake.until(handshake, 20, "the handshake")
                return client.conn.info().syn_retransmits, timers, client.state
            finally:
                da.close()
                db.close()

        retransmits, timers, state = _run(main)
    assert retransmits >= 2 and timers >= 2
    assert state is TcpState.ESTABLISHED


def test_a_lossy_cable_recovers_by_retransmission() -> None:
    up, down = payload(1_500_000, 34), payload(500_000, 35)
    with stack_pair(34, Impairments(loss=0.03)) as (sa, sb):

        async def main() -> tuple[bytes, bytes, int, int, int]:
            wake = Wake()
            da, db = attach(sa, on_poll=wake.set), attach(sb, on_poll=wake.set)
            try:
                client, server = await _connected(sa, sb, 5330, (da, db), wake)
                got_a, got_b = await asyncio.gather(
                    _exchange(client, up, da, wake), _exchange(server, down, db, wake)
                )
                again = (
                    client.conn.info().retransmitted_segs + server.conn.info().retransmitted_segs
                )
                return got_a, got_b, again, da.stats.timers, db.stats.timers
            finally:
                da.close()
                db.close()

        got_a, got_b, retransmitted, timers_a, timers_b = _run(main)
        lost = 0
        for stack in (sa, sb):
            device = stack.interfaces[0].device
            assert isinstance(device, SoftNic)
            device.stats()  # brings the cable's counters up to date
            lost += device.cable_counters()["lost"]
    assert got_b == up and got_a == down
    assert lost > 0 and retransmitted > 0
    assert timers_a + timers_b > 0


@pytest.mark.privileged
def test_the_kernel_as_the_peer_over_a_tap() -> None:
    up, down = payload(2_000_000, 36), payload(1_000_000, 37)
    with rig("tap", 4) as r:
        side: KernelSide = kernel_server(r, 5340, send=down)

        async def main() -> bytes:
            wake = Wake()
            driver = attach(r.stack, on_poll=wake.set)
            try:
                handle = r.stack.tcp_connect(r.kernel, 5340, time.monotonic_ns())
                driver.kick()
                return await _exchange(handle, up, driver, wake)
            finally:
                driver.close()

        got = _run(main)
        assert side.done.wait(30), "the kernel's side did not finish"
        if side.error is not None:
            raise side.error
    assert got == down
    assert bytes(side.received) == up
