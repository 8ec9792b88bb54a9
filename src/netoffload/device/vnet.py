"""Receive side of virtio_net_hdr shared by TAP and AF_PACKET: untrusted header -> RxInfo.

A header read from the kernel (or from anything pretending to be it) is
checked with the kernel's own ``virtio_net_hdr_to_skb`` rules
(``netoffload.engine.validate.check_vnet_hdr``) before any field is used;
a header that fails is a counted drop, never an exception.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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

Validator = Callable[[VirtioNetHdr, memoryview], DropReason | None]
MIN_FRAME = 14  # an Ethernet header


def kernel_validator() -> Validator:
    """The engine's implementation of the kernel's header rules (imported on first use)."""
    from netoffload.engine.validate import check_vnet_hdr

    validator: Validator = check_vnet_hdr
    return validator


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


class RxDecoder:
    """Turns (header bytes, frame) into a ``Packet``, counting every drop in ``stats``.

    A flow's packets carry the same header bytes, so parsed headers and the
    ``RxInfo`` made from them are cached by those bytes (the validation,
    which depends on the frame, still runs for every packet).
    """

    __slots__ = ("_headers", "_infos", "_plain", "_validate", "hdr_size", "stats")

    def __init__(self, stats: DeviceStats, hdr_size: int = VirtioNetHdr.SIZE) -> None:
        self.stats = stats
        self.hdr_size = hdr_size
        self._validate: Validator | None = None
        self._headers: dict[bytes, VirtioNetHdr] = {}
        self._infos: dict[tuple[bytes, int], RxInfo] = {}
        self._plain = bytes(hdr_size)

    def _header(self, raw: bytes) -> VirtioNetHdr | None:
        hdr = self._headers.get(raw)
        if hdr is None:
            try:
                hdr = VirtioNetHdr.unpack(raw, self.hdr_size)
            except VirtioHdrError:
                return None
            if len(self._headers) >= _CACHE_LIMIT:
                self._headers.clear()
            self._headers[raw] = hdr
        return hdr

    def _info(self, raw: bytes, hdr: VirtioNetHdr, segments: int) -> RxInfo | None:
        key = (raw, segments)
        info = self._infos.get(key)
        if info is None:
            try:
                info = hdr.to_rx_info(segments)
            except VirtioHdrError:
                return None
            if len(self._infos) >= _CACHE_LIMIT:
                self._infos.clear()
            self._infos[key] = info
        return info

    def decode(self, hdr_bytes: memoryview, frame: memoryview, queue: int = 0) -> Packet | None:
        """The packet, or None when the header or frame is unacceptable (counted)."""
        stats = self.stats
        raw = bytes(hdr_bytes)
        hdr = self._header(raw) if len(raw) == self.hdr_size else None
        if hdr is None:
            stats.drop(DropReason.BAD_VNET_HDR)
            return None
        if len(frame) < MIN_FRAME:
            stats.drop(DropReason.MALFORMED_FRAME)
            return None
        if raw != self._plain:
            if self._validate is None:
                self._validate = kernel_validator()
            reason = self._validate(hdr, frame)
            if reason is not None:
                stats.drop(reason)
                return None
            found = self._info(raw, hdr, segments_of(hdr, frame))
            if found is None:
                stats.drop(DropReason.BAD_VNET_HDR)
                return None
            info = found
            if info.assembled is not None:
                udp = info.assembled.task is Task.UDP_SEGMENTATION
                stats.task_done(Task.UDP_ASSEMBLY if udp else Task.TCP_ASSEMBLY)
            if hdr.flags & (VirtioFlags.NEEDS_CSUM | VirtioFlags.DATA_VALID):
                stats.task_done(Task.CHECKSUM)
        else:
            info = _PLAIN_INFO
        if queue:
            info = dataclasses.replace(info, queue=queue)
        stats.rx_packets += 1
        stats.rx_bytes += len(frame)
        return Packet(frame, rx=info)
