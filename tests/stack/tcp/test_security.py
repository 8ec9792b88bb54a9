"""Blind attacks (RFC 5961), PAWS (RFC 7323 §5), TIME-WAIT assassination (RFC 1337),
and the RST of a closed port (RFC 9293 §3.10.7.1)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.stack.tcp import (
    TcpConfig,
    TcpConnection,
    TcpSegmentIn,
    TcpState,
    reset_for,
)

from .harness import ACK, FIN, MS, PSH, RST, SYN, S
from .script import Peer, drain, establish_active, ts_option

M32 = 0xFFFFFFFF


def test_rst_exactly_at_rcv_nxt_resets() -> None:
    peer = Peer()
    conn = establish_active(peer)
    drain(conn)
    peer.send(peer.segment(RST))
    assert conn.state is TcpState.CLOSED
    assert [type(e).__name__ for e in drain(conn)] == ["Reset", "Closed"]


def test_rst_in_window_but_not_at_rcv_nxt_gets_a_challenge_ack() -> None:
    # RFC 5961 §3.2: in the window but not exactly RCV.NXT -> challenge ACK, no reset.
    peer = Peer()
    conn = establish_active(peer)
    peer.send(peer.segment(RST, seq=peer.seq + 1000), advance=False)
    assert conn.state is TcpState.ESTABLISHED
    (challenge,) = peer.take()
    assert challenge.flags == ACK and challenge.ack == peer.seq
    assert conn.info().challenge_acks_sent == 1
    # The real peer would answer with a RST at exactly RCV.NXT; a blind attacker cannot.
    peer.send(peer.segment(RST, seq=challenge.ack))
    assert conn.state is TcpState.CLOSED


def test_rst_outside_the_window_is_dropped_silently() -> None:
    peer = Peer()
    conn = establish_active(peer)
    peer.send(peer.segment(RST, seq=peer.seq + (1 << 30)), advance=False)
    peer.send(peer.segment(RST, seq=peer.seq - 1), advance=False)
    assert conn.state is TcpState.ESTABLISHED
    assert peer.take() == []
    assert conn.info().drops["RST out of window"] == 2


def test_syn_in_a_synchronized_state_gets_a_challenge_ack() -> None:
    # RFC 5961 §4.2: whatever its sequence number.
    peer = Peer()
    conn = establish_active(peer)
    for seq in (peer.seq, peer.seq + 100, peer.seq - 5000):
        peer.send(peer.segment(SYN, seq=seq, options=peer.syn_options()), advance=False)
        assert conn.state is TcpState.ESTABLISHED
    out = peer.take()
    # The two in-window SYNs got challenge ACKs; the old one an (unlimited) duplicate ACK.
    assert out and all(s.flags == ACK and s.ack == peer.seq for s in out)
    assert conn.info().challenge_acks_sent == 2


def test_ack_of_data_never_sent_is_challenged_and_dropped() -> None:
    # RFC 5961 §5.2: SEG.ACK beyond SND.NXT (or older than SND.UNA - MAX.SND.WND).
    peer = Peer()
    conn = establish_active(peer)
    conn.send(b"abc")
    (data,) = peer.take()
    peer.send(peer.segment(ACK | PSH, b"evil", ack=data.seq + 1000), advance=False)
    (challenge,) = peer.take()
    assert challenge.flags == ACK and challenge.ack == peer.seq  # the data was not taken
    assert conn.readable() == 0
    peer.send(peer.segment(ACK | PSH, b"evil", ack=data.seq - (1 << 24)), advance=False)
    assert conn.readable() == 0
    assert conn.info().drops["unacceptable ACK"] == 2


def test_challenge_acks_are_rate_limited_per_second() -> None:
    peer = Peer()
    config = TcpConfig(challenge_ack_limit_per_s=10)
    conn = establish_active(peer, config)
    for i in range(100):
        peer.send(peer.segment(RST, seq=peer.seq + 10 + i), advance=False)
        peer.take()
    info = conn.info()
    # Linux's budget: between half the limit and the limit, per second.
    assert 5 <= info.challenge_acks_sent <= 10
    assert info.challenge_acks_sent + info.challenge_acks_suppressed == 100
    peer.tick(S)
    peer.send(peer.segment(RST, seq=peer.seq + 10), advance=False)
    assert peer.take()  # a new second, a new budget
    assert conn.state is TcpState.ESTABLISHED


def test_paws_drops_an_old_timestamp_and_acks() -> None:
    peer = Peer()
    conn = establish_active(peer)
    peer.send(peer.segment(ACK | PSH, b"new"))
    peer.take()
    old = ts_option((peer.tsval - 10) & M32, peer.ts_recent)
    peer.send(peer.segment(ACK | PSH, b"old", options=old), advance=False)
    assert conn.readable() == 3 and conn.recv(10) == b"new"
    assert conn.info().drops["PAWS"] == 1
    (ack,) = peer.take()  # RFC 7323 §5.3: an ACK goes back
    assert ack.ack == peer.seq
    # A timestamp that wrapped past 2^32 is newer, not older.
    peer.tsval = (peer.tsval + 0x7FFFFFF0) & M32
    peer.send(peer.segment(ACK | PSH, b"ok"))
    assert conn.recv(10) == b"ok"


def test_paws_accepts_an_old_timestamp_after_24_days_idle() -> None:
    peer = Peer()
    conn = establish_active(peer)
    peer.tick(25 * 86400 * S)
    old = ts_option((peer.tsval - 10_000_000) & M32, peer.ts_recent)
    peer.send(peer.segment(ACK | PSH, b"late", options=old))
    assert conn.recv(10) == b"late"  # RFC 7323 §5.5: TS.Recent is too old to trust


def in_time_wait(peer: Peer) -> TcpConnection:
    """Our connection closed first, the peer's FIN acknowledging ours: TIME-WAIT."""
    conn = establish_active(peer)
    conn.close()
    (fin,) = peer.take()
    peer.send(peer.segment(FIN | ACK, ack=fin.seq + 1))
    peer.take()
    assert conn.state is TcpState.TIME_WAIT
    return conn


