"""Checksum engine: transmit fill (CHECKSUM_PARTIAL, IPv4 header) and receive verify.

Both directions work on a whole batch in one vectorised pass: the frames are
joined into one buffer (each frame starting on an even byte, so every L3/L4
offset of an Ethernet frame is word aligned), read as little-endian 16-bit
words, and every checksummed span is summed by one ``np.add.reduceat``.

Little-endian words are fine: the one's-complement sum is byte-order
independent (RFC 1071 2(B)); a big-endian value ``v`` enters the
little-endian sum as ``v * 256 (mod 0xFFFF)``, which is its byte swap.

Fill follows Linux ``skb_checksum_help``: sum from ``start`` to the end of
the frame (the field already holds the pseudo-header sum), store the
complement, and store a computed 0 as 0xFFFF (CSUM_MANGLED_0; valid for TCP
too, and required for UDP).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine import rows, tcp_rows
from netoffload.engine.dissect import (
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
    DissectError,
    dissect,
)
from netoffload.offload.extension import ChecksumRequest, ChecksumStatus
from netoffload.offload.stats import DropReason
from netoffload.wire.checksum import ones_sum

Buffer: TypeAlias = bytes | bytearray | memoryview
IntArray: TypeAlias = npt.NDArray[np.int64]

_U16 = struct.Struct("!H")
_NOT_CHECKED = int(ChecksumStatus.NOT_CHECKED)
_VERIFIED = int(ChecksumStatus.VERIFIED)
_FAILED = int(ChecksumStatus.FAILED)
_ABSENT = int(ChecksumStatus.ABSENT)
_STATUS = tuple(ChecksumStatus(v) for v in range(4))


# -- the joined batch ----------------------------------------------------------


@dataclass(slots=True)
class _Joined:
    """Frames laid end to end, each at an even offset, with zero padding after the last."""

    u8: npt.NDArray[np.uint8]
    words: npt.NDArray[np.uint16]
    starts: IntArray
    lengths: IntArray


def _join(frames: Sequence[Buffer]) -> _Joined:
    lengths = np.fromiter(map(len, frames), dtype=np.int64, count=len(frames))
    odd = (lengths & 1).astype(bool)
    if odd.any():
        parts: list[Buffer] = []
        for frame, is_odd in zip(frames, odd.tolist(), strict=True):
            parts.append(frame)
            if is_odd:
                parts.append(b"\x00")
        padded = lengths + odd
    else:
        parts = list(frames)
        padded = lengths
    parts.append(b"\x00\x00\x00\x00")
    data = b"".join(parts)
    starts = np.zeros(len(frames), dtype=np.int64)
    if len(frames) > 1:
        np.cumsum(padded[:-1], out=starts[1:])
    u8 = np.frombuffer(data, dtype=np.uint8)
    return _Joined(u8, np.frombuffer(data, dtype="<u2"), starts, lengths)


def _span_sums_le(j: _Joined, begin: IntArray, end: IntArray) -> npt.NDArray[np.int64]:
    """Little-endian one's-complement sums (unfolded) of ``[begin, end)``, absolute offsets.

    ``begin`` must be even; ``end - begin`` at least 2. An odd trailing byte
    is added as the low byte of a zero-padded word.
    """
    if len(begin) == 0:
        return np.zeros(0, dtype=np.int64)
    wb = begin >> 1
    we = end >> 1
    idx = np.empty(2 * len(begin) + 1, dtype=np.intp)
    idx[0:-1:2] = wb
    idx[1:-1:2] = we
    idx[-1] = len(j.words) - 1
    sums = np.add.reduceat(j.words, idx, dtype=np.uint32)[0:-1:2].astype(np.int64)
    tail = (end & 1).astype(bool)
    if tail.any():
        sums[tail] += j.u8[end[tail] - 1]
    return sums


def _short_span_sums_le(j: _Joined, begin: IntArray, end: IntArray, max_len: int) -> IntArray:
    """``_span_sums_le`` for short even-length spans (headers): a gather, not a buffer pass."""
    cols = np.arange(max_len >> 1, dtype=np.int64)
    wb = begin >> 1
    count = (end - begin) >> 1
    idx = np.minimum(wb[:, None] + cols, len(j.words) - 1)
    picked = j.words[idx].astype(np.int64)
    picked[cols[None, :] >= count[:, None]] = 0
    sums: IntArray = picked.sum(axis=1)
    return sums


def _be_in_le(value: npt.NDArray[np.int64] | int) -> npt.NDArray[np.int64] | int:
    """A big-endian quantity as it counts in a little-endian word sum (times 256, mod 0xFFFF)."""
    return (value * 256) % 0xFFFF


def _fold_le(total: int) -> int:
    """Fold a little-endian word sum to the big-endian 16-bit one's-complement sum."""
    if total == 0:
        return 0
    r = total % 0xFFFF or 0xFFFF
    return ((r & 0xFF) << 8) | (r >> 8)


