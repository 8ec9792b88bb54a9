"""DoS filtering: every drop reason, lists, token buckets on a scripted clock, SYN cookies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Ether

from netoffload.engine.dosfilter import (
    NO_RULE,
    DosFilter,
    DosReason,
    DosVerdict,
    RateLimit,
    TokenBuckets,
)
from netoffload.engine.fields import FrameBatch

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
A, B, C = "198.18.0.1", "198.18.0.2", "198.19.7.7"
A6, B6 = "fd00::1", "fd00::2"
S = 1_000_000_000


def tcp(src: str = A, dst: str = C, flags: str = "A") -> bytes:
    return bytes(ETH / IP(src=src, dst=dst) / TCP(sport=1000, dport=80, flags=flags))


def verdicts(
    f: DosFilter, frames: list[bytes], now_ns: int = 0
) -> list[tuple[int, DosReason | None]]:
    got = f.filter_batch(FrameBatch.from_frames(frames), now_ns)
    return list(zip(got.verdict.tolist(), got.reasons(), strict=True))


def patched(frame: bytes, at: int, value: bytes) -> bytes:
    data = bytearray(frame)
    data[at : at + len(value)] = value
    return bytes(data)


GOOD = [
    tcp(flags="S"),
    tcp(flags="SA"),
    tcp(flags="FA"),
    tcp(flags="R"),
    tcp(flags="PA"),
    bytes(ETH / IP(src=A, dst=B) / UDP(sport=1, dport=2) / b"hello"),
    bytes(ETH / IPv6(src=A6, dst=B6) / TCP(flags="S")),
    bytes(ETH / IP(src=A, dst=B, flags="MF") / TCP(flags="S") / (b"x" * 12)),  # 32 bytes: first
    bytes(ETH / IP(src=A, dst=B, frag=3) / (b"x" * 20)),  # a last fragment
    bytes(ETH / IP(src=A, dst=B) / ICMP()),
    bytes(ETH / ARP()),
    bytes(ETH / IP(src=A, dst=B) / TCP()) + bytes(6),  # Ethernet padding
]


def test_good_frames_pass() -> None:
    assert verdicts(DosFilter(), GOOD) == [(DosVerdict.PASS, None)] * len(GOOD)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (patched(tcp(), 14, b"\x44"), DosReason.MALFORMED),  # IHL 4
        (tcp()[:30], DosReason.MALFORMED),  # IPv4 header cut
        (bytes(ETH / IPv6(src=A6, dst=B6) / TCP())[:50], DosReason.MALFORMED),
        (patched(tcp(), 16, b"\x00\x10"), DosReason.BAD_LENGTH),  # total length 16 < IHL
        (patched(tcp(), 16, b"\x05\xdc"), DosReason.BAD_LENGTH),  # total length past the frame
        (patched(bytes(ETH / IPv6(src=A6, dst=B6) / TCP()), 18, b"\x01\x00"), DosReason.BAD_LENGTH),
        (
            patched(bytes(ETH / IP(src=A, dst=B) / UDP() / b"xy"), 38, b"\x00\x04"),
            DosReason.BAD_LENGTH,
        ),
        (
            patched(bytes(ETH / IP(src=A, dst=B) / UDP() / b"xy"), 38, b"\x00\x40"),
            DosReason.BAD_LENGTH,
        ),
        (bytes(ETH / IP(src=A, dst=B, frag=8190, flags="MF") / (b"x" * 64)), DosReason.BAD_LENGTH),
        (patched(tcp()[:44], 16, b"\x00\x1e"), DosReason.BAD_HEADER_LENGTH),  # TCP header cut
        (patched(tcp(), 46, b"\x40"), DosReason.BAD_HEADER_LENGTH),  # data offset 4
        (patched(tcp(), 46, b"\xf0"), DosReason.BAD_HEADER_LENGTH),  # data offset past the packet
        (tcp(flags=""), DosReason.BAD_TCP_FLAGS),
        (tcp(flags="SF"), DosReason.BAD_TCP_FLAGS),
        (tcp(flags="SR"), DosReason.BAD_TCP_FLAGS),
        (tcp(flags="FR"), DosReason.BAD_TCP_FLAGS),
        (tcp(flags="FPU"), DosReason.BAD_TCP_FLAGS),
        (bytes(ETH / IP(src=A, dst=B, flags="MF", proto=6) / (b"x" * 8)), DosReason.TINY_FRAGMENT),
        (bytes(ETH / IP(src=A, dst=B, frag=1, proto=6) / (b"x" * 16)), DosReason.TINY_FRAGMENT),
        (bytes(ETH / IP(src=A, dst=B, flags="MF", frag=4) / (b"x" * 12)), DosReason.TINY_FRAGMENT),
        (
            bytes(ETH / IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(m=1, nh=17) / (b"x" * 4)),
            DosReason.TINY_FRAGMENT,
        ),
        (tcp(src=A, dst=A, flags="S"), DosReason.LAND),
        (bytes(ETH / IPv6(src=A6, dst=A6) / UDP()), DosReason.LAND),
    ],
)
def test_malformed_frames_are_dropped_with_their_reason(frame: bytes, reason: DosReason) -> None:
    f = DosFilter()
    got = f.filter_batch(FrameBatch.from_frames([*GOOD, frame]), 0)
    assert got.reasons()[-1] == reason
    assert got.verdict.tolist() == [0] * len(GOOD) + [DosVerdict.DROP]
    assert got.rule.tolist()[-1] == NO_RULE
    assert f.drops == {reason.value: 1}


def test_lists_by_longest_prefix_and_per_side() -> None:
    f = DosFilter()
    blocked = f.block("198.18.0.0/24")
    allowed = f.allow("198.18.0.1/32")
    blocked6 = f.block("fd00::/16", side="destination")
    frames = [tcp(src=A), tcp(src=B), tcp(src=C, dst=B), bytes(ETH / IPv6(src=A6, dst=B6) / UDP())]
    got = f.filter_batch(FrameBatch.from_frames(frames), 0)
    assert got.verdict.tolist() == [0, DosVerdict.DROP, 0, DosVerdict.DROP]
    assert got.rule.tolist() == [NO_RULE, blocked, NO_RULE, blocked6]
    assert f.rule_hits == {allowed: 1, blocked: 1, blocked6: 1}
    f.remove(blocked)
    assert f.filter_batch(FrameBatch.from_frames(frames), 0).verdict.tolist() == [0, 0, 0, 1]


def test_an_allowed_source_skips_the_rate_limits() -> None:
    f = DosFilter()
    f.allow(A)
    f.limit_sources(RateLimit(1, 1))
    got = verdicts(f, [tcp(src=A)] * 3 + [tcp(src=B)] * 3)
    assert [v for v, _ in got] == [0, 0, 0, 0, DosVerdict.RATE_LIMITED, DosVerdict.RATE_LIMITED]


def test_token_buckets_on_a_scripted_clock() -> None:
    f = DosFilter()
    rid = f.limit_sources(RateLimit(rate_pps=10, burst=5))
    frames = [tcp(src=A)] * 8 + [tcp(src=B)] * 2
    first = f.filter_batch(FrameBatch.from_frames(frames), 0)
    assert first.verdict.tolist() == [0] * 5 + [2] * 3 + [0, 0]
    assert first.rule.tolist() == [NO_RULE] * 5 + [rid] * 3 + [NO_RULE] * 2
    # 0.1 s later: one token for A (10 a second); B still has three.
    later = f.filter_batch(FrameBatch.from_frames(frames), S // 10)
    assert later.verdict.tolist() == [0] + [2] * 7 + [0, 0]
    # a second later both are full again (burst 5), no more
    again = f.filter_batch(FrameBatch.from_frames(frames), S // 10 + S)
    assert again.verdict.tolist() == [0] * 5 + [2] * 3 + [0, 0]
    assert f.drops == {"source_rate": 13}


def test_destination_and_icmp_limits() -> None:
    f = DosFilter()
    f.limit_destinations(RateLimit(1, 2))
    f.limit_icmp(RateLimit(1, 1))
    icmp = bytes(ETH / IP(src=A, dst=B) / ICMP())
    got = verdicts(f, [tcp(), tcp(), tcp(), icmp, icmp])
    assert got == [
        (0, None),
        (0, None),
        (2, DosReason.DESTINATION_RATE),
        (0, None),
        (2, DosReason.ICMP_RATE),
    ]


def test_syns_over_their_limit_get_syn_cookies_not_drops() -> None:
    f = DosFilter()
    rid = f.limit_syn(RateLimit(rate_pps=100, burst=3))
    syns = [tcp(src=f"198.18.{i}.9", dst=C, flags="S") for i in range(6)]
    other = [tcp(flags="SA"), tcp(dst=B, flags="S")]
    got = f.filter_batch(FrameBatch.from_frames(syns + other), 0)
    assert got.verdict.tolist() == [0, 0, 0, 3, 3, 3, 0, 0]
    assert got.rule.tolist()[3:6] == [rid] * 3
    assert got.reasons()[3] == DosReason.SYN_RATE
    assert f.syn_cookies == 3
    assert not f.drops


@settings(max_examples=100, deadline=None)
@given(
    rate=st.integers(1, 50),
    burst=st.integers(1, 8),
    steps=st.lists(
        st.tuples(st.integers(0, S // 5), st.lists(st.integers(0, 3), max_size=20)), max_size=8
    ),
)
def test_buckets_equal_a_per_packet_model(
    rate: int, burst: int, steps: list[tuple[int, list[int]]]
) -> None:
    buckets = TokenBuckets(RateLimit(rate, burst))
    model: dict[int, tuple[int, int]] = {}  # key -> (nano-tokens, last)
    now = 0
    for gap, keys in steps:
        now += gap
        got = buckets.take(np.array(keys, dtype=np.uint64), now).tolist()
        want = []
        for k in keys:
            tokens, last = model.get(k, (burst * S, now))
            tokens = min(burst * S, tokens + (now - last) * rate)
            ok = tokens >= S
            model[k] = (tokens - S if ok else tokens, now)
            want.append(ok)
        assert got == want


def test_buckets_stay_bounded_under_a_flood_of_sources() -> None:
    buckets = TokenBuckets(RateLimit(1, 1), max_buckets=100)
    for t in range(5):
        keys = np.arange(t * 1000, t * 1000 + 1000, dtype=np.uint64)
        assert buckets.take(keys, t).all()
        assert len(buckets) <= 100
    # Kept buckets keep their state (empty: one token a second); a forgotten key starts full.
    assert len(buckets) == 100
    assert not buckets.take(np.array([4000], dtype=np.uint64), 5).any()
    assert buckets.take(np.array([0], dtype=np.uint64), 5).all()


def test_a_bucket_that_refilled_is_forgotten_first() -> None:
    buckets = TokenBuckets(RateLimit(10, 1), max_buckets=2)
    buckets.take(np.array([1], dtype=np.uint64), 0)
    buckets.take(np.array([2], dtype=np.uint64), S)  # key 1 has refilled by now
    buckets.take(np.array([3], dtype=np.uint64), S)
    assert len(buckets) == 2
    assert not buckets.take(np.array([2, 3], dtype=np.uint64), S).any()
