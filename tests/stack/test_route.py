"""Routes: connected prefixes, static routes, longest prefix match, source selection."""

from __future__ import annotations

import errno
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
)

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.stack.route import RouteError, RouteKind, RouteTable

ETH0, ETH1 = 1, 2


def v4(text: str) -> IPv4Address:
    return IPv4Address(text)


def v6(text: str) -> IPv6Address:
    return IPv6Address(text)


@pytest.fixture
def table() -> RouteTable:
    t = RouteTable()
    t.add_address(ETH0, IPv4Interface("198.18.0.1/24"))
    t.add_address(ETH1, IPv4Interface("198.19.5.1/16"))
    t.add_address(ETH0, IPv6Interface("fd00::1/64"))
    t.add_address(ETH0, IPv6Interface("fe80::1/64"))
    return t


def test_connected_route_is_on_link(table: RouteTable) -> None:
    hop = table.lookup(v4("198.18.0.77"))
    assert hop is not None
    assert hop.route.kind is RouteKind.CONNECTED
    assert hop.route.on_link
    assert hop.address == v4("198.18.0.77")
    assert hop.interface == ETH0
    assert hop.source == v4("198.18.0.1")


def test_no_route_without_default(table: RouteTable) -> None:
    assert table.lookup(v4("203.0.113.9")) is None
    assert table.lookup(v6("2001:db8::1")) is None


def test_default_gateway_and_longest_prefix(table: RouteTable) -> None:
    table.add_default(v4("198.18.0.254"))
    table.add_route("198.19.7.0/24", gateway=v4("198.19.0.2"))
    far = table.lookup(v4("203.0.113.9"))
    assert far is not None
    assert far.address == v4("198.18.0.254")
    assert far.interface == ETH0
    assert far.source == v4("198.18.0.1")
    # 198.19.7.9 is in the connected /16 of ETH1 but the /24 static route is longer.
    near = table.lookup(v4("198.19.7.9"))
    assert near is not None
    assert near.address == v4("198.19.0.2")
    assert near.interface == ETH1
    assert near.source == v4("198.19.5.1")
    plain = table.lookup(v4("198.19.8.9"))
    assert plain is not None and plain.route.on_link and plain.address == v4("198.19.8.9")


def test_metric_breaks_ties_then_age(table: RouteTable) -> None:
    table.add_route("0.0.0.0/0", gateway=v4("198.18.0.254"), metric=100)
    table.add_route("0.0.0.0/0", gateway=v4("198.19.0.1"), metric=50)
    hop = table.lookup(v4("203.0.113.1"))
    assert hop is not None and hop.address == v4("198.19.0.1") and hop.interface == ETH1
    table.remove_route("0.0.0.0/0", metric=50)
    hop = table.lookup(v4("203.0.113.1"))
    assert hop is not None and hop.address == v4("198.18.0.254")


def test_same_prefix_and_metric_is_eexist(table: RouteTable) -> None:
    table.add_default(v4("198.18.0.254"))
    with pytest.raises(RouteError) as err:
        table.add_default(v4("198.18.0.253"))
    assert err.value.errno == errno.EEXIST


def test_gateway_must_be_on_link(table: RouteTable) -> None:
    with pytest.raises(RouteError) as err:
        table.add_default(v4("203.0.113.1"))
    assert err.value.errno == errno.ENETUNREACH
    with pytest.raises(RouteError):
        table.add_route("10.0.0.0/8")  # neither gateway nor interface
    with pytest.raises(RouteError):
        table.add_route("10.0.0.0/8", gateway=v6("fd00::9"))  # wrong version
    with pytest.raises(RouteError) as missing:
        table.remove_route("10.0.0.0/8")
    assert missing.value.errno == errno.ESRCH


def test_preferred_source(table: RouteTable) -> None:
    table.add_address(ETH0, IPv4Interface("198.18.0.2/24"))
    table.add_route("10.0.0.0/8", gateway=v4("198.18.0.254"), source=v4("198.18.0.2"))
    hop = table.lookup(v4("10.1.2.3"))
    assert hop is not None and hop.source == v4("198.18.0.2")
    with pytest.raises(RouteError):
        table.add_route("10.0.0.0/9", interface=ETH0, source=v4("198.18.0.99"))


def test_ipv4_source_is_the_subnet_address_else_primary() -> None:
    t = RouteTable()
    t.add_address(ETH0, IPv4Interface("198.18.0.1/24"))
    t.add_address(ETH0, IPv4Interface("198.18.1.1/24"))
    t.add_route("0.0.0.0/0", gateway=v4("198.18.1.254"))
    assert t.select_source(v4("198.18.1.9"), ETH0) == v4("198.18.1.1")
    hop = t.lookup(v4("203.0.113.1"))
    # The gateway's subnet decides, as inet_select_addr does with the route's gateway.
    assert hop is not None and hop.source == v4("198.18.1.1")
    assert t.select_source(v4("203.0.113.1"), ETH0) == v4("198.18.0.1")


