"""Vectorised TCP GRO: the scalar engine's decisions for a whole batch, as column operations.

The batch is laid out by ``tcp_rows`` (a header matrix of the frames of one
TCP layout, their fields as columns, their checksums verified). Then:

1. Flows. Rows are put in flow order by a flow hash (already so when each
   flow's rows come back to back; else a stable sort), and each is compared
   with the row before it in its flow: every header byte that must repeat (a
   masked XOR), seq continuity, the IP ID rule, sizes and flags. A hash
   collision is caught by an exact compare of the key bytes.
2. Runs of rows that merge pairwise are cut into super-packets by integer
   arithmetic, one Python step per run (size and segment limits, the end
   flags, a short segment, a frame the IP layer flushes), and every output
   gets the key of the event that completes it, so the output order is the
   scalar engine's.
3. Each super-packet is built once: its first header patched from the
   columns, then its payloads, out of the matrix in one strided copy.

Frames of other layouts that are passed up at once (IP options, a bad
checksum, UDP when UDP is not coalesced, non-IP) keep their place. Whatever
else this does not model — a frame of another layout that reaches a flow
(UDP to coalesce, IPv6 extension headers, other TCP options in a flow), a
full flow table, IP IDs switching between incrementing and fixed, a short
segment that could take another — declines the batch (``None``): the caller
then runs the scalar engine. Both give the same answer for every input; the
tests hold them to it, and to the kernel.
"""

from __future__ import annotations

import functools
import operator
import struct

import numpy as np

from netoffload.engine.checksum import VerifyResult, verify_batch
from netoffload.engine.dissect import ETH_HLEN, IPPROTO_TCP
from netoffload.engine.gro_base import (
    TCP_CWR,
    TCP_ENDS,
    TCP_FIN,
    TCP_PSH,
    VERIFIED,
    Assembled,
    Buffer,
    look,
)
from netoffload.engine.tcp_rows import (
    ADDR,
    DF,
    FLAGS,
    HASH,
    IDENT,
    IP_CHECK,
    IP_LEN,
    MIN_FRAMES,
    SEQ,
    BoolArray,
    ByteArray,
    IntArray,
    Prepared,
    good_flushed,
    layout_of,
    prepare,
    relayout,
    verify_fitting,
)
from netoffload.offload.extension import GsoType
from netoffload.offload.extension import SegmentationRequest as _SegReq

__all__ = ["MAX_LAYOUTS", "MIN_FRAMES", "Prepared", "assemble_prepared", "prepare", "verify"]

_TCP_MAY_END_MERGED = TCP_FIN | TCP_PSH
_U16 = struct.Struct("!H")
_KEY = operator.itemgetter(0)


def verify(p: Prepared) -> VerifyResult:
    """``verify_batch`` of the batch (the columns for fitting rows, the rest in general).

    Also keeps, for ``assemble_prepared``, which fitting rows have good checksums.
    """
    hdr, l4, checked, good = verify_fitting(p)
    if np.count_nonzero(checked) < len(checked):
        rest = (~checked).nonzero()[0]
        other = verify_batch([p.frames[i] for i in rest.tolist()])
        hdr[rest], l4[rest] = other.ipv4_header, other.l4
        # A straggler of the layout is checked in general, and good as ever.
        good |= p.fits & (l4 == VERIFIED) & ((hdr == VERIFIED) | (p.layout.version == 6))
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
    """TCP GRO of a prepared batch, or ``None`` where the scalar engine must decide.

    Frames of up to ``MAX_LAYOUTS`` TCP layouts are taken (IPv4 and IPv6
    flows, say, or flows with and without timestamps), each layout's flows by
    themselves: flows of two layouts never share a key, as long as no flow
    hash is found in both.
    """
    frames = p.frames
    n = len(frames)
    hdr_status, l4_status = verified.ipv4_header, verified.l4
    if verified is p.verified and p.good is not None:
        good = p.good
    else:
        good = _good(p, hdr_status, l4_status)
    keyed: list[tuple[int, Assembled]] = []
    if np.count_nonzero(good) == n:  # one layout, every checksum right: the usual batch
        classes = [(p, good, _arange(n))]
    else:
        found = _layouts(p, good, verified, udp)
        if found is None:
            return None
        classes, keyed = found
    holds: list[tuple[int, int]] = []
    seen_hashes: dict[tuple[int, int], set[int]] = {}
    for q, _, flow_rows in classes:
        if not len(flow_rows):
            continue
        if len(classes) > 1:
            # Two layouts with the same key bytes (another TCP option, say) could be one flow.
            shape = (q.layout.l3, q.layout.version)
            hashes = set(q.cols[flow_rows, HASH].tolist())
            if hashes & seen_hashes.setdefault(shape, set()):
                return None
            seen_hashes[shape] |= hashes
        out = _Out()
        if not _runs(q, flow_rows, out, max_size, max_segments):
            return None
        holds += out.holds
        keyed += _build(q, out)
    if len(holds) > max_flows and _overflows(holds, max_flows):
        return None  # a flow would be evicted from the GRO list
    keyed.sort(key=_KEY)
    return [u for _, u in keyed]


