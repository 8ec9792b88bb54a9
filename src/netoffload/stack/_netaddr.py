"""Address types and address-class rules shared by the IP-layer cores."""

from __future__ import annotations

from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Final, TypeAlias

IpAddress: TypeAlias = IPv4Address | IPv6Address
IpNetwork: TypeAlias = IPv4Network | IPv6Network
IpInterface: TypeAlias = IPv4Interface | IPv6Interface

NS_PER_S: Final = 1_000_000_000
NS_PER_MS: Final = 1_000_000

LIMITED_BROADCAST: Final = IPv4Address("255.255.255.255")
IPV4_ANY: Final = IPv4Address("0.0.0.0")
IPV6_ANY: Final = IPv6Address("::")
ALL_NODES: Final = IPv6Address("ff02::1")

# RFC 6724 section 3.1 scope values.
SCOPE_LINK_LOCAL: Final = 0x2
SCOPE_SITE_LOCAL: Final = 0x5
SCOPE_GLOBAL: Final = 0xE


def ipv6_scope(address: IPv6Address) -> int:
    """The RFC 6724 scope of ``address`` (loopback counts as link-local, section 3.1)."""
    if address.is_multicast:
        return address.packed[1] & 0x0F
    if address.is_link_local or address.is_loopback:
        return SCOPE_LINK_LOCAL
    if address.is_site_local:
        return SCOPE_SITE_LOCAL
    return SCOPE_GLOBAL


def common_prefix_len(a: IpAddress, b: IpAddress) -> int:
    """Leading bits ``a`` and ``b`` share (both of one version)."""
    bits = a.max_prefixlen
    return bits - (int(a) ^ int(b)).bit_length()


def is_single_host_source(address: IpAddress) -> bool:
    """True when ``address`` can be the source of a datagram from one host.

    RFC 1122 3.2.2 / RFC 1812 4.3.2.7: not zero, loopback, broadcast,
    multicast or class E; RFC 4443 2.4(e.5): not unspecified or multicast.
    """
    if isinstance(address, IPv4Address):
        return not (
            address.is_unspecified
            or address.is_loopback
            or address.is_multicast
            or address == LIMITED_BROADCAST
            or address in _CLASS_E
        )
    return not (address.is_unspecified or address.is_multicast)


_CLASS_E: Final = IPv4Network("240.0.0.0/4")
