"""Window scaling (RFC 7323 §2), the receive window, zero-window probing, SWS avoidance."""

from __future__ import annotations

from netoffload.stack.tcp import TcpConfig, TcpState, TimedOut

from .harness import ACK, PSH, SYN
from .script import Peer, establish_active, establish_passive, open_active

M32 = 0xFFFFFFFF


def test_window_scale_negotiated_and_applied_after_the_syn() -> None:
    peer = Peer(wscale=7)
    config = TcpConfig(recv_buffer_bytes=4 << 20)
    conn = open_active(peer, config)
    syn = peer.sent_out[0]
    assert syn.window == 0xFFFF  # a SYN's window is never scaled
    assert config.recv_window_shift == 7  # least shift that fits 4 MiB in 16 bits
    peer.send(peer.segment(SYN | ACK, window=1000, options=peer.syn_options()))
    assert conn.info().snd_wnd_bytes == 1000  # the SYN,ACK's window is not scaled either
    (ack,) = peer.take()
    assert ack.window == (4 << 20) >> 7  # ours, scaled by our shift
    peer.send(peer.segment(ACK, window=1000))
    info = conn.info()
    assert (info.snd_wscale, info.rcv_wscale, info.window_scaling) == (7, 7, True)
    assert info.snd_wnd_bytes == 1000 << 7


def test_window_scale_above_14_is_taken_as_14() -> None:
    peer = Peer(wscale=20)
    conn = establish_active(peer)
    assert conn.info().snd_wscale == 14  # RFC 7323 §2.3


def test_no_window_scaling_unless_both_offer_it() -> None:
    peer = Peer(wscale=None)
    conn = establish_active(peer, TcpConfig(recv_buffer_bytes=1 << 20))
    info = conn.info()
    assert (info.window_scaling, info.snd_wscale, info.rcv_wscale) == (False, 0, 0)
    conn.send(b"x")
    (seg,) = peer.take()
    assert seg.window == 0xFFFF  # capped at 16 bits, unscaled


def test_passive_open_scales_only_if_the_syn_offered_it() -> None:
    _, conn = establish_passive(Peer(wscale=None))
    assert conn.info().window_scaling is False
    synack = [s for s in Peer().sent_out]
    del synack
    peer = Peer(wscale=3)
    _, conn = establish_passive(peer)
    assert conn.info().window_scaling is True and conn.info().snd_wscale == 3


def test_receive_window_closes_and_never_moves_left() -> None:
    peer = Peer(mss=1000, timestamps=False, wscale=None)
    conn = establish_active(peer, TcpConfig(recv_buffer_bytes=4000, timestamps=False))
    edges = []
    for _ in range(5):
        peer.send(peer.segment(ACK | PSH, b"d" * 1000))
        for seg in peer.take():
            edges.append(seg.ack + seg.window)
    peer.send(peer.segment(ACK | PSH, b"d" * 1000))  # beyond the window: dropped
    out = peer.take()
    assert out and out[-1].window == 0 and conn.readable() == 4000
    assert edges == sorted(edges) and edges[-1] == out[-1].ack
    assert (
        conn.info().drops.get("out of window", 0) + conn.info().drops.get("data beyond window", 0)
        >= 1
    )
    # The application reads: a window update goes out at once.
    assert conn.recv(4000) == b"d" * 4000
    (update,) = peer.take()
    assert update.window == 4000 and update.ack == out[-1].ack


def test_zero_window_probes_back_off_and_never_time_out_while_answered() -> None:
    peer = Peer(mss=1000, timestamps=False, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False, retries=3, nodelay=True))
    conn.send(b"p" * 3000)
    (first,) = peer.take()
    # The peer takes it all and closes its window.
    peer.send(peer.segment(ACK, ack=first.seq + 3000, window=0))
    conn.send(b"q" * 500)
    assert peer.take() == []
    rto = conn.info().rto_ns
    assert conn.next_timer_ns() == peer.now + rto
    gaps = []
    for _ in range(6):
        before = peer.now
        peer.fire_timers()
        gaps.append(peer.now - before)
        (probe,) = peer.take()
        # Linux's probe: SND.UNA - 1 and no data, which any receiver must answer.
        assert probe.seq == (first.seq + 3000 - 1) & M32 and not probe.payload
        peer.send(peer.segment(ACK, ack=first.seq + 3000, window=0))
    assert gaps == [rto, 2 * rto, 4 * rto, 8 * rto, 16 * rto, 32 * rto]
    assert conn.state is TcpState.ESTABLISHED and conn.info().window_probes == 6
    # The window opens: the data goes.
    peer.send(peer.segment(ACK, ack=first.seq + 3000, window=1000))
    (data,) = peer.take()
    assert bytes(data.payload) == b"q" * 500


def test_unanswered_zero_window_probes_time_out() -> None:
    peer = Peer(mss=1000, timestamps=False, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False, retries=3, nodelay=True))
    conn.send(b"p" * 1000)
    (first,) = peer.take()
    peer.send(peer.segment(ACK, ack=first.seq + 1000, window=0))
    conn.send(b"q")
    assert conn.has_output()  # nothing to send, but a persist timer to start: poll once
    assert peer.take() == [] and not conn.has_output()
    for _ in range(3):
        peer.fire_timers()
        assert peer.take()
    peer.fire_timers()
    assert conn.state is TcpState.CLOSED
    kinds = []
    while (e := conn.next_event()) is not None:
        kinds.append(e)
    assert any(isinstance(e, TimedOut) and e.reason == "window probes" for e in kinds)


def test_persist_timer_sends_into_a_small_window() -> None:
    # SWS avoidance holds 500 bytes for a 300-byte window; the persist timer then
    # sends what fits (Linux tcp_write_wakeup).
    peer = Peer(mss=1000, timestamps=False, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False, nodelay=True))
    conn.send(b"a" * 1000)
    (first,) = peer.take()
    peer.send(peer.segment(ACK, ack=first.seq + 1000, window=300))
    conn.send(b"b" * 500)
    assert peer.take() == []  # 300 < half the largest window seen: wait
    peer.fire_timers()
    (part,) = peer.take()
    assert bytes(part.payload) == b"b" * 300


def test_sender_sws_avoidance_sends_full_segments_or_nothing() -> None:
    peer = Peer(mss=1000, timestamps=False, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False, nodelay=True))
    conn.send(b"c" * 1000)
    (first,) = peer.take()
    peer.send(peer.segment(ACK, ack=first.seq + 1000, window=2500))
    conn.send(b"d" * 5000)
    (burst,) = peer.take()
    assert len(burst.payload) == 2000  # two full segments, not the 500-byte tail
