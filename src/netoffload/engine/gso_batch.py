"""Batched segmentation: every segment of a batch of super-packets as a row of one matrix.

``segment_batch`` does for many frames at once what ``gso.segment`` does for
one, with the same result byte for byte (see ``gso`` for the Linux rules):

* The output is one ``(rows, headroom + width)`` uint8 matrix, one segment per
  row in input order: one allocation, and each payload byte copied once.
* Per super-packet there is only a little Python: its plan's numbers, two
  copies (the full-size pieces are a reshape of its payload, then the short
  last one) and the payload sums of those pieces, taken while they are in cache.
* Everything else is columns over all rows of all super-packets of one header
  layout: the header bytes are repeated into the rows at once; seq, IP ID, IP
  length, flags and both checksums are computed per row from per-packet
  constants, which come out of one float64 product of the packets' headers
  (exact: every value is below 2**53).
* A packet that cannot be segmented costs only itself: its error is recorded
  and it gets no rows. A packet the kernel sends whole (no GSO, or too small)
  is done by the single-packet path and kept apart.

With ``headroom`` bytes before each row (4: the cable's length prefix),
``write_length_prefixes`` frames every segment in place and ``wire_chunks``
gives the few contiguous spans that hold them all, ready for one ``sendmsg``.

Given ``rows`` (a device's lender of transmit memory, such as
``XdpDevice.tx_rows``), the matrix is the device's memory: every segment is
cut straight into a buffer the device sends from, with no copy after.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine import rows as rowsum
from netoffload.engine.checksum import fill_partial, request_valid
from netoffload.engine.dissect import IPPROTO_TCP, IPV4_DF
from netoffload.engine.validate import VnetPlan
from netoffload.offload.extension import ChecksumRequest, GsoType
from netoffload.offload.stats import DropReason
from netoffload.wire.checksum import ones_sum

Buffer: TypeAlias = bytes | bytearray | memoryview
IntArray: TypeAlias = npt.NDArray[np.int64]
ByteMatrix: TypeAlias = npt.NDArray[np.uint8]
#: Lends ``count`` rows of at least ``width`` bytes as one C-contiguous uint8 matrix, or None.
RowSource: TypeAlias = Callable[[int, int], ByteMatrix | None]

TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80
_BE16 = np.dtype(">u2")
_LE32 = np.dtype("<u4")

# Per-packet columns of the header product (see ``_weights``).
_IP_SUM, _IP_TOTAL, _IDENT, _IP_CHECK, _FRAG, _ADDR, _L4_SUM = range(7)
_SEQ, _WORD, _L4_CHECK, _ULEN, _PORTS = range(7, 12)
_COLUMNS = 12


@dataclass(frozen=True, slots=True)
class SegmentBatch:
    """The segments of a batch of super-packets, and why any input has none.

    Row ``r`` holds a segment of ``lengths[r]`` bytes at
    ``matrix[r, headroom : headroom + lengths[r]]``; input ``i`` owns rows
    ``first[i]`` to ``first[i + 1]``. An input sent whole (no GSO) is in
    ``whole[i]`` instead (``headroom`` bytes first, like a row), and an input
    that cannot be segmented has ``errors[i]`` and nothing else.
    """

    matrix: ByteMatrix
    headroom: int
    lengths: IntArray
    first: list[int]
    whole: dict[int, bytearray]
    errors: list[DropReason | None]

    def __len__(self) -> int:
        return len(self.errors)

    @property
    def rows(self) -> int:
        """Segments held in the matrix."""
        return len(self.lengths)

    def count(self, i: int) -> int:
        """How many frames input ``i`` became (0 for an error)."""
        if i in self.whole:
            return 1
        return self.first[i + 1] - self.first[i]

    def segments(self, i: int) -> list[memoryview]:
        """The frames of input ``i``, as views (no copy)."""
        h = self.headroom
        single = self.whole.get(i)
        if single is not None:
            return [memoryview(single)[h:]]
        a, b = self.first[i], self.first[i + 1]
        if a == b:
            return []
        flat = self.matrix.reshape(-1).data
        stride = self.matrix.shape[1]
        return [
            flat[r * stride + h : r * stride + h + n]
            for r, n in zip(range(a, b), self.lengths[a:b].tolist(), strict=True)
        ]

    def frame_lengths(self, i: int) -> list[int]:
        """The lengths of input ``i``'s frames (empty for an error)."""
        single = self.whole.get(i)
        if single is not None:
            return [len(single) - self.headroom]
        lengths: list[int] = self.lengths[self.first[i] : self.first[i + 1]].tolist()
        return lengths

    def wire_chunks_of(self, begin: int, end: int) -> list[memoryview]:
        """``wire_chunks`` for inputs ``[begin, end)`` only (errors give nothing)."""
        h = self.headroom
        if h < 4:
            raise ValueError("wire chunks need a headroom of at least 4 bytes")
        out: list[memoryview] = []
        row = self.first[begin]
        for i in range(begin, end):
            single = self.whole.get(i)
            if single is not None:
                out += self._spans(row, self.first[i])
                out.append(memoryview(single)[h - 4 :])
                row = self.first[i]
        out += self._spans(row, self.first[end])
        return out

    def all_segments(self) -> list[memoryview]:
        """Every frame of the batch in input order."""
        return [s for i in range(len(self)) for s in self.segments(i)]

    def write_length_prefixes(self) -> None:
        """Write each frame's length (4 bytes, little-endian) just before it: the cable framing.

        Needs ``headroom >= 4``.
        """
        h = self.headroom
        if h < 4:
            raise ValueError("length prefixes need a headroom of at least 4 bytes")
        if self.rows:
            self.matrix[:, h - 4 : h].view(_LE32)[:, 0] = self.lengths
        for single in self.whole.values():
            single[h - 4 : h] = (len(single) - h).to_bytes(4, "little")

    def wire_chunks(self) -> list[memoryview]:
        """Contiguous spans holding every frame with its 4-byte prefix, in input order.

        After ``write_length_prefixes``: the spans, sent back to back, are the
        batch in the cable's framing. With a headroom of exactly 4, a row whose
        segment fills it runs into the next row's prefix, so a super-packet of
        equal segments is one span (a short last segment ends it) and a batch
        is a handful of spans; with more headroom each frame is a span.
        """
        h = self.headroom
        if h < 4:
            raise ValueError("wire chunks need a headroom of at least 4 bytes")
        out: list[memoryview] = []
        row = 0  # the first row not yet in a span
        for i in sorted(self.whole):
            out += self._spans(row, self.first[i])
            out.append(memoryview(self.whole[i])[h - 4 :])
            row = self.first[i]
        out += self._spans(row, self.rows)
        return out

    def _spans(self, begin: int, end: int) -> list[memoryview]:
        """The prefixed frames of rows ``[begin, end)`` as few contiguous spans."""
        if begin >= end:
            return []
        h = self.headroom
        stride = self.matrix.shape[1]
        flat = self.matrix.reshape(-1).data
        lengths = self.lengths[begin:end]
        if h == 4:
            # A span ends at a row whose segment leaves padding after it, and at the end.
            last = ((lengths != stride - h).nonzero()[0] + begin).tolist()
            if not last or last[-1] != end - 1:
                last.append(end - 1)
        else:
            last = list(range(begin, end))
        ends = self.lengths[last].tolist()
        spans = []
        first = begin
        for r, n in zip(last, ends, strict=True):
            spans.append(flat[first * stride + h - 4 : r * stride + h + n])
            first = r + 1
        return spans


