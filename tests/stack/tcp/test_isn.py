"""RFC 6528 initial sequence numbers: ISN = M + F(4-tuple, secret), M a 4 µs clock."""

from __future__ import annotations

import hashlib
import random
from ipaddress import IPv4Address, IPv6Address

from netoffload.stack.tcp import IsnSource

A = (IPv4Address("198.18.0.1"), 40000)
B = (IPv4Address("198.18.0.2"), 80)
V6A = (IPv6Address("fd00::1"), 40000)
V6B = (IPv6Address("fd00::2"), 443)


def test_isn_is_the_keyed_hash_plus_a_4_microsecond_clock() -> None:
    rng = random.Random(99)
    key = random.Random(99).getrandbits(256).to_bytes(32, "big")
    source = IsnSource(rng)
    conn_id = A[0].packed + A[1].to_bytes(2, "big") + B[0].packed + B[1].to_bytes(2, "big")
    f = int.from_bytes(
        hashlib.blake2s(conn_id, key=key, digest_size=4, person=b"tcp-isn").digest(), "big"
    )
    now = 123_456_789_000
    assert source.isn(A, B, now) == (f + now // 4000) & 0xFFFFFFFF


def test_isn_advances_one_per_4_microseconds_and_wraps() -> None:
    source = IsnSource(random.Random(1))
    base = source.isn(A, B, 0)
    assert source.isn(A, B, 3_999) == base
    assert source.isn(A, B, 4_000) == (base + 1) & 0xFFFFFFFF
    assert source.isn(A, B, 4_000 * 1000) == (base + 1000) & 0xFFFFFFFF
    assert source.isn(A, B, 4_000 << 32) == base  # 2^32 ticks: once round (4.77 hours)


def test_isn_depends_on_the_4_tuple_and_the_key() -> None:
    source = IsnSource(random.Random(1))
    other_key = IsnSource(random.Random(2))
    now = 10**12
    values = {
        source.isn(A, B, now),
        source.isn(B, A, now),
        source.isn((A[0], 40001), B, now),
        source.isn(V6A, V6B, now),
        other_key.isn(A, B, now),
    }
    assert len(values) == 5


def test_timestamp_offset_is_per_connection_and_stable() -> None:
    source = IsnSource(random.Random(5))
    assert source.ts_offset(A, B) == source.ts_offset(A, B)
    assert source.ts_offset(A, B) != source.ts_offset((A[0], 40001), B)
    assert source.ts_offset(A, B) != source.isn(A, B, 0)
