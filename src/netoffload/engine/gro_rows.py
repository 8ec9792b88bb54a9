"""Vectorised TCP GRO: the scalar engine's decisions for a whole batch, as column operations.

A receive batch is mostly full-size segments of a few flows, each flow in
order and usually back to back (a TSO burst of the peer). Such frames share
one header layout, so every field GRO compares is a column of a header
matrix, and no frame needs Python of its own:

1. Rows. The frames of the most common length are the rows of one matrix;
   the others ("stragglers", such as the short last segment of a burst) only
   have their headers copied, one by one.
2. Layout. A template from a TCP frame fixes every offset: Ethernet with at
   most one VLAN tag, IPv4 without options or IPv6 without extension headers,
   TCP with the template's data offset. One masked compare finds the rows of
   that layout whose IP length is their frame length and that carry no
   fragment or reserved bits ("fitting" rows).
3. Columns. One float64 product of the header bytes gives, per row, the IPv4
   header sum, the L4 checksum's header part, a flow hash, seq, IP ID, flags,
   DF and the IP length: integers below 2**53, so exact. With the row sums of
   the matrix that is also the checksum verification.
4. Flows. Rows are put in flow order by a flow hash (already so when each
   flow's rows come back to back; else a stable sort), and each is compared
   with the row before it in its flow: every header byte that must repeat (a
   masked XOR), seq continuity, the IP ID rule, sizes and flags. A hash
   collision is caught by an exact compare of the key bytes.
5. Runs of rows that merge pairwise are cut into super-packets by integer
   arithmetic, one Python step per run (size and segment limits, the end
   flags, a short segment), and every output gets the key of the event that
   completes it, so the output order is the scalar engine's.

Whatever this does not model — a frame of another layout that reaches a flow
(UDP to coalesce, IP options are fine: they are passed up alone), a full flow
table, IP IDs switching between incrementing and fixed, consecutive short
segments — declines the batch (``None``): the caller then runs the scalar
engine. Both give the same answer for every input; the tests hold them to it.
"""

from __future__ import annotations

import functools
import operator
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine import rows
from netoffload.engine.checksum import VerifyResult, verify_batch
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
from netoffload.engine.gro_base import (
    TCP_CWR,
    TCP_ENDS,
    TCP_FIN,
    TCP_PSH,
    VERIFIED,
    Assembled,
    Seen,
    look,
)
from netoffload.offload.extension import ChecksumRequest, ChecksumStatus, GsoType
from netoffload.offload.extension import SegmentationRequest as _SegReq

Buffer: TypeAlias = bytes | bytearray | memoryview
IntArray: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
ByteMatrix: TypeAlias = npt.NDArray[np.uint8]
WordMatrix: TypeAlias = npt.NDArray[np.uint64]

#: Below this many frames the scalar engine is as fast as the column set-up.
MIN_FRAMES = 16

# Columns of the per-row product of header bytes and weights.
_IP_SUM, _PREFIX, _HASH, _SEQ, _IDENT, _FLAGS, _DF, _IP_LEN, _IP_CHECK, _ADDR = range(10)
_COLUMNS = 10
_FAILED = np.uint8(ChecksumStatus.FAILED)
assert int(ChecksumStatus.FAILED) - 1 == VERIFIED
_TCP_MAY_END_MERGED = TCP_FIN | TCP_PSH
_U16 = struct.Struct("!H")
_KEY = operator.itemgetter(0)
# Flow-hash weights: below 2**32, so a 255-weighted sum over 64 key bytes stays exact.
_RANDOM = random.Random(0x6E6F)
_HASH_WEIGHTS = [_RANDOM.randrange(1, 1 << 32) for _ in range(256)]


@dataclass(frozen=True, slots=True)
class _Layout:
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
    weights: npt.NDArray[np.float64]  # (width, _COLUMNS)
    ip_len_base: int  # IP length field of a fitting row = frame length - this
    csum: ChecksumRequest
    kind: GsoType


def _le_weights(w: npt.NDArray[np.float64], column: int, begin: int, end: int) -> None:
    # Little-endian 16-bit words (RFC 1071 2(B)); offsets here are all even.
    for b in range(begin, end):
        w[b, column] = 1.0 if b % 2 == 0 else 256.0


