"""Internet checksum (RFC 1071), pseudo-headers, incremental update (RFC 1624).

Two implementations of the same sum, chosen by size:

* small buffers: the buffer read as one big integer, reduced modulo 0xFFFF.
  Because 2**16 == 1 (mod 0xFFFF), that residue is the one's-complement sum
  of the 16-bit words; it runs in C, with no Python loop over bytes.
* large buffers: NumPy sums 32-bit little-endian words into a 64-bit
  accumulator; folding and a byte swap give the big-endian 16-bit sum
  (RFC 1071 section 2(B): the sum is byte-order independent).

``ones_sum_rows`` sums a whole batch of frames in one vectorised pass.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.wire.error import WireError

Buffer: TypeAlias = bytes | bytearray | memoryview
#: An IP address as 4 or 16 packed bytes, or as an ``ipaddress`` object.
Address: TypeAlias = Buffer | IPv4Address | IPv6Address

# Below this many bytes the big-integer residue beats the fixed cost of a NumPy call.
_NUMPY_THRESHOLD = 512
_U32 = np.dtype("<u4")
_U64 = np.dtype(np.uint64)
_frombuffer = np.frombuffer
_reduce = np.add.reduce


class ChecksumKind(enum.Enum):
    """A checksum an emitter writes other than a computed or given value."""

    PARTIAL = "partial"


#: ``emit(..., checksum=PARTIAL)``: write the pseudo-header sum (folded, not complemented)
#: for a device to finish, as Linux CHECKSUM_PARTIAL leaves the field; pair it with
#: ``TxRequest.checksum_l4`` or ``TxRequest.segment_l4``.
PARTIAL: Final = ChecksumKind.PARTIAL

IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58


def _fold_residue(value: int, nonzero: bool) -> int:
    """Map a residue modulo 0xFFFF to the one's-complement sum.

    A one's-complement sum is 0 only when every word is 0; otherwise a
    residue of 0 stands for 0xFFFF ("negative zero").
    """
    if value == 0 and nonzero:
        return 0xFFFF
    return value


def _sum_int(data: Buffer) -> int:
    n = len(data)
    if n == 0:
        return 0
    value = int.from_bytes(data, "big")
    if n & 1:
        value <<= 8  # pad the odd byte with a zero on the right (RFC 1071)
    return _fold_residue(value % 0xFFFF, value != 0)


def _sum_numpy(data: Buffer) -> int:
    # Positional arguments and pre-built dtypes: at 1460 bytes the call overhead,
    # not the adding, is most of the time.
    n = len(data)
    if n & 3:
        whole = n & ~3
        total = int(_reduce(_frombuffer(data, _U32, whole >> 2), 0, _U64))
        total += int.from_bytes(data[whole:], "little")
    else:
        total = int(_reduce(_frombuffer(data, _U32), 0, _U64))
    # 32-bit little-endian words fold to the little-endian 16-bit sum; swap its bytes.
    folded = total % 0xFFFF
    if folded == 0 and total:
        folded = 0xFFFF
    return ((folded & 0xFF) << 8) | (folded >> 8)


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """One's-complement sum of ``data`` as big-endian 16-bit words, plus ``initial``.

    The result is folded to 16 bits and not complemented (the form Linux
    keeps in a CHECKSUM_PARTIAL checksum field).
    """
    s = _sum_int(data) if len(data) < _NUMPY_THRESHOLD else _sum_numpy(data)
    return add16(s, initial)


def add16(a: int, b: int) -> int:
    """One's-complement addition of two folded 16-bit sums."""
    s = a + b
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def fold32(value: int) -> int:
    """Fold any non-negative integer sum of 16-bit words to 16 bits."""
    if value == 0:
        return 0
    return _fold_residue(value % 0xFFFF, True)


def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """The RFC 1071 checksum of ``data`` (complemented), with ``initial`` added in."""
    s = _sum_int(data) if len(data) < _NUMPY_THRESHOLD else _sum_numpy(data)
    if initial:
        s = add16(s, initial)
    return ~s & 0xFFFF


def address_bytes(addr: Address) -> bytes:
    """The packed bytes of an address given as bytes or as an ``ipaddress`` object."""
    if isinstance(addr, IPv4Address | IPv6Address):
        return addr.packed
    return bytes(addr)