def test_time_wait_ignores_rst_rfc_1337() -> None:
    peer = Peer()
    conn = in_time_wait(peer)
    peer.send(peer.segment(RST))
    assert conn.state is TcpState.TIME_WAIT
    assert conn.info().drops["RST in TIME-WAIT"] == 1


def test_time_wait_gives_way_to_a_newer_syn() -> None:
    peer = Peer()
    conn = in_time_wait(peer)
    # An old SYN (older timestamp) gets an ACK; a newer one ends TIME-WAIT (RFC 6191).
    peer.tsval -= 100
    peer.send(peer.segment(SYN, seq=peer.seq + 10_000, options=peer.syn_options()), advance=False)
    assert conn.state is TcpState.TIME_WAIT
    peer.tsval += 1000
    peer.send(peer.segment(SYN, seq=peer.seq + 10_000, options=peer.syn_options()), advance=False)
    assert conn.state is TcpState.CLOSED
    assert [type(e).__name__ for e in drain(conn)][-1] == "Closed"


def test_reset_for_a_closed_port_rfc_9293() -> None:
    syn = TcpSegmentIn(1000, 0, SYN, 1024, b"", memoryview(b"data"))
    rst = reset_for(syn)
    assert rst is not None
    # No ACK in the offending segment: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
    assert (rst.seq, rst.ack, rst.flags, len(rst.payload)) == (0, 1005, RST | ACK, 0)
    fin = TcpSegmentIn(M32, 0, FIN, 0, b"", memoryview(b""))
    assert reset_for(fin).ack == 0  # type: ignore[union-attr]  # wraps
    ack = TcpSegmentIn(1000, 777, ACK | PSH, 1024, b"", memoryview(b"x"))
    rst = reset_for(ack)
    # ACK set: <SEQ=SEG.ACK><CTL=RST>.
    assert rst is not None and (rst.seq, rst.ack, rst.flags) == (777, 0, RST)
    assert reset_for(TcpSegmentIn(1, 2, RST | ACK, 0, b"", memoryview(b""))) is None


flags_st = st.integers(0, 0x1FF)
u32 = st.integers(0, M32)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            u32,
            u32,
            flags_st,
            st.integers(0, 0xFFFF),
            st.binary(max_size=40),
            st.binary(max_size=3000),
            st.integers(-1, 64),
            st.booleans(),
            st.booleans(),
        ),
        max_size=25,
    )
)
def test_hostile_segments_never_raise(segments: list[tuple]) -> None:  # type: ignore[type-arg]
    peer = Peer()
    conn = establish_active(peer, TcpConfig(recv_buffer_bytes=20_000))
    conn.send(b"q" * 5000)
    peer.take()
    for seq, ack, flags, window, options, payload, count, near, ce in segments:
        if near:  # aim close to the real numbers half of the time
            seq = (peer.seq + seq % 4000 - 2000) & M32
            ack = (peer.rcv_nxt + ack % 8000 - 4000) & M32
        conn.on_segment(
            TcpSegmentIn(seq, ack, flags, window, options, memoryview(payload), count, ce),
            peer.now,
        )
        peer.tick(MS)
        conn.poll_transmit(peer.now, max_payload_bytes=65483)
        t = conn.next_timer_ns()
        if t is not None and t <= peer.now:
            conn.on_timer(peer.now)
        info = conn.info()
        assert info.readable_bytes + info.ooo_bytes <= 20_000 + (2 << info.rcv_wscale)
    drain(conn)