def test_ipv6_source_selection_scope_and_prefix() -> None:
    t = RouteTable()
    t.add_address(ETH0, IPv6Interface("fe80::1/64"))
    t.add_address(ETH0, IPv6Interface("fd00:1::1/64"))
    t.add_address(ETH0, IPv6Interface("fd00:2::1/64"))
    # Rule 2: a link-local destination gets the link-local source.
    assert t.select_source(v6("fe80::9"), ETH0) == v6("fe80::1")
    # Rule 8: longest matching prefix among the global ones.
    assert t.select_source(v6("fd00:2::9"), ETH0) == v6("fd00:2::1")
    assert t.select_source(v6("fd00:1:0:0:1::9"), ETH0) == v6("fd00:1::1")
    # Rule 2 again: a global destination never gets the link-local source.
    assert t.select_source(v6("2001:db8::1"), ETH0) in (v6("fd00:1::1"), v6("fd00:2::1"))
    # Rule 1: the destination itself.
    assert t.select_source(v6("fd00:2::1"), ETH0) == v6("fd00:2::1")
    # Multicast all-nodes (link scope) gets the link-local address.
    assert t.select_source(v6("ff02::1"), ETH0) == v6("fe80::1")


def test_ipv6_multicast_is_on_link(table: RouteTable) -> None:
    hop = table.lookup(v6("ff02::1:ff00:2"))
    assert hop is not None
    assert hop.route.on_link and hop.interface == ETH0 and hop.source == v6("fe80::1")


def test_limited_broadcast_and_directed_broadcast(table: RouteTable) -> None:
    assert table.is_broadcast(v4("255.255.255.255"))
    assert table.is_broadcast(v4("198.18.0.255"))
    assert table.is_broadcast(v4("198.19.255.255"))
    assert not table.is_broadcast(v4("198.18.0.254"))
    hop = table.lookup(v4("255.255.255.255"))
    assert hop is not None and hop.interface == ETH0 and hop.source == v4("198.18.0.1")


def test_remove_address_removes_connected_route(table: RouteTable) -> None:
    assert table.is_local(v4("198.18.0.1"))
    table.remove_address(ETH0, IPv4Interface("198.18.0.1/24"))
    assert not table.is_local(v4("198.18.0.1"))
    assert table.lookup(v4("198.18.0.9")) is None
    with pytest.raises(RouteError) as err:
        table.remove_address(ETH0, IPv4Interface("198.18.0.1/24"))
    assert err.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(RouteError):
        table.add_address(ETH0, IPv6Interface("fd00::1/64"))
    table.remove_address(ETH0, IPv6Interface("fd00::1/64"))
    table.remove_address(ETH0, IPv6Interface("fe80::1/64"))
    assert table.lookup(v6("ff02::1")) is None
    assert all(r.version == 4 for r in (x.destination for x in table.routes()))


def test_routes_listing(table: RouteTable) -> None:
    table.add_default(v6("fd00::fe"))
    listing = table.routes(6)
    assert listing[-1].destination == IPv6Network("::/0")
    assert listing[-1].metric == 1024
    assert {r.destination for r in table.routes(4)} == {
        IPv4Network("198.18.0.0/24"),
        IPv4Network("198.19.0.0/16"),
    }


# An independent model: scan every route, keep the longest prefix, then the lowest metric,
# then the first added.
prefixes = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
    lambda t: IPv4Network((t[0] >> (32 - t[1]) << (32 - t[1]) if t[1] else 0, t[1]))
)


@settings(max_examples=200, deadline=None)
@given(
    routes=st.lists(st.tuples(prefixes, st.integers(0, 3)), max_size=25),
    probes=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20),
)
def test_longest_prefix_match_against_a_linear_scan(
    routes: list[tuple[IPv4Network, int]], probes: list[int]
) -> None:
    t = RouteTable()
    t.add_address(ETH0, IPv4Interface("198.18.0.1/32"))
    added: list[tuple[IPv4Network, int, int]] = []
    for n, (network, metric) in enumerate(routes):
        try:
            t.add_route(network, interface=ETH0, metric=metric)
        except RouteError:
            continue
        added.append((network, metric, n))
    for value in probes:
        dst = IPv4Address(value)
        matching = [r for r in added if dst in r[0]]
        hop = t.lookup(dst)
        if dst == IPv4Address("198.18.0.1"):
            assert hop is not None
            continue
        if not matching:
            assert hop is None or dst == IPv4Address("255.255.255.255")
            continue
        best = min(matching, key=lambda r: (-r[0].prefixlen, r[1], r[2]))
        assert hop is not None
        assert (hop.route.destination, hop.route.metric) == (best[0], best[1])


def test_address_parsing_helpers_agree() -> None:
    t = RouteTable()
    t.add_address(ETH0, IPv4Interface("198.18.0.1/24"))
    assert t.addresses(ETH0) == (IPv4Interface("198.18.0.1/24"),)
    assert t.addresses(ETH1) == ()
    assert t.is_local(ip_address("198.18.0.1"))


def test_cached_answers_follow_every_change(table: RouteTable) -> None:
    dst = v4("203.0.113.9")
    assert table.lookup(dst) is None
    table.add_default(v4("198.18.0.254"))
    first = table.lookup(dst)
    assert first is not None and first.address == v4("198.18.0.254")
    table.add_route("203.0.113.0/24", gateway=v4("198.19.0.7"))
    second = table.lookup(dst)
    assert second is not None and second.address == v4("198.19.0.7")
    table.remove_route("203.0.113.0/24")
    third = table.lookup(dst)
    assert third is not None and third.address == v4("198.18.0.254")
    table.add_address(ETH0, IPv4Interface("198.18.0.5/24"))
    table.remove_address(ETH0, IPv4Interface("198.18.0.1/24"))
    fourth = table.lookup(dst)
    assert fourth is not None and fourth.source == v4("198.18.0.5")