#: Kinds of TCP frame (header layouts) one batch may mix on the column path.
MAX_LAYOUTS = 4


def _good(p: Prepared, hdr_status: ByteArray, l4_status: ByteArray) -> BoolArray:
    """Fitting rows whose checksums are right (as the statuses say)."""
    good: BoolArray = p.fits & (l4_status == VERIFIED)
    if p.layout.version == 4:
        good &= hdr_status == VERIFIED
    return good


def _layouts(
    p: Prepared, good: BoolArray, verified: VerifyResult, udp: bool
) -> tuple[list[tuple[Prepared, BoolArray, IntArray]], list[tuple[int, Assembled]]] | None:
    """Each layout's (rows, good rows, flow rows), and what is passed up alone; ``None`` to decline.

    A frame outside every layout so far that reaches a flow brings its own
    layout in; one of another kind (UDP to coalesce, IPv6 extension headers)
    declines the batch.
    """
    frames = p.frames
    hdr_status, l4_status = verified.ipv4_header, verified.l4
    found = [(p, good)]
    claimed = p.fits | p.flush
    passed: dict[int, Assembled] = {}
    hs, ls = hdr_status.tolist(), l4_status.tolist()
    for i in (~claimed).nonzero()[0].tolist():
        if claimed[i]:
            continue  # a layout found since took it
        seen = look(frames[i], i, hs[i], ls[i], tcp=True, udp=udp)
        if isinstance(seen, Assembled):
            passed[i] = seen
            continue
        layout = layout_of(frames[i])
        q = relayout(p, layout) if layout is not None and len(found) < MAX_LAYOUTS else None
        if q is None or not (q.fits[i] or q.flush[i]):
            return None  # it reaches a flow: the scalar engine's business
        found.append((q, _good(q, hdr_status, l4_status)))
        claimed |= q.fits | q.flush
    # A frame a layout took later is that layout's to pass up (it says the same).
    keyed = [(2 * i + 1, a) for i, a in passed.items() if not claimed[i]]
    classes = []
    for q, q_good in found:
        # Rows the IP layer flushes skip the L4 check; IPv4 still needs a good header.
        flush = good_flushed(q, hdr_status)
        # Rows of the layout with a bad checksum (or IPv4 header) go up at once, unvalidated.
        bad = (q.fits & ~q_good) | (q.flush & ~flush)
        keyed += [(2 * i + 1, Assembled(frames[i], i)) for i in bad.nonzero()[0].tolist()]
        classes.append((q, q_good, (q_good | flush).nonzero()[0]))
    return classes, keyed


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
    hashes = p.cols[:, HASH] if everything else p.cols[flow_rows, HASH]
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
    flags = c[:, FLAGS]
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
            c0 = ~static_ne & (((dc[:, SEQ] - size0) & 0xFFFFFFFF) == 0) & (flags[1:] < TCP_CWR)
            if flushed is not None:
                # A flushed row neither merges nor is held: nothing merges after it either.
                c0 &= ~(flushed[1:] | flushed[:-1])
            if size0 < 1:
                c0[:] = False
        else:
            before, now = pay_rows[:-1], pay_rows[1:]
            c0 = ~static_ne & (((dc[:, SEQ] - before) & 0xFFFFFFFF) == 0)
            c0 &= (now >= 1) & (now <= before) & (flags[1:] < TCP_CWR)
            if flushed is not None:
                # A flushed row neither merges nor is held: nothing merges after it either.
                c0 &= ~(flushed[1:] | flushed[:-1])
            short = c0 & (now < before)
            code[1:] += short * _SHORT
        same_hash = dc[:, HASH] == 0
        if np.count_nonzero(same_hash & static_ne):
            amb = (same_hash & static_ne).nonzero()[0]
            if np.count_nonzero(x[amb] & lay.key):
                return False  # two flows share a hash
        if lay.version == 4:
            idd = dc[:, IDENT] & 0xFFFF
            same_id = idd == 0
            c0 &= (idd == 1) | (same_id & (c[1:, DF] == 1))
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


def _build(p: Prepared, out: _Out) -> list[tuple[int, Assembled]]:
    """Every output of one layout's flows, with the key of its completing event."""
    frames, lay = p.frames, p.layout
    keyed: list[tuple[int, Assembled]] = []
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
    return keyed


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
            s = (~col[IP_CHECK] & 0xFFFF) + (~col[IP_LEN] & 0xFFFF) + total
            s = (s & 0xFFFF) + (s >> 16)
            _U16.pack_into(head, l3 + 10, ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF)
        else:
            _U16.pack_into(head, l3 + 4, size - l3 - 40)
        head[l4 + 13] |= flags[b] & _TCP_MAY_END_MERGED
        # pseudo_header_sum: never 0 here (the protocol is not); a multiple of 0xFFFF is 0xFFFF.
        pseudo = (col[ADDR] + IPPROTO_TCP + size - l4) % 0xFFFF
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
