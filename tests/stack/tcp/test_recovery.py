"""Loss recovery: NewReno partial ACKs, SACK holes, RACK, TLP, the RTO, Karn."""

from __future__ import annotations

from netoffload.stack.tcp import Closed, TcpConfig, TcpState, TimedOut

from .harness import ACK, MS, PSH
from .script import Peer, establish_active

M32 = 0xFFFFFFFF


def sack_option(blocks: list[tuple[int, int]]) -> bytes:
    from netoffload.wire.tcp import TcpNoOperation, TcpSack, options_bytes

    return options_bytes((TcpNoOperation(), TcpNoOperation(), TcpSack(tuple(blocks))))


def retransmitted(segs: list[object]) -> list[tuple[int, int]]:
    return [
        (s.seq, s.seq + len(s.payload))  # type: ignore[attr-defined]
        for s in segs
        if s.retransmission  # type: ignore[attr-defined]
    ]


def newreno_peer() -> tuple[Peer, object]:
    peer = Peer(timestamps=False, sack=False, mss=1000, wscale=None)
    config = TcpConfig(sack=False, timestamps=False, congestion_control="newreno", nodelay=True)
    return peer, establish_active(peer, config)


def test_newreno_fast_retransmit_inflation_and_partial_acks_rfc_6582() -> None:
    peer, conn = newreno_peer()
    conn.send(b"x" * 10_000)
    (burst,) = peer.take()
    assert len(burst.payload) == 10_000 and burst.mss == 1000  # one super-packet, IW 10
    base = burst.seq
    # Segments 2 and 5 are lost. The peer ACKs 0-1, then sends a dup ACK per later segment.
    peer.send(peer.segment(ACK, ack=base + 2000))
    assert peer.take() == []
    for _ in range(2):
        peer.send(peer.segment(ACK, ack=base + 2000))
        assert peer.take() == []
    peer.send(peer.segment(ACK, ack=base + 2000))  # the third duplicate
    (rexmit,) = peer.take()
    assert (rexmit.seq, len(rexmit.payload), rexmit.retransmission) == (base + 2000, 1000, True)
    info = conn.info()
    # ssthresh = max(FlightSize / 2, 2 SMSS) = 4000; cwnd = ssthresh + 3 SMSS.
    assert (info.recovery, info.ssthresh_bytes, info.cwnd_bytes) == ("recovery", 4000, 7000)
    conn.send(b"y" * 2000)
    for _ in range(3):  # each further duplicate inflates cwnd by one SMSS
        peer.send(peer.segment(ACK, ack=base + 2000))
    assert conn.info().cwnd_bytes == 10_000
    (new,) = peer.take()  # flight 8000 < cwnd 10000: 2000 bytes of new data may go
    assert (new.seq, len(new.payload), new.retransmission) == (base + 10_000, 2000, False)
    # The retransmission arrives: a partial ACK (segment 5 is still missing).
    peer.send(peer.segment(ACK, ack=base + 5000))
    (rexmit2,) = peer.take()
    assert (rexmit2.seq, len(rexmit2.payload), rexmit2.retransmission) == (
        base + 5000,
        1000,
        True,
    )
    info = conn.info()
    # Deflate by the 3000 bytes acked, add back one SMSS; still in recovery.
    assert (info.recovery, info.cwnd_bytes) == ("recovery", 8000)
    # The full ACK covers the recovery point (base + 10000) and more.
    peer.send(peer.segment(ACK, ack=base + 12_000))
    info = conn.info()
    # cwnd = min(ssthresh, max(FlightSize, SMSS) + SMSS) with FlightSize 0.
    assert (info.recovery, info.cwnd_bytes, info.fast_recoveries) == ("open", 2000, 1)
    assert info.retransmitted_segs == 2


