"""Frames for the engine tests, built with scapy as an independent oracle."""

from __future__ import annotations

from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet as ScapyPacket

from netoffload.engine.dissect import dissect
from netoffload.wire import IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket
from netoffload.wire.checksum import pseudo_header_sum

MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
SRC4, DST4 = "198.18.0.1", "198.18.0.2"
SRC6, DST6 = "fd00::1", "fd00::2"


def ether(vlan: int | None = None) -> ScapyPacket:
    base = Ether(**MAC)
    return base / Dot1Q(vlan=vlan) if vlan is not None else base


def tcp4(
    payload: bytes,
    *,
    seq: int = 1000,
    ack: int = 1,
    flags: str = "A",
    ip_id: int = 1,
    df: bool = True,
    ttl: int = 64,
    tos: int = 0,
    window: int = 8192,
    options: list[Any] | None = None,
    ip_options: bytes | None = None,
    sport: int = 40000,
    dport: int = 5201,
    vlan: int | None = None,
) -> bytes:
    ip = IP(src=SRC4, dst=DST4, id=ip_id, flags="DF" if df else 0, ttl=ttl, tos=tos)
    if ip_options is not None:
        ip.options = ip_options
    tcp = TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window)
    if options is not None:
        tcp.options = options
    return bytes(ether(vlan) / ip / tcp / payload)


def tcp6(
    payload: bytes,
    *,
    seq: int = 1000,
    ack: int = 1,
    flags: str = "A",
    hlim: int = 64,
    tc: int = 0,
    fl: int = 0,
    options: list[Any] | None = None,
    ext: ScapyPacket | None = None,
    sport: int = 40000,
    dport: int = 5201,
) -> bytes:
    ip: ScapyPacket = IPv6(src=SRC6, dst=DST6, hlim=hlim, tc=tc, fl=fl)
    if ext is not None:
        ip = ip / ext
    tcp = TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags)
    if options is not None:
        tcp.options = options
    return bytes(ether() / ip / tcp / payload)


def udp4(payload: bytes, *, ip_id: int = 1, sport: int = 4000, dport: int = 4001) -> bytes:
    ip = IP(src=SRC4, dst=DST4, id=ip_id, flags="DF")
    return bytes(ether() / ip / UDP(sport=sport, dport=dport) / payload)


def udp6(payload: bytes, *, sport: int = 4000, dport: int = 4001) -> bytes:
    return bytes(ether() / IPv6(src=SRC6, dst=DST6) / UDP(sport=sport, dport=dport) / payload)


def as_partial(frame: bytes) -> tuple[bytes, int, int]:
    """The CHECKSUM_PARTIAL form: the L4 checksum field holds the pseudo-header sum."""
    d = dissect(frame)
    buf = bytearray(frame)
    ip = Ipv4Packet(frame[d.l3 :]) if d.version == 4 else Ipv6Packet(frame[d.l3 :])
    l4 = memoryview(buf)[d.l4 :]
    transport = TcpPacket(l4) if d.protocol == IpProtocol.TCP else UdpPacket(l4)
    transport.checksum = pseudo_header_sum(
        ip.src_bytes, ip.dst_bytes, d.protocol, len(frame) - d.l4
    )
    return bytes(buf), d.l4, transport.CHECKSUM


def checksums_ok(frame: bytes) -> bool:
    """Every IPv4 header and TCP/UDP checksum of ``frame`` equals scapy's recomputation."""
    pkt = Ether(frame)
    orig = Ether(frame)
    for layer in (IP, TCP, UDP):
        if layer in pkt:
            del pkt[layer].chksum
    redone = Ether(bytes(pkt))
    for layer in (IP, TCP, UDP):
        if layer in orig and orig[layer].chksum != redone[layer].chksum:
            return False
    return True
