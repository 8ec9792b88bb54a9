"""Segmentation (GSO/TSO/USO) exactly as Linux's software GSO.

Sources: ``inet_gso_segment`` (net/ipv4/af_inet.c), ``ipv6_gso_segment``
(net/ipv6/ip6_offload.c), ``tcp4_gso_segment``/``tcp_gso_segment``
(net/ipv4/tcp_offload.c), ``__udp_gso_segment`` (net/ipv4/udp_offload.c).

* The super-packet's own IP length field is ignored: every segment's IPv4
  total length / IPv6 payload length is computed from the bytes it carries.
* IPv4 ID: the super-packet's ID plus the segment index (mod 2**16), unless
  fixed-ID (allowed only with DF); header checksum recomputed.
* TCP: seq + i*mss; FIN and PSH only on the last segment; CWR only on the
  first; every other header byte, options included, copied.
* The checksum field is *adjusted*, not recomputed: with NEEDS_CSUM it holds
  the pseudo-header sum for the super-packet's L4 length, and Linux replaces
  that length by the segment's (TCP: ``~oldlen + newlen``; UDP: ``- uh->len +
  newlen`` using the super-packet's UDP length field). Without NEEDS_CSUM
  (TCP only) the field is first set to the pseudo-header sum.
* Each segment's checksum is then the complement of the sum from the L4
  header to its end; a UDP result of 0 is sent as 0xFFFF (TCP keeps 0, as
  ``gso_make_checksum`` does).

Payload sums of equal-size segments are one strided vectorised call.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypeAlias

from netoffload.engine.checksum import (
    FillJob,
    complement_for_wire,
    fill_batch,
    fill_partial,
    request_valid,
)
from netoffload.engine.dissect import IPPROTO_TCP, IPV4_DF, Dissection
from netoffload.engine.validate import VnetHdrRejected, VnetPlan, plan_vnet_hdr
from netoffload.offload.extension import (
    ChecksumRequest,
    GsoType,
    SegmentationRequest,
    TxRequest,
)
from netoffload.offload.stats import DropReason
from netoffload.offload.virtio import GSO_ECN, VirtioFlags, VirtioNetHdr
from netoffload.wire.checksum import add16, fold32, ones_sum, ones_sum_spans, pseudo_header_sum

Buffer: TypeAlias = bytes | bytearray | memoryview

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80


class GsoError(ValueError):
    """A packet that cannot be segmented; ``reason`` is why (as a drop reason)."""

    def __init__(self, reason: DropReason, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the headers of the super-packet are."""

    l3: int
    l4: int
    hdr_end: int
    version: int
    protocol: int


def segment(frame: Buffer, hdr: VirtioNetHdr) -> list[bytes]:
    """Do what ``hdr`` asks for ``frame`` as Linux would after a TAP write.

    A GSO header gives the segments (each with every checksum filled); a
    non-GSO header with NEEDS_CSUM gives ``[frame with its checksum filled]``;
    otherwise ``[frame]``. Raises ``GsoError`` (only) for what Linux refuses.
    """
    try:
        plan = plan_vnet_hdr(hdr, frame)
    except VnetHdrRejected as exc:
        raise GsoError(exc.reason, str(exc)) from None
    return _run(frame, plan, fixed_id=False)


def segment_request(frame: Buffer, request: TxRequest) -> list[bytes]:
    """``segment`` driven by a ``TxRequest`` (its checksum and segmentation parts).

    ``SegmentationRequest.fixed_id`` keeps one IPv4 ID on every segment (Linux
    SKB_GSO_TCP_FIXEDID), refused without DF. The IPv4 header checksum is
    filled when ``ipv4_header_checksum`` is asked, and always on segments.
    """
    seg = request.segmentation
    try:
        hdr = _request_hdr(request)
    except ValueError as exc:
        raise GsoError(DropReason.BAD_VNET_HDR, str(exc)) from None
    try:
        plan = plan_vnet_hdr(hdr, frame)
    except VnetHdrRejected as exc:
        raise GsoError(exc.reason, str(exc)) from None
    fixed = seg is not None and seg.fixed_id
    if plan.gso or not request.ipv4_header_checksum:
        return _run(frame, plan, fixed_id=fixed)
    req = None
    if plan.needs_csum:
        req = ChecksumRequest(plan.csum_start, plan.csum_offset)
    (result,) = fill_batch([FillJob(frame, req, ipv4_header=True)])
    if isinstance(result, DropReason):
        raise GsoError(result, "cannot fill the checksums")
    return [result]