@functools.lru_cache(maxsize=64)
def _layout(l3: int, version: int, tpid: int, doff: int) -> _Layout:
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
    w = np.zeros((width, _COLUMNS), np.float64)
    if version == 4:
        must(l3, 0x45)
        must(l3 + 6, 0, 0x3F)  # no MF, no fragment offset (DF and the reserved bit are columns)
        must(l3 + 7, 0)
        must(l3 + 9, IPPROTO_TCP)
        static[[l3 + 2, l3 + 3, l3 + 4, l3 + 5, l3 + 10, l3 + 11]] = 0  # length, ID, checksum
        key[l3 + 12 : l3 + 20] = 0xFF
        _le_weights(w, _IP_SUM, l3, l4)
        _le_weights(w, _PREFIX, 0, l3 + 12)
        w[[l3 + 4, l3 + 5], _IDENT] = 256.0, 1.0
        w[l3 + 6, _DF] = 1.0 / 64  # 0x40 (DF) and 0x80 (reserved): the byte's only bits here
        w[[l3 + 2, l3 + 3], _IP_LEN] = 256.0, 1.0
        w[[l3 + 10, l3 + 11], _IP_CHECK] = 256.0, 1.0
        w[l3 + 12 : l3 + 20, _ADDR] = np.tile([256.0, 1.0], 4)  # big-endian words
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
        _le_weights(w, _PREFIX, 0, l3 + 8)
        w[[l3 + 4, l3 + 5], _IP_LEN] = 256.0, 1.0
        w[l3 + 8 : l3 + 40, _ADDR] = np.tile([256.0, 1.0], 16)
        ip_len_base = l3 + 40
        kind = GsoType.TCPV6
    must(l4 + 12, doff << 4, 0xF0)
    static[l4 + 4 : l4 + 8] = 0  # seq
    static[l4 + 13] = 0xFF & ~(TCP_CWR | TCP_FIN | TCP_PSH)  # flags that may differ
    static[l4 + 16 : l4 + 20] = 0  # checksum, urgent pointer
    for b in range(hdr_end):
        # Whole key bytes only: a partly keyed byte (IPv6 flow label) is left to the exact check.
        if key[b] == 0xFF:
            w[b, _HASH] = float(_HASH_WEIGHTS[b])
    w[l4 + 4 : l4 + 8, _SEQ] = 2.0**24, 2.0**16, 2.0**8, 1.0
    w[l4 + 13, _FLAGS] = 1.0

    def words(a: npt.NDArray[np.uint8]) -> WordMatrix:
        return a.view("<u8").reshape(1, -1)

    return _Layout(
        version, l3, l4, hdr_end, width, words(check), words(expect), words(static),
        words(key), w, ip_len_base, ChecksumRequest(l4, TCP_CSUM_OFFSET), kind,
    )  # fmt: skip


def _layout_of(frame: Buffer) -> _Layout | None:
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
    layout: _Layout
    cols: IntArray  # (n, _COLUMNS)
    head: ByteMatrix  # (n, layout.width) header bytes, zero padded
    fits: BoolArray  # rows of the layout whose IP length is the frame length
    flush: BoolArray  # rows of the layout the IP layer flushes (length differs, reserved bit)
    any_flush: bool
    # Set by ``verify``: its result, and the fitting rows whose checksums are good.
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
        layout = _layout_of(candidate)
        if layout is not None:
            break
    if layout is None or (lens is None and length < layout.hdr_end):
        return None
    m = rows.matrix(part, length)
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
        plain = cols[:, _IP_LEN] == length - layout.ip_len_base
    else:
        shaped &= lens >= layout.hdr_end
        plain = cols[:, _IP_LEN] == lens - layout.ip_len_base
    if layout.version == 4:
        plain &= cols[:, _DF] < 2  # the reserved bit flushes too
    fits = shaped & plain
    flush = shaped & ~plain
    return Prepared(
        frames, lens, m, length, members, stragglers, layout, cols, head, fits, flush,
        bool(np.count_nonzero(flush)),
    )  # fmt: skip


