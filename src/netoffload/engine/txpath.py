"""The transmit half of the pipeline: every allowed task of a batch, in as few passes as it takes.

Packets fall in three kinds: those to segment (all of them cut in one
``segment_batch`` call, segments as rows of one matrix), those that only need
a checksum filled (one ``fill_batch`` call), and those sent as they are. The
result keeps the input order. ``transmit`` gives ``Packet`` objects (what the
host fallback hands a device); ``transmit_framed`` gives the frames already
in the SoftNic cable's framing (a 4-byte little-endian length before each
frame) as a few contiguous spans, for one ``sendmsg`` and no object per
segment.

Given ``rows`` (a device's lender of transmit memory, ``XdpDevice.tx_rows``),
``transmit`` builds the frames it makes in the device's memory: segments are
cut into lent rows, a frame that only needs its L4 checksum is gathered
(headers, then payload) into a row and filled there, and a frame in two
pieces that needs nothing is gathered too. Each payload byte is then copied
once, from the caller's buffer into the memory the device sends from. A
super-packet in two pieces is joined once before it is cut (its headers are
parsed against its whole length); when no rows are free, the frames are
made as without ``rows``.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence, Set
from dataclasses import dataclass, field, replace
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine.checksum import FillJob, fill_batch, fill_rows_in_place, request_valid
from netoffload.engine.gso_batch import RowSource, SegmentBatch, rows_fit, segment_batch
from netoffload.engine.validate import VnetHdrRejected, VnetPlan, plan_vnet_hdr
from netoffload.offload.extension import ChecksumRequest, TxRequest
from netoffload.offload.packet import Packet
from netoffload.offload.stats import DropReason
from netoffload.offload.task import Task
from netoffload.offload.virtio import VirtioNetHdr, vnet_fields

Buffer: TypeAlias = bytes | bytearray | memoryview
TaskSet: TypeAlias = frozenset[Task] | Set[Task]

_PREFIX = struct.Struct("<I")
FRAMING_BYTES = _PREFIX.size


@dataclass(slots=True)
class TxOutcome:
    """Result of ``transmit``.

    ``sources[k]`` is the index of the input packet that ``packets[k]`` came
    from (a segmented packet gives several); every input index appears either
    in ``sources`` or in ``drops``, never both.
    """

    packets: list[Packet]  # ready frames; each .tx holds the RESIDUAL request
    drops: list[tuple[int, DropReason]]  # (index of the input packet, reason)
    tasks: Counter[Task] = field(default_factory=Counter)  # input packets each task was done for
    sources: list[int] = field(default_factory=list)


@dataclass(slots=True)
class FramedOutcome:
    """Result of ``transmit_framed``: the frames of the inputs that are done.

    ``chunks`` hold every frame with its length prefix, in input order;
    ``lengths`` are the frame lengths (prefixes excluded). ``sent`` are the
    inputs that became frames; ``residual`` those whose request still names a
    task nobody did (they are not in ``chunks``).
    """

    chunks: list[Buffer]
    lengths: list[int]
    sent: list[int]
    residual: list[int]
    drops: list[tuple[int, DropReason]]
    tasks: Counter[Task] = field(default_factory=Counter)


@dataclass(slots=True)
class _Work:
    """One batch classified: what to cut, what to fill, what goes as it is."""

    cut: list[int] = field(default_factory=list)
    plans: list[VnetPlan | DropReason] = field(default_factory=list)
    fixed: list[bool] = field(default_factory=list)
    fills: list[int] = field(default_factory=list)
    jobs: list[FillJob] = field(default_factory=list)
    drops: list[tuple[int, DropReason]] = field(default_factory=list)
    done: Counter[Task] = field(default_factory=Counter)
    filled: dict[int, Buffer] = field(default_factory=dict)
    batch: SegmentBatch | None = None
    position: dict[int, int] = field(default_factory=dict)  # input -> index in ``cut``
    whole: set[int] = field(default_factory=set)  # segmentation asked, sent whole by a fill


def _classify(packets: Sequence[Packet], tasks: TaskSet | Sequence[TaskSet]) -> _Work:
    per_packet: Sequence[TaskSet] | None = None
    batch_tasks: TaskSet = frozenset()
    if isinstance(tasks, Set):
        batch_tasks = tasks
    else:
        per_packet = tasks
    work = _Work()
    hdrs: dict[TxRequest, VirtioNetHdr] = {}
    for i, packet in enumerate(packets):
        allowed = batch_tasks if per_packet is None else per_packet[i]
        req = packet.tx
        seg = req.segmentation
        if seg is not None and seg.task in allowed:
            hdr = hdrs.get(req)
            if hdr is None:
                hdr = hdrs[req] = VirtioNetHdr(*vnet_fields(req))
            try:
                plan: VnetPlan | DropReason = plan_vnet_hdr(hdr, packet.data)
            except VnetHdrRejected as exc:
                plan = exc.reason
            except (ValueError, IndexError, struct.error, OverflowError):
                plan = DropReason.MALFORMED_FRAME
            if isinstance(plan, VnetPlan) and not plan.gso and req.ipv4_header_checksum:
                # Sent whole with its IPv4 header checksum asked for: a fill, as Linux does it.
                l4 = ChecksumRequest(plan.csum_start, plan.csum_offset) if plan.needs_csum else None
                work.fills.append(i)
                work.jobs.append(FillJob(packet.data, l4, True))
                work.whole.add(i)
                work.done[seg.task] += 1
                continue
            work.position[i] = len(work.cut)
            work.cut.append(i)
            work.plans.append(plan)
            work.fixed.append(seg.fixed_id)
        elif (
            seg is None
            and Task.CHECKSUM in allowed
            and (req.checksum is not None or req.ipv4_header_checksum)
        ):
            work.fills.append(i)
            work.jobs.append(FillJob(packet.data, req.checksum, req.ipv4_header_checksum))
    return work


def _run(
    packets: Sequence[Packet], work: _Work, headroom: int, rows: RowSource | None = None
) -> None:
    """Cut and fill everything ``work`` holds; drops and task counts recorded in it."""
    _cut(packets, work, headroom, rows)
    _fill(work)


def _cut(packets: Sequence[Packet], work: _Work, headroom: int, rows: RowSource | None) -> None:
    """Segment what ``work`` says to cut (into ``rows`` when given)."""
    if work.cut:
        batch = segment_batch(
            [packets[i].data for i in work.cut],
            work.plans,
            fixed_id=work.fixed,
            headroom=headroom,
            rows=rows,
        )
        work.batch = batch
        for k, i in enumerate(work.cut):
            reason = batch.errors[k]
            if reason is not None:
                work.drops.append((i, reason))
                continue
            req = packets[i].tx
            assert req.segmentation is not None
            work.done[req.segmentation.task] += 1
            if req.checksum is not None or req.ipv4_header_checksum:
                work.done[Task.CHECKSUM] += 1


def _fill(work: _Work) -> None:
    """Do the checksum fills ``work`` holds, each into a copy of its frame."""
    if work.jobs:
        filled = 0
        for i, result in zip(work.fills, _fill_each(work.jobs), strict=True):
            if isinstance(result, DropReason):
                work.drops.append((i, result))
                continue
            work.filled[i] = result
            filled += 1
        if filled:
            work.done[Task.CHECKSUM] += filled
    work.drops.sort()


def transmit(
    packets: Sequence[Packet],
    tasks: TaskSet | Sequence[TaskSet],
    *,
    rows: RowSource | None = None,
) -> TxOutcome:
    """Do the allowed requested tasks of every packet; see the pipeline's docstring.

    ``tasks`` is one set for the whole batch, or a sequence with one set per packet.
    With ``rows``, the frames made here are made in the memory it lends (module doc).
    """
    if rows is not None:
        return _transmit_mapped(packets, tasks, rows)
    packets = _flat(packets)
    work = _classify(packets, tasks)
    _run(packets, work, 0)
    return _outcome(packets, work, {})


def _outcome(packets: Sequence[Packet], work: _Work, placed: dict[int, memoryview]) -> TxOutcome:
    """The frames of ``work`` in input order; ``placed`` are frames already built in rows."""
    dropped = {i for i, _ in work.drops}
    batch = work.batch
    residuals: dict[TxRequest, TxRequest] = {}
    cut_done: TxRequest | None = None
    out: list[Packet] = []
    sources: list[int] = []
    for i, packet in enumerate(packets):
        if i in dropped:
            continue
        k = work.position.get(i)
        if k is not None and batch is not None:
            req = packet.tx
            residual = replace(req, checksum=None, ipv4_header_checksum=False, segmentation=None)
            if residual == cut_done:
                residual = cut_done  # one object for a flow's many segments
            cut_done = residual
            segments = batch.segments(k)
            out += [Packet(s, residual, packet.rx) for s in segments]
            sources += [i] * len(segments)
            continue
        result: Buffer | None = work.filled.get(i)
        if result is not None:
            req = _checksum_done(packet.tx, residuals)
            if i in work.whole:
                req = replace(req, segmentation=None)
            out.append(Packet(result, req, packet.rx))
        elif i in placed:
            out.append(Packet(placed[i], packet.tx, packet.rx))  # gathered, nothing to do
        else:
            out.append(packet)
        sources.append(i)
    return TxOutcome(out, work.drops, work.done, sources)


def transmit_framed(packets: Sequence[Packet], tasks: Sequence[TaskSet]) -> FramedOutcome:
    """``transmit`` for a device that puts frames on a cable: each frame behind its
    4-byte little-endian length, as a few contiguous spans in input order.

    A packet whose residual request still names a task is reported in
    ``residual`` and left out (the caller decides; a device drops it).
    """
    packets = _flat(packets)
    work = _classify(packets, tasks)
    _run(packets, work, FRAMING_BYTES)
    dropped = {i for i, _ in work.drops}
    batch = work.batch
    if batch is not None:
        batch.write_length_prefixes()
    chunks: list[Buffer] = []
    lengths: list[int] = []
    sent: list[int] = []
    residual: list[int] = []
    run_start = -1  # the first ``cut`` index of a run of consecutive cut inputs
    run_end = -1
    pack = _PREFIX.pack
    for i, packet in enumerate(packets):
        if i in dropped:
            continue
        k = work.position.get(i)
        if k is not None and batch is not None:
            if run_start < 0:
                run_start = k
            run_end = k + 1
            seg = packet.tx.segmentation
            assert seg is not None
            if packet.tx.tasks() - {Task.CHECKSUM, seg.task}:
                residual.append(i)  # segmented, but something else is still asked for
                continue
            lengths += batch.frame_lengths(k)
            sent.append(i)
            continue
        if run_start >= 0 and batch is not None:
            chunks += batch.wire_chunks_of(run_start, run_end)
            run_start = -1
        frame: Buffer | None = work.filled.get(i)
        left = packet.tx.tasks()
        if frame is not None:
            left = left - _FILLED_WHOLE if i in work.whole else left - _FILLED
        if left:
            residual.append(i)
            continue
        if frame is None:
            frame = packet.data
        chunks.append(pack(len(frame)))
        chunks.append(frame)
        lengths.append(len(frame))
        sent.append(i)
    if run_start >= 0 and batch is not None:
        chunks += batch.wire_chunks_of(run_start, run_end)
    return FramedOutcome(chunks, lengths, sent, residual, work.drops, work.done)


def _transmit_mapped(
    packets: Sequence[Packet], tasks: TaskSet | Sequence[TaskSet], rows: RowSource
) -> TxOutcome:
    """``transmit`` building its frames in lent rows; see the module doc."""
    per_packet = None if isinstance(tasks, Set) else tasks
    inputs = list(packets)
    for i, packet in enumerate(packets):
        seg = packet.tx.segmentation
        if packet.head and seg is not None:
            allowed = tasks if per_packet is None else per_packet[i]
            if seg.task in allowed:
                inputs[i] = packet.flat()  # planned and cut as one piece
    work = _classify(inputs, tasks)
    _cut(inputs, work, 0, rows)
    # L4-only fills and gathered frames go to rows; a fill of the IPv4 header, or one
    # whose offsets are wrong, takes the copying path (and its checks).
    mapped: list[int] = []
    requests: list[ChecksumRequest] = []
    copied: list[int] = []
    copied_jobs: list[FillJob] = []
    for i, job in zip(work.fills, work.jobs, strict=True):
        l4 = job.l4
        if l4 is not None and not job.ipv4_header and request_valid(len(packets[i]), l4):
            mapped.append(i)
            requests.append(l4)
        else:
            copied.append(i)
            copied_jobs.append(FillJob(packets[i].frame(), l4, job.ipv4_header))
    busy = set(work.cut) | set(work.fills)
    gathered = [i for i, p in enumerate(packets) if p.head and i not in busy]
    built = _gather(packets, mapped + gathered, rows)
    placed: dict[int, memoryview] = {}
    if built is None:
        for i, l4 in zip(mapped, requests, strict=True):
            copied.append(i)
            copied_jobs.append(FillJob(packets[i].frame(), l4))
    else:
        matrix, views = built
        wanted = [(l4, False) for l4 in requests] + [(None, False)] * len(gathered)
        reasons = fill_rows_in_place(matrix, [len(v) for v in views], wanted)
        assert not any(reasons)  # offsets checked above, no IPv4 header to parse
        if mapped:
            work.done[Task.CHECKSUM] += len(mapped)
        placed = dict(zip(mapped + gathered, views, strict=True))
        for i in mapped:
            work.filled[i] = placed.pop(i)
    work.fills, work.jobs = copied, copied_jobs
    _fill(work)
    return _outcome(packets, work, placed)


def _gather(
    packets: Sequence[Packet], chosen: list[int], rows: RowSource
) -> tuple[npt.NDArray[np.uint8], list[memoryview]] | None:
    """Copy each chosen packet's pieces into a lent row: the rows, and each frame's view."""
    if not chosen:
        return None
    lengths = [len(packets[i]) for i in chosen]
    matrix = rows(len(chosen), max(lengths))
    if matrix is None or not rows_fit(matrix, len(chosen), max(lengths)):
        return None
    stride = matrix.shape[1]
    mem = matrix.reshape(-1).data
    views: list[memoryview] = []
    for k, (i, size) in enumerate(zip(chosen, lengths, strict=True)):
        packet = packets[i]
        at = k * stride
        split = at + len(packet.head)
        _put(mem, at, split, packet.head)
        _put(mem, split, at + size, packet.data)
        views.append(mem[at : at + size])
    return matrix, views


def _put(mem: memoryview, begin: int, end: int, piece: Buffer) -> None:
    """``mem[begin:end] = piece`` for a piece of any buffer format (a view of shorts...)."""
    try:
        mem[begin:end] = piece
    except (TypeError, ValueError):
        mem[begin:end] = memoryview(piece).cast("B")


_FILLED = frozenset({Task.CHECKSUM})
_FILLED_WHOLE = frozenset({Task.CHECKSUM, Task.TCP_SEGMENTATION, Task.UDP_SEGMENTATION})


def _flat(packets: Sequence[Packet]) -> Sequence[Packet]:
    """Frames in one piece: the engine works on whole frames (a gathered one is joined)."""
    if any(p.head for p in packets):
        return [p.flat() for p in packets]
    return packets


def _checksum_done(req: TxRequest, cache: dict[TxRequest, TxRequest]) -> TxRequest:
    """``req`` without its checksum parts; one ``replace`` per distinct request of a batch."""
    try:
        return cache[req]
    except KeyError:
        residual = cache[req] = replace(req, checksum=None, ipv4_header_checksum=False)
        return residual


def _fill_each(jobs: list[FillJob]) -> list[bytes | DropReason]:
    """``fill_batch``, and should the batch path fail on some input, each job on its own,
    so that one bad job costs only itself."""
    try:
        return fill_batch(jobs)
    except (ValueError, IndexError, struct.error, OverflowError):
        pass
    out: list[bytes | DropReason] = []
    for job in jobs:
        try:
            out += fill_batch([job])
        except (ValueError, IndexError, struct.error, OverflowError):
            out.append(DropReason.MALFORMED_FRAME)
    return out