def pseudo_header_sum(src: Address, dst: Address, protocol: int, length: int) -> int:
    """Folded sum of the IPv4 (4-byte addresses) or IPv6 (16-byte) pseudo-header.

    Addresses may be packed bytes or ``ipaddress`` objects.
    """
    src_b = address_bytes(src)
    dst_b = address_bytes(dst)
    if len(src_b) != len(dst_b) or len(src_b) not in (4, 16):
        raise WireError(
            f"pseudo-header addresses must both be 4 or 16 bytes, got {len(src_b)} and {len(dst_b)}"
        )
    if not 0 <= length <= 0xFFFFFFFF:
        raise WireError(f"pseudo-header length {length} out of range")
    value = int.from_bytes(src_b + dst_b, "big")
    total = value % 0xFFFF + protocol + (length >> 16) + (length & 0xFFFF)
    return fold32(total) if (value or protocol or length) else 0


def update16(checksum: int, old_word: int, new_word: int) -> int:
    """RFC 1624 eqn. 3: the checksum after one 16-bit word changes.

    HC' = ~(~HC + ~m + m')
    """
    s = add16(add16(~checksum & 0xFFFF, ~old_word & 0xFFFF), new_word & 0xFFFF)
    return ~s & 0xFFFF


def update(checksum: int, old: Buffer, new: Buffer) -> int:
    """RFC 1624 update for a changed field of any even length (e.g. an address)."""
    if len(old) != len(new) or len(old) % 2:
        raise WireError("incremental checksum update needs equal, even-length fields")
    s = ~checksum & 0xFFFF
    s = add16(s, ~ones_sum(old) & 0xFFFF)
    s = add16(s, ones_sum(new))
    return ~s & 0xFFFF


def ones_sum_rows(rows: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint32]:
    """Folded, uncomplemented 16-bit sums of every row of a 2-D uint8 array.

    Rows are summed as big-endian 16-bit words; short rows must be zero
    padded at the end (which is what RFC 1071 does with an odd byte). One
    vectorised pass over the whole batch.
    """
    if rows.ndim != 2:
        raise WireError("ones_sum_rows needs a 2-D array")
    n, width = rows.shape
    if width % 4:
        pad = np.zeros((n, 4 - width % 4), dtype=np.uint8)
        rows = np.concatenate([rows, pad], axis=1)
    words = np.ascontiguousarray(rows).view("<u4")
    totals = words.sum(axis=1, dtype=np.uint64)
    nonzero = totals != 0
    folded = (totals % np.uint64(0xFFFF)).astype(np.uint32)
    folded[(folded == 0) & nonzero] = 0xFFFF
    swapped: npt.NDArray[np.uint32] = ((folded & 0xFF) << 8) | (folded >> 8)
    return swapped


def ones_sum_spans(
    buf: Buffer,
    starts: Sequence[int] | npt.NDArray[np.int64],
    lengths: Sequence[int] | npt.NDArray[np.int64],
) -> npt.NDArray[np.uint32]:
    """Folded sums of many spans of one buffer (each span starts its own words).

    The spans are gathered into a zero-padded matrix (one copy at memory
    speed) and summed by ``ones_sum_rows``.
    """
    starts_a = np.asarray(starts, dtype=np.int64)
    lengths_a = np.asarray(lengths, dtype=np.int64)
    if starts_a.shape != lengths_a.shape or starts_a.ndim != 1:
        raise WireError("starts and lengths must be 1-D and of one length")
    if len(starts_a) == 0:
        return np.zeros(0, dtype=np.uint32)
    src = np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8)
    if (starts_a < 0).any() or (lengths_a < 0).any() or (starts_a + lengths_a > len(src)).any():
        raise WireError("a span lies outside the buffer")
    n = len(starts_a)
    first, ln0 = int(starts_a[0]), int(lengths_a[0])
    stride = int(starts_a[1] - starts_a[0]) if n > 1 else ln0
    evenly = (
        stride > 0
        and (lengths_a == ln0).all()
        and (starts_a == first + stride * np.arange(n, dtype=np.int64)).all()
    )
    if evenly:
        # Equal spans at a fixed stride (GSO segments): a strided view, no gather loop.
        view = np.lib.stride_tricks.as_strided(
            src[first:], shape=(n, ln0), strides=(stride, 1), writeable=False
        )
        return ones_sum_rows(view)
    width = int(lengths_a.max())
    matrix = np.zeros((n, max(width + (-width % 4), 4)), dtype=np.uint8)
    for row, (s, ln) in enumerate(zip(starts_a.tolist(), lengths_a.tolist(), strict=True)):
        matrix[row, :ln] = src[s : s + ln]
    return ones_sum_rows(matrix)
