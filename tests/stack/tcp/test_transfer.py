"""Bulk transfers through a faulty path: every byte arrives, in order, with bounded memory."""

from __future__ import annotations

import random

import pytest

from netoffload.stack.tcp import TcpConfig, TcpConnection, TcpSegmentOut, TcpState

from .harness import ACK, MS, SYN, Host, Impairment, Net, S, established_pair, transfer

SIZE = 20_000_000


class Bounds:
    """Checks, after every step, that nothing outgrows its configuration."""

    def __init__(self, net: Net, conns: list[TcpConnection]) -> None:
        self.conns = conns
        self.max_entries = 0
        self.edges: dict[int, int] = {}
        net.on_poll.append(self.check)
        net.on_transmit.append(self.window_edge)

    def check(self) -> None:
        for conn in self.conns:
            info = conn.info()
            config = conn.config
            assert info.send_buffer_used_bytes <= config.send_buffer_bytes
            slack = 2 << info.rcv_wscale  # the ring's rounding allowance
            assert info.readable_bytes + info.ooo_bytes <= config.recv_buffer_bytes + slack
            assert info.ooo_ranges <= config.max_ooo_ranges
            flight = info.send_buffer_used_bytes + 2
            assert info.scoreboard_entries <= flight // info.mss_bytes + 2
            self.max_entries = max(self.max_entries, info.scoreboard_entries)

    def window_edge(self, host: Host, seg: TcpSegmentOut) -> None:
        """The right edge a segment announces never moves left (RFC 9293 §3.8.6.2.2)."""
        if seg.flags & SYN or not seg.flags & ACK:
            return
        conn = next(iter(host.conns.values()), None)
        if conn is None:
            return
        shift = conn.info().rcv_wscale
        key = id(conn)
        edge = seg.ack + (seg.window << shift)
        last = self.edges.get(key)
        if last is not None:
            delta = (edge - last) & 0xFFFFFFFF
            assert delta < 0x80000000, f"window edge moved left by {(-delta) & 0xFFFFFFFF}"
            edge = last + delta
        self.edges[key] = edge


def bulk(
    seed: int,
    *,
    size: int = SIZE,
    loss: float = 0.0,
    dup: float = 0.0,
    reorder: float = 0.0,
    gro: bool = False,
    config: TcpConfig | None = None,
    delay_ns: int = 2 * MS,
) -> tuple[Net, TcpConnection, TcpConnection, Bounds]:
    config = config or TcpConfig(send_buffer_bytes=1 << 20, recv_buffer_bytes=1 << 20)
    faults = {"loss": loss, "dup": dup, "reorder": reorder}
    net, client, server = established_pair(
        config,
        seed=seed,
        forward=Impairment(**faults),  # type: ignore[arg-type]
        backward=Impairment(**faults),  # type: ignore[arg-type]
        gro=gro,
        delay_ns=delay_ns,
    )
    bounds = Bounds(net, [client, server])
    payload = random.Random(seed).randbytes(size)
    transfer(net, client, server, payload)
    assert net.run(lambda: server.state is TcpState.CLOSE_WAIT)
    return net, client, server, bounds


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_20_mb_byte_exact_under_loss_reordering_duplication(seed: int) -> None:
    _, client, server, bounds = bulk(seed, loss=0.05, dup=0.02, reorder=0.05)
    info = client.info()
    assert info.retransmitted_segs > 0 and info.fast_recoveries > 0
    assert info.sack and info.timestamps
    assert server.info().ooo_segs_in > 0
    assert bounds.max_entries > 1


@pytest.mark.parametrize("seed", [4, 5])
def test_20_mb_with_gro_super_packets_and_loss(seed: int) -> None:
    net, _, server, _ = bulk(seed, loss=0.05, reorder=0.03, gro=True)
    # GRO handed up super-packets: the receiver counted more wire segments than calls.
    calls = sum(1 for name, _ in net.delivered if name == "server")
    assert server.info().segs_in > 2 * calls


@pytest.mark.parametrize(
    ("seed", "config"),
    [
        (6, TcpConfig(sack=False, congestion_control="newreno", recv_buffer_bytes=1 << 20)),
        (7, TcpConfig(timestamps=False, recv_buffer_bytes=1 << 20)),
        (8, TcpConfig(window_scaling=False)),
        (9, TcpConfig(congestion_control="newreno", recv_buffer_bytes=300_000)),
    ],
)
def test_transfers_without_some_options(seed: int, config: TcpConfig) -> None:
    _, client, _, _ = bulk(seed, size=4_000_000, loss=0.03, reorder=0.03, dup=0.01, config=config)
    info = client.info()
    assert info.sack == config.sack and info.timestamps == config.timestamps
    assert info.window_scaling == config.window_scaling
    if not config.window_scaling:
        assert info.snd_wnd_bytes <= 0xFFFF