# -- transmit ------------------------------------------------------------------


def complement_for_wire(folded_sum: int) -> int:
    """The checksum to store for a folded sum: its complement, with 0 sent as 0xFFFF."""
    value = ~folded_sum & 0xFFFF
    return value or 0xFFFF


def ipv4_header_checksum(header: Buffer) -> int:
    """RFC 791 header checksum of ``header`` (its own checksum field counted as zero)."""
    mv = memoryview(header)
    s = ones_sum(mv[:10])
    s = ones_sum(mv[12:], s)
    return ~s & 0xFFFF


def fill_ipv4_header(frame: bytearray | memoryview, l3: int) -> None:
    """Recompute the IPv4 header checksum of ``frame`` in place."""
    ihl = (frame[l3] & 0x0F) * 4
    _U16.pack_into(frame, l3 + 10, ipv4_header_checksum(frame[l3 : l3 + ihl]))


def fill_partial(frame: bytearray | memoryview, request: ChecksumRequest) -> None:
    """Do one CHECKSUM_PARTIAL fill in place (the caller has checked the offsets)."""
    s = ones_sum(memoryview(frame)[request.start :])
    _U16.pack_into(frame, request.start + request.offset, complement_for_wire(s))


def request_valid(length: int, request: ChecksumRequest) -> bool:
    """Linux's bounds for a CHECKSUM_PARTIAL request on a ``length``-byte frame."""
    return request.start < length and request.start + request.offset + 2 <= length


@dataclass(frozen=True, slots=True)
class FillJob:
    """One frame's transmit checksum work: the L4 request and/or the IPv4 header."""

    frame: Buffer
    l4: ChecksumRequest | None = None
    ipv4_header: bool = False


def fill_batch(jobs: Sequence[FillJob]) -> list[bytes | DropReason]:
    """Do every job's fills; a bad request or frame gives its ``DropReason`` instead.

    L4-only jobs of one frame length and request (at least ``rows.MIN_ROWS``
    of them: a batch of full-size frames) are filled as the rows of one
    matrix; the rest take the general path, whose L4 sums are one vectorised
    pass too.
    """
    out: list[bytes | DropReason | None] = [None] * len(jobs)
    groups: dict[tuple[int, int, int], list[int]] = {}
    general: list[int] = []
    for i, job in enumerate(jobs):
        req = job.l4
        if req is None or job.ipv4_header:
            general.append(i)
            continue
        start, offset, n = req.start, req.offset, len(job.frame)
        if start & 1 or start < 0 or offset < 0 or start + offset + 2 > n:
            general.append(i)
            continue
        groups.setdefault((n, start, offset), []).append(i)
    for (length, start, offset), idx in groups.items():
        if len(idx) < rows.MIN_ROWS:
            general.extend(idx)
            continue
        buf = bytearray().join([jobs[i].frame for i in idx])
        rows.fill_rows(np.frombuffer(buf, np.uint8).reshape(len(idx), length), start, offset)
        # Rows straight out of the filled buffer: a bytes() of all of it first would be
        # one more large allocation, and fresh pages cost more than the copying.
        mv = memoryview(buf)
        for i, at in zip(idx, range(0, len(buf), length), strict=True):
            out[i] = bytes(mv[at : at + length])
    if len(general) == len(jobs):
        return _fill_general(jobs)
    if general:
        general.sort()
        for i, result in zip(general, _fill_general([jobs[i] for i in general]), strict=True):
            out[i] = result
    return [r if r is not None else DropReason.MALFORMED_FRAME for r in out]


