"""Routes: connected prefixes, static routes and gateways, longest prefix first.

A ``RouteTable`` holds the addresses of every interface (each adds its
connected, on-link route, as ``ip addr add 198.18.0.1/24`` does) and any
static routes. ``lookup(dst)`` picks the longest matching prefix, then the
lowest metric, and answers with the neighbour to resolve, the interface and
the source address to use. Interfaces are named by the integer id the
``Interface`` gives them.

Metrics default to what iproute2 gives: 0 for IPv4, 256 for IPv6 connected
prefixes and 1024 for IPv6 static routes.
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Final

from netoffload.stack._netaddr import (
    LIMITED_BROADCAST,
    IpAddress,
    IpInterface,
    IpNetwork,
    common_prefix_len,
    ipv6_scope,
)

V4_METRIC: Final = 0
V6_CONNECTED_METRIC: Final = 256
V6_STATIC_METRIC: Final = 1024
#: Linux adds ff00::/8 on every IPv6 interface (table local), so multicast routes on-link.
V6_MULTICAST: Final = IPv6Network("ff00::/8")
#: Destinations whose lookup answer is kept; past this the cache starts again.
CACHE_ENTRIES: Final = 4096


class _Any(Enum):
    ANY = "any"


class RouteError(ValueError):
    """A route or address change that the table refuses; ``errno`` says which, as Linux would."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


class RouteKind(StrEnum):
    """Where a route came from."""

    CONNECTED = "connected"  # from an interface address ("proto kernel")
    STATIC = "static"


@dataclass(frozen=True, slots=True)
class Route:
    """One route: ``destination`` reached through ``interface``, via ``gateway`` or on-link.

    ``source`` is the preferred source address (``ip route ... src``); when
    ``None`` the table selects one per destination.
    """

    destination: IpNetwork
    interface: int
    gateway: IpAddress | None = None
    metric: int = 0
    source: IpAddress | None = None
    kind: RouteKind = RouteKind.STATIC

    @property
    def on_link(self) -> bool:
        """True when the destination is a neighbour (no gateway)."""
        return self.gateway is None


@dataclass(frozen=True, slots=True)
class NextHop:
    """The answer of ``RouteTable.lookup``.

    ``address`` is the neighbour to resolve: the gateway, or the destination
    itself on an on-link route. ``source`` is ``None`` only when no interface
    has an address of the destination's version.
    """

    route: Route
    address: IpAddress
    interface: int
    source: IpAddress | None


@dataclass(slots=True)
class _Family:
    """The routes of one IP version, by prefix length then network."""

    bits: int
    routes: dict[tuple[int, int], list[tuple[int, Route]]] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)  # populated prefix lengths, longest first

    def mask(self, length: int) -> int:
        return ((1 << self.bits) - 1) ^ ((1 << (self.bits - length)) - 1)


