"""Equal-length frames as the rows of one matrix: the fast checksum paths.

A batch of full-size frames is mostly one length. Joined end to end, such
frames are the rows of an ``(n, length)`` uint8 matrix and every header field
at a fixed offset is a column, so parsing is a few column operations and each
frame's L4 sum is its row sum minus its header sum: one pass over the batch at
memory speed, with no per-frame Python and no span bookkeeping.

Rows whose layout is not covered here (extension headers, stacked VLAN tags,
non-IP, an L4 span that stops before the end of the frame) are reported as
``deferred``: the general path in ``checksum`` gives the same answer for any
frame, so the caller hands those over. All sums are taken in little-endian
words (byte-order independent, RFC 1071 2(B)) and compared modulo 0xFFFF,
exactly as the general path does, so both paths agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine.dissect import (
    ETH_HLEN,
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
    VLAN_HLEN,
)
from netoffload.offload.extension import ChecksumStatus

IntArray: TypeAlias = npt.NDArray[np.int64]
ByteMatrix: TypeAlias = npt.NDArray[np.uint8]
BoolArray: TypeAlias = npt.NDArray[np.bool_]

#: Fewer equal-length frames than this are not worth a matrix of their own.
MIN_ROWS = 8
#: The shortest row worth parsing as columns (Ethernet + IPv4 + UDP).
MIN_LENGTH = ETH_HLEN + 20 + 8

_U16LE = np.dtype("<u2")
_U16BE = np.dtype(">u2")
_U32LE = np.dtype("<u4")
# Below this many 32-bit columns, adding columns beats a reduce over short rows.
_REDUCE_COLUMNS = 16
# Enough for the longest layout taken here: one VLAN tag, IPv4 with options, a UDP header.
_HEADER_COLUMNS = ETH_HLEN + VLAN_HLEN + 60 + 8
_VERIFIED = int(ChecksumStatus.VERIFIED)
_FAILED = int(ChecksumStatus.FAILED)
_ABSENT = int(ChecksumStatus.ABSENT)
_SLOW_V6 = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT)


def matrix(frames: Sequence[bytes | bytearray | memoryview], length: int) -> ByteMatrix:
    """``frames`` (all ``length`` bytes) as a read-only ``(n, length)`` matrix: one copy."""
    data = b"".join(frames)
    return np.frombuffer(data, dtype=np.uint8).reshape(len(frames), length)


def le_sum(m: ByteMatrix, begin: int, end: int) -> IntArray:
    """Unfolded little-endian 16-bit word sums of columns ``[begin, end)`` of every row.

    ``begin`` must be even. An odd last byte is the low byte of a
    zero-padded word (RFC 1071's padding, in little-endian words). The
    result is only meaningful modulo 0xFFFF (32-bit words are summed).
    """
    n = m.shape[0]
    width = end - begin
    whole = width & ~3
    words = whole >> 2
    if words >= _REDUCE_COLUMNS:
        block = m[:, begin : begin + whole].view(_U32LE)
        total: IntArray = np.add.reduce(block, axis=1, dtype=np.uint64).astype(np.int64)
    else:
        total = np.zeros(n, dtype=np.int64)
        if words:
            block = m[:, begin : begin + whole].view(_U32LE)
            for k in range(words):
                total += block[:, k]
    pos = begin + whole
    if width & 2:
        total += m[:, pos : pos + 2].view(_U16LE)[:, 0]
        pos += 2
    if width & 1:
        total += m[:, pos]
    return total


def be16(m: ByteMatrix, offset: int) -> IntArray:
    """The big-endian 16-bit field at column ``offset`` of every row."""
    column: IntArray = m[:, offset : offset + 2].view(_U16BE)[:, 0].astype(np.int64)
    return column


def fold_le(total: IntArray) -> IntArray:
    """Little-endian word sums folded to big-endian 16-bit one's-complement sums."""
    r = total % 0xFFFF
    r[(r == 0) & (total != 0)] = 0xFFFF
    swapped: IntArray = ((r & 0xFF) << 8) | (r >> 8)
    return swapped


# -- verify --------------------------------------------------------------------


def verify_rows(m: ByteMatrix) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], BoolArray]:
    """(IPv4 header status, L4 status, deferred) of every row of ``m``.

    The statuses of deferred rows are meaningless: those rows must be
    verified by the general path.
    """
    n, length = m.shape
    hdr_status = np.zeros(n, dtype=np.uint8)
    l4_status = np.zeros(n, dtype=np.uint8)
    deferred = np.ones(n, dtype=bool)
    if length < MIN_LENGTH + VLAN_HLEN:
        return hdr_status, l4_status, deferred
    total = le_sum(m, 0, length)
    # Every header field lies in the first bytes: a small contiguous copy keeps the
    # column operations below in cache instead of striding over the whole batch.
    m = np.ascontiguousarray(m[:, : min(length, _HEADER_COLUMNS)])
    et = be16(m, 12)
    tagged = (et == ETH_P_8021Q) | (et == ETH_P_8021AD)
    l3 = np.full(n, ETH_HLEN, dtype=np.int64)
    v0 = m[:, ETH_HLEN].astype(np.int64)
    if tagged.any():
        et = np.where(tagged, be16(m, 16), et)
        l3[tagged] += VLAN_HLEN
        v0 = np.where(tagged, m[:, ETH_HLEN + VLAN_HLEN], v0)
        # Stacked tags are the general path's business.
        tagged &= (et == ETH_P_8021Q) | (et == ETH_P_8021AD)
    ihl = (v0 & 0x0F) * 4
    is4 = (et == ETH_P_IP) & (v0 >> 4 == 4) & (ihl >= 20)
    is6 = (et == ETH_P_IPV6) & (v0 >> 4 == 6)
    l4 = np.where(is4, l3 + ihl, l3 + 40)
    # One class per header layout: (version, l3, l4) fixes every column offset.
    key = np.where(is4 | is6, (np.where(is4, 4, 6) << 16) | (l3 << 8) | l4, 0)
    key[tagged | (l4 > length)] = 0
    first = int(key[0])
    classes: list[tuple[int, IntArray | None]]
    if first and bool((key == first).all()):
        classes = [(first, None)]
    else:
        classes = [(int(k), np.flatnonzero(key == k)) for k in np.unique(key).tolist() if k]
    for k, rows in classes:
        version, c3, c4 = k >> 16, (k >> 8) & 0xFF, k & 0xFF
        if rows is None:
            h, t = m, total
        else:
            h, t = m[rows], total[rows]
        hs, ls, done = _verify_class(h, t, length, version=version, l3=c3, l4=c4)
        if rows is None:
            hdr_status, l4_status, deferred = hs, ls, ~done
        else:
            hdr_status[rows], l4_status[rows] = hs, ls
            deferred[rows] = ~done
    return hdr_status, l4_status, deferred


