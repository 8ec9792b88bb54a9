"""RFC 6298's estimator, step by step with numbers worked by hand from §2."""

from __future__ import annotations

from netoffload.stack.tcp.rtt import RttEstimator

MS = 1_000_000


def test_first_and_second_samples_rfc_6298_section_2() -> None:
    rtt = RttEstimator(rto_initial_ns=1000 * MS, rto_min_ns=200 * MS, rto_max_ns=120_000 * MS)
    assert rtt.rto_ns() == 1000 * MS  # (2.1) before any sample
    rtt.sample(100 * MS, now_ns=0)
    # (2.2) SRTT = R, RTTVAR = R/2, RTO = SRTT + max(G, 4·RTTVAR) = 100 + 200.
    assert (rtt.srtt_ns, rtt.rttvar_ns, rtt.rto_ns()) == (100 * MS, 50 * MS, 300 * MS)
    rtt.sample(200 * MS, now_ns=1)
    # (2.3) RTTVAR = 3/4·50 + 1/4·|100 - 200| = 62.5; SRTT = 7/8·100 + 1/8·200 = 112.5.
    assert (rtt.srtt_ns, rtt.rttvar_ns) == (112_500_000, 62_500_000)
    assert rtt.rto_ns() == 112_500_000 + 4 * 62_500_000


def test_bounds_and_backoff() -> None:
    rtt = RttEstimator(rto_initial_ns=1000 * MS, rto_min_ns=200 * MS, rto_max_ns=60_000 * MS)
    rtt.sample(1 * MS, now_ns=0)
    assert rtt.rto_ns() == 200 * MS  # (2.4), with Linux's 200 ms floor
    for expected in (400, 800, 1600, 3200):
        rtt.back_off()  # (5.5)
        assert rtt.rto_ns() == expected * MS
    for _ in range(20):
        rtt.back_off()
    assert rtt.rto_ns() == 60_000 * MS  # (2.5) an upper bound
    rtt.sample(1 * MS, now_ns=1)  # Karn: a valid sample ends the backoff
    assert rtt.backoff == 0 and rtt.rto_ns() == 200 * MS


def test_rto_after_a_retransmitted_syn_is_three_seconds() -> None:
    rtt = RttEstimator(rto_initial_ns=1000 * MS, rto_min_ns=200 * MS, rto_max_ns=120_000 * MS)
    rtt.back_off()
    rtt.reset_for_data(3000 * MS)  # (5.7)
    assert rtt.rto_ns() == 3000 * MS