def test_sack_recovery_retransmits_exactly_the_holes() -> None:
    peer = Peer(timestamps=False, mss=1000, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False, initial_window_segments=20))
    conn.send(b"z" * 20_000)
    (burst,) = peer.take()
    assert len(burst.payload) == 20_000
    base = burst.seq
    lost = {3, 7, 8, 15}
    arrived: list[int] = []
    out: list[object] = []
    peer.tick(MS)
    for i in range(20):
        if i in lost:
            continue
        arrived.append(i)
        cum = 0
        while cum in arrived:
            cum += 1
        # The peer's SACK blocks: the ranges above the cumulative ACK, newest first.
        ranges: list[list[int]] = []
        for j in sorted(a for a in arrived if a > cum):
            if ranges and ranges[-1][1] == j:
                ranges[-1][1] = j + 1
            else:
                ranges.append([j, j + 1])
        newest = next(r for r in ranges if r[0] <= i < r[1]) if i >= cum else None
        order = ([newest] if newest else []) + [r for r in reversed(ranges) if r is not newest]
        blocks = [(base + a * 1000, base + b * 1000) for a, b in order[:4]]
        options = sack_option(blocks) if blocks else b""
        peer.send(peer.segment(ACK, ack=base + cum * 1000, options=options))
        out += peer.take()
    holes = sorted(retransmitted(out))
    covered: list[int] = []
    for start, end in holes:
        covered += range((start - base) // 1000, (end - base) // 1000)
    assert sorted(covered) == sorted(lost)  # every hole once, nothing else
    info = conn.info()
    assert info.fast_recoveries == 1 and info.rtos == 0
    assert info.sacked_bytes == 13_000 and info.lost_bytes == 4000  # 3 acked, 4 lost
    # The holes arrive: everything is acknowledged and recovery ends.
    peer.send(peer.segment(ACK, ack=base + 20_000))
    info = conn.info()
    assert info.recovery == "open" and info.in_flight_bytes == 0 and info.scoreboard_entries == 0


def test_rto_backs_off_and_karn_keeps_it_until_a_clean_sample() -> None:
    peer = Peer(timestamps=False, sack=False, mss=1000, wscale=None)
    config = TcpConfig(timestamps=False, sack=False, nodelay=True)
    conn = establish_active(peer, config)
    assert conn.info().rto_ns == 200 * MS  # srtt 1 ms: the 200 ms floor (Linux)
    samples = conn.info().rtt_samples
    conn.send(b"a" * 500)
    (first,) = peer.take()
    sent_at = peer.now
    assert conn.next_timer_ns() == sent_at + 200 * MS
    deadlines = []
    for _ in range(3):
        peer.fire_timers()
        (again,) = peer.take()
        assert again.retransmission and again.seq == first.seq
        deadlines.append(conn.next_timer_ns() - peer.now)  # type: ignore[operator]
    assert deadlines == [400 * MS, 800 * MS, 1600 * MS]  # doubled each time (RFC 6298 §5.5)
    assert conn.info().rtos == 3 and conn.info().backoff == 3
    # The ACK of the retransmitted data: ambiguous, no sample (Karn); the backoff stays.
    peer.tick(5 * MS)
    peer.send(peer.segment(ACK, ack=first.seq + 500))
    info = conn.info()
    assert info.rtt_samples == samples and info.backoff == 3
    conn.send(b"b" * 500)
    (second,) = peer.take()
    assert conn.next_timer_ns() == peer.now + 1600 * MS  # still backed off
    peer.tick(3 * MS)
    peer.send(peer.segment(ACK, ack=second.seq + 500))
    info = conn.info()
    assert info.rtt_samples == samples + 1 and info.backoff == 0 and info.latest_rtt_ns == 3 * MS
    assert info.rto_ns == 200 * MS


def test_timestamps_take_an_rtt_sample_from_a_retransmission() -> None:
    peer = Peer(sack=False, mss=1000, wscale=None)
    conn = establish_active(peer, TcpConfig(sack=False, nodelay=True))
    conn.send(b"a" * 500)
    peer.take()
    peer.fire_timers()
    (again,) = peer.take()
    assert again.retransmission and conn.info().backoff == 1
    samples = conn.info().rtt_samples
    peer.tick(7 * MS)
    # The peer echoes the retransmission's TSval: RFC 7323 §4 makes the sample safe.
    peer.send(peer.segment(ACK, ack=again.seq + 500))
    info = conn.info()
    assert info.rtt_samples == samples + 1 and info.backoff == 0
    assert 6 * MS <= info.latest_rtt_ns <= 8 * MS


def test_retransmissions_exhausted_time_out() -> None:
    peer = Peer(timestamps=False, sack=False, mss=1000, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False, sack=False, retries=3))
    conn.send(b"a" * 100)
    peer.take()
    for _ in range(3):
        peer.fire_timers()
        assert peer.take()[0].retransmission
    peer.fire_timers()
    assert conn.state is TcpState.CLOSED
    events = []
    while (e := conn.next_event()) is not None:
        events.append(e)
    assert isinstance(events[-2], TimedOut) and isinstance(events[-1], Closed)
    assert events[-2].errno == 110  # ETIMEDOUT


