"""Per-call cost of the three hot paths (run: ``python -m tests.stack.tcp.perf``).

Not a test: it prints the best and median cost of one call, timed around that call
only. Everything else a step needs (the application writing and reading, the peer
answering) runs outside the timed region. Two connected cores, 64 KiB super-packets
(45 segments of MSS 1448 with timestamps), as a TSO/GRO interface would hand them over.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from netoffload.stack.tcp import TcpConfig, TcpConnection, TcpSegmentIn, TcpSegmentOut

from .harness import established_pair

BURST = 45 * 1448
_EMPTY = memoryview(b"")


def _to_in(seg: TcpSegmentOut) -> TcpSegmentIn:
    """What GRO hands up for a super-packet the peer's TSO sent."""
    payload = memoryview(bytes(seg.payload)) if seg.payload else _EMPTY
    return TcpSegmentIn(
        seg.seq, seg.ack, seg.flags, seg.window, seg.options, payload, seg.segments, False
    )


def _measure(step: Callable[[], Callable[[], object]], n: int) -> tuple[float, float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        call = step()
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return min(samples) / 1000, statistics.median(samples) / 1000


def _pair() -> tuple[TcpConnection, TcpConnection, list[int]]:
    config = TcpConfig(
        send_buffer_bytes=8 << 20, recv_buffer_bytes=8 << 20, initial_window_segments=4000
    )
    net, client, server = established_pair(config, delay_ns=50_000)
    return client, server, [net.now]


def bench_receive(n: int = 3000) -> tuple[float, float]:
    """on_segment of the next in-order 64 KiB super-packet, payload copy included."""
    client, server, now = _pair()
    data = random.Random(1).randbytes(BURST)
    sink = bytearray(1 << 20)

    def step() -> Callable[[], object]:
        now[0] += 20_000
        client.send(data)
        # Twice in a while the send ring wraps inside the burst: two segments then.
        incoming = [_to_in(s) for s in client.poll_transmit(now[0], max_payload_bytes=BURST)]
        t = now[0]

        def call() -> None:
            for seg in incoming:
                server.on_segment(seg, t)

        def after() -> None:
            while server.readable():
                server.recv_into(sink)
            for ack in server.poll_transmit(t, max_payload_bytes=BURST):
                client.on_segment(_to_in(ack), t)

        pending.append(after)
        return call

    pending: list[Callable[[], None]] = []

    def step_with_cleanup() -> Callable[[], object]:
        while pending:
            pending.pop()()
        return step()

    return _measure(step_with_cleanup, n)


def bench_ack(n: int = 3000) -> tuple[float, float]:
    """on_segment of a pure ACK acknowledging one 64 KiB burst (16 bursts in flight)."""
    client, server, now = _pair()
    data = random.Random(2).randbytes(BURST)
    acks: list[TcpSegmentIn] = []

    def send_burst() -> None:
        client.send(data)
        for seg in client.poll_transmit(now[0], max_payload_bytes=BURST):
            server.on_segment(_to_in(seg), now[0])
            server.recv_into(bytearray(2 * BURST))
            acks.extend(_to_in(a) for a in server.poll_transmit(now[0], max_payload_bytes=BURST))

    send_burst()
    client.on_segment(acks.pop(), now[0])  # the first scaled window
    for _ in range(16):
        now[0] += 1_000
        send_burst()
    assert len(acks) == 16, len(acks)

    def step() -> Callable[[], object]:
        now[0] += 20_000
        send_burst()
        ack = acks.pop(0)
        t = now[0]
        return lambda: client.on_segment(ack, t)

    return _measure(step, n)


def bench_transmit(n: int = 3000) -> tuple[float, float]:
    """poll_transmit producing one 64 KiB super-packet."""
    client, server, now = _pair()
    data = random.Random(3).randbytes(BURST)
    sent: list[TcpSegmentOut] = []
    sink = bytearray(BURST)

    def step() -> Callable[[], object]:
        now[0] += 20_000
        if len(sent) >= 16:
            seg = sent.pop(0)
            server.on_segment(_to_in(seg), now[0])
            server.recv_into(sink)
            for ack in server.poll_transmit(now[0], max_payload_bytes=BURST):
                client.on_segment(_to_in(ack), now[0])
        client.send(data)
        t = now[0]
        return lambda: sent.extend(client.poll_transmit(t, max_payload_bytes=BURST))

    return _measure(step, n)


def main() -> None:
    for name, bench in (
        ("on_segment, in-order 64 KiB data (45 segments)", bench_receive),
        ("on_segment, pure ACK of one 64 KiB burst", bench_ack),
        ("poll_transmit, one 64 KiB super-packet", bench_transmit),
    ):
        best, median = bench()
        print(f"{name:50s} best {best:6.2f} us   median {median:6.2f} us")


if __name__ == "__main__":
    main()