def _fill_general(jobs: Sequence[FillJob]) -> list[bytes | DropReason]:
    """``fill_batch`` for any jobs: per-frame copies, L4 sums as spans of one joined buffer."""
    out: list[bytes | DropReason | None] = [None] * len(jobs)
    bufs: list[bytearray | None] = [None] * len(jobs)
    vector: list[int] = []
    vector_starts: list[int] = []
    for i, job in enumerate(jobs):
        n = len(job.frame)
        if job.l4 is not None and not request_valid(n, job.l4):
            out[i] = DropReason.CSUM_OFFSETS_INVALID
            continue
        buf = bytearray(job.frame)
        if job.ipv4_header:
            try:
                d = dissect(buf, l4=False)
            except DissectError as exc:
                out[i] = exc.reason
                continue
            if d.version != 4:
                out[i] = DropReason.MALFORMED_FRAME
                continue
            fill_ipv4_header(buf, d.l3)
        bufs[i] = buf
        if job.l4 is None:
            out[i] = bytes(buf)
        elif job.l4.start & 1 or n - job.l4.start < 2 or job.ipv4_header:
            # Odd starts begin their own words; header-filled frames changed under us.
            fill_partial(buf, job.l4)
            out[i] = bytes(buf)
        else:
            vector.append(i)
            vector_starts.append(job.l4.start)
    if vector:
        joined = _join([jobs[i].frame for i in vector])
        begin = joined.starts + np.asarray(vector_starts, dtype=np.int64)
        sums = _span_sums_le(joined, begin, joined.starts + joined.lengths).tolist()
        for i, total in zip(vector, sums, strict=True):
            target, req = bufs[i], jobs[i].l4
            assert target is not None and req is not None
            _U16.pack_into(target, req.start + req.offset, complement_for_wire(_fold_le(total)))
            out[i] = bytes(target)
    return [r if r is not None else DropReason.MALFORMED_FRAME for r in out]


def fill_rows_in_place(
    m: npt.NDArray[np.uint8],
    lengths: Sequence[int],
    requests: Sequence[tuple[ChecksumRequest | None, bool]],
) -> list[DropReason | None]:
    """``fill_batch`` for frames already in the rows of a writable C-contiguous ``m``.

    Row ``k`` holds a frame in its first ``lengths[k]`` bytes; ``requests[k]``
    is its L4 request and whether its IPv4 header checksum is wanted. Each
    frame is filled where it lies, nothing is copied (the rows can be a
    device's transmit memory). Gives ``None`` per filled frame, or the reason
    it cannot be (the frame is then left as it was, or half filled: drop it).
    """
    n = len(requests)
    stride = m.shape[1] if m.ndim == 2 else 0
    flat = m.reshape(-1)
    mem = flat.data
    out: list[DropReason | None] = [None] * n
    rows_at: list[int] = []
    begins: list[int] = []
    ends: list[int] = []
    for k, (l4, ipv4_header) in enumerate(requests):
        length = lengths[k]
        at = k * stride
        if length > stride:
            out[k] = DropReason.TOO_LARGE
            continue
        if l4 is not None and not request_valid(length, l4):
            out[k] = DropReason.CSUM_OFFSETS_INVALID
            continue
        frame = mem[at : at + length]
        if ipv4_header:
            try:
                d = dissect(frame, l4=False)
            except DissectError as exc:
                out[k] = exc.reason
                continue
            if d.version != 4:
                out[k] = DropReason.MALFORMED_FRAME
                continue
            fill_ipv4_header(frame, d.l3)
        if l4 is None:
            continue
        if l4.start & 1 or length - l4.start < 2 or at + length > len(flat) - 2:
            fill_partial(frame, l4)  # an odd start begins its own words; the last bytes of m
            continue
        rows_at.append(k)
        begins.append(at + l4.start)
        ends.append(at + length)
    if rows_at:
        joined = _Joined(flat, flat.view("<u2"), np.zeros(0, np.int64), np.zeros(0, np.int64))
        begin = np.asarray(begins, dtype=np.int64)
        sums = _span_sums_le(joined, begin, np.asarray(ends, dtype=np.int64)).tolist()
        for k, start, total in zip(rows_at, begins, sums, strict=True):
            l4 = requests[k][0]
            assert l4 is not None
            _U16.pack_into(mem, start + l4.offset, complement_for_wire(_fold_le(total)))
    return out


