"""Delayed ACKs, Nagle, keep-alive and the FIN-WAIT-2 timeout."""

from __future__ import annotations

from netoffload.stack.tcp import Closed, TcpConfig, TcpState, TimedOut

from .harness import ACK, FIN, MS, PSH, RST, S
from .script import Peer, establish_active

M32 = 0xFFFFFFFF


def test_one_full_segment_is_acked_after_the_delay() -> None:
    peer = Peer(mss=1000, timestamps=False, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False, mss_bytes=1000))
    peer.send(peer.segment(ACK | PSH, b"a" * 1000))
    assert peer.take() == []
    assert conn.next_timer_ns() == peer.now + 40 * MS  # the default delayed-ACK time
    peer.tick(39 * MS)
    conn.on_timer(peer.now)
    assert peer.take() == []
    peer.tick(MS)
    conn.on_timer(peer.now)
    (ack,) = peer.take()
    assert ack.ack == peer.seq


def test_every_second_full_segment_is_acked_at_once() -> None:
    peer = Peer(mss=1000, timestamps=False, wscale=None)
    establish_active(peer, TcpConfig(timestamps=False, mss_bytes=1000))
    acks = []
    for _ in range(6):
        peer.send(peer.segment(ACK | PSH, b"a" * 1000))
        acks += peer.take()
    assert len(acks) == 3  # RFC 9293 §3.8.6.3: at least every second full segment


def test_a_gro_super_packet_of_n_segments_is_acked_once_at_once() -> None:
    peer = Peer(mss=1000, timestamps=False, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False, mss_bytes=1000))
    peer.send(peer.segment(ACK, b"g" * 30_000, segments=30))
    (ack,) = peer.take()  # one ACK for the whole super-packet, without waiting
    assert ack.ack == peer.seq and conn.readable() == 30_000
    assert conn.info().segs_in >= 30
    # A super-packet of just two segments counts as two full-sized segments too.
    peer.send(peer.segment(ACK, b"h" * 2000, segments=2))
    (ack2,) = peer.take()
    assert ack2.ack == peer.seq


def test_out_of_order_data_is_acked_at_once_with_sack() -> None:
    peer = Peer(mss=1000, timestamps=False, wscale=None)
    establish_active(peer, TcpConfig(timestamps=False, mss_bytes=1000))
    start = peer.seq
    peer.send(peer.segment(ACK, b"x" * 1000, seq=start + 2000), advance=False)
    (dup,) = peer.take()
    assert dup.ack == start
    from .script import sack_of

    assert sack_of(dup) == (((start + 2000) & M32, (start + 3000) & M32),)
    # Filling the hole is acknowledged at once too (RFC 5681 §4.2).
    peer.send(peer.segment(ACK, b"y" * 1000, seq=start))
    (ack,) = peer.take()
    assert ack.ack == start + 1000
    peer.send(peer.segment(ACK, b"z" * 1000, seq=start + 1000))
    (ack,) = peer.take()
    assert ack.ack == start + 3000 and sack_of(ack) == ()


def test_nagle_holds_a_second_small_segment_until_the_first_is_acked() -> None:
    peer = Peer(mss=1000, timestamps=False, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False))
    conn.send(b"a" * 10)
    (first,) = peer.take()
    conn.send(b"b" * 10)
    conn.send(b"c" * 10)
    assert peer.take() == []  # a small segment is unacknowledged: hold
    peer.send(peer.segment(ACK, ack=first.seq + 10))
    (second,) = peer.take()
    assert bytes(second.payload) == b"b" * 10 + b"c" * 10
    # Full segments are never held.
    conn.send(b"d" * 2500)
    (burst,) = peer.take()
    assert len(burst.payload) == 2000  # the 500-byte tail waits for the small one


def test_nodelay_sends_small_segments_at_once() -> None:
    peer = Peer(mss=1000, timestamps=False, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False))
    conn.nodelay = True
    for chunk in (b"a", b"b", b"c"):
        conn.send(chunk)
        (seg,) = peer.take()
        assert bytes(seg.payload) == chunk


def test_keepalive_probes_then_gives_up() -> None:
    peer = Peer(timestamps=False, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False))
    conn.set_keepalive(True, idle_ns=10 * S, interval_ns=S, probes=3)
    last = peer.now
    assert conn.next_timer_ns() == last + 10 * S
    times = []
    for _ in range(3):
        peer.fire_timers()
        (probe,) = peer.take()
        # RFC 9293 §3.8.4 / Linux: SEG.SEQ = SND.NXT - 1, no data.
        assert probe.flags == ACK and not probe.payload
        assert probe.seq == (peer.rcv_nxt - 1) & M32
        times.append(peer.now - last)
    assert times == [10 * S, 11 * S, 12 * S]
    peer.fire_timers()
    (rst,) = peer.take()
    assert rst.flags & RST and conn.state is TcpState.CLOSED
    events = []
    while (e := conn.next_event()) is not None:
        events.append(e)
    assert isinstance(events[-2], TimedOut) and events[-2].reason == "keep-alive"
    assert isinstance(events[-1], Closed)


def test_an_answered_keepalive_keeps_the_connection() -> None:
    peer = Peer(timestamps=False, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False, keepalive=True))
    conn.set_keepalive(True, idle_ns=10 * S, interval_ns=S, probes=2)
    for _ in range(5):
        peer.fire_timers()
        (_probe,) = peer.take()
        # The peer answers the out-of-window probe with an ACK.
        peer.send(peer.segment(ACK))
        assert conn.state is TcpState.ESTABLISHED
    assert conn.info().keepalive_probes == 5


def test_fin_wait_2_times_out_after_close_but_not_after_shutdown() -> None:
    for close in (True, False):
        peer = Peer(timestamps=False, wscale=None)
        conn = establish_active(peer, TcpConfig(timestamps=False, fin_wait2_timeout_ns=30 * S))
        if close:
            conn.close()
        else:
            conn.shutdown_write()
        (fin,) = peer.take()
        assert fin.flags & FIN
        peer.send(peer.segment(ACK, ack=fin.seq + 1))
        assert conn.state is TcpState.FIN_WAIT_2
        if close:
            assert conn.next_timer_ns() == peer.now + 30 * S
            peer.fire_timers()
            assert conn.state is TcpState.CLOSED
        else:
            assert conn.next_timer_ns() is None  # half-closed: the peer may send for ever