@functools.lru_cache(maxsize=64)
def _weights(
    version: int, protocol: int, l3: int, l4: int, hdr_end: int
) -> npt.NDArray[np.float64]:
    """Weights turning a packet's header bytes into its columns (big-endian words)."""
    w = np.zeros((hdr_end, _COLUMNS), np.float64)

    def be_sum(column: int, begin: int, end: int) -> None:
        for b in range(begin, end):
            w[b, column] = 256.0 if (b - begin) % 2 == 0 else 1.0

    if version == 4:
        be_sum(_IP_SUM, l3, l4)
        be_sum(_IP_TOTAL, l3 + 2, l3 + 4)
        be_sum(_IDENT, l3 + 4, l3 + 6)
        be_sum(_IP_CHECK, l3 + 10, l3 + 12)
        be_sum(_FRAG, l3 + 6, l3 + 8)
        be_sum(_ADDR, l3 + 12, l3 + 20)
    else:
        be_sum(_ADDR, l3 + 8, l3 + 40)
    be_sum(_L4_SUM, l4, hdr_end)
    if protocol == IPPROTO_TCP:
        w[l4 + 4 : l4 + 8, _SEQ] = 2.0**24, 2.0**16, 2.0**8, 1.0
        be_sum(_WORD, l4 + 12, l4 + 14)
        be_sum(_L4_CHECK, l4 + 16, l4 + 18)
    else:
        be_sum(_ULEN, l4 + 4, l4 + 6)
        be_sum(_L4_CHECK, l4 + 6, l4 + 8)
        be_sum(_PORTS, l4, l4 + 4)
    w.flags.writeable = False
    return w


