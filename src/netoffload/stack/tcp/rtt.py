"""Round-trip time estimation and the retransmission timeout (RFC 6298)."""

from __future__ import annotations

#: RACK's minimum-RTT filter window (RFC 8985 §6.2 suggests Linux's choice).
MIN_RTT_WINDOW_NS = 10_000_000_000


class RttEstimator:
    """SRTT, RTTVAR and RTO in integer nanoseconds, with exponential backoff.

    RFC 6298 §2 with K = 4, alpha = 1/8, β = 1/4; the lower bound is
    ``rto_min_ns`` (Linux's 200 ms rather than the RFC's 1 s, §2.4 allows
    less), the upper bound ``rto_max_ns`` (§2.5). Karn's algorithm is the
    caller's part: it never offers a sample from a retransmitted segment unless
    timestamps disambiguate it (RFC 7323 §4). The backoff is cleared by the
    next valid sample (§5.7 and Karn), not by any ACK.
    """

    __slots__ = (
        "_min_rtt_stamp_ns",
        "backoff",
        "latest_ns",
        "min_rtt_ns",
        "rto_base_ns",
        "rto_max_ns",
        "rto_min_ns",
        "rttvar_ns",
        "samples",
        "srtt_ns",
    )

    def __init__(self, rto_initial_ns: int, rto_min_ns: int, rto_max_ns: int) -> None:
        self.rto_min_ns = rto_min_ns
        self.rto_max_ns = rto_max_ns
        self.rto_base_ns = rto_initial_ns  # §2.1
        self.srtt_ns = 0
        self.rttvar_ns = 0
        self.latest_ns = 0
        self.min_rtt_ns = 0
        self._min_rtt_stamp_ns = 0
        self.samples = 0
        self.backoff = 0

    def sample(self, rtt_ns: int, now_ns: int) -> None:
        """Fold in one measurement (RFC 6298 §2.2 and §2.3) and clear the backoff."""
        if rtt_ns <= 0:
            rtt_ns = 1
        self.latest_ns = rtt_ns
        if self.samples == 0:
            self.srtt_ns = rtt_ns
            self.rttvar_ns = rtt_ns >> 1
        else:
            srtt = self.srtt_ns
            delta = srtt - rtt_ns
            # RTTVAR first, with the old SRTT.
            self.rttvar_ns = (3 * self.rttvar_ns + (delta if delta >= 0 else -delta)) >> 2
            self.srtt_ns = (7 * srtt + rtt_ns) >> 3
        self.samples += 1
        rto = self.srtt_ns + 4 * self.rttvar_ns
        if rto < self.rto_min_ns:
            rto = self.rto_min_ns
        elif rto > self.rto_max_ns:
            rto = self.rto_max_ns
        self.rto_base_ns = rto
        self.backoff = 0
        if (
            rtt_ns <= self.min_rtt_ns
            or self.min_rtt_ns == 0
            or now_ns - self._min_rtt_stamp_ns > MIN_RTT_WINDOW_NS
        ):
            self.min_rtt_ns = rtt_ns
            self._min_rtt_stamp_ns = now_ns

    def rto_ns(self) -> int:
        """The current timeout: the base RTO doubled per backoff (§5.5), at most the maximum."""
        rto = self.rto_base_ns << self.backoff
        return rto if rto < self.rto_max_ns else self.rto_max_ns

    def back_off(self) -> None:
        """The timer expired: double the next timeout (§5.5)."""
        if (self.rto_base_ns << self.backoff) < self.rto_max_ns:
            self.backoff += 1

    def reset_for_data(self, fallback_ns: int) -> None:
        """§5.7: a SYN was retransmitted and no sample exists: start data at ``fallback_ns``."""
        if self.samples == 0 and self.rto_base_ns < fallback_ns:
            self.rto_base_ns = fallback_ns
        self.backoff = 0
