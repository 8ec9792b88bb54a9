"""The scoreboard's ranges and byte counters stay consistent whatever happens to them."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.stack.tcp.scoreboard import FIN, LOST, RETRANS, SACKED, Scoreboard

MSS = 100
START = (1 << 32) - 50


def check(sb: Scoreboard, una: int, nxt: int, sends: int) -> None:
    q = sb.q
    if q:
        assert q[0].start == una and q[-1].end == nxt
    else:
        assert una == nxt
    for a, b in pairwise(q):
        assert a.end == b.start
    for burst in q:
        assert burst.start < burst.end
        assert not (burst.flags & SACKED and burst.flags & (LOST | RETRANS))
    assert sb.sacked_bytes == sum(b.end - b.start for b in q if b.flags & SACKED)
    assert sb.lost_bytes == sum(b.end - b.start for b in q if b.flags & LOST)
    assert sb.retrans_bytes == sum(b.end - b.start for b in q if b.flags & RETRANS)
    assert sb.lost_unsent_bytes == sum(
        b.end - b.start for b in q if b.flags & (LOST | RETRANS) == LOST
    )
    # Splits happen at MSS multiples within a burst: a burst never becomes more
    # pieces than it has segments, so memory follows the bytes in flight.
    assert len(q) <= sends + -(-(nxt - una) // MSS)


@settings(max_examples=400)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["send", "ack", "sack", "rack", "rto", "take", "head", "tail"]),
            st.integers(0, 5000),
            st.integers(0, 5000),
        ),
        max_size=40,
    )
)
def test_counters_and_ranges_stay_consistent(ops: list[tuple[str, int, int]]) -> None:
    sb = Scoreboard(START)
    una = nxt = START
    now = 0
    sends = 0
    for op, a, b in ops:
        now += 1000
        if op == "send":
            n = 1 + a % 3000
            sb.append(nxt, nxt + n, now, FIN if b % 7 == 0 else 0)
            nxt += n
            sends += 1
            if b % 7 == 0:
                break  # nothing after a FIN
        elif op == "ack" and nxt > una:
            una += a % (nxt - una + 1)
            sb.ack(una, now, -1, 0)
        elif op == "sack" and nxt > una:
            left = una + a % (nxt - una)
            right = left + 1 + b % (nxt - left)
            sb.sack(left, right, MSS, now, -1, 0)
        elif op == "rack":
            sb.detect_loss(now, a)
        elif op == "rto":
            sb.mark_all_lost()
        elif op == "take":
            sb.take_lost(1 + a, MSS, now)
        elif op == "head":
            sb.mark_head_lost(MSS)
        elif op == "tail":
            sb.retransmit_tail(MSS, now)
        check(sb, una, nxt, sends)


def test_sack_splits_at_mss_multiples_and_rack_marks_the_hole() -> None:
    sb = Scoreboard(0)
    sb.append(0, 1000, now_ns=100, flags=0)  # one burst of ten segments
    sb.append(1000, 2000, now_ns=200, flags=0)
    # The receiver got segments 3..9 of the first burst and all of the second.
    assert sb.sack(350, 2000, MSS, now_ns=1100, echo_ms=-1, min_rtt_ns=0) == 1600
    assert [(b.start, b.end, bool(b.flags & SACKED)) for b in sb.q] == [
        (0, 400, False),  # 350 rounds up to the next MSS boundary
        (400, 2000, True),
    ]
    # RACK: the newest delivered data was sent at 200, 900 ns ago; the hole was sent
    # at 100, so after rtt + reo_wnd it is lost.
    assert sb.detect_loss(now_ns=1100, reo_wnd_ns=200) == 100 + 900 + 200 - 1100
    assert sb.lost_bytes == 0
    assert sb.detect_loss(now_ns=1200, reo_wnd_ns=200) == 0
    assert sb.lost_bytes == 400
    assert sb.take_lost(250, MSS, now_ns=1300) == (0, 200, False)
    assert sb.take_lost(1000, MSS, now_ns=1300) == (200, 400, False)
    assert sb.take_lost(1000, MSS, now_ns=1300) is None
    assert sb.retrans_bytes == 400