def _request_hdr(request: TxRequest) -> VirtioNetHdr:
    flags = 0
    start = offset = 0
    if request.checksum is not None:
        flags = VirtioFlags.NEEDS_CSUM
        start, offset = request.checksum.start, request.checksum.offset
    seg: SegmentationRequest | None = request.segmentation
    gso_type = hdr_len = size = 0
    if seg is not None:
        gso_type = int(seg.gso_type) | (GSO_ECN if seg.ecn else 0)
        hdr_len, size = seg.hdr_len, seg.size
    return VirtioNetHdr(flags, gso_type, hdr_len, size, start, offset)


def _run(frame: Buffer, plan: VnetPlan, *, fixed_id: bool) -> list[bytes]:
    if not plan.gso:
        if not plan.needs_csum:
            return [bytes(frame)]
        req = ChecksumRequest(plan.csum_start, plan.csum_offset)
        if not request_valid(len(frame), req):
            raise GsoError(DropReason.CSUM_OFFSETS_INVALID, "checksum field outside the frame")
        buf = bytearray(frame)
        fill_partial(buf, req)
        return [bytes(buf)]
    d = plan.dissection
    assert d is not None  # a GSO plan always carries its dissection
    if plan.kind is GsoType.UDP:
        raise GsoError(DropReason.GSO_UNSUPPORTED, "legacy UFO (IP fragmentation) is not done")
    layout = _layout(d)
    if fixed_id and layout.version == 4:
        (frag,) = _U16.unpack_from(frame, layout.l3 + 6)
        if not frag & IPV4_DF:
            raise GsoError(DropReason.BAD_VNET_HDR, "fixed IPv4 ID without DF")
    if layout.protocol == IPPROTO_TCP:
        return _segment_tcp(frame, layout, plan, fixed_id)
    return _segment_udp(frame, layout, plan)


def _layout(d: Dissection) -> _Layout:
    return _Layout(d.l3, d.l4, d.payload, d.version, d.protocol)


def _payload_sums(mv: memoryview, first: int, mss: int, count: int, last_len: int) -> list[int]:
    """Folded sums of ``count`` payload pieces: equal ones in one strided call, then the last."""
    full = count if last_len == mss else count - 1
    sums: list[int] = []
    if full:
        starts = [first + i * mss for i in range(full)]
        sums = [int(s) for s in ones_sum_spans(mv, starts, [mss] * full)]
    if full < count:
        start = first + full * mss
        sums.append(ones_sum(mv[start : start + last_len]))
    return sums


def _ip_parts(frame: Buffer, layout: _Layout) -> tuple[bytearray, int, int, int]:
    """The header template, the IPv4 header sum without length/ID/checksum, and the ID."""
    template = bytearray(frame[: layout.hdr_end])
    base = 0
    ident = 0
    if layout.version == 4:
        l3 = layout.l3
        ihl = (template[l3] & 0x0F) * 4
        (ident,) = _U16.unpack_from(template, l3 + 4)
        hdr = bytearray(template[l3 : l3 + ihl])
        hdr[2:6] = b"\x00\x00\x00\x00"
        hdr[10:12] = b"\x00\x00"
        base = ones_sum(hdr)
    addr_sum = (
        ones_sum(template[layout.l3 + 12 : layout.l3 + 20])
        if layout.version == 4
        else (ones_sum(template[layout.l3 + 8 : layout.l3 + 40]))
    )
    return template, base, ident, addr_sum


def _set_ip(hdr: bytearray, layout: _Layout, seg_len: int, ident: int, base: int) -> None:
    l3 = layout.l3
    if layout.version == 4:
        total = seg_len - l3
        _U16.pack_into(hdr, l3 + 2, total)
        _U16.pack_into(hdr, l3 + 4, ident)
        _U16.pack_into(hdr, l3 + 10, ~add16(add16(base, total), ident) & 0xFFFF)
    else:
        _U16.pack_into(hdr, l3 + 4, seg_len - l3 - 40)


