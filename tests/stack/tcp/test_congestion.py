"""Congestion control against the RFCs' own equations, computed here from the RFC text."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from netoffload.stack.tcp import Cubic, NewReno

MSS = 1000
RTT_NS = 100_000_000
S = 1e9


@dataclass
class CubicModel:
    """RFC 9438 transcribed: cwnd and W in segments, t in seconds (§4.1-§4.8)."""

    C: float = 0.4  # §5.1
    beta: float = 0.7  # §4.6
    cwnd: float = 10.0  # RFC 6928 initial window with MSS 1000: 10 segments
    ssthresh: float = math.inf
    w_max: float = 0.0
    k: float = 0.0
    epoch_s: float | None = None
    w_est: float = 0.0
    cwnd_prior: float = 0.0
    alpha: float = 3 * (1 - 0.7) / (1 + 0.7)  # §4.3
    after_timeout: bool = False

    def w_cubic(self, t: float) -> float:
        return self.C * (t - self.k) ** 3 + self.w_max  # Figure 1

    def ack(self, segments: float, now_s: float, rtt_s: float) -> None:
        if self.cwnd < self.ssthresh:  # slow start (RFC 5681), up to ssthresh
            room = self.ssthresh - self.cwnd
            if segments <= room:
                self.cwnd += segments
                return
            self.cwnd = self.ssthresh
            segments -= room
        if self.epoch_s is None:  # §4.2: a congestion avoidance stage begins
            self.epoch_s = now_s
            cwnd_epoch = self.cwnd
            if self.after_timeout or self.w_max <= cwnd_epoch:  # §4.8
                self.w_max, self.k = cwnd_epoch, 0.0
            else:
                self.k = ((self.w_max - cwnd_epoch) / self.C) ** (1 / 3)  # Figure 2
            self.after_timeout = False
            self.w_est = cwnd_epoch
        t = now_s - self.epoch_s
        self.w_est += self.alpha * segments / self.cwnd  # Figure 4
        if self.w_est >= self.cwnd_prior:
            self.alpha = 1.0
        if self.w_cubic(t) < self.w_est:
            self.cwnd = self.w_est  # §4.3 Reno-friendly region
            return
        target = min(max(self.w_cubic(t + rtt_s), self.cwnd), 1.5 * self.cwnd)  # §4.4/4.5
        self.cwnd += (target - self.cwnd) / self.cwnd * segments

    def loss(self, flight: float) -> None:
        if self.cwnd < self.w_max:  # §4.7 fast convergence
            self.w_max = self.cwnd * (1 + self.beta) / 2
        else:
            self.w_max = self.cwnd
        self.cwnd_prior = self.cwnd
        self.ssthresh = flight * self.beta  # §4.6
        self.cwnd = max(self.ssthresh, 2)
        self.alpha = 3 * (1 - self.beta) / (1 + self.beta)
        self.epoch_s = None

    def timeout(self, flight: float) -> None:
        self.loss(flight)
        self.cwnd = 1  # §4.8: as RFC 5681, one segment
        self.after_timeout = True


def drive(rounds: int, losses: dict[int, str]) -> list[tuple[float, float, float]]:
    """ACK every segment of each window over one RTT; a loss at the listed rounds.

    Returns (time, expected cwnd, actual cwnd) in segments after every ACK.
    """
    cc = Cubic(MSS)
    model = CubicModel()
    now_ns = 10**12
    trace = []
    for rnd in range(rounds):
        kind = losses.get(rnd)
        if kind is not None:
            flight = cc.cwnd  # the sender is window-limited: FlightSize == cwnd
            if kind == "loss":
                cc.on_congestion(now_ns, flight)
                model.loss(flight / MSS)
            else:
                cc.on_timeout(now_ns, flight)
                model.timeout(flight / MSS)
            assert cc.cwnd == pytest.approx(model.cwnd * MSS, abs=1)
        acks = max(1, int(cc.cwnd // MSS))
        for _ in range(acks):
            now_ns += RTT_NS // acks
            cc.on_ack(MSS, now_ns, RTT_NS)
            model.ack(1.0, now_ns / S, RTT_NS / S)
            trace.append((now_ns / S, model.cwnd, cc.cwnd / MSS))
    return trace


def test_cubic_follows_rfc_9438_through_a_scripted_loss_pattern() -> None:
    # Slow start to a first loss, a long avoidance stage (concave, plateau, convex),
    # an early loss (fast convergence), and a timeout.
    trace = drive(120, {7: "loss", 40: "loss", 48: "loss", 90: "timeout"})
    for t, expected, actual in trace:
        # Within 2 bytes: the implementation keeps whole bytes plus a carried fraction.
        assert actual == pytest.approx(expected, abs=2 / MSS), t


def test_cubic_reduction_k_and_fast_convergence_in_closed_form() -> None:
    cc = Cubic(MSS)
    cc.cwnd = 100 * MSS
    cc.on_congestion(0, 100 * MSS)
    assert cc.cwnd == 70 * MSS and cc.ssthresh == 70 * MSS  # β = 0.7
    assert cc.w_max == 100
    # The first avoidance ACK starts the epoch: K = cbrt(W_max (1 - β) / C).
    cc.on_ack(MSS, 1, RTT_NS)
    assert cc.k_s == pytest.approx((100 * 0.3 / 0.4) ** (1 / 3))
    # A loss below W_max: W_max = cwnd (1 + β) / 2.
    w = cc.cwnd / MSS
    cc.on_congestion(2, cc.cwnd)
    assert cc.w_max == pytest.approx(w * 0.85, abs=1 / MSS)  # cwnd carries < 1 byte


def test_cubic_reaches_w_max_about_k_after_the_loss() -> None:
    # The concave region ends on a plateau at W_max, K seconds after the reduction.
    cc = Cubic(MSS)
    cc.cwnd = 100 * MSS
    cc.on_congestion(0, 100 * MSS)
    k = (100 * 0.3 / 0.4) ** (1 / 3)  # 4.22 s
    now = 0
    seen: dict[float, float] = {}
    while now < (k + 0.05) * S:
        acks = int(cc.cwnd // MSS)
        for _ in range(acks):
            now += RTT_NS // acks
            cc.on_ack(MSS, now, RTT_NS)
        seen[now / S] = cc.cwnd / MSS
    for t, cwnd in seen.items():
        if t > 0.5:
            # One RTT behind W_cubic(t + RTT), i.e. about at W_cubic(t) (Figure 1).
            assert cwnd == pytest.approx(0.4 * (t - k) ** 3 + 100, abs=1.0), t
    assert 99.0 <= cc.cwnd / MSS <= 100.5


def test_cubic_is_reno_friendly_at_small_windows() -> None:
    # With a small W_max the cubic curve is flat and W_est (AIMD with alpha) governs.
    cc = Cubic(MSS)
    cc.cwnd = 10 * MSS
    cc.on_congestion(0, 10 * MSS)
    now = 0
    for _ in range(50):
        now += RTT_NS // 7
        cc.on_ack(MSS, now, RTT_NS)
    model = CubicModel(cwnd=10.0)
    model.loss(10.0)
    now = 0
    for _ in range(50):
        now += RTT_NS // 7
        model.ack(1.0, now / S, RTT_NS / S)
    assert model.w_cubic(now / S - (model.epoch_s or 0)) < model.w_est  # the region holds
    assert cc.cwnd / MSS == pytest.approx(model.w_est, abs=1 / MSS)


def test_newreno_slow_start_avoidance_and_backoff() -> None:
    cc = NewReno(MSS)
    assert cc.cwnd == 10 * MSS  # RFC 6928 with MSS 1000
    cc.on_ack(5 * MSS, 0, RTT_NS)
    assert cc.cwnd == 15 * MSS  # slow start: +bytes acked
    cc.on_congestion(0, 15 * MSS)
    assert cc.ssthresh == 7500 and cc.cwnd == 7500  # RFC 5681 eq. 4
    acked = 0
    while acked < 7500:  # one window's worth of ACKs: +1 MSS (RFC 5681 eq. 3, RFC 3465)
        cc.on_ack(MSS // 2, 0, RTT_NS)
        acked += MSS // 2
    assert cc.cwnd == 8500
    cc.on_timeout(0, 3 * MSS)
    assert cc.cwnd == MSS and cc.ssthresh == 2 * MSS  # never below 2 SMSS


def test_mss_change_keeps_the_window_in_segments() -> None:
    for cc in (Cubic(MSS), NewReno(MSS)):
        cc.set_mss(500)
        assert cc.cwnd == 10 * 500