def _complement(total: IntArray) -> IntArray:
    """The complemented one's-complement sum of terms adding up to ``total`` (see ``gso``)."""
    value: IntArray = 0xFFFE - (total - 1) % 0xFFFF
    return value


@dataclass(slots=True)
class _Group:
    """The GSO inputs of one header layout and protocol."""

    version: int
    protocol: int
    l3: int
    l4: int
    hdr_end: int
    inputs: list[int]
    frames: list[npt.NDArray[np.uint8]]
    headers: list[Buffer]
    sizes: list[int]  # gso_size
    needs_csum: list[bool]
    fixed: list[bool]


def segment_batch(
    frames: Sequence[Buffer],
    plans: Sequence[VnetPlan | DropReason],
    *,
    fixed_id: Sequence[bool] | None = None,
    headroom: int = 0,
    rows: RowSource | None = None,
) -> SegmentBatch:
    """Segment every frame as its plan says (``plan_vnet_hdr``); never raises on bad input.

    ``plans[i]`` may be a ``DropReason`` already (a refused header): it is
    the input's error. ``fixed_id[i]`` keeps one IPv4 ID on every segment of
    input ``i`` (SKB_GSO_TCP_FIXEDID; refused without DF). ``headroom`` (even)
    bytes are reserved before every frame. A plan without GSO gives the frame
    itself, its checksum filled when the plan asks (as ``gso.segment``).
    ``rows``, when given, is asked for the matrix first (the segments are then
    cut into its rows); when it has none, the matrix is allocated here.
    """
    if headroom < 0 or headroom % 2:
        raise ValueError(f"headroom must be even and not negative, not {headroom}")
    n = len(frames)
    errors: list[DropReason | None] = [None] * n
    whole: dict[int, bytearray] = {}
    groups: dict[tuple[int, int, int, int, int], _Group] = {}
    for i, (frame, plan) in enumerate(zip(frames, plans, strict=True)):
        if isinstance(plan, DropReason):
            errors[i] = plan
            continue
        fixed = fixed_id is not None and fixed_id[i]
        d = plan.dissection
        if not plan.gso or d is None:
            result = sent_whole(frame, plan, headroom)
            if isinstance(result, DropReason):
                errors[i] = result
            else:
                whole[i] = result
            continue
        if plan.kind is GsoType.UDP:
            errors[i] = DropReason.GSO_UNSUPPORTED  # legacy UFO: IP fragmentation
            continue
        tcp = d.protocol == IPPROTO_TCP
        hdr_end = d.payload if tcp else d.l4 + 8
        size = plan.gso_size
        if not (size > 0 and d.l3 < d.l4 < hdr_end < len(frame)):
            errors[i] = DropReason.MALFORMED_FRAME  # a plan made for another frame
            continue
        key = (d.version, d.protocol, d.l3, d.l4, hdr_end)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(*key, [], [], [], [], [], [])
        src = np.frombuffer(frame, np.uint8)
        group.inputs.append(i)
        group.frames.append(src)
        group.headers.append(src[:hdr_end].data)
        group.sizes.append(size)
        group.needs_csum.append(plan.needs_csum)
        group.fixed.append(fixed and d.version == 4)  # checked for DF; UDP IDs still count
    cols: dict[tuple[int, int, int, int, int], IntArray] = {}
    for key, group in list(groups.items()):
        c = (np.frombuffer(b"".join(group.headers), np.uint8).reshape(len(group.inputs), -1)
             .astype(np.float64) @ _weights(*key)).astype(np.int64)  # fmt: skip
        if any(group.fixed):
            bad = np.flatnonzero(np.array(group.fixed) & ((c[:, _FRAG] & IPV4_DF) == 0))
            if len(bad):
                for k in bad.tolist():
                    errors[group.inputs[k]] = DropReason.BAD_VNET_HDR  # fixed IPv4 ID without DF
                keep = np.ones(len(group.inputs), bool)
                keep[bad] = False
                _keep(group, keep.tolist())
                c = c[keep]
                if not group.inputs:
                    del groups[key]
                    continue
        cols[key] = c
    return _fill(n, groups, cols, errors=errors, whole=whole, headroom=headroom, rows=rows)


