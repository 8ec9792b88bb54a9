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

Per-segment fields are NumPy columns: the headers of all segments are the rows
of one matrix, and the payload sums of equal-size segments one pass.
``segment_batch`` (``gso_batch``) does the same for a whole batch of
super-packets in one matrix; ``segment`` stays the faster way to cut one.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine import rows
from netoffload.engine.checksum import (
    FillJob,
    fill_batch,
    fill_partial,
    request_valid,
)
from netoffload.engine.dissect import IPPROTO_TCP, IPV4_DF, Dissection
from netoffload.engine.gso_batch import SegmentBatch, segment_batch
from netoffload.engine.validate import VnetHdrRejected, VnetPlan, plan_vnet_hdr
from netoffload.offload.extension import (
    ChecksumRequest,
    GsoType,
    TxRequest,
)
from netoffload.offload.stats import DropReason
from netoffload.offload.virtio import VirtioNetHdr, vnet_fields
from netoffload.wire.checksum import add16, ones_sum, pseudo_header_sum

Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = ["GsoError", "SegmentBatch", "plan_batch", "segment", "segment_batch", "segment_request"]

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_BE16 = np.dtype(">u2")
IntArray: TypeAlias = npt.NDArray[np.int64]
ByteArray: TypeAlias = npt.NDArray[np.uint8]

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


def plan_batch(
    frames: Sequence[Buffer], hdrs: Sequence[VirtioNetHdr]
) -> list[VnetPlan | DropReason]:
    """``plan_vnet_hdr`` of every input for ``segment_batch``: a refusal is its reason."""
    plans: list[VnetPlan | DropReason] = []
    for frame, hdr in zip(frames, hdrs, strict=True):
        try:
            plans.append(plan_vnet_hdr(hdr, frame))
        except VnetHdrRejected as exc:
            plans.append(exc.reason)
    return plans


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
    return VirtioNetHdr(*vnet_fields(request))


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


@dataclass(slots=True)
class _Cut:
    """A super-packet laid out as its segments: one row each, headers then payload piece.

    ``words`` is the same memory as big-endian 16-bit columns (every header
    field written here starts on an even offset). ``sums`` holds each piece's
    payload sum modulo 0xFFFF. Rows are padded to an even width; the last
    row's segment may be shorter than the others.
    """

    rows: ByteArray
    words: npt.NDArray[np.uint16]
    index: IntArray
    plen: IntArray
    sums: IntArray
    hdr_end: int
    mss: int

    @property
    def count(self) -> int:
        return len(self.plen)

    def frames(self) -> list[bytes]:
        """The segments as frames: one copy out of the rows."""
        data = self.rows.tobytes()
        width = self.rows.shape[1]
        size = self.hdr_end + self.mss
        last = (self.count - 1) * width
        frames = [data[at : at + size] for at in range(0, last, width)]
        frames.append(data[last : last + self.hdr_end + int(self.plen[-1])])
        return frames


