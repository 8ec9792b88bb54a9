"""ARP and NDP frames: builders, multicast mapping, and the checks RFC 4861 section 7.1 asks for.

Every frame is a whole untagged Ethernet II frame built with the wire
Reprs. ARP frames are padded to the 60-byte Ethernet minimum, as a Linux
driver does before it transmits.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network
from typing import Final

from netoffload.stack._netaddr import ALL_NODES, IpAddress
from netoffload.wire.arp import ArpOperation, ArpRepr
from netoffload.wire.checksum import Buffer
from netoffload.wire.error import WireError
from netoffload.wire.ethernet import (
    BROADCAST,
    EthernetFrame,
    EthernetRepr,
    EtherType,
    MacAddress,
)
from netoffload.wire.icmpv6 import (
    Icmpv6NeighborAdvertRepr,
    Icmpv6NeighborSolicitRepr,
    Icmpv6Repr,
    NdpLinkAddress,
    NdpOptionType,
)
from netoffload.wire.ipv4 import IpProtocol
from netoffload.wire.ipv6 import HEADER_LEN as IPV6_HEADER_LEN
from netoffload.wire.ipv6 import Ipv6Packet, Ipv6Repr, walk_extension_headers

#: RFC 4861 section 7.1: neighbor discovery is only accepted from the link itself.
NDP_HOP_LIMIT: Final = 255
#: Smallest Ethernet frame without its FCS (IEEE 802.3); shorter ones are padded with zeros.
ETHERNET_MIN_FRAME: Final = 60
ZERO_MAC: Final = MacAddress(bytes(6))
#: RFC 4291 section 2.7.1: ff02::1:ff00:0/104.
SOLICITED_NODE_PREFIX: Final = IPv6Network("ff02::1:ff00:0/104")


def solicited_node_address(address: IPv6Address) -> IPv6Address:
    """The solicited-node multicast address of ``address`` (RFC 4291 section 2.7.1)."""
    return IPv6Address(int(SOLICITED_NODE_PREFIX.network_address) | (int(address) & 0xFFFFFF))


def multicast_mac(address: IpAddress) -> MacAddress:
    """The Ethernet group address of an IP multicast address.

    IPv4: 01:00:5e and the low 23 bits (RFC 1112 section 6.4); IPv6: 33:33
    and the low 32 bits (RFC 2464 section 7).
    """
    if not address.is_multicast:
        raise ValueError(f"{address} is not a multicast address")
    if isinstance(address, IPv4Address):
        return MacAddress(b"\x01\x00\x5e" + (int(address) & 0x7FFFFF).to_bytes(3, "big"))
    return MacAddress(b"\x33\x33" + address.packed[12:])


def _arp_frame(dst_mac: MacAddress, src_mac: MacAddress, arp: ArpRepr) -> bytes:
    frame = EthernetRepr(dst_mac, src_mac, EtherType.ARP).to_bytes(arp.to_bytes())
    return frame + bytes(max(0, ETHERNET_MIN_FRAME - len(frame)))


def arp_request(
    src_mac: MacAddress,
    src_ip: IPv4Address,
    target_ip: IPv4Address,
    *,
    dst_mac: MacAddress = BROADCAST,
) -> bytes:
    """An ARP request for ``target_ip``: broadcast, or unicast to ``dst_mac`` for a probe.

    The target hardware address is zero either way, as Linux's ``arp_solicit`` sends it.
    """
    arp = ArpRepr(ArpOperation.REQUEST, src_mac, src_ip, ZERO_MAC, target_ip)
    return _arp_frame(dst_mac, src_mac, arp)


def arp_reply(
    src_mac: MacAddress, src_ip: IPv4Address, dst_mac: MacAddress, dst_ip: IPv4Address
) -> bytes:
    """An ARP reply saying ``src_ip`` is at ``src_mac``, unicast to ``dst_mac``."""
    arp = ArpRepr(ArpOperation.REPLY, src_mac, src_ip, dst_mac, dst_ip)
    return _arp_frame(dst_mac, src_mac, arp)


def arp_announcement(mac: MacAddress, address: IPv4Address) -> bytes:
    """A gratuitous ARP: a broadcast request with sender = target = ``address`` (RFC 5227 2.3)."""
    arp = ArpRepr(ArpOperation.REQUEST, mac, address, ZERO_MAC, address)
    return _arp_frame(BROADCAST, mac, arp)


def _ndp_frame(
    dst_mac: MacAddress,
    src_mac: MacAddress,
    src: IPv6Address,
    dst: IPv6Address,
    message: Icmpv6Repr,
) -> bytes:
    icmp = message.to_bytes(src, dst)
    ip = Ipv6Repr(src, dst, IpProtocol.ICMPV6, len(icmp), hop_limit=NDP_HOP_LIMIT)
    return EthernetRepr(dst_mac, src_mac, EtherType.IPV6).to_bytes(ip.to_bytes(icmp))


def neighbor_solicit(
    src_mac: MacAddress,
    src_ip: IPv6Address,
    target: IPv6Address,
    *,
    dst_mac: MacAddress | None = None,
) -> bytes:
    """A Neighbor Solicitation for ``target`` (RFC 4861 section 7.2.2).

    Without ``dst_mac`` it goes to the target's solicited-node multicast group;
    with it, unicast to the target (a reachability probe, section 7.3.3). The
    source link-layer address option is left out when ``src_ip`` is the
    unspecified address (duplicate address detection, section 7.1.1).
    """
    if dst_mac is None:
        dst = solicited_node_address(target)
        dst_mac = multicast_mac(dst)
    else:
        dst = target
    options = (
        () if src_ip.is_unspecified else (NdpLinkAddress(NdpOptionType.SOURCE_LINK_ADDR, src_mac),)
    )
    return _ndp_frame(dst_mac, src_mac, src_ip, dst, Icmpv6NeighborSolicitRepr(target, options))


def neighbor_advert(
    src_mac: MacAddress,
    target: IPv6Address,
    dst_ip: IPv6Address,
    dst_mac: MacAddress,
    *,
    solicited: bool,
    override: bool = True,
    router: bool = False,
) -> bytes:
    """A Neighbor Advertisement from ``target`` with its target link-layer address option."""
    message = Icmpv6NeighborAdvertRepr(
        target,
        router=router,
        solicited=solicited,
        override=override,
        options=(NdpLinkAddress(NdpOptionType.TARGET_LINK_ADDR, src_mac),),
    )
    return _ndp_frame(dst_mac, src_mac, target, dst_ip, message)


def unsolicited_advert(mac: MacAddress, address: IPv6Address, *, router: bool = False) -> bytes:
    """An unsolicited Neighbor Advertisement to all-nodes (RFC 4861 section 7.2.6)."""
    return neighbor_advert(
        mac, address, ALL_NODES, multicast_mac(ALL_NODES), solicited=False, router=router
    )


@dataclass(frozen=True, slots=True)
class ArpFrame:
    """A received ARP frame: the Ethernet addresses and the ARP packet."""

    eth_dst: MacAddress
    eth_src: MacAddress
    arp: ArpRepr


def parse_arp(frame: Buffer) -> ArpFrame:
    """Parse an Ethernet frame carrying ARP; ``WireError`` unless it is a request or reply."""
    eth = EthernetFrame.checked(frame)
    if eth.ethertype != EtherType.ARP:
        raise WireError(f"EtherType {eth.ethertype:#06x} is not ARP")
    arp = ArpRepr.parse(eth.payload)
    if arp.operation not in (ArpOperation.REQUEST, ArpOperation.REPLY):
        raise WireError(f"ARP operation {arp.operation} is neither request nor reply")
    return ArpFrame(eth.dst, eth.src, arp)


class HopLimitError(WireError):
    """A neighbor discovery message whose hop limit is not 255 (it came through a router)."""


@dataclass(frozen=True, slots=True)
class NdpFrame:
    """A received, validated Neighbor Solicitation or Advertisement.

    ``link_address`` is the source link-layer address option of a
    solicitation or the target link-layer address option of an advertisement.
    """

    eth_dst: MacAddress
    eth_src: MacAddress
    src: IPv6Address
    dst: IPv6Address
    message: Icmpv6NeighborSolicitRepr | Icmpv6NeighborAdvertRepr
    link_address: MacAddress | None


def _link_option(
    message: Icmpv6NeighborSolicitRepr | Icmpv6NeighborAdvertRepr, kind: int
) -> MacAddress | None:
    for option in message.options:
        if isinstance(option, NdpLinkAddress) and option.option_type == kind:
            return option.address
    return None


def parse_ndp(frame: Buffer) -> NdpFrame:
    """Parse and validate a Neighbor Solicitation or Advertisement frame.

    Raises ``HopLimitError`` for a hop limit other than 255 and ``WireError``
    for everything else RFC 4861 sections 7.1.1 and 7.1.2 tell a receiver to
    discard: a bad checksum, a code other than 0, a short message, a zero-length
    option, a multicast target, a solicitation from the unspecified address that
    is not to a solicited-node group or carries a source link-layer address, and
    an advertisement to a multicast group with the Solicited flag.
    """
    eth = EthernetFrame.checked(frame)
    if eth.ethertype != EtherType.IPV6:
        raise WireError(f"EtherType {eth.ethertype:#06x} is not IPv6")
    packet = eth.payload
    ip = Ipv6Packet.checked(packet)
    chain = walk_extension_headers(packet)
    if chain.upper_protocol != IpProtocol.ICMPV6:
        raise WireError("not an ICMPv6 message")
    if ip.hop_limit != NDP_HOP_LIMIT:
        raise HopLimitError(f"neighbor discovery with hop limit {ip.hop_limit}")
    src, dst = ip.src, ip.dst
    body = ip.buffer[chain.upper_offset : IPV6_HEADER_LEN + ip.payload_len]
    message = Icmpv6Repr.parse(body, src, dst)
    if isinstance(message, Icmpv6NeighborSolicitRepr):
        link = _link_option(message, NdpOptionType.SOURCE_LINK_ADDR)
        if src.is_unspecified and (dst not in SOLICITED_NODE_PREFIX or link is not None):
            raise WireError("a solicitation from :: must go to a solicited-node group, no SLLA")
    elif isinstance(message, Icmpv6NeighborAdvertRepr):
        link = _link_option(message, NdpOptionType.TARGET_LINK_ADDR)
        if dst.is_multicast and message.solicited:
            raise WireError("a solicited advertisement sent to a multicast group")
    else:
        raise WireError(f"ICMPv6 type {message.icmp_type} is not a neighbor solicitation/advert")
    if message.target.is_multicast:
        raise WireError(f"neighbor discovery target {message.target} is multicast")
    return NdpFrame(eth.dst, eth.src, src, dst, message, link)
