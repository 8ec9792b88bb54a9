"""SYN cookies: round trips, and forged, altered or stale cookies do not decode."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.engine.syncookie import (
    MSS_TABLE_IPV4,
    MSS_TABLE_IPV6,
    PERIOD_NS,
    SynCookies,
)

SECRET = bytes(range(32))
A4, B4 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
A6, B6 = IPv6Address("fd00::1"), IPv6Address("fd00::2")


@settings(max_examples=200, deadline=None)
@given(
    v6=st.booleans(),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    isn=st.integers(0, 2**32 - 1),
    mss=st.integers(0, 9000),
    now=st.integers(0, 2**62),
    wait=st.integers(0, 2 * PERIOD_NS),
)
def test_a_cookie_decodes_to_its_mss_within_its_age(  # noqa: PLR0917
    v6: bool, sport: int, dport: int, isn: int, mss: int, now: int, wait: int
) -> None:
    src, dst = (A6, B6) if v6 else (A4, B4)
    table = MSS_TABLE_IPV6 if v6 else MSS_TABLE_IPV4
    cookies = SynCookies(SECRET)
    cookie = cookies.encode(src, dst, sport, dport, client_isn=isn, mss=mss, now_ns=now)
    assert 0 <= cookie < 2**32
    got = cookies.decode(src, dst, sport, dport, client_isn=isn, cookie=cookie, now_ns=now + wait)
    age = (now + wait) // PERIOD_NS - now // PERIOD_NS
    if age >= 2:
        assert got is None
    else:
        assert got == max((v for v in table if v <= mss), default=table[0])


def test_the_largest_mss_not_above_the_peers() -> None:
    cookies = SynCookies(SECRET)
    for mss, want in ((1460, 1460), (1459, 1440), (9000, 1460), (100, 536)):
        cookie = cookies.encode(A4, B4, 1, 2, client_isn=7, mss=mss, now_ns=0)
        assert cookies.decode(A4, B4, 1, 2, client_isn=7, cookie=cookie, now_ns=0) == want


@settings(max_examples=200, deadline=None)
@given(flip=st.integers(0, 31), field=st.sampled_from(["cookie", "isn", "sport", "src", "secret"]))
def test_an_altered_or_forged_cookie_does_not_decode(flip: int, field: str) -> None:
    cookies = SynCookies(SECRET)
    cookie = cookies.encode(A4, B4, 40000, 80, client_isn=12345, mss=1460, now_ns=10 * PERIOD_NS)
    args = {"cookie": cookie, "client_isn": 12345, "now_ns": 10 * PERIOD_NS}
    src, sport, checker = A4, 40000, cookies
    if field == "cookie":
        args["cookie"] ^= 1 << flip
    elif field == "isn":
        args["client_isn"] ^= 1 << flip
    elif field == "sport":
        sport ^= 1 << (flip % 16)
    elif field == "src":
        src = IPv4Address(int(A4) ^ (1 << flip))
    else:
        checker = SynCookies(bytes(31) + bytes([flip + 1]))
    got = checker.decode(src, B4, sport, 80, **args)
    # As in Linux, the cookie's two lowest bits are the MSS index plus a hash, and the
    # sequence number is added in: flipping one of those bits may pick another table value
    # (harmless: the MSS is only ever one of the table's). Any other change is refused.
    assert got is None or (field in ("cookie", "isn") and flip < 2)


def test_a_cookie_from_two_periods_ago_is_stale_and_one_from_the_future_too() -> None:
    cookies = SynCookies(SECRET)
    cookie = cookies.encode(A4, B4, 1, 2, client_isn=0, mss=1460, now_ns=5 * PERIOD_NS)
    check = {"client_isn": 0, "cookie": cookie}
    assert cookies.decode(A4, B4, 1, 2, now_ns=6 * PERIOD_NS + 1, **check) == 1460
    assert cookies.decode(A4, B4, 1, 2, now_ns=7 * PERIOD_NS, **check) is None
    assert cookies.decode(A4, B4, 1, 2, now_ns=4 * PERIOD_NS, **check) is None


def test_bad_secrets_and_mixed_families_are_refused() -> None:
    with pytest.raises(ValueError):
        SynCookies(b"short")
    with pytest.raises(ValueError):
        SynCookies(SECRET).encode(A4, B6, 1, 2, client_isn=0, mss=1460, now_ns=0)
