"""Frame builders for device tests (198.18.0.0/15 and fd00::/8 only), made with the wire Reprs."""

from __future__ import annotations

import ipaddress

from netoffload.wire import (
    EthernetRepr,
    EtherType,
    Icmpv4EchoRepr,
    IpProtocol,
    Ipv4Repr,
    Ipv6Repr,
    MacAddress,
    TcpFlags,
    TcpRepr,
    UdpPacket,
    UdpRepr,
    internet_checksum,
    pseudo_header_sum,
)
from netoffload.wire.tcp import parse_options

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
V4_A = ipaddress.IPv4Address("198.18.0.1")
V4_B = ipaddress.IPv4Address("198.18.0.2")
V6_A = ipaddress.IPv6Address("fd00::1")
V6_B = ipaddress.IPv6Address("fd00::2")


def _ether(version: int) -> EthernetRepr:
    """A to B, as every frame here travels."""
    kind = EtherType.IPV4 if version == 4 else EtherType.IPV6
    return EthernetRepr(MacAddress(MAC_B), MacAddress(MAC_A), kind)


def _ip(
    version: int,
    protocol: int,
    segment: bytes,
    *,
    ident: int = 0x1234,
    ttl: int = 64,
    df: bool = True,
) -> bytes:
    """``segment`` behind an IP header (IPv4 with its checksum) and an Ethernet header."""
    if version == 4:
        ip4 = Ipv4Repr(V4_A, V4_B, protocol, len(segment), ttl=ttl, ident=ident, dont_frag=df)
        return _ether(4).to_bytes(ip4.to_bytes(segment))
    ip6 = Ipv6Repr(V6_A, V6_B, protocol, len(segment))
    return _ether(6).to_bytes(ip6.to_bytes(segment))


def _pseudo(version: int, protocol: int, length: int) -> int:
    if version == 4:
        return pseudo_header_sum(V4_A, V4_B, protocol, length)
    return pseudo_header_sum(V6_A, V6_B, protocol, length)


def tcp_frame(
    version: int,
    payload: bytes,
    *,
    seq: int = 1000,
    flags: int = 0x18,
    partial: bool = False,
    ident: int = 0x1234,
    sport: int = 40000,
    dport: int = 5001,
    options: bytes = b"",
    ttl: int = 64,
    df: bool = True,
) -> bytes:
    """An Ethernet/IP/TCP frame; ``partial`` leaves the pseudo-header sum (NEEDS_CSUM form).

    ``options`` are TCP option bytes (a multiple of 4), parsed into option values.
    """
    tcp = TcpRepr(
        sport,
        dport,
        seq,
        ack_number=1,
        flags=TcpFlags(flags),
        window_len=512,
        options=parse_options(options),
    )
    if partial:
        seed = _pseudo(version, IpProtocol.TCP, tcp.buffer_len(len(payload)))
        segment = tcp.to_bytes(payload, checksum=seed)
    elif version == 4:
        segment = tcp.to_bytes(payload, src=V4_A, dst=V4_B)
    else:
        segment = tcp.to_bytes(payload, src=V6_A, dst=V6_B)
    return _ip(version, IpProtocol.TCP, segment, ident=ident, ttl=ttl, df=df)


def udp_frame(
    version: int,
    payload: bytes,
    *,
    partial: bool = False,
    ident: int = 0x1234,
    sport: int = 40000,
    dport: int = 5001,
    corrupt: bool = False,
    length: int | None = None,
) -> bytes:
    """An Ethernet/IP/UDP frame; ``corrupt`` spoils the checksum; ``length`` sets the UDP length.

    With ``length`` the checksum is still computed over every byte of the datagram, with
    ``length`` in the pseudo-header: the datagram a sender that lies about it would send.
    """
    datagram = bytearray(UdpRepr(sport, dport).to_bytes(payload, checksum=0))
    view = UdpPacket(datagram)
    if length is not None:
        view.length = length
    pseudo = _pseudo(version, IpProtocol.UDP, view.length)
    if partial:
        view.checksum = pseudo
    else:
        checksum = internet_checksum(datagram, pseudo) or 0xFFFF
        view.checksum = checksum ^ 0x5A5A if corrupt else checksum
    return _ip(version, IpProtocol.UDP, bytes(datagram), ident=ident)


def l4_start(version: int) -> int:
    return 34 if version == 4 else 54


def icmp_echo_v4(ident: int = 7, seq: int = 1, payload: bytes = b"netoffload") -> bytes:
    return _ip(4, IpProtocol.ICMP, Icmpv4EchoRepr(ident, seq, payload).to_bytes())