class RouteTable:
    """Interface addresses, connected and static routes, for both IP versions."""

    def __init__(self) -> None:
        self._families = {4: _Family(32), 6: _Family(128)}
        # Insertion order is the primary-address order (the first address of a subnet is
        # its primary, as in Linux).
        self._addresses: list[tuple[int, IpInterface]] = []
        self._order = itertools.count()
        # Answers of lookup by destination, dropped on any change (Linux keeps a dst cache
        # per socket and route for the same reason: the lookup is slow per packet).
        self._cache: dict[IpAddress, NextHop | None] = {}

    # --- addresses ---------------------------------------------------------

    def add_address(self, interface: int, address: IpInterface) -> None:
        """Assign ``address`` (with its prefix) to ``interface`` and add its connected route."""
        if (interface, address) in self._addresses:
            raise RouteError(errno.EEXIST, f"{address} is already on interface {interface}")
        first_v6 = address.version == 6 and not any(
            i == interface and a.version == 6 for i, a in self._addresses
        )
        self._addresses.append((interface, address))
        self._cache.clear()
        metric = V4_METRIC if address.version == 4 else V6_CONNECTED_METRIC
        network = address.network
        if not self._find(network, interface=interface, gateway=None, metric=metric):
            self._insert(Route(network, interface, None, metric, None, RouteKind.CONNECTED))
        if first_v6 and not self._find(V6_MULTICAST, interface=interface, metric=metric):
            self._insert(Route(V6_MULTICAST, interface, None, metric, None, RouteKind.CONNECTED))

    def remove_address(self, interface: int, address: IpInterface) -> None:
        """Remove ``address`` and, when no address on the interface still covers it, its route."""
        self._cache.clear()
        try:
            self._addresses.remove((interface, address))
        except ValueError:
            raise RouteError(
                errno.EADDRNOTAVAIL, f"{address} is not on interface {interface}"
            ) from None
        remaining = [a for i, a in self._addresses if i == interface]
        if not any(a.network == address.network for a in remaining):
            for route in self._find(address.network, interface=interface, gateway=None):
                if route.kind is RouteKind.CONNECTED:
                    self._delete(route)
        if address.version == 6 and not any(a.version == 6 for a in remaining):
            for route in self._find(V6_MULTICAST, interface=interface):
                self._delete(route)

    def addresses(self, interface: int | None = None) -> tuple[IpInterface, ...]:
        """The assigned addresses, of one interface or all, in the order they were added."""
        return tuple(a for i, a in self._addresses if interface is None or i == interface)

    def is_local(self, address: IpAddress) -> bool:
        """True when ``address`` is assigned to some interface."""
        return any(a.ip == address for _, a in self._addresses)

    def is_broadcast(self, address: IpAddress) -> bool:
        """True for 255.255.255.255 and the directed broadcast of a local IPv4 subnet."""
        if not isinstance(address, IPv4Address):
            return False
        if address == LIMITED_BROADCAST:
            return True
        return any(
            a.version == 4 and a.network.prefixlen < 31 and a.network.broadcast_address == address
            for _, a in self._addresses
        )

    # --- routes ------------------------------------------------------------

    def add_route(
        self,
        destination: IpNetwork | str,
        *,
        gateway: IpAddress | None = None,
        interface: int | None = None,
        metric: int | None = None,
        source: IpAddress | None = None,
    ) -> Route:
        """Add a static route and return it.

        Without ``interface`` the gateway must be on a connected prefix (as
        Linux's "Nexthop has invalid gateway" rule); ``source`` must be a local
        address.
        """
        network = ip_network(destination) if isinstance(destination, str) else destination
        version = network.version
        if gateway is not None and gateway.version != version:
            raise RouteError(errno.EINVAL, f"gateway {gateway} is not IPv{version}")
        if source is not None and (source.version != version or not self.is_local(source)):
            raise RouteError(errno.EINVAL, f"preferred source {source} is not a local address")
        if interface is None:
            if gateway is None:
                raise RouteError(errno.EINVAL, "a route needs a gateway or an interface")
            interface = self._connected_interface(gateway)
            if interface is None:
                raise RouteError(errno.ENETUNREACH, f"gateway {gateway} is not on a local prefix")
        if metric is None:
            metric = V4_METRIC if version == 4 else V6_STATIC_METRIC
        if metric < 0:
            raise RouteError(errno.EINVAL, f"metric {metric} is negative")
        # Linux refuses a second route to one prefix with one metric, whatever its next hop.
        if any(r.kind is RouteKind.STATIC for r in self._find(network, metric=metric)):
            raise RouteError(errno.EEXIST, f"route to {network} metric {metric} already exists")
        route = Route(network, interface, gateway, metric, source, RouteKind.STATIC)
        self._insert(route)
        return route

    def add_default(
        self, gateway: IpAddress, *, interface: int | None = None, metric: int | None = None
    ) -> Route:
        """Add a default route (0.0.0.0/0 or ::/0) through ``gateway``."""
        default = IPv4Network("0.0.0.0/0") if gateway.version == 4 else IPv6Network("::/0")
        return self.add_route(default, gateway=gateway, interface=interface, metric=metric)

    def remove_route(
        self,
        destination: IpNetwork | str,
        *,
        gateway: IpAddress | None = None,
        interface: int | None = None,
        metric: int | None = None,
    ) -> Route:
        """Remove the first static route matching everything given; return it."""
        network = ip_network(destination) if isinstance(destination, str) else destination
        wanted: IpAddress | _Any = _Any.ANY if gateway is None else gateway
        for route in self._find(network, interface=interface, gateway=wanted, metric=metric):
            if route.kind is RouteKind.STATIC:
                self._delete(route)
                return route
        raise RouteError(errno.ESRCH, f"no such route to {network}")

    def routes(self, version: int | None = None) -> list[Route]:
        """Every route, longest prefix first, then by metric."""
        out: list[Route] = []
        for v in (4, 6):
            if version not in (None, v):
                continue
            family = self._families[v]
            for key in sorted(family.routes, key=lambda k: (-k[0], k[1])):
                out.extend(r for _, r in family.routes[key])
        return out

    def lookup(self, destination: IpAddress) -> NextHop | None:
        """The best route to ``destination``: longest prefix, then lowest metric, then oldest."""
        try:
            return self._cache[destination]
        except KeyError:
            pass
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        hop = self._cache[destination] = self._lookup(destination)
        return hop

    def _lookup(self, destination: IpAddress) -> NextHop | None:
        route = self._best(destination)
        if route is None:
            if destination == LIMITED_BROADCAST:
                return self._limited_broadcast()
            return None
        next_hop = route.gateway if route.gateway is not None else destination
        source = route.source
        if source is None:
            source = self.select_source(destination, route.interface, next_hop=next_hop)
        return NextHop(route, next_hop, route.interface, source)

    def select_source(
        self,
        destination: IpAddress,
        interface: int | None = None,
        *,
        next_hop: IpAddress | None = None,
    ) -> IpAddress | None:
        """The source address for ``destination`` when leaving through ``interface``.

        IPv4 (as Linux's ``inet_select_addr``): the interface address whose
        subnet holds the next hop, else the interface's primary address, else
        any IPv4 address. IPv6: a simplified RFC 6724 section 5 over the
        interface's addresses (rule 1 same address, rule 2 appropriate scope,
        rule 5 outgoing interface, rule 8 longest matching prefix).
        """
        if isinstance(destination, IPv4Address):
            return self._select_v4(destination, interface, next_hop or destination)
        return self._select_v6(destination, interface)

    # --- internals ---------------------------------------------------------

    def _select_v4(
        self, destination: IPv4Address, interface: int | None, next_hop: IpAddress
    ) -> IpAddress | None:
        mine = [a for i, a in self._addresses if a.version == 4 and interface in (None, i)]
        for address in mine:
            if destination == address.ip:
                return address.ip
        for address in mine:
            if next_hop in address.network:
                return address.ip
        if mine:
            return mine[0].ip
        anywhere = [a for _, a in self._addresses if a.version == 4]
        return anywhere[0].ip if anywhere else None

    def _select_v6(self, destination: IPv6Address, interface: int | None) -> IpAddress | None:
        mine = [a for i, a in self._addresses if a.version == 6 and interface in (None, i)]
        if not mine:
            # Rule 5 prefers the outgoing interface; any other is still a candidate.
            mine = [a for _, a in self._addresses if a.version == 6]
        if not mine:
            return None
        dst_scope = ipv6_scope(destination)

        def rank(address: IpInterface) -> tuple[int, tuple[int, int], int]:
            scope = ipv6_scope(IPv6Address(address.ip))
            # Rule 2: the smallest scope that is not below the destination's; below it, the
            # largest.
            scope_rank = (0, scope) if scope >= dst_scope else (1, -scope)
            prefix = min(common_prefix_len(address.ip, destination), address.network.prefixlen)
            return (0 if address.ip == destination else 1, scope_rank, -prefix)

        return min(mine, key=rank).ip  # min is stable: ties go to the oldest address

    def _limited_broadcast(self) -> NextHop | None:
        # 255.255.255.255 has no route; send it on the first interface with IPv4 (what a
        # DHCP client does with SO_BINDTODEVICE).
        for interface, address in self._addresses:
            if address.version == 4:
                route = Route(
                    IPv4Network("255.255.255.255/32"), interface, kind=RouteKind.CONNECTED
                )
                return NextHop(route, LIMITED_BROADCAST, interface, address.ip)
        return None

    def _connected_interface(self, gateway: IpAddress) -> int | None:
        route = self._best(gateway)
        if route is None or route.gateway is not None:
            return None
        return route.interface

    def _best(self, destination: IpAddress) -> Route | None:
        family = self._families[destination.version]
        value = int(destination)
        for length in family.lengths:
            candidates = family.routes.get((length, value & family.mask(length)))
            if candidates:
                return candidates[0][1]
        return None

    def _key(self, network: IpNetwork) -> tuple[_Family, tuple[int, int]]:
        family = self._families[network.version]
        return family, (network.prefixlen, int(network.network_address))

    def _insert(self, route: Route) -> None:
        self._cache.clear()
        family, key = self._key(route.destination)
        bucket = family.routes.setdefault(key, [])
        bucket.append((next(self._order), route))
        bucket.sort(key=lambda item: (item[1].metric, item[0]))
        if key[0] not in family.lengths:
            family.lengths.append(key[0])
            family.lengths.sort(reverse=True)

    def _delete(self, route: Route) -> None:
        self._cache.clear()
        family, key = self._key(route.destination)
        bucket = family.routes[key]
        bucket[:] = [item for item in bucket if item[1] is not route]
        if not bucket:
            del family.routes[key]
            if not any(k[0] == key[0] for k in family.routes):
                family.lengths.remove(key[0])

    def _find(
        self,
        network: IpNetwork,
        *,
        interface: int | None = None,
        gateway: IpAddress | _Any | None = _Any.ANY,
        metric: int | None = None,
    ) -> list[Route]:
        """Routes to exactly ``network`` matching what is given (``gateway=None``: on-link)."""
        family, key = self._key(network)
        return [
            r
            for _, r in family.routes.get(key, [])
            if interface in (None, r.interface)
            and (gateway is _Any.ANY or gateway == r.gateway)
            and metric in (None, r.metric)
        ]
