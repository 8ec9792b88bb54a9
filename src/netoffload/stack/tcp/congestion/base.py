"""The interface every congestion controller implements, and slow start, which they share.

Windows are in bytes. The connection calls ``on_ack`` only outside loss
recovery and only while the sender is limited by the window (RFC 7661's
principle, as Linux's ``tcp_is_cwnd_limited``), so an application-limited
sender does not grow a window it never tested. Loss recovery itself (RFC 6675
pipe, RFC 6582 inflation) is the connection's business: a controller only says
how far to back off.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

#: "Infinite" slow-start threshold before the first congestion event.
INITIAL_SSTHRESH = 1 << 31


def initial_window(mss: int, segments: int) -> int:
    """The initial window in bytes: ``segments`` MSS, as RFC 6928 allows for 10."""
    if segments == 10:
        return min(10 * mss, max(2 * mss, 14600))
    return segments * mss


class CongestionControl(ABC):
    """``cwnd`` and ``ssthresh`` in bytes, grown on ACKs and cut on congestion."""

    __slots__ = ("cwnd", "initial_window_segments", "mss", "ssthresh")

    name: ClassVar[str]

    def __init__(self, mss: int, initial_window_segments: int = 10) -> None:
        self.mss = mss
        self.initial_window_segments = initial_window_segments
        self.cwnd = initial_window(mss, initial_window_segments)
        self.ssthresh = INITIAL_SSTHRESH

    def set_mss(self, mss: int) -> None:
        """The sender MSS changed (path MTU): keep the window in segments."""
        segments = max(1, self.cwnd // self.mss)
        self.mss = mss
        self.cwnd = segments * mss

    def slow_start(self, acked: int) -> int:
        """Grow by the bytes acked up to ``ssthresh``; return what is left for avoidance.

        Linux counts every acked segment (no RFC 3465 limit of 2 MSS per
        ACK): a GRO receiver acknowledges a whole super-packet at once.
        """
        room = self.ssthresh - self.cwnd
        if acked <= room:
            self.cwnd += acked
            return 0
        self.cwnd = self.ssthresh
        return acked - room

    def on_idle_restart(self, now_ns: int) -> None:
        """Sending resumes after more than an RTO idle: cwnd = min(IW, cwnd) (RFC 5681 §4.1)."""
        self.cwnd = min(self.cwnd, initial_window(self.mss, self.initial_window_segments))

    @abstractmethod
    def on_ack(self, acked: int, now_ns: int, srtt_ns: int) -> None:
        """``acked`` new bytes were acknowledged while the window limited the sender."""

    @abstractmethod
    def on_congestion(self, now_ns: int, flight: int, *, ecn: bool = False) -> None:
        """Loss detected (fast retransmit, RACK, TLP) or ECN echoed: set ssthresh and cwnd.

        ``flight`` is RFC 5681's FlightSize: bytes sent and not yet acknowledged.
        """

    @abstractmethod
    def on_timeout(self, now_ns: int, flight: int) -> None:
        """The retransmission timer expired: set ssthresh, and cwnd to one segment."""