def test_clean_path_never_retransmits() -> None:
    _, client, _, _ = bulk(10, size=8_000_000)
    info = client.info()
    assert info.retransmitted_segs == 0 and info.rtos == 0 and info.tlp_probes == 0


def test_transfer_in_both_directions_at_once() -> None:
    config = TcpConfig(send_buffer_bytes=512 << 10, recv_buffer_bytes=512 << 10)
    faults = Impairment(loss=0.03, reorder=0.03)
    net, client, server = established_pair(
        config, seed=11, forward=faults, backward=Impairment(loss=0.03, reorder=0.03)
    )
    Bounds(net, [client, server])
    up = random.Random(1).randbytes(3_000_000)
    down = random.Random(2).randbytes(3_000_000)
    transfer(net, client, server, up, down)
    assert net.run(lambda: client.state is TcpState.CLOSED and server.state is TcpState.CLOSED)


def test_corruption_dropped_by_the_device_is_recovered() -> None:
    net, client, server = established_pair(
        TcpConfig(), seed=13, forward=Impairment(corrupt=0.05), backward=Impairment(corrupt=0.05)
    )
    transfer(net, client, server, random.Random(13).randbytes(2_000_000))
    assert net.corrupted > 0


def test_without_tso_no_segment_exceeds_max_payload() -> None:
    # An interface without TSO polls with max_payload_bytes of one segment, here
    # smaller than the connection's MSS: everything still goes, nothing larger.
    config = TcpConfig(send_buffer_bytes=256 << 10, recv_buffer_bytes=256 << 10)
    net, client, _ = established_pair(
        config, seed=12, forward=Impairment(loss=0.03), max_payload=1000
    )
    sizes: list[int] = []
    net.on_transmit.append(lambda host, seg: sizes.append(len(seg.payload)))
    data = random.Random(12).randbytes(1_000_000)
    pos = [0]

    def pump() -> None:
        pos[0] += client.send(memoryview(data)[pos[0] :])

    net.on_poll.insert(0, pump)
    assert net.run(lambda: net.data(net.server) == data, max_ns=600 * S)
    assert max(sizes) == 1000 and client.info().mss_bytes == 1448
    assert client.info().retransmitted_segs > 0


def test_slow_reader_closes_the_window_and_the_transfer_still_completes() -> None:
    config = TcpConfig(recv_buffer_bytes=64 << 10, send_buffer_bytes=256 << 10)
    net, client, server = established_pair(config, seed=14, forward=Impairment(loss=0.01))
    net.server.auto_read = False
    got = bytearray()
    small_windows = [0]

    def read_slowly() -> None:
        if server.readable():
            got.extend(server.recv(1024))  # 1 KiB per step: far slower than the sender

    def watch(host: Host, seg: TcpSegmentOut) -> None:
        # Flow control engaged: the receiver offered less than four segments.
        if host is net.server and seg.window << server.info().rcv_wscale < 4 * 1448:
            small_windows[0] += 1

    net.on_transmit.append(watch)
    net.on_poll.append(read_slowly)
    Bounds(net, [client, server])
    data = random.Random(14).randbytes(1_000_000)
    pos = [0]

    def pump() -> None:
        pos[0] += client.send(memoryview(data)[pos[0] :])

    net.on_poll.insert(0, pump)
    for _ in range(10_000):
        if net.run(lambda: bytes(got) == data, max_ns=3600 * S):
            break
        # The path went quiet with data still unread: the application reads on.
        got.extend(server.recv(1024))
    assert bytes(got) == data
    assert small_windows[0] > 0  # the window nearly closed, and reopened every time


def test_tiny_segments_in_flight_are_capped_like_packets() -> None:
    config = TcpConfig(nodelay=True, initial_window_segments=10)
    net, client, _ = established_pair(config, delay_ns=20 * MS)
    entries: list[int] = []
    net.on_poll.append(lambda: entries.append(client.info().scoreboard_entries))
    for i in range(2000):
        client.send(bytes([i % 256]))
        net.flush()
    info = client.info()
    # A byte-counted window of 14600 bytes would allow 2000 one-byte segments at once.
    assert max(entries) <= 2 * (info.cwnd_bytes // info.mss_bytes) + 16
    assert net.run(lambda: len(net.data(net.server)) == 2000)
    assert net.data(net.server) == bytes(i % 256 for i in range(2000))