def verify(p: Prepared) -> VerifyResult:
    """``verify_batch`` of the batch: fitting matrix rows from the columns, the rest in general."""
    lay = p.layout
    total = rows.le_sum(p.matrix, 0, p.length)
    cols = p.cols if p.members is None else p.cols[p.members]
    # The L4 sum is the row's sum less the header words before L4 (addresses kept),
    # plus protocol and L4 length: big-endian values counted in a little-endian sum.
    pseudo = ((IPPROTO_TCP + p.length - lay.l4) * 256) % 0xFFFF
    ok = (total - cols[:, _PREFIX] + pseudo) % 0xFFFF == 0
    l4_rows = _FAILED - ok.view(np.uint8)  # FAILED - True is VERIFIED
    if lay.version == 4:
        hdr_ok = cols[:, _IP_SUM] % 0xFFFF == 0
        hdr_rows = _FAILED - hdr_ok.view(np.uint8)
        ok &= hdr_ok
    else:
        hdr_rows = np.zeros(len(ok), np.uint8)
    if p.members is None:
        hdr, l4, fits = hdr_rows, l4_rows, p.fits
        good = fits & ok
    else:
        n = len(p.frames)
        hdr = np.zeros(n, np.uint8)
        l4 = np.zeros(n, np.uint8)
        hdr[p.members], l4[p.members] = hdr_rows, l4_rows
        fits = np.zeros(n, bool)
        fits[p.members] = p.fits[p.members]
        good = np.zeros(n, bool)
        good[p.members] = fits[p.members] & ok
    if np.count_nonzero(fits) < len(fits):
        rest = (~fits).nonzero()[0]
        other = verify_batch([p.frames[i] for i in rest.tolist()])
        hdr[rest], l4[rest] = other.ipv4_header, other.l4
        # A straggler of the layout is checked in general, and good as ever.
        good |= p.fits & (l4 == VERIFIED) & ((hdr == VERIFIED) | (lay.version == 6))
    p.verified = VerifyResult(hdr, l4)
    p.good = good
    return p.verified


class _Out:
    """What the runs produce: output events and held intervals.

    Positions index the flow rows in flow order; ``rows``, ``pay`` and
    ``flags`` are per position. An event's key orders the output as the
    scalar engine emits it: a packet passed up at row ``i`` has ``2i + 1``, a
    held packet completed by row ``i`` (before ``i`` itself is handled) ``2i``,
    and what is flushed at the end ``2n`` plus the row it was held at.
    """

    def __init__(self) -> None:
        self.events: list[tuple[int, int, int, int]] = []  # (key, kind, first pos, last pos)
        self.holds: list[tuple[int, int]] = []  # (held at row, completed at row)
        self.rows: list[int] = []
        self.pay: list[int] = []
        self.flags: list[int] = []
        self.code: list[int] = []


def assemble_prepared(
    p: Prepared,
    verified: VerifyResult,
    *,
    udp: bool,
    max_size: int,
    max_segments: int | None,
    max_flows: int,
) -> list[Assembled] | None:
    """TCP GRO of a prepared batch, or ``None`` where the scalar engine must decide."""
    frames, lay = p.frames, p.layout
    n = len(frames)
    hdr_status, l4_status = verified.ipv4_header, verified.l4
    if verified is p.verified and p.good is not None:
        good = p.good
    else:
        good = p.fits & (l4_status == VERIFIED)
        if lay.version == 4:
            good &= hdr_status == VERIFIED
    early: list[Assembled] = []
    if np.count_nonzero(good) == n:
        flow_rows = _arange(n)
    else:
        # Rows the IP layer flushes skip the L4 check; IPv4 still needs a good header.
        flush = p.flush if lay.version == 6 else p.flush & (hdr_status == VERIFIED)
        odd = (~(p.fits | flush)).nonzero()[0]
        if len(odd):
            hs, ls = hdr_status.tolist(), l4_status.tolist()
            for i in odd.tolist():
                seen = look(frames[i], i, hs[i], ls[i], tcp=True, udp=udp)
                if isinstance(seen, Seen):
                    return None  # it reaches a flow: the scalar engine's business
                early.append(seen)
        # Fitting rows with a bad checksum are passed up at once, unvalidated.
        early += [Assembled(frames[i], i) for i in (p.fits & ~good).nonzero()[0].tolist()]
        flow_rows = (good | flush).nonzero()[0]
    out = _Out()
    if len(flow_rows) and not _runs(p, flow_rows, out, max_size, max_segments):
        return None
    if len(out.holds) > max_flows and _overflows(out.holds, max_flows):
        return None  # a flow would be evicted from the GRO list
    return _build(p, out, early)


# Bits of a flow row's code: it would merge into the packet held after the row
# before it; it starts a flow; it carries an end flag; it is shorter than the row
# before it (and would merge); its IP ID repeats the one before it; the IP layer
# flushes it (it completes its flow's packet and is passed up unvalidated).
_C0, _NEW_FLOW, _END, _SHORT, _SAME_ID, _FLUSH = 1, 2, 4, 8, 16, 32


