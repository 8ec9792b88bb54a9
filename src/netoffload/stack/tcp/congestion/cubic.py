"""CUBIC (RFC 9438), with its Reno-friendly region and fast convergence.

The window function works in segments and seconds, as the RFC writes it;
``cwnd`` stays in bytes, with the fraction of a byte carried between ACKs so
that many small increments add up exactly. HyStart++ is not implemented: slow
start is RFC 5681's.
"""

from __future__ import annotations

from netoffload.stack.tcp.congestion.base import CongestionControl

#: RFC 9438 §5.1 and §5.2: the scaling constant and the multiplicative decrease.
C = 0.4
BETA = 0.7
#: §4.3: the Reno-friendly additive increase, 3(1 - β) / (1 + β).
ALPHA = 3 * (1 - BETA) / (1 + BETA)


class Cubic(CongestionControl):
    """RFC 9438 congestion avoidance on top of the shared slow start."""

    __slots__ = (
        "_alpha",
        "_carry",
        "_cwnd_prior",
        "_epoch_ns",
        "_k",
        "_w_est",
        "_w_max",
        "after_timeout",
        "fast_convergence",
    )
    name = "cubic"

    def __init__(self, mss: int, initial_window_segments: int = 10) -> None:
        super().__init__(mss, initial_window_segments)
        self.fast_convergence = True
        self._w_max = 0.0
        self._k = 0.0
        self._epoch_ns: int | None = None
        self._w_est = 0.0
        self._cwnd_prior = 0.0
        self._alpha = ALPHA
        self._carry = 0.0
        self.after_timeout = False

    @property
    def w_max(self) -> float:
        """W_max in segments: the window before the last reduction (after fast convergence)."""
        return self._w_max

    @property
    def k_s(self) -> float:
        """K in seconds: when W_cubic reaches W_max again (0 before the first epoch)."""
        return self._k

    def _start_epoch(self, now_ns: int, cwnd: float) -> None:
        # §4.2: t counts from the start of this congestion avoidance stage and
        # K = cbrt((W_max - cwnd_epoch) / C). §4.8: after a timeout (or with
        # no reduction to recover from) K = 0 and W_max = cwnd_epoch.
        self._epoch_ns = now_ns
        if self.after_timeout or self._w_max <= cwnd:
            self._w_max = cwnd
            self._k = 0.0
        else:
            self._k = ((self._w_max - cwnd) / C) ** (1 / 3)
        self.after_timeout = False
        self._w_est = cwnd  # §4.3: W_est starts at cwnd_epoch
        self._carry = 0.0

    def w_cubic(self, t_s: float) -> float:
        """Equation 1: W_cubic(t) = C·(t - K)³ + W_max, in segments."""
        d = t_s - self._k
        return C * d * d * d + self._w_max

    def on_ack(self, acked: int, now_ns: int, srtt_ns: int) -> None:
        """Slow start below ssthresh; above it, the cubic window or W_est, whichever is larger."""
        if self.cwnd < self.ssthresh:
            acked = self.slow_start(acked)
            if not acked:
                return
        mss = self.mss
        cwnd = (self.cwnd + self._carry) / mss
        if self._epoch_ns is None:
            self._start_epoch(now_ns, cwnd)
        assert self._epoch_ns is not None
        segments = acked / mss
        t = (now_ns - self._epoch_ns) / 1e9
        # §4.3: W_est grows by alpha per window acked; alpha becomes 1 once W_est
        # reaches the window before the last reduction.
        self._w_est += self._alpha * segments / cwnd
        if self._alpha != 1.0 and self._w_est >= self._cwnd_prior:
            self._alpha = 1.0
        if self.w_cubic(t) < self._w_est:
            new = self._w_est  # Reno-friendly region
        else:
            # §4.4/§4.5: aim at W_cubic one RTT ahead, within [cwnd, 1.5·cwnd],
            # and move (target - cwnd) / cwnd per acked segment.
            target = self.w_cubic(t + srtt_ns / 1e9)
            if target < cwnd:
                target = cwnd
            elif target > 1.5 * cwnd:
                target = 1.5 * cwnd
            new = cwnd + (target - cwnd) / cwnd * segments
        exact = new * mss
        whole = int(exact)
        self.cwnd = whole
        self._carry = exact - whole

    def on_congestion(self, now_ns: int, flight: int, *, ecn: bool = False) -> None:
        """§4.6 multiplicative decrease and §4.7 fast convergence."""
        mss = self.mss
        cwnd = (self.cwnd + self._carry) / mss
        if self.fast_convergence and cwnd < self._w_max:
            self._w_max = cwnd * (1 + BETA) / 2
        else:
            self._w_max = cwnd
        self._cwnd_prior = cwnd
        self._alpha = ALPHA
        self.ssthresh = max(int(flight * BETA), 2 * mss)
        self.cwnd = max(self.ssthresh, (1 if ecn else 2) * mss)
        self._carry = 0.0
        self._epoch_ns = None

    def on_idle_restart(self, now_ns: int) -> None:
        """Restart after idle: the window shrinks (RFC 5681 §4.1) and a new epoch begins."""
        super().on_idle_restart(now_ns)
        self._epoch_ns = None
        self._carry = 0.0

    def on_timeout(self, now_ns: int, flight: int) -> None:
        """§4.8: ssthresh as on a loss, cwnd one segment; the next epoch starts with K = 0."""
        self.on_congestion(now_ns, flight)
        self.cwnd = mss = self.mss
        self.ssthresh = max(self.ssthresh, 2 * mss)
        self.after_timeout = True