def sent_whole(frame: Buffer, plan: VnetPlan, headroom: int = 0) -> bytearray | DropReason:
    """A frame the plan sends unsegmented: as it is, or with its checksum filled.

    ``headroom`` bytes come first.
    """
    out = bytearray(headroom + len(frame))
    out[headroom:] = frame
    if plan.needs_csum:
        req = ChecksumRequest(headroom + plan.csum_start, plan.csum_offset)
        if not request_valid(len(out), req):
            return DropReason.CSUM_OFFSETS_INVALID
        fill_partial(out, req)
    return out


def _keep(group: _Group, keep: list[bool]) -> None:
    for name in ("inputs", "frames", "headers", "sizes", "needs_csum", "fixed"):
        values = getattr(group, name)
        setattr(group, name, [v for v, k in zip(values, keep, strict=True) if k])


def _fill(
    n: int,
    groups: dict[tuple[int, int, int, int, int], _Group],
    cols: dict[tuple[int, int, int, int, int], IntArray],
    *,
    errors: list[DropReason | None],
    whole: dict[int, bytearray],
    headroom: int,
    rows: RowSource | None,
) -> SegmentBatch:
    """Lay out the rows, copy the payloads, and compute every header field."""
    counts = [0] * n
    width = 0
    for group in groups.values():
        hdr_end = group.hdr_end
        for i, src, size in zip(group.inputs, group.frames, group.sizes, strict=True):
            counts[i] = -(-(len(src) - hdr_end) // size)
            width = max(width, hdr_end + min(size, len(src) - hdr_end))
    first = [0] * (n + 1)
    total = 0
    for i, c in enumerate(counts):
        first[i] = total
        total += c
    first[n] = total
    stride = headroom + width + (width & 1)  # even: 16-bit columns stay aligned
    lent = rows(total, stride) if rows is not None and total else None
    if lent is not None and rows_fit(lent, total, stride):
        matrix = lent
    else:
        matrix = np.empty((total, stride), np.uint8)
    lengths = np.zeros(total, np.int64)
    for key, group in groups.items():
        _fill_group(matrix, lengths, first, group, cols[key], h=headroom)
    return SegmentBatch(matrix, headroom, lengths, first, whole, errors)


def rows_fit(matrix: ByteMatrix, total: int, stride: int) -> bool:
    """Whether a lent matrix can hold ``total`` rows of ``stride`` bytes: uint8, writable,
    C-contiguous, and rows of an even width at least that wide."""
    return (
        matrix.dtype == np.uint8
        and matrix.ndim == 2
        and matrix.shape[0] == total
        and matrix.shape[1] >= stride
        and matrix.shape[1] % 2 == 0
        and matrix.flags.c_contiguous
        and matrix.flags.writeable
    )


@dataclass(slots=True)
class _Rows:
    """The rows of one group being filled, and per row what the fields are made of."""

    block: ByteMatrix  # the group's rows (headroom first)
    h: int  # headroom
    inp: IntArray  # each row's input (its place in the group)
    index: IntArray  # each row's place in its input
    plen: IntArray  # each row's payload bytes
    first: IntArray  # each input's first row (in the block)
    last: IntArray  # each input's last row
    sums: IntArray  # each row's payload sum (a residue modulo 0xFFFF)


def _fill_group(
    matrix: ByteMatrix, lengths: IntArray, first: list[int], group: _Group, c: IntArray, *, h: int
) -> None:
    """Fill the rows of one group's inputs."""
    hdr_end = group.hdr_end
    k = len(group.inputs)
    starts = [first[i] for i in group.inputs]
    counts = [first[i + 1] - first[i] for i in group.inputs]
    rows_total = sum(counts)
    contiguous = starts[-1] + counts[-1] - starts[0] == rows_total
    rows: slice | IntArray
    if contiguous:
        rows = slice(starts[0], starts[0] + rows_total)
    else:
        rows = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts, strict=True)])
    count_a = np.array(counts, np.int64)
    inp = np.arange(k).repeat(count_a)
    local0 = count_a.cumsum() - count_a
    size_a = np.array(group.sizes, np.int64)
    lens = np.array([len(src) for src in group.frames], np.int64)
    last = local0 + count_a - 1
    plen = size_a[inp]
    plen[last] = lens - hdr_end - (count_a - 1) * size_a
    lengths[rows] = hdr_end + plen
    # Headers first, then each input's payload (and its sums, while it is in cache).
    # Rows not back to back (inputs of other groups between) are filled apart.
    block = matrix[rows]
    headers = np.frombuffer(b"".join(group.headers), np.uint8).reshape(k, hdr_end)
    block[:, h : h + hdr_end] = headers.repeat(count_a, axis=0)
    body = h + hdr_end
    # One size for all: one pass over every row for the payload sums (a short last
    # segment is summed apart); otherwise each packet's pieces while they are in cache.
    one_size = group.sizes.count(group.sizes[0]) == k
    sums = np.empty(rows_total, np.int64)
    tails: list[tuple[int, npt.NDArray[np.uint8]]] = []
    places = zip(local0.tolist(), counts, group.frames, group.sizes, strict=True)
    for at, count, src, size in places:
        full = (len(src) - hdr_end) // size
        if full:
            pieces = src[hdr_end : hdr_end + full * size].reshape(full, size)
            block[at : at + full, body : body + size] = pieces
            if not one_size:
                # Little-endian word sums times 256: the big-endian sums' residues.
                sums[at : at + full] = rowsum.le_sum(pieces, 0, size) * 256
        if full < count:
            tail = src[hdr_end + full * size :]
            block[at + full, body : body + len(tail)] = tail
            tails.append((at + full, tail))
    if one_size:
        sums[:] = rowsum.le_sum(block, body, body + group.sizes[0]) * 256
    for at, tail in tails:  # (the pass above summed whatever followed them in their rows)
        sums[at] = ones_sum(tail.data)
    index = np.arange(rows_total, dtype=np.int64) - local0[inp]
    r = _Rows(block, h, inp, index, plen, local0, last, sums)
    if group.protocol == IPPROTO_TCP:
        check, at = _tcp_fields(r, group, c), group.l4 + 16
    else:
        check, at = _udp_fields(r, group, c), group.l4 + 6
    block.view(_BE16)[:, (h + at) >> 1] = check
    if not contiguous:
        matrix[rows] = block


