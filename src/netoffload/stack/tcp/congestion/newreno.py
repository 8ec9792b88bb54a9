"""NewReno's window arithmetic (RFC 5681 §3.1); its fast recovery lives in the connection."""

from __future__ import annotations

from netoffload.stack.tcp.congestion.base import CongestionControl


class NewReno(CongestionControl):
    """Slow start, then one MSS per window of bytes acked (RFC 5681 eq. 3 with RFC 3465)."""

    __slots__ = ("_acked",)
    name = "newreno"

    def __init__(self, mss: int, initial_window_segments: int = 10) -> None:
        super().__init__(mss, initial_window_segments)
        self._acked = 0

    def on_ack(self, acked: int, now_ns: int, srtt_ns: int) -> None:
        """Slow start below ssthresh; above it, cwnd grows by one MSS per cwnd acked."""
        if self.cwnd < self.ssthresh:
            acked = self.slow_start(acked)
            if not acked:
                return
        self._acked += acked
        if self._acked >= self.cwnd:
            self._acked -= self.cwnd
            self.cwnd += self.mss

    def on_congestion(self, now_ns: int, flight: int, *, ecn: bool = False) -> None:
        """RFC 5681 eq. 4: ssthresh = max(FlightSize / 2, 2·SMSS); cwnd = ssthresh."""
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.ssthresh
        self._acked = 0

    def on_timeout(self, now_ns: int, flight: int) -> None:
        """RFC 5681 eq. 4 for ssthresh, then a loss window of one segment."""
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self._acked = 0