def _segment_tcp(frame: Buffer, layout: _Layout, plan: VnetPlan, fixed_id: bool) -> list[bytes]:
    mv = memoryview(frame).cast("B")
    n = len(mv)
    mss = plan.gso_size
    l4, hdr_end = layout.l4, layout.hdr_end
    thlen = hdr_end - l4
    payload = n - hdr_end
    count = -(-payload // mss)
    last_len = payload - (count - 1) * mss
    template, ip_base, ident0, _ = _ip_parts(mv, layout)
    old_len = n - l4
    if plan.needs_csum:
        (check,) = _U16.unpack_from(template, l4 + 16)
    else:
        check = pseudo_header_sum(
            _addr(template, layout, 0), _addr(template, layout, 1), IPPROTO_TCP, old_len
        )

    # Linux: newcheck = ~csum_fold(check + (~oldlen + newlen)), 32-bit one's complement.
    def adjusted(new_len: int) -> int:
        return fold32(check + ((0xFFFFFFFF - old_len + new_len) & 0xFFFFFFFF))

    (seq0,) = _U32.unpack_from(template, l4 + 4)
    flags0 = template[l4 + 13]
    # TCP header sum without seq (4..8), flags byte pair (12..14) and checksum (16..18).
    th = bytearray(template[l4:hdr_end])
    th[4:8] = b"\x00\x00\x00\x00"
    th[12:14] = b"\x00\x00"
    th[16:18] = b"\x00\x00"
    th_base = ones_sum(th)
    off_word_hi = template[l4 + 12] << 8
    sums = _payload_sums(mv, hdr_end, mss, count, last_len)
    out: list[bytes] = []
    for i in range(count):
        last = i == count - 1
        plen = last_len if last else mss
        seq = (seq0 + i * mss) & 0xFFFFFFFF
        flags = flags0
        if not last:
            flags &= ~(TCP_FIN | TCP_PSH)
        if i:
            flags &= ~TCP_CWR
        field = adjusted(thlen + plen)
        s = add16(th_base, sums[i])
        s = add16(s, (seq >> 16) + (seq & 0xFFFF))
        s = add16(s, off_word_hi | flags)
        s = add16(s, field)
        hdr = bytearray(template)
        _U32.pack_into(hdr, l4 + 4, seq)
        hdr[l4 + 13] = flags
        _U16.pack_into(hdr, l4 + 16, ~s & 0xFFFF)
        ident = ident0 if fixed_id else (ident0 + i) & 0xFFFF
        _set_ip(hdr, layout, hdr_end + plen, ident, ip_base)
        start = hdr_end + i * mss
        out.append(b"".join((hdr, mv[start : start + plen])))
    return out


def _addr(template: bytearray, layout: _Layout, which: int) -> bytes:
    if layout.version == 4:
        a = layout.l3 + 12 + 4 * which
        return bytes(template[a : a + 4])
    a = layout.l3 + 8 + 16 * which
    return bytes(template[a : a + 16])


def _segment_udp(frame: Buffer, layout: _Layout, plan: VnetPlan) -> list[bytes]:
    mv = memoryview(frame).cast("B")
    n = len(mv)
    mss = plan.gso_size
    l4 = layout.l4
    hdr_end = l4 + 8
    payload = n - hdr_end
    count = -(-payload // mss)
    last_len = payload - (count - 1) * mss
    template, ip_base, ident0, _ = _ip_parts(mv, layout)
    (old_ulen,) = _U16.unpack_from(template, l4 + 4)
    (check,) = _U16.unpack_from(template, l4 + 6)
    # Linux: check = csum16_add(csum16_sub(uh->check, uh->len), htons(newlen)).
    minus_old = add16(check, ~old_ulen & 0xFFFF)
    ports_sum = ones_sum(template[l4 : l4 + 4])
    sums = _payload_sums(mv, hdr_end, mss, count, last_len)
    out: list[bytes] = []
    for i in range(count):
        plen = last_len if i == count - 1 else mss
        ulen = 8 + plen
        field = add16(minus_old, ulen)
        s = add16(add16(add16(ports_sum, ulen), field), sums[i])
        hdr = bytearray(template)
        _U16.pack_into(hdr, l4 + 4, ulen)
        _U16.pack_into(hdr, l4 + 6, complement_for_wire(s))
        _set_ip(hdr, layout, hdr_end + plen, (ident0 + i) & 0xFFFF, ip_base)
        start = hdr_end + i * mss
        out.append(b"".join((hdr, mv[start : start + plen])))
    return out
