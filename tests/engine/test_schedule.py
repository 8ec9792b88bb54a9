"""Launch-time scheduling as ETF: deadline order, late and missed packets, ties in arrival order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.engine.schedule import LateReason, LaunchQueue

US = 1000


def test_packets_leave_in_deadline_order_and_not_before_their_time() -> None:
    q: LaunchQueue[str] = LaunchQueue()
    for name, launch in (("c", 300), ("a", 100), ("b", 200)):
        assert q.enqueue(name, launch * US, now_ns=0) is None
    assert q.next_deadline_ns() == 100 * US
    assert q.release(99 * US).sent == []
    assert [(r.item, r.launch_ns) for r in q.release(100 * US).sent] == [("a", 100 * US)]
    assert [(r.item, r.launch_ns) for r in q.release(200 * US).sent] == [("b", 200 * US)]
    assert q.next_deadline_ns() == 300 * US
    assert [r.item for r in q.release(10**9).sent] == []  # c missed: its time passed long ago
    assert q.dropped == {"launch_time_missed": 1}
    assert q.next_deadline_ns() is None


def test_delta_releases_early_and_tolerance_forgives_a_little_lateness() -> None:
    q: LaunchQueue[int] = LaunchQueue(delta_ns=50 * US, tolerance_ns=10 * US)
    q.enqueue(1, 100 * US, now_ns=0)
    assert q.next_deadline_ns() == 50 * US
    assert [r.item for r in q.release(50 * US).sent] == [1]
    assert q.enqueue(2, 95 * US, now_ns=104 * US) is LateReason.OUT_OF_ORDER  # before 1 left
    assert q.enqueue(3, 100 * US, now_ns=110 * US) is None  # late by 10 us: forgiven
    assert q.enqueue(4, 120 * US, now_ns=131 * US) is LateReason.LATE  # late by 11 us
    assert [r.item for r in q.release(110 * US).sent] == [3]
    assert q.dropped == {"launch_time_before_last": 1, "launch_time_passed": 1}


def test_a_full_queue_refuses() -> None:
    q: LaunchQueue[int] = LaunchQueue(limit=2)
    assert q.enqueue(1, 10, 0) is None
    assert q.enqueue(2, 10, 0) is None
    assert q.enqueue(3, 10, 0) is LateReason.FULL


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 5)), max_size=40))
def test_earliest_deadline_first_and_equal_deadlines_in_arrival_order(
    packets: list[tuple[int, int]],
) -> None:
    q: LaunchQueue[int] = LaunchQueue()
    for i, (launch, _) in enumerate(packets):
        assert q.enqueue(i, launch, now_ns=0) is None
    out = []
    for now in range(21):
        out += [(r.launch_ns, r.item) for r in q.release(now).sent]
        assert all(launch <= now for launch, _ in out)
    assert out == sorted((launch, i) for i, (launch, _) in enumerate(packets))