def _ip_fields(r: _Rows, group: _Group, c: IntArray, ident: IntArray) -> None:
    """IPv4 total length, ID and header checksum, or the IPv6 payload length, of every row."""
    w = r.block.view(_BE16)
    at = (r.h + group.l3) >> 1  # the IP header, in 16-bit words
    if group.version == 4:
        total = r.plen + (group.hdr_end - group.l3)
        w[:, at + 1] = total
        w[:, at + 2] = ident
        # The header sum less the three fields rewritten (a residue is enough).
        base = c[:, _IP_SUM] - c[:, _IP_TOTAL] - c[:, _IDENT] - c[:, _IP_CHECK]
        w[:, at + 5] = _complement(total + ident + base[r.inp])
    else:
        w[:, at + 2] = r.plen + (group.hdr_end - group.l3 - 40)


def _tcp_fields(r: _Rows, group: _Group, c: IntArray) -> IntArray:
    """seq, flags and the IP fields of every row; returns every row's TCP checksum."""
    l4, hdr_end, inp = group.l4, group.hdr_end, r.inp
    old_len = np.array([len(src) for src in group.frames], np.int64) - l4
    # The checksum field Linux starts from: as sent (NEEDS_CSUM) or the pseudo-header sum.
    check = np.where(
        np.array(group.needs_csum), c[:, _L4_CHECK], c[:, _ADDR] + IPPROTO_TCP + old_len
    )
    word0 = c[:, _WORD]  # data offset and flags
    size = np.array(group.sizes, np.int64)
    seq = (c[:, _SEQ][inp] + r.index * size[inp]) & 0xFFFFFFFF
    # CWR only on the first segment, FIN and PSH only on the last.
    word = (word0 & ~(TCP_FIN | TCP_PSH | TCP_CWR))[inp]
    word[r.first] = word0 & ~(TCP_FIN | TCP_PSH)
    word[r.last] = np.where(r.first == r.last, word0, word0 & ~TCP_CWR)
    # Terms of each segment's sum: the header less seq, flags and checksum; the field
    # Linux writes first, ~csum_fold(check + (~oldlen + newlen)); seq (2**32 is 1 modulo
    # 0xFFFF); flags; the payload. The data offset makes it non-zero.
    rest = c[:, _L4_SUM] - (c[:, _SEQ] >> 16) - (c[:, _SEQ] & 0xFFFF) - word0 - c[:, _L4_CHECK]
    const = rest + check + 0xFFFFFFFF - old_len + (hdr_end - l4)
    total = r.sums + r.plen + seq + word + const[inp]
    ident0 = c[:, _IDENT][inp]
    ident = np.where(np.array(group.fixed)[inp], ident0, (ident0 + r.index) & 0xFFFF)
    _ip_fields(r, group, c, ident)
    w = r.block.view(_BE16)
    at = (r.h + l4) >> 1  # the TCP header, in 16-bit words
    w[:, at + 2] = seq >> 16
    w[:, at + 3] = seq & 0xFFFF
    w[:, at + 6] = word
    return _complement(total)


def _udp_fields(r: _Rows, group: _Group, c: IntArray) -> IntArray:
    """UDP length and the IP fields of every row; returns every row's UDP checksum."""
    # Linux: check = csum16_add(csum16_sub(uh->check, uh->len), htons(newlen)).
    minus_old = c[:, _L4_CHECK] + (0xFFFF - c[:, _ULEN])
    ulen = r.plen + 8
    # Terms: ports, length, the checksum field (minus_old + length) and the payload;
    # the length makes every sum non-zero.
    total = r.sums + 2 * ulen + (c[:, _PORTS] + minus_old)[r.inp]
    value = _complement(total)
    value[value == 0] = 0xFFFF  # a UDP checksum is never sent as 0
    _ip_fields(r, group, c, (c[:, _IDENT][r.inp] + r.index) & 0xFFFF)
    r.block.view(_BE16)[:, (r.h + group.l4 + 4) >> 1] = ulen
    return value