def _cut(mv: memoryview, hdr_end: int, mss: int) -> _Cut:
    """Lay ``mv`` out as its segments (headers copied from the super-packet, unfilled)."""
    n = len(mv)
    count = -(-(n - hdr_end) // mss)
    last_len = n - hdr_end - (count - 1) * mss
    full = count if last_len == mss else count - 1
    plen = np.full(count, mss, dtype=np.int64)
    plen[-1] = last_len
    src = np.frombuffer(mv, dtype=np.uint8)
    size = hdr_end + mss
    out = np.empty((count, size + (size & 1)), dtype=np.uint8)
    out[:, :hdr_end] = src[:hdr_end]
    sums = np.empty(count, dtype=np.int64)
    if full:
        # Back-to-back pieces of one size are a reshape of the payload: no gather.
        pieces = src[hdr_end : hdr_end + full * mss].reshape(full, mss)
        out[:full, hdr_end:size] = pieces
        # Little-endian word sums times 256: the big-endian sums' residues.
        sums[:full] = rows.le_sum(pieces, 0, mss) * 256
    if full < count:
        tail = src[hdr_end + full * mss :]
        out[full, hdr_end : hdr_end + last_len] = tail
        sums[full] = ones_sum(tail.data)
    index = np.arange(count, dtype=np.int64)
    return _Cut(out, out.view(_BE16), index, plen, sums, hdr_end, mss)


def _complement(total: IntArray) -> IntArray:
    """The complemented one's-complement sum of terms adding up to ``total`` (modulo 0xFFFF).

    A chain of ``add16`` over terms that are not all zero gives the residue
    modulo 0xFFFF, with 0xFFFF for a multiple of it; its complement is
    ``0xFFFE - (total - 1) % 0xFFFF``. Every sum here has a non-zero term, and
    any integer congruent to the true sum gives the same answer.
    """
    value: IntArray = 0xFFFE - (total - 1) % 0xFFFF
    return value


def _be16(data: bytes, offset: int) -> int:
    return (data[offset] << 8) | data[offset + 1]


def _fill_ip(cut: _Cut, template: bytes, layout: _Layout, ident: IntArray) -> None:
    """IPv4 total length, ID and header checksum, or the IPv6 payload length, of every row."""
    w = cut.words
    l3 = layout.l3
    if layout.version == 4:
        total = cut.plen + (cut.hdr_end - l3)
        w[:, (l3 + 2) >> 1] = total
        w[:, (l3 + 4) >> 1] = ident
        ihl = (template[l3] & 0x0F) * 4
        # The header sum less the three fields rewritten (a residue is enough).
        base = ones_sum(template[l3 : l3 + ihl]) - _be16(template, l3 + 2)
        base -= _be16(template, l3 + 4) + _be16(template, l3 + 10)
        w[:, (l3 + 10) >> 1] = _complement(total + ident + base)
    else:
        w[:, (l3 + 4) >> 1] = cut.plen + (cut.hdr_end - l3 - 40)


def _segment_tcp(frame: Buffer, layout: _Layout, plan: VnetPlan, fixed_id: bool) -> list[bytes]:
    mv = memoryview(frame).cast("B")
    n = len(mv)
    l4, hdr_end = layout.l4, layout.hdr_end
    cut = _cut(mv, hdr_end, plan.gso_size)
    template = bytes(mv[:hdr_end])
    old_len = n - l4
    if plan.needs_csum:
        check = _be16(template, l4 + 16)
    else:
        check = pseudo_header_sum(
            _addr(template, layout, 0), _addr(template, layout, 1), IPPROTO_TCP, old_len
        )
    (seq0,) = _U32.unpack_from(template, l4 + 4)
    word0 = _be16(template, l4 + 12)  # data offset and flags
    seq = (seq0 + cut.index * cut.mss) & 0xFFFFFFFF
    word = np.full(cut.count, word0 & ~(TCP_FIN | TCP_PSH | TCP_CWR), dtype=np.int64)
    word[0] = word0 & ~(TCP_FIN | TCP_PSH)  # CWR only on the first,
    word[-1] = word0 if cut.count == 1 else word0 & ~TCP_CWR  # FIN and PSH only on the last
    # Each segment's sum, as terms: the header less seq, flags and checksum; the
    # checksum field Linux writes first, ~csum_fold(check + (~oldlen + newlen));
    # seq (2**32 is 1 modulo 0xFFFF); flags; payload. The data offset makes it non-zero.
    th_rest = ones_sum(template[l4:hdr_end]) - _be16(template, l4 + 4) - _be16(template, l4 + 6)
    th_rest -= word0 + _be16(template, l4 + 16)
    const = th_rest + check + 0xFFFFFFFF - old_len + (hdr_end - l4)
    total = cut.sums + cut.plen + seq + word + const
    ident0 = _be16(template, layout.l3 + 4) if layout.version == 4 else 0
    ident = (
        np.full(cut.count, ident0, dtype=np.int64) if fixed_id else (ident0 + cut.index) & 0xFFFF
    )
    _fill_ip(cut, template, layout, ident)
    w = cut.words
    w[:, (l4 + 4) >> 1] = seq >> 16
    w[:, (l4 + 6) >> 1] = seq & 0xFFFF
    w[:, (l4 + 12) >> 1] = word
    w[:, (l4 + 16) >> 1] = _complement(total)
    return cut.frames()


def _addr(template: bytes, layout: _Layout, which: int) -> bytes:
    if layout.version == 4:
        a = layout.l3 + 12 + 4 * which
        return bytes(template[a : a + 4])
    a = layout.l3 + 8 + 16 * which
    return bytes(template[a : a + 16])


def _segment_udp(frame: Buffer, layout: _Layout, plan: VnetPlan) -> list[bytes]:
    mv = memoryview(frame).cast("B")
    l4 = layout.l4
    hdr_end = l4 + 8
    cut = _cut(mv, hdr_end, plan.gso_size)
    template = bytes(mv[:hdr_end])
    old_ulen = _be16(template, l4 + 4)
    check = _be16(template, l4 + 6)
    # Linux: check = csum16_add(csum16_sub(uh->check, uh->len), htons(newlen)).
    minus_old = add16(check, ~old_ulen & 0xFFFF)
    ulen = cut.plen + 8
    # Terms: ports, length, the checksum field (minus_old + length) and the payload;
    # the length makes every sum non-zero.
    total = cut.sums + 2 * ulen + (ones_sum(template[l4 : l4 + 4]) + minus_old)
    value = _complement(total)
    value[value == 0] = 0xFFFF  # complement_for_wire: a UDP checksum is never sent as 0
    ident0 = _be16(template, layout.l3 + 4) if layout.version == 4 else 0
    _fill_ip(cut, template, layout, (ident0 + cut.index) & 0xFFFF)
    w = cut.words
    w[:, (l4 + 4) >> 1] = ulen
    w[:, (l4 + 6) >> 1] = value
    return cut.frames()
