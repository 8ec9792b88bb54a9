"""TCP frames of one header layout as the rows of a matrix, their header fields as columns.

A receive batch is mostly full-size TCP segments of a few flows. Such frames
share one header layout, so every field GRO compares, and every sum the
checksums need, is a column:

1. Rows. The frames of the most common length are the rows of one matrix;
   the others ("stragglers", such as the short last segment of a burst) only
   have their headers copied, one by one.
2. Layout. A template from a TCP frame fixes every offset: Ethernet with at
   most one VLAN tag, IPv4 without options or IPv6 without extension headers,
   TCP with the template's data offset. One masked compare finds the rows of
   that layout ("shaped"); those whose IP length is their frame length and
   that carry no IPv4 reserved bit "fit", the others the IP layer flushes.
3. Columns. One float64 product of the header bytes gives, per row, the IPv4
   header sum, the L4 checksum's header part, a flow hash, seq, IP ID, flags,
   DF, the IP length and checksum and the address sum: integers below 2**53,
   so exact. With the row sums of the matrix that is the checksum
   verification of every fitting row, the same answer ``verify_batch`` gives.

``gro_rows`` takes the GRO decisions from here; ``checksum.verify_batch``
verifies a batch of such frames this way.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine import rows
from netoffload.engine.dissect import (
    ETH_HLEN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_TCP,
    TCP_CSUM_OFFSET,
    TCP_HLEN,
    VLAN_HLEN,
)
from netoffload.offload.extension import ChecksumRequest, ChecksumStatus, GsoType

if TYPE_CHECKING:  # checksum uses this module
    from netoffload.engine.checksum import VerifyResult

Buffer: TypeAlias = bytes | bytearray | memoryview
IntArray: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
ByteArray: TypeAlias = npt.NDArray[np.uint8]
ByteMatrix: TypeAlias = npt.NDArray[np.uint8]
WordMatrix: TypeAlias = npt.NDArray[np.uint64]

#: Below this many frames the per-frame paths are as fast as the column set-up.
MIN_FRAMES = 8

# Columns of the per-row product of header bytes and weights.
IP_SUM, PREFIX, HASH, SEQ, IDENT, FLAGS, DF, IP_LEN, IP_CHECK, ADDR = range(10)
COLUMNS = 10
TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_CWR = 0x80
_VERIFIED = int(ChecksumStatus.VERIFIED)
_FAILED = np.uint8(ChecksumStatus.FAILED)  # FAILED - True is VERIFIED
# Flow-hash weights: below 2**32, so a 255-weighted sum over 64 key bytes stays exact.
_RANDOM = random.Random(0x6E6F)
_HASH_WEIGHTS = [_RANDOM.randrange(1, 1 << 32) for _ in range(256)]


@dataclass(frozen=True, slots=True)
class Layout:
    """Offsets, masks and weights of one header layout (made once per layout)."""

    version: int
    l3: int
    l4: int
    hdr_end: int
    width: int  # header bytes kept per row: hdr_end rounded up to whole 8-byte words
    check: WordMatrix  # (1, width/8) bits a fitting row must have ...
    expect: WordMatrix  # ... equal to these
    static: WordMatrix  # bits a merged segment must repeat
    key: WordMatrix  # the flow key's bits
    weights: npt.NDArray[np.float64]  # (width, COLUMNS)
    ip_len_base: int  # IP length field of a fitting row = frame length - this
    csum: ChecksumRequest
    kind: GsoType


def _le_weights(w: npt.NDArray[np.float64], column: int, begin: int, end: int) -> None:
    # Little-endian 16-bit words (RFC 1071 2(B)); offsets here are all even.
    for b in range(begin, end):
        w[b, column] = 1.0 if b % 2 == 0 else 256.0


@functools.lru_cache(maxsize=64)
def _layout(l3: int, version: int, tpid: int, doff: int) -> Layout:
    l4 = l3 + (20 if version == 4 else 40)
    hdr_end = l4 + doff * 4
    width = -(-hdr_end // 8) * 8
    check = np.zeros(width, np.uint8)
    expect = np.zeros(width, np.uint8)
    static = np.zeros(width, np.uint8)
    key = np.zeros(width, np.uint8)

    def must(at: int, value: int, mask: int = 0xFF) -> None:
        check[at], expect[at] = mask, value & mask

    # EtherType(s): the outer one, and behind one VLAN tag the inner one.
    ethertype = ETH_P_IP if version == 4 else ETH_P_IPV6
    for at, value in ((12, tpid), (16, ethertype)) if tpid else ((12, ethertype),):
        must(at, value >> 8)
        must(at + 1, value)
    static[:hdr_end] = 0xFF
    key[:l3] = 0xFF
    key[l4 : l4 + 4] = 0xFF  # ports
    w = np.zeros((width, COLUMNS), np.float64)
    if version == 4:
        must(l3, 0x45)
        must(l3 + 6, 0, 0x3F)  # no MF, no fragment offset (DF and the reserved bit are columns)
        must(l3 + 7, 0)
        must(l3 + 9, IPPROTO_TCP)
        static[[l3 + 2, l3 + 3, l3 + 4, l3 + 5, l3 + 10, l3 + 11]] = 0  # length, ID, checksum
        key[l3 + 12 : l3 + 20] = 0xFF
        _le_weights(w, IP_SUM, l3, l4)
        _le_weights(w, PREFIX, 0, l3 + 12)
        w[[l3 + 4, l3 + 5], IDENT] = 256.0, 1.0
        w[l3 + 6, DF] = 1.0 / 64  # 0x40 (DF) and 0x80 (reserved): the byte's only bits here
        w[[l3 + 2, l3 + 3], IP_LEN] = 256.0, 1.0
        w[[l3 + 10, l3 + 11], IP_CHECK] = 256.0, 1.0
        w[l3 + 12 : l3 + 20, ADDR] = np.tile([256.0, 1.0], 4)  # big-endian words
        ip_len_base = l3
        kind = GsoType.TCPV4
    else:
        must(l3, 0x60, 0xF0)
        must(l3 + 6, IPPROTO_TCP)
        static[[l3 + 4, l3 + 5]] = 0  # payload length
        key[l3] = 0xF0  # version and flow label; the traffic class is compared, not keyed
        key[l3 + 1] = 0x0F
        key[l3 + 2 : l3 + 4] = 0xFF
        key[l3 + 6] = 0xFF
        key[l3 + 8 : l4] = 0xFF
        _le_weights(w, PREFIX, 0, l3 + 8)
        w[[l3 + 4, l3 + 5], IP_LEN] = 256.0, 1.0
        w[l3 + 8 : l3 + 40, ADDR] = np.tile([256.0, 1.0], 16)
        ip_len_base = l3 + 40
        kind = GsoType.TCPV6
    must(l4 + 12, doff << 4, 0xF0)
    static[l4 + 4 : l4 + 8] = 0  # seq
    static[l4 + 13] = 0xFF & ~(TCP_CWR | TCP_FIN | TCP_PSH)  # flags that may differ
    static[l4 + 16 : l4 + 20] = 0  # checksum, urgent pointer
    for b in range(hdr_end):
        # Whole key bytes only: a partly keyed byte (IPv6 flow label) is left to the exact check.
        if key[b] == 0xFF:
            w[b, HASH] = float(_HASH_WEIGHTS[b])
    w[l4 + 4 : l4 + 8, SEQ] = 2.0**24, 2.0**16, 2.0**8, 1.0
    w[l4 + 13, FLAGS] = 1.0

    def words(a: npt.NDArray[np.uint8]) -> WordMatrix:
        return a.view("<u8").reshape(1, -1)

    return Layout(
        version, l3, l4, hdr_end, width, words(check), words(expect), words(static),
        words(key), w, ip_len_base, ChecksumRequest(l4, TCP_CSUM_OFFSET), kind,
    )  # fmt: skip


def layout_of(frame: Buffer) -> Layout | None:
    """The layout ``frame``'s first bytes announce, if the columns model it.

    Only a candidate: every row, this one included, is then held to the
    layout's template (``fits``), which checks what ``dissect`` would.
    """
    n = len(frame)
    if n < ETH_HLEN + VLAN_HLEN:
        return None
    tpid, l3 = 0, ETH_HLEN
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype in (ETH_P_8021Q, ETH_P_8021AD):
        tpid, l3 = ethertype, ETH_HLEN + VLAN_HLEN
        ethertype = (frame[16] << 8) | frame[17]
    if ethertype == ETH_P_IP:
        version, l4 = 4, l3 + 20
    elif ethertype == ETH_P_IPV6:
        version, l4 = 6, l3 + 40
    else:
        return None
    if n < l4 + TCP_HLEN or frame[l4 + 12] >> 4 < 5:
        return None
    return _layout(l3, version, tpid, frame[l4 + 12] >> 4)


@dataclass(slots=True)
class Prepared:
    """A batch laid out for the column path (see the module docstring)."""

    frames: Sequence[Buffer]
    lens: IntArray | None  # every frame's length; None: all are ``length`` long
    matrix: ByteMatrix  # the frames of length ``length``, one per row
    length: int
    members: IntArray | None  # frame index of each matrix row; None: row i is frame i
    stragglers: list[int]  # frames outside the matrix
    layout: Layout
    cols: IntArray  # (n, COLUMNS)
    head: ByteMatrix  # (n, layout.width) header bytes, zero padded
    fits: BoolArray  # rows of the layout whose IP length is the frame length
    flush: BoolArray  # rows of the layout the IP layer flushes (length differs, reserved bit)
    any_flush: bool
    # Set by ``gro_rows.verify``: its result, and the fitting rows whose checksums are good.
    verified: VerifyResult | None = None
    good: BoolArray | None = None


def prepare(frames: Sequence[Buffer]) -> Prepared | None:
    """Lay ``frames`` out as columns, or ``None`` when the batch is not worth it."""
    n = len(frames)
    if n < MIN_FRAMES:
        return None
    sizes = list(map(len, frames))
    length = sizes[0]
    lens: IntArray | None = None
    members: IntArray | None = None
    stragglers: list[int] = []
    if sizes.count(length) == n:
        part: Sequence[Buffer] = frames
    else:
        lens = np.array(sizes, np.int64)
        values, counts = np.unique(lens, return_counts=True)
        top = int(np.argmax(counts))
        length = int(values[top])
        members = (lens == length).nonzero()[0]
        stragglers = (lens != length).nonzero()[0].tolist()
        part = [frames[i] for i in members.tolist()]
    layout = None
    for candidate in part[:3]:
        layout = layout_of(candidate)
        if layout is not None:
            break
    if layout is None or (lens is None and length < layout.hdr_end):
        return None
    m = rows.matrix(part, length)
    return _columns(
        frames, layout, lens=lens, m=m, length=length, members=members, stragglers=stragglers
    )


def relayout(p: Prepared, layout: Layout) -> Prepared | None:
    """The same batch (the same matrix) under another layout: a second kind of TCP frame."""
    if p.lens is None and p.length < layout.hdr_end:
        return None  # no frame is long enough for its headers
    return _columns(
        p.frames,
        layout,
        lens=p.lens,
        m=p.matrix,
        length=p.length,
        members=p.members,
        stragglers=p.stragglers,
    )


def _columns(
    frames: Sequence[Buffer],
    layout: Layout,
    *,
    lens: IntArray | None,
    m: ByteMatrix,
    length: int,
    members: IntArray | None,
    stragglers: list[int],
) -> Prepared:
    """The header matrix, its columns, and which rows are of ``layout``."""
    n = len(frames)
    width = layout.width
    if members is None and length >= width:
        head = m[:, :width]  # a view: the rows are read, never written
    else:
        head = np.zeros((n, width), np.uint8)
        k = min(width, length)
        if members is None:
            head[:, :k] = m[:, :k]
        else:
            head[members, :k] = m[:, :k]
        for i in stragglers:
            frame = frames[i]
            k = min(width, len(frame))
            head[i, :k] = np.frombuffer(frame, np.uint8, k)
    cols = (head.astype(np.float64) @ layout.weights).astype(np.int64)
    shaped = ~((head.view("<u8") ^ layout.expect) & layout.check).any(axis=1)
    if lens is None:
        plain = cols[:, IP_LEN] == length - layout.ip_len_base
    else:
        shaped &= lens >= layout.hdr_end
        plain = cols[:, IP_LEN] == lens - layout.ip_len_base
    if layout.version == 4:
        plain &= cols[:, DF] < 2  # the reserved bit flushes too
    fits = shaped & plain
    flush = shaped & ~plain
    return Prepared(
        frames, lens, m, length, members, stragglers, layout, cols, head, fits, flush,
        bool(np.count_nonzero(flush)),
    )  # fmt: skip


def verify_fitting(p: Prepared) -> tuple[ByteArray, ByteArray, BoolArray, BoolArray]:
    """(IPv4 header status, L4 status, checked, good) of every frame of the batch.

    Fitting matrix rows are verified from the columns and the row sums;
    ``checked`` is False for every other frame, whose statuses here mean
    nothing: the caller verifies those in general. ``good`` marks the fitting
    rows whose checksums are all right.
    """
    lay = p.layout
    total = rows.le_sum(p.matrix, 0, p.length)
    cols = p.cols if p.members is None else p.cols[p.members]
    # The L4 sum is the row's sum less the header words before L4 (addresses kept),
    # plus protocol and L4 length: big-endian values counted in a little-endian sum.
    pseudo = ((IPPROTO_TCP + p.length - lay.l4) * 256) % 0xFFFF
    ok = (total - cols[:, PREFIX] + pseudo) % 0xFFFF == 0
    l4_rows = _FAILED - ok.view(np.uint8)
    if lay.version == 4:
        hdr_ok = cols[:, IP_SUM] % 0xFFFF == 0
        hdr_rows = _FAILED - hdr_ok.view(np.uint8)
        ok &= hdr_ok
    else:
        hdr_rows = np.zeros(len(ok), np.uint8)
    if p.members is None:
        return hdr_rows, l4_rows, p.fits, p.fits & ok
    n = len(p.frames)
    hdr = np.zeros(n, np.uint8)
    l4 = np.zeros(n, np.uint8)
    hdr[p.members], l4[p.members] = hdr_rows, l4_rows
    checked = np.zeros(n, bool)
    checked[p.members] = p.fits[p.members]
    good = np.zeros(n, bool)
    good[p.members] = checked[p.members] & ok
    return hdr, l4, checked, good


def good_flushed(p: Prepared, hdr: ByteArray) -> BoolArray:
    """Rows the IP layer flushes that still reach their flow (IPv4: a good header)."""
    if p.layout.version == 6:
        return p.flush
    flush: BoolArray = p.flush & (hdr == _VERIFIED)
    return flush
