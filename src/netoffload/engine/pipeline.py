"""Several tasks on one batch in one pass: what a device (or the host fallback) runs.

``transmit`` does, for each packet, the requested tasks (``packet.tx``) that
are in ``tasks``, and leaves the rest in the output packet's ``.tx`` (the
residual request). Segmentation fills every checksum of the segments it
makes; segmentation requested but not allowed leaves the checksum request in
the residual too (a device cannot checksum segments it never made).

``receive`` verifies checksums (CHECKSUM) and coalesces (TCP_ASSEMBLY /
UDP_ASSEMBLY), filling ``RxInfo``. Assembly checks checksums itself, as
Linux GRO does; without CHECKSUM a frame assembly validated is reported as
VERIFIED (Linux marks it CHECKSUM_UNNECESSARY), other frames NOT_CHECKED.
A malformed frame is never dropped on receive: it passes through unmerged
with ``NO_INFO``.

Neither function raises on bad input: bad packets are dropped with a
``DropReason`` (transmit) or passed through (receive).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence, Set
from dataclasses import dataclass, field, replace
from typing import TypeAlias

from netoffload.engine.checksum import FillJob, VerifyResult, fill_batch, verify_batch
from netoffload.engine.dissect import IPPROTO_TCP
from netoffload.engine.gro import Assembled, assemble
from netoffload.engine.gso import GsoError, segment_request
from netoffload.offload.extension import NO_INFO, NO_REQUEST, ChecksumStatus, RxInfo, TxRequest
from netoffload.offload.packet import Packet
from netoffload.offload.stats import DropReason
from netoffload.offload.task import Task

Buffer: TypeAlias = bytes | bytearray | memoryview
TaskSet: TypeAlias = frozenset[Task] | Set[Task]


@dataclass(slots=True)
class TxOutcome:
    """Result of ``transmit``."""

    packets: list[Packet]  # ready frames; each .tx holds the RESIDUAL request
    drops: list[tuple[int, DropReason]]  # (index of the input packet, reason)
    tasks: Counter[Task] = field(default_factory=Counter)  # input packets each task was done for


@dataclass(slots=True)
class RxOutcome:
    """Result of ``receive``."""

    packets: list[Packet]  # frames with .rx filled (coalesced where assembly is enabled)
    drops: list[tuple[int, DropReason]]
    tasks: Counter[Task] = field(default_factory=Counter)


_SEGMENTATION = (Task.TCP_SEGMENTATION, Task.UDP_SEGMENTATION)
# Every (IPv4 header, L4) verify outcome, built once: RxInfo is immutable.
_RX_INFO = {
    (h, l4): RxInfo(ipv4_header=ChecksumStatus(h), l4=ChecksumStatus(l4))
    for h in ChecksumStatus
    for l4 in ChecksumStatus
}


def _checksum_done(req: TxRequest, cache: dict[TxRequest, TxRequest]) -> TxRequest:
    """``req`` without its checksum parts; one ``replace`` per distinct request of a batch."""
    try:
        return cache[req]
    except KeyError:
        residual = cache[req] = replace(req, checksum=None, ipv4_header_checksum=False)
        return residual


def transmit(packets: Sequence[Packet], tasks: TaskSet) -> TxOutcome:
    """Do the allowed requested tasks of every packet; see the module docstring."""
    slots: list[list[Packet] | None] = [None] * len(packets)
    drops: list[tuple[int, DropReason]] = []
    done: Counter[Task] = Counter()
    fills: list[int] = []
    jobs: list[FillJob] = []
    checksum_allowed = Task.CHECKSUM in tasks  # once, not per packet
    for i, packet in enumerate(packets):
        req = packet.tx
        seg = req.segmentation
        wants_csum = req.checksum is not None or req.ipv4_header_checksum
        if seg is not None and seg.task in tasks:
            try:
                frames = segment_request(packet.data, req)
            except GsoError as exc:
                drops.append((i, exc.reason))
                continue
            except (ValueError, IndexError, struct.error):
                drops.append((i, DropReason.MALFORMED_FRAME))
                continue
            residual = replace(req, checksum=None, ipv4_header_checksum=False, segmentation=None)
            slots[i] = [Packet(f, residual, packet.rx) for f in frames]
            done[seg.task] += 1
            if wants_csum:
                done[Task.CHECKSUM] += 1
        elif seg is None and wants_csum and checksum_allowed:
            fills.append(i)
            jobs.append(FillJob(packet.data, req.checksum, req.ipv4_header_checksum))
        else:
            slots[i] = [packet]
    if jobs:
        try:
            results = fill_batch(jobs)
        except (ValueError, IndexError, struct.error):
            results = [DropReason.MALFORMED_FRAME] * len(jobs)
        residuals: dict[TxRequest, TxRequest] = {}
        filled = 0
        for i, result in zip(fills, results, strict=True):
            if isinstance(result, DropReason):
                drops.append((i, result))
                continue
            packet = packets[i]
            slots[i] = [Packet(result, _checksum_done(packet.tx, residuals), packet.rx)]
            filled += 1
        if filled:
            done[Task.CHECKSUM] += filled
    drops.sort()
    out = [p for slot in slots if slot is not None for p in slot]
    return TxOutcome(out, drops, done)


def receive(frames: Sequence[Buffer], tasks: TaskSet) -> RxOutcome:
    """Verify and/or coalesce a received batch; see the module docstring."""
    checksum = Task.CHECKSUM in tasks
    tcp = Task.TCP_ASSEMBLY in tasks
    udp = Task.UDP_ASSEMBLY in tasks
    done: Counter[Task] = Counter()
    if not frames:
        return RxOutcome([], [], done)
    verified = verify_batch(frames) if (checksum or tcp or udp) else None
    if not (tcp or udp):
        if verified is None:
            packets = [Packet(frame, NO_REQUEST, NO_INFO) for frame in frames]
        else:
            infos = map(
                _RX_INFO.__getitem__,
                zip(verified.ipv4_header.tolist(), verified.l4.tolist(), strict=True),
            )
            packets = [Packet(f, NO_REQUEST, info) for f, info in zip(frames, infos, strict=True)]
        if checksum:
            done[Task.CHECKSUM] = len(frames)
        return RxOutcome(packets, [], done)
    assert verified is not None
    units = assemble(frames, tcp=tcp, udp=udp, verified=verified)
    packets = [_rx_packet(u, verified, checksum) for u in units]
    if checksum:
        done[Task.CHECKSUM] = len(frames)
    for u in units:
        if u.segments > 1:
            done[Task.TCP_ASSEMBLY if u.protocol == IPPROTO_TCP else Task.UDP_ASSEMBLY] += (
                u.segments
            )
    return RxOutcome(packets, [], done)


def _rx_packet(unit: Assembled, verified: VerifyResult, checksum: bool) -> Packet:
    if unit.segments > 1:
        info = RxInfo(
            ipv4_header=(
                ChecksumStatus.VERIFIED
                if checksum and unit.version == 4
                else ChecksumStatus.NOT_CHECKED
            ),
            l4=ChecksumStatus.VERIFIED,
            checksum_partial=unit.checksum_partial,
            assembled=unit.assembled,
            segments=unit.segments,
        )
        return Packet(unit.data, NO_REQUEST, info)
    hdr, l4 = verified.status(unit.index)
    if checksum:
        info = _RX_INFO[hdr, l4]
    elif unit.validated:
        # What Linux's GRO validation marks CHECKSUM_UNNECESSARY (a zero UDP/IPv4 sum too).
        absent = l4 is ChecksumStatus.ABSENT
        info = RxInfo(l4=ChecksumStatus.ABSENT if absent else ChecksumStatus.VERIFIED)
    else:
        info = NO_INFO
    return Packet(unit.data, NO_REQUEST, info)
