"""Path MTU cache: floors, only downwards, expiry after 10 minutes, bounded."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from netoffload.stack._netaddr import NS_PER_S
from netoffload.stack.pmtu import PmtuCache

A4, B4 = IPv4Address("198.18.0.2"), IPv4Address("198.18.0.3")
A6 = IPv6Address("fd00::2")
MIN = 60 * NS_PER_S


def test_unknown_destination_gets_the_link_mtu() -> None:
    cache = PmtuCache()
    assert cache.get(A4, 1500, 0) == 1500
    assert cache.learned(A4, 0) is None


def test_learns_only_downwards_with_floors() -> None:
    cache = PmtuCache()
    assert cache.learn(A4, 1400, 0) == 1400
    assert cache.learn(A4, 1450, 0) is None  # never raised by a message
    assert cache.learn(A4, 1400, 0) is None
    assert cache.learn(A4, 1000, 0) == 1000
    assert cache.learn(A4, 100, 0) == 552  # Linux min_pmtu
    assert cache.learn(A6, 576, 0) == 1280  # the IPv6 minimum MTU
    assert cache.get(A4, 1500, 0) == 552
    assert cache.learn(B4, 1500, 0, link_mtu=1500) is None  # teaches nothing
    assert cache.learned(B4, 0) is None


def test_never_above_the_interface_mtu() -> None:
    cache = PmtuCache()
    cache.learn(A4, 8000, 0)
    assert cache.get(A4, 1500, 0) == 1500
    assert cache.get(A4, 9000, 0) == 8000


def test_expires_after_ten_minutes() -> None:
    cache = PmtuCache()
    cache.learn(A4, 1400, 0)
    cache.learn(B4, 1300, 5 * MIN)
    assert cache.next_timer_ns() == 10 * MIN
    assert cache.on_timer(10 * MIN - 1) == []
    assert cache.get(A4, 1500, 10 * MIN - 1) == 1400
    assert cache.get(A4, 1500, 10 * MIN) == 1500  # lazily expired on read as well
    assert cache.on_timer(10 * MIN) == [A4]
    assert cache.next_timer_ns() == 15 * MIN
    # Learning the same value again restarts its expiry.
    cache.learn(B4, 1300, 14 * MIN)
    assert cache.on_timer(15 * MIN) == []
    assert cache.on_timer(24 * MIN) == [B4]
    assert cache.next_timer_ns() is None


def test_bounded() -> None:
    cache = PmtuCache(max_entries=3)
    for n in range(10):
        cache.learn(IPv4Address(f"198.18.1.{n}"), 1400, n)
        assert len(cache) <= 3
    assert cache.learned(IPv4Address("198.18.1.0"), 10) is None
    assert cache.learned(IPv4Address("198.18.1.9"), 10) == 1400
    cache.forget(IPv4Address("198.18.1.9"))
    assert len(cache) == 2