# -- receive -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Per-frame checksum findings of a batch (``ChecksumStatus`` values)."""

    ipv4_header: npt.NDArray[np.uint8]
    l4: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.l4)

    def status(self, i: int) -> tuple[ChecksumStatus, ChecksumStatus]:
        """(IPv4 header, L4) status of frame ``i``."""
        return _STATUS[int(self.ipv4_header[i])], _STATUS[int(self.l4[i])]


def _be16(u8: npt.NDArray[np.uint8], idx: IntArray) -> IntArray:
    return u8[idx].astype(np.int64) * 256 + u8[idx + 1]


_SLOW_V6 = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT)


def _parse(j: _Joined, frames: Sequence[Buffer]) -> tuple[IntArray, ...]:
    """Vectorised parse of the common layouts; the rest through ``dissect``.

    Returns per-frame arrays: version (0 = not IP / malformed), l3, l4,
    protocol, ip_end (relative), fragment flag.
    """
    u8, o, length = j.u8, j.starts, j.lengths
    top = len(u8) - 2

    def at(rel: IntArray | int) -> IntArray:
        clamped: IntArray = np.minimum(o + rel, top)
        return clamped

    et = _be16(u8, at(12))
    tagged = (et == ETH_P_8021Q) | (et == ETH_P_8021AD)
    l3 = 14 + 4 * tagged.astype(np.int64)
    et = np.where(tagged, _be16(u8, at(16)), et)
    v0 = u8[at(l3)].astype(np.int64)
    ihl = (v0 & 0x0F) * 4
    is4 = (et == ETH_P_IP) & (v0 >> 4 == 4) & (ihl >= 20)
    is6 = (et == ETH_P_IPV6) & (v0 >> 4 == 6)
    proto = np.where(is4, u8[at(l3 + 9)], u8[at(l3 + 6)]).astype(np.int64)
    l4 = np.where(is4, l3 + ihl, l3 + 40)
    ip_end = np.where(is4, l3 + _be16(u8, at(l3 + 2)), l3 + 40 + _be16(u8, at(l3 + 4)))
    frag = np.where(is4, _be16(u8, at(l3 + 6)) & 0x3FFF, 0) != 0
    fast = (is4 | is6) & (length >= l4) & ~(is6 & np.isin(proto, _SLOW_V6))
    fast &= ~(tagged & np.isin(et, (ETH_P_8021Q, ETH_P_8021AD)))
    version = np.where(fast, np.where(is4, 4, 6), 0)
    slow = np.flatnonzero(~fast & (length >= 14))
    for i in slow.tolist():
        try:
            d = dissect(frames[i])
        except DissectError:
            continue
        version[i], l3[i], l4[i] = d.version, d.l3, d.l4
        proto[i], ip_end[i], frag[i] = d.protocol, d.ip_end, d.fragment
    return version, l3, l4, proto, ip_end, frag.astype(np.int64)