def _verify_class(
    h: ByteMatrix, total: IntArray, length: int, *, version: int, l3: int, l4: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], BoolArray]:
    """``verify_rows`` for rows sharing one layout; ``total`` is each whole row's sum."""
    n = h.shape[0]
    hdr_status = np.zeros(n, dtype=np.uint8)
    if version == 4:
        proto = h[:, l3 + 9].astype(np.int64)
        ip_end = l3 + be16(h, l3 + 2)
        unfragmented = (be16(h, l3 + 6) & 0x3FFF) == 0
        ip_sum = le_sum(h, l3, l4)
        addr_sum = le_sum(h, l3 + 12, l3 + 20)
        hdr_status[:] = np.where(ip_sum % 0xFFFF == 0, _VERIFIED, _FAILED)
        covered = np.ones(n, dtype=bool)
    else:
        proto = h[:, l3 + 6].astype(np.int64)
        ip_end = l3 + 40 + be16(h, l3 + 4)
        unfragmented = np.ones(n, dtype=bool)
        addr_sum = le_sum(h, l3 + 8, l3 + 40)
        ip_sum = le_sum(h, l3, l3 + 8) + addr_sum
        covered = ~np.isin(proto, _SLOW_V6)  # extension headers: the general path walks them
    sane = (ip_end <= length) & unfragmented
    is_tcp = sane & (proto == IPPROTO_TCP) & (ip_end - l4 >= 20)
    is_udp = sane & (proto == IPPROTO_UDP) & (ip_end - l4 >= 8)
    l4_end = ip_end
    absent = np.zeros(n, dtype=bool)
    if length >= l4 + 8 and is_udp.any():
        ulen = be16(h, l4 + 4)
        is_udp &= (ulen >= 8) & (l4 + ulen <= ip_end)
        l4_end = np.where(is_udp, l4 + ulen, ip_end)
        absent = is_udp & (be16(h, l4 + 6) == 0)
    else:
        is_udp[:] = False
    checked = (is_tcp | is_udp) & ~absent
    # The row sum runs to the end of the frame: a span that stops short is deferred.
    covered &= ~(checked & (l4_end != length))
    body = total - le_sum(h, 0, l3) - ip_sum
    pseudo = ((proto + (length - l4)) * 256) % 0xFFFF  # big-endian words in a little-endian sum
    ok = (addr_sum + body + pseudo) % 0xFFFF == 0
    l4_status = np.where(checked, np.where(ok, _VERIFIED, _FAILED), 0).astype(np.uint8)
    l4_status[absent] = _ABSENT if version == 4 else _FAILED
    return hdr_status, l4_status, covered


# -- fill ----------------------------------------------------------------------


def fill_rows(m: npt.NDArray[np.uint8], start: int, offset: int) -> None:
    """CHECKSUM_PARTIAL fill of every row of a writable ``m`` in place.

    Every row sums from ``start`` (even) to its end and stores the complement
    at ``start + offset``, a computed 0 as 0xFFFF (``complement_for_wire``).
    """
    s = fold_le(le_sum(m, start, m.shape[1]))
    value = ~s & 0xFFFF
    value[value == 0] = 0xFFFF
    at = start + offset
    m[:, at] = value >> 8
    m[:, at + 1] = value & 0xFF
