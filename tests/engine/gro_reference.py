"""GRO written frame by frame with straightforward field reads: the reference.

The engine's ``gro`` module reads each frame's comparable header bytes once
and caches the held packet's; this module re-reads every field at every
comparison, as the kernel rules read. Both must agree on every batch. See
``netoffload.engine.gro`` for the rules and their kernel sources.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from netoffload.engine.checksum import VerifyResult, verify_batch
from netoffload.engine.dissect import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_DF,
    TCP_CSUM_OFFSET,
    UDP_CSUM_OFFSET,
    DissectError,
    Dissection,
    dissect,
)
from netoffload.offload.extension import (
    ChecksumRequest,
    ChecksumStatus,
    GsoType,
    SegmentationRequest,
)
from netoffload.offload.virtio import GSO_ECN, VirtioFlags, VirtioNetHdr
from netoffload.wire.checksum import pseudo_header_sum, update16

Buffer: TypeAlias = bytes | bytearray | memoryview

GRO_MAX_SIZE = 65536  # GRO_LEGACY_MAX_SIZE: dev->gro_max_size / gro_ipv4_max_size default
MAX_GRO_SKBS = 8  # flows held per bucket; a device without an RX hash uses one bucket
UDP_GRO_CNT_MAX = 64
ETH_HLEN = 14

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_TCP_FIN = 0x01
_TCP_SYN = 0x02
_TCP_RST = 0x04
_TCP_PSH = 0x08
_TCP_URG = 0x20
_TCP_CWR = 0x80
_ENDS = _TCP_URG | _TCP_PSH | _TCP_RST | _TCP_SYN | _TCP_FIN
# Bits of the TCP word at offset 12 (doff, flags, window) that may differ.
_WORD_MAY_DIFFER = (_TCP_CWR | _TCP_FIN | _TCP_PSH) << 16


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


@dataclass(slots=True)
class _Held:
    """A held packet (``p`` in the kernel) and what merging into it needs."""

    index: int
    first: Buffer
    d: Dissection
    gso_size: int
    p_len: int
    payloads: list[memoryview] = field(default_factory=list)
    count: int = 1
    payload_total: int = 0
    merged_flags: int = 0
    fixed_id: bool = False


@dataclass(frozen=True, slots=True)
class _Seen:
    """What GRO learns about one frame before the flow lookup."""

    d: Dissection
    key: tuple[object, ...]
    flush: bool  # NAPI_GRO_CB(skb)->flush from the IP layer
    payload_len: int


def _network_fields(frame: Buffer, d: Dissection) -> tuple[int, int, int, int]:
    """(ttl/hop limit, tos/traffic class, DF bit, IPv4 ID) of a frame."""
    l3 = d.l3
    if d.version == 4:
        (frag,) = _U16.unpack_from(frame, l3 + 6)
        (ident,) = _U16.unpack_from(frame, l3 + 4)
        return frame[l3 + 8], frame[l3 + 1], frag & IPV4_DF, ident
    (word,) = _U32.unpack_from(frame, l3)
    return frame[l3 + 7], (word >> 20) & 0xFF, 0, 0


def _network_flush(frame: Buffer, d: Dissection, p: _Held) -> bool:
    """``inet_gro_flush`` / ``ipv6_gro_flush``; may decide the flow is fixed-ID."""
    ttl, tos, df, ident = _network_fields(frame, d)
    ttl2, tos2, df2, ident2 = _network_fields(p.first, p.d)
    if ttl != ttl2 or tos != tos2 or df != df2:
        return True
    if d.version != 4:
        return False
    offset = (ident - ident2) & 0xFFFF
    if p.count == 1 and df and offset == 0:
        p.fixed_id = True
    if p.fixed_id and df:
        return offset != 0
    return offset != (p.count & 0xFFFF)


class _Gro:
    """The state of one NAPI poll."""

    def __init__(
        self,
        verified: VerifyResult,
        *,
        tcp: bool,
        udp: bool,
        max_size: int,
        max_segments: int | None,
        max_flows: int,
    ) -> None:
        self.verified = verified
        self.tcp, self.udp = tcp, udp
        self.max_size = max_size
        self.max_segments = max_segments
        self.max_flows = max_flows
        self.held: dict[tuple[object, ...], _Held] = {}
        self.out: list[Assembled] = []

    # -- delivery ------------------------------------------------------------
    def alone(self, frame: Buffer, i: int, validated: bool = False) -> None:
        self.out.append(Assembled(frame, i, validated=validated))

    def complete(self, key: tuple[object, ...]) -> None:
        p = self.held.pop(key)
        self.out.append(_complete(p))

    def hold(self, key: tuple[object, ...], frame: Buffer, i: int, seen: _Seen) -> None:
        if len(self.held) >= self.max_flows:
            self.complete(next(iter(self.held)))
        self.held[key] = _Held(
            index=i,
            first=frame,
            d=seen.d,
            gso_size=seen.payload_len,
            p_len=len(frame) - ETH_HLEN,
            payload_total=seen.payload_len,
        )

    def finish(self) -> list[Assembled]:
        for key in list(self.held):
            self.complete(key)
        return self.out

    # -- one frame -----------------------------------------------------------
    def receive(self, frame: Buffer, i: int) -> None:
        seen = self._look(frame, i)
        if seen is None:
            return
        if seen.d.protocol == IPPROTO_TCP:
            self._tcp(frame, i, seen)
        else:
            self._udp(frame, i, seen)

    def _look(self, frame: Buffer, i: int) -> _Seen | None:
        """IP-layer checks, checksum validation and header pull; ``None`` = passed up."""
        try:
            d = dissect(frame, l4=False)
        except DissectError:
            self.alone(frame, i)
            return None
        n = len(frame)
        l3 = d.l3
        if d.version == 4:
            hdr_status, _ = self.verified.status(i)
            if frame[l3] != 0x45 or d.fragment or hdr_status is not ChecksumStatus.VERIFIED:
                self.alone(frame, i)
                return None
            (frag,) = _U16.unpack_from(frame, l3 + 6)
            flush = d.ip_end != n or bool(frag & 0x8000)
        else:
            flush = d.ip_end != n
        wanted = (d.protocol == IPPROTO_TCP and self.tcp) or (
            d.protocol == IPPROTO_UDP and self.udp
        )
        if d.fragment or not wanted:
            self.alone(frame, i)
            return None
        validated = False
        if not flush:
            _, l4_status = self.verified.status(i)
            udp_zero = d.protocol == IPPROTO_UDP and n - d.l4 >= 8 and _udp_check(frame, d) == 0
            if l4_status is not ChecksumStatus.VERIFIED and not udp_zero:
                self.alone(frame, i)
                return None
            validated = True
        try:
            d = dissect(frame)
        except DissectError:
            self.alone(frame, i, validated)
            return None
        if d.protocol == IPPROTO_UDP:
            (ulen,) = _U16.unpack_from(frame, d.l4 + 4)
            if _udp_check(frame, d) == 0 or ulen <= 8 or ulen != n - d.l4:
                self.alone(frame, i, validated)
                return None
        key: tuple[object, ...]
        ports = bytes(frame[d.l4 : d.l4 + 4])
        if d.version == 4:
            key = (bytes(frame[:l3]), 4, d.protocol, bytes(frame[l3 + 12 : l3 + 20]), ports)
        else:
            (word,) = _U32.unpack_from(frame, l3)
            key = (
                bytes(frame[:l3]),
                word & 0xF00FFFFF,
                bytes(frame[l3 + 6 : l3 + 7]),
                bytes(frame[l3 + 8 : d.l4]),
                ports,
            )
        return _Seen(d, key, flush, n - d.payload)

    def _tcp(self, frame: Buffer, i: int, seen: _Seen) -> None:
        d, key, length = seen.d, seen.key, seen.payload_len
        l4 = d.l4
        flags = frame[l4 + 13]
        p = self.held.get(key)
        if p is None:
            if seen.flush or length < 1 or flags & _ENDS:
                self.alone(frame, i, not seen.flush)
            else:
                self.hold(key, frame, i, seen)
            return
        pl4 = p.d.l4
        (word,) = _U32.unpack_from(frame, l4 + 12)
        (pword,) = _U32.unpack_from(p.first, pl4 + 12)
        pword |= p.merged_flags << 16
        (seq,) = _U32.unpack_from(frame, l4 + 4)
        (pseq,) = _U32.unpack_from(p.first, pl4 + 4)
        no_merge = (
            bool(flags & _TCP_CWR)
            or bool((word ^ pword) & ~_WORD_MAY_DIFFER)
            or frame[l4 + 8 : l4 + 12] != p.first[pl4 + 8 : pl4 + 12]
            or frame[l4 + 20 : d.payload] != p.first[pl4 + 20 : pl4 + (d.payload - l4)]
        )
        no_merge |= _network_flush(frame, d, p)
        mss = p.gso_size
        no_merge = no_merge or not 1 <= length <= mss
        no_merge = no_merge or (pseq + p.payload_total) & 0xFFFFFFFF != seq
        no_merge = no_merge or seen.flush or p.p_len + length >= self.max_size
        if no_merge:
            self.complete(key)
            if seen.flush or flags & _ENDS:
                self.alone(frame, i, not seen.flush)
            else:
                self.hold(key, frame, i, seen)
            return
        self._merge(p, frame, d, length)
        p.merged_flags |= flags & (_TCP_FIN | _TCP_PSH)
        if length < mss or flags & _ENDS or self._full(p, 0xFFFF):
            self.complete(key)

    def _udp(self, frame: Buffer, i: int, seen: _Seen) -> None:
        d, key = seen.d, seen.key
        (ulen,) = _U16.unpack_from(frame, d.l4 + 4)
        p = self.held.get(key)
        if p is None:
            if seen.flush:
                self.alone(frame, i)
            else:
                self.hold(key, frame, i, seen)
            return
        (pulen,) = _U16.unpack_from(p.first, p.d.l4 + 4)
        flush = _network_flush(frame, d, p)
        if ulen > pulen or flush:
            merged = False
        else:
            merged = not seen.flush and p.p_len + seen.payload_len < self.max_size
            if merged:
                self._merge(p, frame, d, seen.payload_len)
        if not merged or ulen != pulen or self._full(p, UDP_GRO_CNT_MAX):
            self.complete(key)
        if not merged:
            if seen.flush:
                self.alone(frame, i)
            else:
                self.hold(key, frame, i, seen)

    def _merge(self, p: _Held, frame: Buffer, d: Dissection, length: int) -> None:
        p.payloads.append(memoryview(frame)[d.payload : d.payload + length])
        p.count += 1
        p.payload_total += length
        p.p_len += length

    def _full(self, p: _Held, limit: int) -> bool:
        if self.max_segments is not None:
            limit = min(limit, self.max_segments)
        return p.count >= limit


def _udp_check(frame: Buffer, d: Dissection) -> int:
    (check,) = _U16.unpack_from(frame, d.l4 + 6)
    return int(check)


def _complete(p: _Held) -> Assembled:
    """``napi_gro_complete``: build the super-packet, or pass a lone packet up unchanged."""
    d = p.d
    if p.count == 1:
        return Assembled(p.first, p.index, 1, d.version, d.protocol, validated=True)
    head = bytearray(p.first[: d.payload])
    data = b"".join([head, memoryview(p.first)[d.payload :], *p.payloads])
    buf = bytearray(data)
    l3, l4 = d.l3, d.l4
    l4_len = len(buf) - l4
    if d.version == 4:
        (old_total,) = _U16.unpack_from(buf, l3 + 2)
        (check,) = _U16.unpack_from(buf, l3 + 10)
        new_total = len(buf) - l3
        _U16.pack_into(buf, l3 + 2, new_total)
        _U16.pack_into(buf, l3 + 10, update16(check, old_total, new_total))
        src, dst = bytes(buf[l3 + 12 : l3 + 16]), bytes(buf[l3 + 16 : l3 + 20])
    else:
        _U16.pack_into(buf, l3 + 4, len(buf) - l3 - 40)
        src, dst = bytes(buf[l3 + 8 : l3 + 24]), bytes(buf[l3 + 24 : l3 + 40])
    if d.protocol == IPPROTO_TCP:
        buf[l4 + 13] |= p.merged_flags
        _U16.pack_into(buf, l4 + 16, pseudo_header_sum(src, dst, IPPROTO_TCP, l4_len))
        kind = GsoType.TCPV4 if d.version == 4 else GsoType.TCPV6
        ecn = bool(buf[l4 + 13] & _TCP_CWR)
        csum = ChecksumRequest(l4, TCP_CSUM_OFFSET)
    else:
        _U16.pack_into(buf, l4 + 4, l4_len)
        _U16.pack_into(buf, l4 + UDP_CSUM_OFFSET, pseudo_header_sum(src, dst, IPPROTO_UDP, l4_len))
        kind, ecn = GsoType.UDP_L4, False
        csum = ChecksumRequest(l4, UDP_CSUM_OFFSET)
    seg = SegmentationRequest(kind, p.gso_size, d.payload, ecn, p.fixed_id and d.version == 4)
    return Assembled(bytes(buf), p.index, p.count, d.version, d.protocol, True, seg, csum)


def reference_assemble(
    frames: Sequence[Buffer],
    *,
    tcp: bool = True,
    udp: bool = True,
    verified: VerifyResult | None = None,
    max_size: int = GRO_MAX_SIZE,
    max_segments: int | None = None,
    max_flows: int = MAX_GRO_SKBS,
) -> list[Assembled]:
    """Run GRO over one batch (one NAPI poll); see the module docstring.

    ``verified`` is the batch's ``verify_batch`` result when the caller has
    it already. ``max_segments`` caps a super-packet's segments (Linux has
    no cap for TCP beyond the size; UDP is capped at 64 regardless).
    """
    if verified is None:
        verified = verify_batch(frames)
    gro = _Gro(
        verified,
        tcp=tcp,
        udp=udp,
        max_size=max_size,
        max_segments=max_segments,
        max_flows=max_flows,
    )
    for i, frame in enumerate(frames):
        gro.receive(frame, i)
    return gro.finish()


def reference_coalesce(
    frames: Sequence[Buffer],
    *,
    tcp: bool = True,
    udp: bool = True,
    max_size: int = GRO_MAX_SIZE,
    max_segments: int | None = None,
) -> list[tuple[VirtioNetHdr, bytes]]:
    """GRO a batch; each output frame with the virtio_net_hdr a TAP read would show.

    ``[f for h, b in coalesce(x) for f in segment(b, h)] == x`` for frames of
    mergeable flows with incrementing IPv4 IDs.
    """
    units = reference_assemble(
        frames, tcp=tcp, udp=udp, max_size=max_size, max_segments=max_segments
    )
    return [(u.vnet_hdr(), bytes(u.data)) for u in units]
