"""TCP and UDP frames for the GRO and GSO tests, built with the wire Reprs.

One frozen ``Seg`` names every knob of one frame; ``build`` makes it (and
remembers it: hypothesis draws the same frames again and again). The Reprs
compute every checksum, so the engine under test computes none of its inputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from netoffload.wire import (
    EthernetRepr,
    Ipv4Repr,
    Ipv6HopByHopRepr,
    Ipv6Option,
    Ipv6Repr,
    MacAddress,
    TcpFlags,
    TcpNoOperation,
    TcpRepr,
    TcpTimestamps,
    UdpRepr,
    VlanTag,
)
from netoffload.wire.ipv6 import pad_options

MAC_A = MacAddress(bytes.fromhex("020000000001"))
MAC_B = MacAddress(bytes.fromhex("020000000002"))
V4 = (IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"))
V6 = (IPv6Address("fd00::1"), IPv6Address("fd00::2"))
#: Payload bytes: a segment at stream offset ``seq`` carries ``DATA[seq % 4096 :]``.
DATA = bytes((i * 13 + 5) % 251 for i in range(70000 + 4096))
KINDS = ("tcp4", "tcp6", "udp4", "udp6")


@dataclass(frozen=True, slots=True)
class Seg:
    """One frame: its flow, place in the stream, and every header field a test bends."""

    kind: str = "tcp4"
    flow: int = 0  # added to the source port
    dport: int = 5201
    seq: int = 1000
    size: int = 1000  # payload bytes
    ip_id: int = 1
    flags: int = 0x10  # ACK
    ttl: int = 64
    tos: int = 0
    df: bool = True
    ack: int = 1
    window: int = 8192
    timestamp: int | None = None  # a timestamps option (NOP, NOP, TS) with this TSval
    vlan: int | None = None
    flow_label: int = 0
    hop_by_hop: bool = False
    ip_options: bool = False
    corrupt: bool = False  # flip a payload bit (or a header bit when there is no payload)
    pad: int = 0  # Ethernet padding after the IP packet
    cut: int = 0  # bytes cut off the end


@functools.lru_cache(maxsize=200_000)
def build(seg: Seg) -> bytes:
    """The frame ``seg`` describes."""
    v6 = seg.kind.endswith("6")
    tags = () if seg.vlan is None else (VlanTag(0, False, seg.vlan),)
    eth = EthernetRepr(MAC_B, MAC_A, 0x86DD if v6 else 0x0800, tags)
    start = seg.seq % 4096
    payload = DATA[start : start + seg.size]
    src, dst = V6 if v6 else V4
    l4: bytes
    if seg.kind.startswith("tcp"):
        options = ()
        if seg.timestamp is not None:
            options = (TcpNoOperation(), TcpNoOperation(), TcpTimestamps(seg.timestamp, 7))
        tcp = TcpRepr(
            40000 + seg.flow,
            seg.dport,
            seg.seq & 0xFFFFFFFF,
            seg.ack,
            TcpFlags(seg.flags),
            seg.window,
            options=options,
        )
        l4 = tcp.to_bytes(payload, src=src, dst=dst)
        proto = 6
    else:
        l4 = UdpRepr(4000 + seg.flow, seg.dport).to_bytes(payload, src=src, dst=dst)
        proto = 17
    if v6:
        ext = b""
        next_header = proto
        if seg.hop_by_hop:
            ext = Ipv6HopByHopRepr(proto, pad_options((Ipv6Option(0x1E, b"\x00\x00"),))).to_bytes()
            next_header = 0
        ip6 = Ipv6Repr(src, dst, next_header, len(ext) + len(l4), seg.ttl, seg.tos, seg.flow_label)
        head = bytearray(eth.header_len + 40)
        eth.emit(head)
        ip6.emit(head, eth.header_len)
        frame = bytes(head) + ext + l4
    else:
        ip = Ipv4Repr(
            src,
            dst,
            proto,
            len(l4),
            ttl=seg.ttl,
            dscp=seg.tos >> 2,
            ecn=seg.tos & 3,
            ident=seg.ip_id & 0xFFFF,
            dont_frag=seg.df,
            options=b"\x01\x01\x01\x00" if seg.ip_options else b"",
        )
        head = bytearray(eth.header_len + ip.header_len)
        eth.emit(head)
        ip.emit(head, eth.header_len)
        frame = bytes(head) + l4
    if seg.corrupt:
        at = len(frame) - 1
        frame = frame[:at] + bytes([frame[at] ^ 0x01])
    frame += bytes(seg.pad)
    return frame[: len(frame) - seg.cut]