def test_tail_loss_probe_retransmits_the_last_segment_after_two_srtt() -> None:
    peer = Peer(timestamps=False, mss=1000, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False, nodelay=True))
    srtt = conn.info().srtt_ns
    conn.send(b"t" * 5000)
    (burst,) = peer.take()
    assert conn.next_timer_ns() == peer.now + 2 * srtt  # PTO = 2·SRTT (RFC 8985 §7.2)
    peer.fire_timers()
    (probe,) = peer.take()
    # No new data to send: the last segment goes again.
    assert probe.retransmission and (probe.seq, len(probe.payload)) == (burst.seq + 4000, 1000)
    assert conn.next_timer_ns() == peer.now + conn.info().rto_ns  # then the RTO, not a PTO
    assert conn.info().tlp_probes == 1
    # The probe repaired a single tail loss: the ACK covers everything.
    peer.send(peer.segment(ACK, ack=burst.seq + 5000))
    assert conn.info().in_flight_bytes == 0 and conn.info().rtos == 0


def test_rack_waits_a_reordering_window_before_calling_a_hole_lost() -> None:
    peer = Peer(timestamps=False, mss=1000, wscale=None)
    conn = establish_active(peer, TcpConfig(timestamps=False, nodelay=True))
    conn.send(b"r" * 4000)
    (burst,) = peer.take()
    base = burst.seq
    peer.tick(MS)
    # Only one segment above the hole is SACKed: below DupThresh, so RACK waits
    # min_rtt / 4 before marking the hole lost (RFC 8985 §6.2).
    peer.send(peer.segment(ACK, ack=base, options=sack_option([(base + 1000, base + 2000)])))
    assert retransmitted(peer.take()) == []
    deadline = conn.next_timer_ns()
    assert deadline is not None and deadline <= peer.now + conn.info().min_rtt_ns
    peer.fire_timers()
    assert retransmitted(peer.take()) == [(base, base + 1000)]
    assert conn.info().fast_recoveries == 1


def test_sack_blocks_ride_a_pure_ack_so_data_segments_stay_mss_sized() -> None:
    """Out-of-order data in while we send: the data segments carry the timestamps
    only (every piece the device cuts is then MSS bytes plus the same 32-byte header),
    and a pure ACK beside them carries the SACK block. A SACK option on the data
    would make each full segment 12 bytes over the path MTU."""
    from .script import sack_of

    peer = Peer(mss=1460)
    conn = establish_active(peer)
    mss = conn.info().mss_bytes
    assert mss == 1448
    # A hole: the peer's first 1000 bytes are lost, the next 1000 arrive.
    peer.send(peer.segment(ACK | PSH, b"b" * 1000, seq=peer.seq + 1000), advance=False)
    conn.send(b"x" * (4 * mss))
    out = peer.take()
    data = [s for s in out if s.payload]
    pure = [s for s in out if not s.payload]
    assert data and all(len(s.options) == 12 and sack_of(s) == () for s in data)
    assert sum(len(s.payload) for s in data) == 4 * mss
    assert all(s.mss == mss for s in data)
    (ack,) = pure
    assert sack_of(ack) == (((peer.seq + 1000) & M32, (peer.seq + 2000) & M32),)
    assert ack.ack == peer.seq
    # The hole is filled: no SACK is due, so nothing goes beside the data.
    peer.send(peer.segment(ACK | PSH, b"a" * 1000), advance=False)
    peer.seq = (peer.seq + 2000) & M32
    peer.tick(MS)
    conn.send(b"y" * mss)
    out = peer.take()
    assert [len(s.payload) for s in out] == [mss]
    assert out[0].ack == peer.seq and sack_of(out[0]) == ()