def _verify_general(
    frames: Sequence[Buffer],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """``verify_batch`` for frames of any lengths and layouts: spans of one joined buffer."""
    n = len(frames)
    hdr_status = np.zeros(n, dtype=np.uint8)
    l4_status = np.zeros(n, dtype=np.uint8)
    if n == 0:
        return hdr_status, l4_status
    j = _join(frames)
    version, l3, l4, proto, ip_end, frag = _parse(j, frames)
    o, u8, length = j.starts, j.u8, j.lengths
    # IPv4 header checksums.
    v4 = np.flatnonzero(version == 4)
    if len(v4):
        ihl = (u8[o[v4] + l3[v4]].astype(np.int64) & 0x0F) * 4
        sums = _short_span_sums_le(j, o[v4] + l3[v4], o[v4] + l3[v4] + ihl, 60)
        hdr_status[v4] = np.where(sums % 0xFFFF == 0, _VERIFIED, _FAILED)
    # L4 checksums: which frames, and over which span.
    l4_end = ip_end.copy()
    sane = (version != 0) & (ip_end <= length) & (frag == 0)
    is_tcp = sane & (proto == IPPROTO_TCP) & (ip_end - l4 >= 20)
    is_udp = sane & (proto == IPPROTO_UDP) & (ip_end - l4 >= 8)
    top = len(u8) - 2
    ulen = _be16(u8, np.minimum(o + l4 + 4, top))
    is_udp &= (ulen >= 8) & (l4 + ulen <= ip_end)
    l4_end = np.where(is_udp, l4 + ulen, l4_end)
    ucheck = _be16(u8, np.minimum(o + l4 + 6, top))
    absent = is_udp & (ucheck == 0)
    checked = np.flatnonzero((is_tcp | is_udp) & ~absent)
    if len(checked):
        oc = o[checked]
        addr = np.where(version[checked] == 4, 12, 8) + l3[checked]
        addr_len = np.where(version[checked] == 4, 8, 32)
        addr_sum = _short_span_sums_le(j, oc + addr, oc + addr + addr_len, 32)
        body = _span_sums_le(j, oc + l4[checked], oc + l4_end[checked])
        seg_len = l4_end[checked] - l4[checked]
        pseudo = _be_in_le(proto[checked] + seg_len)
        ok = (addr_sum + body + pseudo) % 0xFFFF == 0
        l4_status[checked] = np.where(ok, _VERIFIED, _FAILED)
    l4_status[absent & (version == 4)] = _ABSENT
    l4_status[absent & (version == 6)] = _FAILED
    return hdr_status, l4_status


def verify_batch(frames: Sequence[Buffer]) -> VerifyResult:
    """Verify the IPv4 header and TCP/UDP checksums of every frame in one pass.

    A UDP/IPv4 checksum of 0 is ABSENT; UDP/IPv6 with 0 is FAILED (RFC 8200).
    Checksums of malformed frames (truncated, lengths that disagree) and of
    fragments or other protocols are NOT_CHECKED. The UDP span is the UDP
    length, as Linux trims a datagram to it.

    A batch of mostly one TCP layout is verified from its header columns and
    row sums (``tcp_rows``); frames of one length (at least ``rows.MIN_ROWS``
    of them) as the rows of one matrix; the rest, and rows of layouts the
    matrix paths leave alone, take the general path. All give the same answer.
    """
    n = len(frames)
    if n >= tcp_rows.MIN_FRAMES:
        prepared = tcp_rows.prepare(frames)
        if prepared is not None:
            hdr_status, l4_status, checked, _ = tcp_rows.verify_fitting(prepared)
            if np.count_nonzero(checked) < n:
                rest = (~checked).nonzero()[0]
                hs, ls = _verify_rows_or_general([frames[i] for i in rest.tolist()])
                hdr_status[rest], l4_status[rest] = hs, ls
            return VerifyResult(hdr_status, l4_status)
    return VerifyResult(*_verify_rows_or_general(frames))


def _verify_rows_or_general(
    frames: Sequence[Buffer],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """``verify_batch`` by length groups (``rows.verify_rows``) and the general path."""
    n = len(frames)
    hdr_status = np.zeros(n, dtype=np.uint8)
    l4_status = np.zeros(n, dtype=np.uint8)
    if n == 0:
        return hdr_status, l4_status
    pending = np.ones(n, dtype=bool)
    for idx, length in _length_groups(list(map(len, frames))):
        part = list(frames) if idx is None else [frames[i] for i in idx.tolist()]
        hs, ls, deferred = rows.verify_rows(rows.matrix(part, length))
        if idx is None:
            hdr_status, l4_status, pending = hs, ls, deferred
        else:
            hdr_status[idx], l4_status[idx] = hs, ls
            pending[idx] = deferred
    rest = np.flatnonzero(pending)
    if len(rest) == n:
        hdr_status, l4_status = _verify_general(frames)
    elif len(rest):
        hs, ls = _verify_general([frames[i] for i in rest.tolist()])
        hdr_status[rest], l4_status[rest] = hs, ls
    return hdr_status, l4_status


def _length_groups(lengths: list[int]) -> list[tuple[IntArray | None, int]]:
    """(indices, length) of every length shared by enough frames; ``None`` = all of them."""
    first = lengths[0]
    if lengths.count(first) == len(lengths):
        if len(lengths) >= rows.MIN_ROWS and first >= rows.MIN_LENGTH:
            return [(None, first)]
        return []
    arr = np.array(lengths, dtype=np.int64)
    values, counts = np.unique(arr, return_counts=True)
    big = (counts >= rows.MIN_ROWS) & (values >= rows.MIN_LENGTH)
    return [(np.flatnonzero(arr == v), v) for v in values[big].tolist()]
