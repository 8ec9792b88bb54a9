"""Receive side of virtio_net_hdr shared by TAP and AF_PACKET: untrusted header -> RxInfo.

A header read from the kernel (or from anything pretending to be it) is
checked with the kernel's own ``virtio_net_hdr_to_skb`` rules
(``netoffload.engine.validate.check_vnet_hdr``) before any field is used;
a header that fails is a counted drop, never an exception.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from netoffload.offload import (
    DeviceStats,
    DropReason,
    GsoType,
    Packet,
    RxInfo,
    Task,
    VirtioFlags,
    VirtioHdrError,
    VirtioNetHdr,
)

if TYPE_CHECKING:
    from netoffload.engine.validate import VnetPlan

Buffer: TypeAlias = bytes | bytearray | memoryview
Validator = Callable[[VirtioNetHdr, memoryview], DropReason | None]
MIN_FRAME = 14  # an Ethernet header


def kernel_validator() -> Validator:
    """The engine's implementation of the kernel's header rules (imported on first use)."""
    from netoffload.engine.validate import check_vnet_hdr

    validator: Validator = check_vnet_hdr
    return validator


def plan_vnet_hdr_or_reason(hdr: VirtioNetHdr, frame: Buffer) -> VnetPlan | DropReason:
    """The kernel's plan for a header it is handed (``engine.validate``), or why it refuses."""
    from netoffload.engine.validate import VnetHdrRejected, plan_vnet_hdr

    try:
        return plan_vnet_hdr(hdr, frame)
    except VnetHdrRejected as exc:
        return exc.reason


def segments_of(hdr: VirtioNetHdr, frame: memoryview) -> int:
    """How many segments a received super-packet stands for (1 when it is not one)."""
    kind = hdr.gso_kind
    if kind is None or kind is GsoType.NONE or hdr.gso_size == 0 or not hdr.needs_csum:
        return 1
    start = hdr.csum_start
    if kind in (GsoType.TCPV4, GsoType.TCPV6):
        if start + 13 > len(frame):
            return 1
        l4 = (frame[start + 12] >> 4) * 4
    else:
        l4 = 8
    payload = len(frame) - start - l4
    return max(1, -(-payload // hdr.gso_size))


_PLAIN_INFO = VirtioNetHdr().to_rx_info()
_CACHE_LIMIT = 256
_TCP_KINDS = (GsoType.TCPV4, GsoType.TCPV6)
# Counter keys, looked up once: ``Task.label`` is a property and this runs per packet.
_CHECKSUM = Task.CHECKSUM.label
_TCP_ASSEMBLY = Task.TCP_ASSEMBLY.label
_UDP_ASSEMBLY = Task.UDP_ASSEMBLY.label
_Made: TypeAlias = tuple[RxInfo, tuple[str, ...]]


class _HeaderPlan:
    """One distinct header's bytes, worked out once: the parsed header, how to count a
    packet's segments, and the ``RxInfo`` (with the task counters it bumps) per count."""

    __slots__ = ("gso_size", "hdr", "made", "plain", "start", "tcp")

    def __init__(self, hdr: VirtioNetHdr, plain: bool) -> None:
        self.hdr = hdr
        self.plain = plain
        self.made: dict[tuple[int, int], _Made] = {}
        self.start = hdr.csum_start
        self.gso_size = hdr.gso_size
        kind = hdr.gso_kind
        # None: every packet with this header is one segment (as in ``segments_of``).
        self.tcp: bool | None = None
        if kind is not None and kind is not GsoType.NONE and hdr.gso_size and hdr.needs_csum:
            self.tcp = kind in _TCP_KINDS

    def segments(self, frame: memoryview) -> int:
        """``segments_of(self.hdr, frame)`` without re-reading the header's fields."""
        tcp = self.tcp
        if tcp is None:
            return 1
        start = self.start
        if tcp:
            if start + 13 > len(frame):
                return 1
            l4 = (frame[start + 12] >> 4) * 4
        else:
            l4 = 8
        payload = len(frame) - start - l4
        return max(1, -(-payload // self.gso_size))

    def make(self, segments: int, queue: int) -> _Made | None:
        """The ``RxInfo`` for a packet of ``segments`` on ``queue`` and the task counters it
        bumps (cached); None when the header cannot be expressed as one."""
        key = (segments, queue)
        made = self.made.get(key)
        if made is None:
            if self.plain:
                info = _PLAIN_INFO
                labels: tuple[str, ...] = ()
            else:
                hdr = self.hdr
                try:
                    info = hdr.to_rx_info(segments)
                except VirtioHdrError:
                    return None
                labels = ()
                if info.assembled is not None:
                    udp = info.assembled.task is Task.UDP_SEGMENTATION
                    labels = (_UDP_ASSEMBLY if udp else _TCP_ASSEMBLY,)
                if hdr.flags & (VirtioFlags.NEEDS_CSUM | VirtioFlags.DATA_VALID):
                    labels += (_CHECKSUM,)
            if queue:
                info = dataclasses.replace(info, queue=queue)
            if len(self.made) >= _CACHE_LIMIT:
                self.made.clear()
            made = self.made[key] = (info, labels)
        return made


class RxDecoder:
    """Turns (header bytes, frame) into a ``Packet``, counting every drop in ``stats``.

    A flow's packets carry the same header bytes, so everything that depends
    on the header alone (its parse, the ``RxInfo``, the counters it bumps) is
    worked out once per distinct header; the validation, which depends on the
    frame too, still runs for every packet.
    """

    __slots__ = ("_plain", "_plans", "_validate", "hdr_size", "stats")

    def __init__(self, stats: DeviceStats, hdr_size: int = VirtioNetHdr.SIZE) -> None:
        self.stats = stats
        self.hdr_size = hdr_size
        self._validate: Validator | None = None
        self._plans: dict[bytes, _HeaderPlan] = {}
        self._plain = bytes(hdr_size)

    def _plan(self, raw: bytes) -> _HeaderPlan | None:
        if len(raw) != self.hdr_size:
            return None
        try:
            hdr = VirtioNetHdr.unpack(raw, self.hdr_size)
        except VirtioHdrError:
            return None
        if len(self._plans) >= _CACHE_LIMIT:
            self._plans.clear()
        plan = self._plans[raw] = _HeaderPlan(hdr, raw == self._plain)
        return plan

    def decode(self, hdr_bytes: memoryview, frame: memoryview, queue: int = 0) -> Packet | None:
        """The packet, or None when the header or frame is unacceptable (counted)."""
        stats = self.stats
        raw = bytes(hdr_bytes)
        plan = self._plans.get(raw) or self._plan(raw)
        if plan is None:
            stats.drop(DropReason.BAD_VNET_HDR)
            return None
        if len(frame) < MIN_FRAME:
            stats.drop(DropReason.MALFORMED_FRAME)
            return None
        if plan.plain:
            made = plan.made.get((1, queue)) or plan.make(1, queue)
        else:
            validate = self._validate
            if validate is None:
                validate = self._validate = kernel_validator()
            reason = validate(plan.hdr, frame)
            if reason is not None:
                stats.drop(reason)
                return None
            segments = plan.segments(frame)
            made = plan.made.get((segments, queue)) or plan.make(segments, queue)
        if made is None:
            stats.drop(DropReason.BAD_VNET_HDR)
            return None
        info, labels = made
        if labels:
            tasks = stats.tasks
            for label in labels:
                tasks[label] += 1
        stats.rx_packets += 1
        stats.rx_bytes += len(frame)
        return Packet(frame, rx=info)
