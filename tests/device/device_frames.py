"""Frame builders for device tests (198.18.0.0/15 and fd00::/8 only)."""

from __future__ import annotations

import ipaddress
import struct

from netoffload.wire.checksum import internet_checksum, pseudo_header_sum

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
V4_A = ipaddress.IPv4Address("198.18.0.1")
V4_B = ipaddress.IPv4Address("198.18.0.2")
V6_A = ipaddress.IPv6Address("fd00::1")
V6_B = ipaddress.IPv6Address("fd00::2")
ETH_LEN = 14
TCP_PROTO = 6
UDP_PROTO = 17


def ether(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return dst + src + struct.pack("!H", ethertype)


def ipv4_header(
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    proto: int,
    payload_len: int,
    *,
    ident: int = 0x1234,
    ttl: int = 64,
    df: bool = True,
) -> bytes:
    head = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + payload_len,
        ident,
        0x4000 if df else 0,
        ttl,
        proto,
        0,
        src.packed,
        dst.packed,
    )
    csum = internet_checksum(head)
    return head[:10] + struct.pack("!H", csum) + head[12:]


def ipv6_header(
    src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, proto: int, payload_len: int
) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, payload_len, proto, 64, src.packed, dst.packed)


def tcp_header(
    sport: int,
    dport: int,
    seq: int,
    *,
    ack: int = 1,
    flags: int = 0x18,
    window: int = 512,
    options: bytes = b"",
) -> bytes:
    doff = 5 + len(options) // 4
    fixed = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0, 0)
    return fixed + options


def udp_header(sport: int, dport: int, length: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, length, 0)


def _l3(
    version: int, proto: int, l4_len: int, *, ident: int = 0x1234, ttl: int = 64, df: bool = True
) -> tuple[bytes, int]:
    if version == 4:
        ip = ipv4_header(V4_A, V4_B, proto, l4_len, ident=ident, ttl=ttl, df=df)
        return ether(MAC_B, MAC_A, 0x0800) + ip, 34
    return ether(MAC_B, MAC_A, 0x86DD) + ipv6_header(V6_A, V6_B, proto, l4_len), 54


def _pseudo(version: int, proto: int, length: int) -> int:
    if version == 4:
        return pseudo_header_sum(V4_A, V4_B, proto, length)
    return pseudo_header_sum(V6_A, V6_B, proto, length)


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
    """An Ethernet/IP/TCP frame; ``partial`` leaves the pseudo-header sum (NEEDS_CSUM form)."""
    l4 = bytearray(tcp_header(sport, dport, seq, flags=flags, options=options) + payload)
    head, l4_start = _l3(version, TCP_PROTO, len(l4), ident=ident, ttl=ttl, df=df)
    pseudo = _pseudo(version, TCP_PROTO, len(l4))
    csum = pseudo if partial else internet_checksum(l4, pseudo)
    struct.pack_into("!H", l4, 16, csum)
    assert len(head) == l4_start
    return head + bytes(l4)


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
    """An Ethernet/IP/UDP frame; ``corrupt`` spoils the checksum; ``length`` sets the UDP length."""
    udp_len = 8 + len(payload) if length is None else length
    l4 = bytearray(udp_header(sport, dport, udp_len) + payload)
    head, _ = _l3(version, UDP_PROTO, len(l4), ident=ident)
    pseudo = _pseudo(version, UDP_PROTO, udp_len)
    if partial:
        csum = pseudo
    else:
        csum = internet_checksum(l4, pseudo) or 0xFFFF
        if corrupt:
            csum ^= 0x5A5A
    struct.pack_into("!H", l4, 6, csum)
    return head + bytes(l4)


def l4_start(version: int) -> int:
    return 34 if version == 4 else 54


def icmp_echo_v4(ident: int = 7, seq: int = 1, payload: bytes = b"netoffload") -> bytes:
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload)
    struct.pack_into("!H", icmp, 2, internet_checksum(icmp))
    return ether(MAC_B, MAC_A, 0x0800) + ipv4_header(V4_A, V4_B, 1, len(icmp)) + bytes(icmp)
