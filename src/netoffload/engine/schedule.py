"""Launch-time scheduling as Linux's ETF qdisc does it (net/sched/sch_etf.c), without a clock.

A packet that carries a launch time (``TxRequest.launch_time_ns``, CLOCK_TAI
nanoseconds as SO_TXTIME gives them) waits in a queue ordered by that time, the
earliest first. The caller passes the time in (``now_ns``), and:

* ``enqueue`` refuses a packet (and says why) when its launch time is already
  past by more than ``tolerance_ns`` (ETF: any time in the past; 0 here by
  default), when it is earlier than a packet already released (it would leave
  out of order: ETF's ``q->last`` check), or when the queue holds ``limit``
  packets;
* ``release`` hands out, in launch-time order, every packet whose launch time
  is at most ``delta_ns`` away (ETF's ``delta``: how early the device must have
  a packet to send it on time), and drops, as ``missed``, one whose launch
  time passed more than ``tolerance_ns`` ago while it waited (ETF drops a
  packet that expired in the queue);
* ``next_deadline_ns`` is when the next packet is due for release: the time
  the device should wait until.

Equal launch times leave in the order they were queued (ETF's rbtree puts an
equal time to the right of those already there). Released packets keep their
launch time: the device sends each no earlier than that.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


class LateReason(enum.StrEnum):
    """Why a packet was refused or dropped. Values are stable names."""

    LATE = "launch_time_passed"  # at enqueue, past by more than the tolerance
    OUT_OF_ORDER = "launch_time_before_last"  # earlier than a packet already released
    FULL = "queue_full"
    MISSED = "launch_time_missed"  # expired while queued


@dataclass(frozen=True, slots=True)
class Released(Generic[T]):
    """A packet due for sending, with its launch time."""

    launch_ns: int
    item: T


@dataclass(slots=True)
class Release(Generic[T]):
    """What one ``release`` call hands out: packets to send, packets missed."""

    sent: list[Released[T]] = field(default_factory=list)
    missed: list[Released[T]] = field(default_factory=list)


class LaunchQueue(Generic[T]):
    """Packets ordered by launch time (earliest-deadline first), released when due."""

    __slots__ = ("_heap", "_last", "_seq", "delta_ns", "dropped", "limit", "tolerance_ns")

    def __init__(self, *, delta_ns: int = 0, tolerance_ns: int = 0, limit: int = 10_000) -> None:
        if delta_ns < 0 or tolerance_ns < 0 or limit < 1:
            raise ValueError("delta and tolerance are not negative, the limit at least 1")
        self.delta_ns = delta_ns
        self.tolerance_ns = tolerance_ns
        self.limit = limit
        self._heap: list[tuple[int, int, T]] = []
        self._seq = itertools.count()
        self._last: int | None = None
        self.dropped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._heap)

    def enqueue(self, item: T, launch_ns: int, now_ns: int) -> LateReason | None:
        """Queue ``item`` for ``launch_ns``; ``None`` when taken, else why it was refused."""
        reason = None
        if launch_ns < now_ns - self.tolerance_ns:
            reason = LateReason.LATE
        elif self._last is not None and launch_ns < self._last:
            reason = LateReason.OUT_OF_ORDER
        elif len(self._heap) >= self.limit:
            reason = LateReason.FULL
        if reason is not None:
            self.dropped[reason.value] += 1
            return reason
        heapq.heappush(self._heap, (launch_ns, next(self._seq), item))
        return None

    def release(self, now_ns: int) -> Release[T]:
        """Every packet due by ``now_ns + delta_ns``, in launch-time order; expired ones missed."""
        out: Release[T] = Release()
        heap = self._heap
        while heap and heap[0][0] - self.delta_ns <= now_ns:
            launch, _, item = heapq.heappop(heap)
            if launch < now_ns - self.tolerance_ns:
                out.missed.append(Released(launch, item))
                self.dropped[LateReason.MISSED.value] += 1
                continue
            out.sent.append(Released(launch, item))
            self._last = launch
        return out

    def next_deadline_ns(self) -> int | None:
        """When the earliest queued packet is due for release (``None`` when empty)."""
        return self._heap[0][0] - self.delta_ns if self._heap else None

    def peek(self) -> tuple[int, T] | None:
        """(launch time, item) of the earliest queued packet."""
        if not self._heap:
            return None
        launch, _, item = self._heap[0]
        return launch, item
