"""What the scalar and the vectorised GRO share: the output record, the limits,
the checks made before the flow lookup, and the completed super-packet header.

See ``netoffload.engine.gro`` for the rules and their kernel sources.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple, TypeAlias

from netoffload.engine.dissect import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    DissectError,
    Dissection,
    dissect,
)
from netoffload.offload.extension import (
    ChecksumRequest,
    ChecksumStatus,
    SegmentationRequest,
)
from netoffload.offload.virtio import GSO_ECN, VirtioFlags, VirtioNetHdr
from netoffload.wire.checksum import pseudo_header_sum, update16

Buffer: TypeAlias = bytes | bytearray | memoryview

GRO_MAX_SIZE = 65536  # GRO_LEGACY_MAX_SIZE: dev->gro_max_size / gro_ipv4_max_size default
MAX_GRO_SKBS = 8  # flows held per bucket; a device without an RX hash uses one bucket
UDP_GRO_CNT_MAX = 64
ETH_HLEN = 14

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_URG = 0x20
TCP_CWR = 0x80
#: A TCP segment with any of these merges (if it can) and then ends the super-packet.
TCP_ENDS = TCP_URG | TCP_PSH | TCP_RST | TCP_SYN | TCP_FIN
#: TCP flags that may differ between merged segments.
TCP_FLAGS_MAY_DIFFER = TCP_CWR | TCP_FIN | TCP_PSH
VERIFIED = int(ChecksumStatus.VERIFIED)

_U16 = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class Assembled:
    """One frame GRO passes up: a super-packet or an input frame unchanged.

    ``index`` is the input index of its first frame; ``validated`` says GRO
    checked the L4 checksum of an unmerged frame (Linux CHECKSUM_UNNECESSARY).
    """

    data: Buffer
    index: int
    segments: int = 1
    version: int = 0
    protocol: int = 0
    validated: bool = False
    assembled: SegmentationRequest | None = None
    checksum_partial: ChecksumRequest | None = None

    def vnet_hdr(self) -> VirtioNetHdr:
        """The header Linux writes in front of this frame on a TAP read."""
        if self.assembled is None or self.checksum_partial is None:
            flags = VirtioFlags.DATA_VALID if self.validated else VirtioFlags.NONE
            return VirtioNetHdr(flags=int(flags))
        seg = self.assembled
        return VirtioNetHdr(
            flags=int(VirtioFlags.NEEDS_CSUM),
            gso_type=int(seg.gso_type) | (GSO_ECN if seg.ecn else 0),
            hdr_len=seg.hdr_len,
            gso_size=seg.size,
            csum_start=self.checksum_partial.start,
            csum_offset=self.checksum_partial.offset,
        )


class Seen(NamedTuple):
    """A frame that reached the flow lookup: its dissection, header bytes, flow key, flush bit."""

    d: Dissection
    h: bytes  # every byte before the L4 payload
    key: tuple[object, ...]
    flush: bool  # NAPI_GRO_CB(skb)->flush from the IP layer


def _be16(h: Buffer, offset: int) -> int:
    return (h[offset] << 8) | h[offset + 1]


def look(
    frame: Buffer, i: int, hdr_status: int, l4_status: int, *, tcp: bool, udp: bool
) -> Assembled | Seen:
    """IP-layer checks, checksum validation and header pull, before the flow lookup.

    An ``Assembled`` is the frame passed up at once (held flows untouched);
    a ``Seen`` goes on to its flow's merge rules.
    """
    try:
        d = dissect(frame)
        pulled = True
    except DissectError:
        # Only the L4 header is bad: the IP-layer checks still decide DATA_VALID.
        try:
            d = dissect(frame, l4=False)
        except DissectError:
            return Assembled(frame, i)
        pulled = False
    n = len(frame)
    l3, l4 = d.l3, d.l4
    # Every header byte read below lies before the payload: one small bytes copy.
    h = frame[: d.payload] if isinstance(frame, bytes) else bytes(frame[: d.payload])
    if d.version == 4:
        if h[l3] != 0x45 or d.fragment or hdr_status != VERIFIED:
            return Assembled(frame, i)
        flush = d.ip_end != n or bool(h[l3 + 6] & 0x80)
    else:
        flush = d.ip_end != n
    proto = d.protocol
    if d.fragment or not ((proto == IPPROTO_TCP and tcp) or (proto == IPPROTO_UDP and udp)):
        return Assembled(frame, i)
    validated = False
    if not flush:
        udp_zero = proto == IPPROTO_UDP and n - l4 >= 8 and _be16(frame, l4 + 6) == 0
        if l4_status != VERIFIED and not udp_zero:
            return Assembled(frame, i)
        validated = True
    if not pulled:
        return Assembled(frame, i, validated=validated)
    if proto == IPPROTO_UDP:
        ulen = _be16(h, l4 + 4)
        if _be16(h, l4 + 6) == 0 or ulen <= 8 or ulen != n - l4:
            return Assembled(frame, i, validated=validated)
    key: tuple[object, ...]
    if d.version == 4:
        key = (h[:l3], 4, proto, h[l3 + 12 : l3 + 20], h[l4 : l4 + 4])
    else:
        word = int.from_bytes(h[l3 : l3 + 4], "big")
        key = (h[:l3], word & 0xF00FFFFF, h[l3 + 6 : l3 + 7], h[l3 + 8 : l4], h[l4 : l4 + 4])
    return Seen(d, h, key, flush)


def complete_head(
    head: bytearray, d: Dissection, size: int, merged_flags: int
) -> tuple[int, int, bool]:
    """Patch the first segment's headers ``head`` for a super-packet of ``size`` bytes.

    ``inet_gro_complete`` / ``ipv6_gro_complete`` and the L4 complete: IP
    length (IPv4 header checksum updated with csum_replace2), TCP flags
    ``|= merged_flags`` or the UDP length, and the L4 checksum field set to
    the pseudo-header sum for the new length (CHECKSUM_PARTIAL). Returns
    (L4 offset, checksum offset, ECN) for the GSO record.
    """
    l3, l4 = d.l3, d.l4
    l4_len = size - l4
    if d.version == 4:
        (old_total,) = _U16.unpack_from(head, l3 + 2)
        (check,) = _U16.unpack_from(head, l3 + 10)
        new_total = size - l3
        _U16.pack_into(head, l3 + 2, new_total)
        _U16.pack_into(head, l3 + 10, update16(check, old_total, new_total))
        src, dst = bytes(head[l3 + 12 : l3 + 16]), bytes(head[l3 + 16 : l3 + 20])
    else:
        _U16.pack_into(head, l3 + 4, size - l3 - 40)
        src, dst = bytes(head[l3 + 8 : l3 + 24]), bytes(head[l3 + 24 : l3 + 40])
    if d.protocol == IPPROTO_TCP:
        head[l4 + 13] |= merged_flags
        _U16.pack_into(head, l4 + 16, pseudo_header_sum(src, dst, IPPROTO_TCP, l4_len))
        return l4, 16, bool(head[l4 + 13] & TCP_CWR)
    _U16.pack_into(head, l4 + 4, l4_len)
    _U16.pack_into(head, l4 + 6, pseudo_header_sum(src, dst, IPPROTO_UDP, l4_len))
    return l4, 6, False