def _runs(
    p: Prepared, flow_rows: IntArray, out: _Out, max_size: int, max_segments: int | None
) -> bool:
    """Cut the flow rows into chunks (held packets) and lone rows; False to decline."""
    lay = p.layout
    n = len(p.frames)
    everything = len(flow_rows) == n
    hashes = p.cols[:, _HASH] if everything else p.cols[flow_rows, _HASH]
    if _grouped(hashes):
        # Each flow's rows back to back (a burst each): flow order is arrival order.
        r = flow_rows
        c = p.cols if everything else p.cols[r]
        head = p.head if everything else p.head[r]
    else:
        r = flow_rows[hashes.argsort(kind="stable")]
        c = p.cols[r]
        head = p.head[r]
    m = len(r)
    flags = c[:, _FLAGS]
    ends = (flags & TCP_ENDS) != 0
    code = ends * _END
    flushed = p.flush[r] if p.any_flush else None
    if flushed is not None:
        code += flushed * _FLUSH
        ends |= flushed  # never held: like an end flag, nothing merges into it
    if p.lens is None:
        pay_rows = None
        size0 = p.length - lay.hdr_end
    else:
        pay_rows = p.lens[r] - lay.hdr_end
    if m > 1:
        hv = head.view("<u8")
        x = hv[1:] ^ hv[:-1]
        static_ne = (x & lay.static).any(axis=1)
        dc = c[1:] - c[:-1]
        # c0[j - 1]: row j would merge into the packet held when row j - 1 was the last.
        if pay_rows is None:
            # One length: every segment is as long as the one before; none is short.
            c0 = ~static_ne & (((dc[:, _SEQ] - size0) & 0xFFFFFFFF) == 0) & (flags[1:] < TCP_CWR)
            if flushed is not None:
                c0 &= ~flushed[1:]
            if size0 < 1:
                c0[:] = False
        else:
            before, now = pay_rows[:-1], pay_rows[1:]
            c0 = ~static_ne & (((dc[:, _SEQ] - before) & 0xFFFFFFFF) == 0)
            c0 &= (now >= 1) & (now <= before) & (flags[1:] < TCP_CWR)
            if flushed is not None:
                c0 &= ~flushed[1:]
            short = c0 & (now < before)
            code[1:] += short * _SHORT
        same_hash = dc[:, _HASH] == 0
        if np.count_nonzero(same_hash & static_ne):
            amb = (same_hash & static_ne).nonzero()[0]
            if np.count_nonzero(x[amb] & lay.key):
                return False  # two flows share a hash
        if lay.version == 4:
            idd = dc[:, _IDENT] & 0xFFFF
            same_id = idd == 0
            c0 &= (idd == 1) | (same_id & (c[1:, _DF] == 1))
            # A flow's ID mode (incrementing or fixed) is decided by its second packet.
            fixed = c0 & same_id
            if (
                m > 2
                and np.count_nonzero(fixed)
                and (c0[1:] & c0[:-1] & (fixed[1:] != fixed[:-1])).any()
            ):
                return False
            code[1:] += fixed * _SAME_ID
        code[1:] += c0 + ~same_hash * _NEW_FLOW
        brk = ~c0 | ends[:-1]  # does not merge, or the row before ends its packet
        if pay_rows is not None:
            brk[1:] |= short[:-1]
        starts = [0, *(brk.nonzero()[0] + 1).tolist(), m]
    else:
        starts = [0, 1]
    code[0] |= _NEW_FLOW
    codes = code.tolist()
    rows_ = r.tolist()
    pay = [size0] * m if pay_rows is None else pay_rows.tolist()
    out.rows, out.pay, out.flags, out.code = rows_, pay, flags.tolist(), codes
    events, holds = out.events, out.holds
    lim = 0xFFFF if max_segments is None else min(0xFFFF, max_segments)
    c_lim = max(lim - 1, 1)  # merges after which a chunk is full (checked after a merge)
    hdr_end = lay.hdr_end
    end_key = 2 * n
    never = 3 * n
    pending = -1  # first position of the open chunk of the current flow, if any
    pending_end = -1
    pending_short = False
    cap_of: dict[int, int] = {}
    for k in range(len(starts) - 1):
        a, b = starts[k], starts[k + 1]
        row = rows_[a]
        had = False
        bits = codes[a]
        if pending >= 0:
            held = rows_[pending]
            if bits & _NEW_FLOW:
                events.append((end_key + held, 1, pending, pending_end))
                holds.append((held, never))
            elif pending_short and bits & _C0:
                return False  # it could merge into a short segment held anew
            else:
                events.append((2 * row, 1, pending, pending_end))
                holds.append((held, row))
                had = True
            pending = -1
            pending_short = False
        size = pay[a]
        if bits & (_END | _FLUSH) or (size == 0 and not had):
            events.append((2 * row + 1, 2 if bits & _FLUSH else 0, a, a))
            continue
        if size == 0:
            pending = pending_end = a  # an empty segment completing a held packet is held itself
            continue
        base = hdr_end + size - ETH_HLEN
        cap = cap_of.get(size)
        if cap is None:
            cap = cap_of[size] = min(max(0, (max_size - 1 - base) // size), c_lim)
        last = b - 1
        term = last > a and bool(codes[last] & (_END | _SHORT))
        pos = a
        while True:
            full = last - pos - term  # full-size rows after pos in the run
            if full > cap:
                end = pos + cap
                if cap == c_lim:  # full: completed by its last merge
                    events.append((2 * rows_[end] + 1, 1, pos, end))
                    holds.append((rows_[pos], rows_[end]))
                else:  # too big for the next: completed by it
                    events.append((2 * rows_[end + 1], 1, pos, end))
                    holds.append((rows_[pos], rows_[end + 1]))
                pos = end + 1
                if pos < last or not term:
                    continue
            else:
                end = pos + full
                if full == c_lim:
                    events.append((2 * rows_[end] + 1, 1, pos, end))
                    holds.append((rows_[pos], rows_[end]))
                elif not term:
                    pending, pending_end = pos, end
                    break
                elif base + full * size + pay[last] < max_size:
                    events.append((2 * rows_[last] + 1, 1, pos, last))
                    holds.append((rows_[pos], rows_[last]))
                    break
                else:
                    events.append((2 * rows_[last], 1, pos, end))
                    holds.append((rows_[pos], rows_[last]))
                if not term:
                    break
            # The run's last row (FIN/PSH/... or short) meets no held packet.
            if codes[last] & _END:
                events.append((2 * rows_[last] + 1, 0, last, last))
            else:
                pending = pending_end = last
                pending_short = True
            break
    if pending >= 0:
        events.append((end_key + rows_[pending], 1, pending, pending_end))
        holds.append((rows_[pending], never))
    return True


def _grouped(hashes: IntArray) -> bool:
    """Whether every flow's rows come back to back (no hash starts twice)."""
    change = (hashes[1:] != hashes[:-1]).nonzero()[0]
    if len(change) > 64:
        return False  # a sort costs less than a look at every start
    starts = [int(hashes[0]), *hashes[change + 1].tolist()]
    return len(set(starts)) == len(starts)


@functools.lru_cache(maxsize=8)
def _arange(n: int) -> IntArray:
    index = np.arange(n, dtype=np.int64)
    index.flags.writeable = False
    return index


def _overflows(holds: list[tuple[int, int]], max_flows: int) -> bool:
    """True when some hold finds ``max_flows`` packets held already."""
    held = np.array(holds, dtype=np.int64)
    begin = np.sort(held[:, 0])
    end = np.sort(held[:, 1])
    at = held[:, 0]
    # Held at the moment row s is held: taken before s, not yet completed (a chunk
    # completed by row s itself is gone before s is held).
    count = np.searchsorted(begin, at, "left") - np.searchsorted(end, at, "right")
    return bool((count >= max_flows).any())


_REQUESTS: dict[tuple[GsoType, int, int, bool, bool], _SegReq] = {}


def _request(kind: GsoType, size: int, hdr_len: int, ecn: bool, fixed_id: bool) -> _SegReq:
    """One immutable record per distinct super-packet shape, as a stack would keep them."""
    key = (kind, size, hdr_len, ecn, fixed_id)
    seg = _REQUESTS.get(key)
    if seg is None:
        if len(_REQUESTS) > 4096:
            _REQUESTS.clear()
        seg = _REQUESTS[key] = _SegReq(kind, size, hdr_len, ecn, fixed_id)
    return seg


def _build(p: Prepared, out: _Out, early: list[Assembled]) -> list[Assembled]:
    """Every output in the order of its completing event."""
    frames, lay = p.frames, p.layout
    keyed: list[tuple[int, Assembled]] = [(2 * u.index + 1, u) for u in early]
    chunks: list[tuple[int, int, int]] = []
    rows_ = out.rows
    for key, kind, a, b in out.events:
        row = rows_[a]
        if kind != 1:  # passed up alone: validated unless flushed
            keyed.append((key, Assembled(frames[row], row, validated=kind == 0)))
        elif a == b:
            unit = Assembled(frames[row], row, 1, lay.version, IPPROTO_TCP, validated=True)
            keyed.append((key, unit))
        else:
            chunks.append((key, a, b))
    if chunks:
        keyed += _super_packets(p, out, chunks)
    keyed.sort(key=_KEY)
    return [u for _, u in keyed]


def _super_packets(
    p: Prepared, out: _Out, chunks: list[tuple[int, int, int]]
) -> list[tuple[int, Assembled]]:
    """Build the super-packets: the patched first header, then the payloads.

    The header patch is ``complete_head``'s, with the fields taken from the
    columns: IP length (the IPv4 header checksum updated as csum_replace2
    does, RFC 1624), TCP flags ``|=`` the last segment's FIN/PSH, and the TCP
    checksum field set to the pseudo-header sum for the new length.

    Each super-packet is its own bytes (at most 64 KiB: malloc reuses those,
    while one buffer for the whole batch would be fresh pages on every call).
    Full-size segments come out of the matrix, back-to-back rows as one
    strided copy, others as one gather; a segment outside the matrix (a short
    last one) is joined as it is.
    """
    frames, lay = p.frames, p.layout
    l3, l4, hdr_end, width, v4 = lay.l3, lay.l4, lay.hdr_end, lay.width, lay.version == 4
    size0 = p.length - hdr_end
    rows_, pay, flags, code = out.rows, out.pay, out.flags, out.code
    matrix_row: list[int] | None = None
    if p.members is not None:
        where = np.full(len(frames), -1, np.int64)
        where[p.members] = np.arange(len(p.members))
        matrix_row = where.tolist()
    first = [rows_[a] for _, a, _ in chunks]
    fields = p.cols[first].tolist()
    table = p.head.tobytes()
    body = p.matrix[:, hdr_end:]
    result: list[tuple[int, Assembled]] = []
    for (key, a, b), row, col in zip(chunks, first, fields, strict=True):
        size = hdr_end + sum(pay[a : b + 1])
        head = bytearray(table[row * width : row * width + hdr_end])
        if v4:
            total = size - l3
            _U16.pack_into(head, l3 + 2, total)
            # RFC 1624 eqn. 3 in one fold: ~(~HC + ~m + m').
            s = (~col[_IP_CHECK] & 0xFFFF) + (~col[_IP_LEN] & 0xFFFF) + total
            s = (s & 0xFFFF) + (s >> 16)
            _U16.pack_into(head, l3 + 10, ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF)
        else:
            _U16.pack_into(head, l3 + 4, size - l3 - 40)
        head[l4 + 13] |= flags[b] & _TCP_MAY_END_MERGED
        # pseudo_header_sum: never 0 here (the protocol is not); a multiple of 0xFFFF is 0xFFFF.
        pseudo = (col[_ADDR] + IPPROTO_TCP + size - l4) % 0xFFFF
        _U16.pack_into(head, l4 + 16, pseudo or 0xFFFF)
        parts: list[Buffer] = [head]
        # Rows taken whole from the matrix: the full-size ones (all but a short last).
        whole = 0 if size0 < 1 or pay[a] != size0 else b - a + (pay[b] == size0)
        if whole:
            taken = rows_[a : a + whole]
            if matrix_row is not None:
                taken = [matrix_row[i] for i in taken]
            if taken[-1] - taken[0] == whole - 1:
                # Back-to-back rows: one strided copy out of the matrix.
                parts.append(body[taken[0] : taken[-1] + 1].tobytes())
            else:
                parts.append(body[taken].data)
        parts += [memoryview(frames[i])[hdr_end:] for i in rows_[a + whole : b + 1]]
        # ECN from the first segment's CWR; the flow's IP ID mode from its second.
        seg = _request(
            lay.kind, pay[a], hdr_end, bool(flags[a] & TCP_CWR), bool(code[a + 1] & _SAME_ID)
        )
        unit = Assembled(
            b"".join(parts), row, b - a + 1, lay.version, IPPROTO_TCP, True, seg, lay.csum
        )
        result.append((key, unit))
    return result
