"""Several tasks on one batch in one pass: what a device (or the host fallback) runs.

``transmit`` does, for each packet, the requested tasks (``packet.tx``) that
are allowed for it, and leaves the rest in the output packet's ``.tx`` (the
residual request). The allowed tasks are one set for the whole batch or one
set per packet (what per-packet admission, ``engine.admit``, decided).
Segmentation fills every checksum of the segments it makes; segmentation
requested but not allowed leaves the checksum request in the residual too
(a device cannot checksum segments it never made).

``receive`` verifies checksums (CHECKSUM) and coalesces (TCP_ASSEMBLY /
UDP_ASSEMBLY), filling ``RxInfo``. Assembly checks checksums itself, as
Linux GRO does; without CHECKSUM a frame assembly validated is reported as
VERIFIED (Linux marks it CHECKSUM_UNNECESSARY), other frames NOT_CHECKED.
A malformed frame is never dropped on receive: it passes through unmerged
with ``NO_INFO``. Given the ``RxInfo`` a device already reported for each
frame, ``receive`` keeps what the device found (its checksum verdicts, flow
hash, queue, mark, filter verdict) and adds only what it did itself.

Neither function raises on bad input: a bad packet is dropped with a
``DropReason`` (transmit) or passed through (receive), and costs only
itself, never the rest of its batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence, Set
from dataclasses import dataclass, field, replace
from typing import TypeAlias

import numpy as np

from netoffload.engine.admit import Limits
from netoffload.engine.checksum import VerifyResult, verify_batch
from netoffload.engine.dissect import IPPROTO_TCP, IPPROTO_UDP, DissectError, dissect
from netoffload.engine.gro import GRO_MAX_SIZE, Assembled, assemble, verify_and_assemble
from netoffload.engine.txpath import (
    FRAMING_BYTES,
    FramedOutcome,
    TxOutcome,
    transmit,
    transmit_framed,
)
from netoffload.offload.caps import ChecksumFlags, IpVersions
from netoffload.offload.extension import NO_INFO, NO_REQUEST, ChecksumStatus, RxInfo
from netoffload.offload.packet import Packet
from netoffload.offload.stats import DropReason
from netoffload.offload.task import Task

Buffer: TypeAlias = bytes | bytearray | memoryview
TaskSet: TypeAlias = frozenset[Task] | Set[Task]

__all__ = [
    "FRAMING_BYTES",
    "FramedOutcome",
    "RxOutcome",
    "TxOutcome",
    "receive",
    "transmit",
    "transmit_framed",
]


@dataclass(slots=True)
class RxOutcome:
    """Result of ``receive``; ``sources[k]`` is the first input frame of ``packets[k]``."""

    packets: list[Packet]  # frames with .rx filled (coalesced where assembly is enabled)
    drops: list[tuple[int, DropReason]]
    tasks: Counter[Task] = field(default_factory=Counter)
    sources: list[int] = field(default_factory=list)


# Every (IPv4 header, L4) verify outcome, built once: RxInfo is immutable.
_RX_INFO = {
    (h, l4): RxInfo(ipv4_header=ChecksumStatus(h), l4=ChecksumStatus(l4))
    for h in ChecksumStatus
    for l4 in ChecksumStatus
}
_NOT_CHECKED = int(ChecksumStatus.NOT_CHECKED)
_VERIFIED = int(ChecksumStatus.VERIFIED)


def receive(
    frames: Sequence[Buffer],
    tasks: TaskSet | Limits,
    *,
    infos: Sequence[RxInfo] | None = None,
) -> RxOutcome:
    """Verify and/or coalesce a received batch; see the module docstring.

    ``tasks`` is the set of receive tasks to do, or the ``Limits`` of enabled
    records (checksums per protocol, assembly per IP version, size and
    segment limits). ``infos`` is what the device reported for each frame.
    """
    limits = tasks if isinstance(tasks, Limits) else Limits.unlimited(tasks)
    checksum = Task.CHECKSUM in limits.tasks
    tcp = limits.tcp_assembly is not None
    udp = limits.udp_assembly is not None
    done: Counter[Task] = Counter()
    n = len(frames)
    if not n:
        return RxOutcome([], [], done, [])
    full = _FULL_RX if checksum else ChecksumFlags.NONE
    if (tcp or udp) and infos is None and limits.rx_checksum & _FULL_RX == full:
        fast = _receive_assembled(frames, limits, tcp=tcp, udp=udp, checksum=checksum)
        if fast is not None:
            return fast
    raw = verify_batch(frames) if (checksum or tcp or udp) else None
    reported: VerifyResult | None = None
    if raw is not None and checksum:
        reported = _mask_protocols(frames, raw, limits.rx_checksum)
    if infos is not None and raw is not None:
        raw = _with_device_verdicts(raw, infos)
        if reported is not None:
            reported = _with_device_verdicts(reported, infos)
    if not (tcp or udp):
        if reported is None:
            packets = [Packet(f, NO_REQUEST, NO_INFO) for f in frames]
        else:
            pairs = zip(reported.ipv4_header.tolist(), reported.l4.tolist(), strict=True)
            packets = [
                Packet(f, NO_REQUEST, _RX_INFO[p]) for f, p in zip(frames, pairs, strict=True)
            ]
        if checksum:
            done[Task.CHECKSUM] = n
        if infos is not None:
            packets = [_merge(p, info) for p, info in zip(packets, infos, strict=True)]
        return RxOutcome(packets, [], done, list(range(n)))
    assert raw is not None
    gro_view = _assembly_view(frames, raw, limits)
    segment_caps = [c.max_segments for c in (limits.tcp_assembly, limits.udp_assembly) if c]
    size_caps = [c.max_size_bytes for c in (limits.tcp_assembly, limits.udp_assembly) if c]
    units = assemble(
        frames,
        tcp=tcp,
        udp=udp,
        verified=gro_view,
        max_size=min([GRO_MAX_SIZE, *size_caps]),
        max_segments=min(segment_caps) if segment_caps else None,
    )
    header_checked = checksum and bool(limits.rx_checksum & ChecksumFlags.IPV4_HEADER)
    packets = [_rx_packet(u, reported, header_checked) for u in units]
    sources = [u.index for u in units]
    if infos is not None:
        packets = [_merge(p, infos[i]) for p, i in zip(packets, sources, strict=True)]
    if checksum:
        done[Task.CHECKSUM] = n
    for u in units:
        if u.segments > 1:
            done[Task.TCP_ASSEMBLY if u.protocol == IPPROTO_TCP else Task.UDP_ASSEMBLY] += (
                u.segments
            )
    return RxOutcome(packets, [], done, sources)


def _receive_assembled(
    frames: Sequence[Buffer], limits: Limits, *, tcp: bool, udp: bool, checksum: bool
) -> RxOutcome | None:
    """Verify and assemble in one pass over the bytes, when nothing is masked or merged in
    (every checksum and both IP versions, no device verdicts): the common case."""
    both = IpVersions.IPV4 | IpVersions.IPV6
    caps = [c for c in (limits.tcp_assembly, limits.udp_assembly) if c is not None]
    if any(c.versions & both != both for c in caps):
        return None
    verified, units = verify_and_assemble(
        frames,
        tcp=tcp,
        udp=udp,
        max_size=min([GRO_MAX_SIZE, *(c.max_size_bytes for c in caps)]),
        max_segments=min(c.max_segments for c in caps),
    )
    reported = verified if checksum else None
    packets = [_rx_packet(u, reported, checksum) for u in units]
    done: Counter[Task] = Counter()
    if checksum:
        done[Task.CHECKSUM] = len(frames)
    for u in units:
        if u.segments > 1:
            done[Task.TCP_ASSEMBLY if u.protocol == IPPROTO_TCP else Task.UDP_ASSEMBLY] += (
                u.segments
            )
    return RxOutcome(packets, [], done, [u.index for u in units])


_FULL_RX = (
    ChecksumFlags.IPV4_HEADER
    | ChecksumFlags.TCP_IPV4
    | ChecksumFlags.UDP_IPV4
    | ChecksumFlags.TCP_IPV6
    | ChecksumFlags.UDP_IPV6
)
_RX_FLAG = {
    (IPPROTO_TCP, 4): ChecksumFlags.TCP_IPV4,
    (IPPROTO_TCP, 6): ChecksumFlags.TCP_IPV6,
    (IPPROTO_UDP, 4): ChecksumFlags.UDP_IPV4,
    (IPPROTO_UDP, 6): ChecksumFlags.UDP_IPV6,
}


def _mask_protocols(
    frames: Sequence[Buffer], verified: VerifyResult, flags: ChecksumFlags
) -> VerifyResult:
    """Verdicts only for the checksums the enabled record covers; the rest NOT_CHECKED."""
    if flags & _FULL_RX == _FULL_RX:
        return verified
    hdr, l4 = verified.ipv4_header.copy(), verified.l4.copy()
    if not flags & ChecksumFlags.IPV4_HEADER:
        hdr[:] = _NOT_CHECKED
    for i in np.flatnonzero(l4 != _NOT_CHECKED).tolist():
        try:
            d = dissect(frames[i], l4=False)
        except DissectError:
            l4[i] = _NOT_CHECKED
            continue
        if not flags & _RX_FLAG.get((d.protocol, d.version), ChecksumFlags.NONE):
            l4[i] = _NOT_CHECKED
    return VerifyResult(hdr, l4)


def _with_device_verdicts(verified: VerifyResult, infos: Sequence[RxInfo]) -> VerifyResult:
    """The device's checksum verdicts where it gave one, this pass's elsewhere.

    A device's VERIFIED stands even where this pass would say otherwise: a
    local sender's partial checksum holds only the pseudo-header sum.
    """
    unchecked = ChecksumStatus.NOT_CHECKED
    given = [
        i
        for i, info in enumerate(infos)
        if info.l4 is not unchecked or info.ipv4_header is not unchecked
    ]
    if not given:
        return verified
    hdr, l4 = verified.ipv4_header.copy(), verified.l4.copy()
    for i in given:
        info = infos[i]
        if info.l4 is not unchecked:
            l4[i] = int(info.l4)
        if info.ipv4_header is not unchecked:
            hdr[i] = int(info.ipv4_header)
    return VerifyResult(hdr, l4)


def _assembly_view(
    frames: Sequence[Buffer], verified: VerifyResult, limits: Limits
) -> VerifyResult:
    """The verdicts assembly sees: frames of an IP version no enabled record covers look
    unvalidated, so GRO passes them up unmerged without touching held flows."""
    versions = IpVersions.NONE
    for caps in (limits.tcp_assembly, limits.udp_assembly):
        if caps is not None:
            versions |= caps.versions
    both = IpVersions.IPV4 | IpVersions.IPV6
    if versions & both == both:
        return verified
    l4 = verified.l4.copy()
    for i in np.flatnonzero(l4 == _VERIFIED).tolist():
        try:
            d = dissect(frames[i], l4=False)
        except DissectError:
            continue
        wanted = IpVersions.IPV4 if d.version == 4 else IpVersions.IPV6
        caps = limits.tcp_assembly if d.protocol == IPPROTO_TCP else limits.udp_assembly
        if caps is None or not caps.versions & wanted:
            l4[i] = _NOT_CHECKED
    return VerifyResult(verified.ipv4_header, l4)


_MERGED: dict[tuple[RxInfo, RxInfo], RxInfo] = {}
_MERGED_LIMIT = 4096


def _merge(packet: Packet, device: RxInfo) -> Packet:
    """``packet`` with the device's findings kept under what this pass added.

    A flow's packets repeat a handful of (device, host) pairs: each merge is
    worked out once.
    """
    if device is NO_INFO or device == NO_INFO:
        return packet
    mine = packet.rx
    key = (mine, device)
    info = _MERGED.get(key)
    if info is None:
        info = replace(
            device,
            ipv4_header=mine.ipv4_header,
            l4=mine.l4,
            checksum_partial=mine.checksum_partial or device.checksum_partial,
            assembled=mine.assembled or device.assembled,
            segments=max(mine.segments, device.segments),
        )
        if len(_MERGED) >= _MERGED_LIMIT:
            _MERGED.clear()
        _MERGED[key] = info
    return Packet(packet.data, packet.tx, info)


def _rx_packet(unit: Assembled, reported: VerifyResult | None, header_checked: bool) -> Packet:
    """The packet GRO passed up, with its checksum verdicts.

    ``reported`` holds the verdicts of the CHECKSUM task (None when it is not
    enabled); a frame GRO validated and that task did not cover is VERIFIED,
    as Linux marks it CHECKSUM_UNNECESSARY (a zero UDP/IPv4 sum: ABSENT).
    """
    if unit.segments > 1:
        info = RxInfo(
            ipv4_header=(
                ChecksumStatus.VERIFIED
                if header_checked and unit.version == 4
                else ChecksumStatus.NOT_CHECKED
            ),
            l4=ChecksumStatus.VERIFIED,
            checksum_partial=unit.checksum_partial,
            assembled=unit.assembled,
            segments=unit.segments,
        )
        return Packet(unit.data, NO_REQUEST, info)
    hdr = l4 = ChecksumStatus.NOT_CHECKED
    if reported is not None:
        hdr, l4 = reported.status(unit.index)
    if unit.validated and l4 is ChecksumStatus.NOT_CHECKED:
        absent = unit.protocol == IPPROTO_UDP and _udp_zero(unit.data)
        l4 = ChecksumStatus.ABSENT if absent else ChecksumStatus.VERIFIED
    return Packet(unit.data, NO_REQUEST, _RX_INFO[hdr, l4])


def _udp_zero(frame: Buffer) -> bool:
    try:
        d = dissect(frame)
    except DissectError:
        return False
    return len(frame) >= d.l4 + 8 and frame[d.l4 + 6] == 0 and frame[d.l4 + 7] == 0
