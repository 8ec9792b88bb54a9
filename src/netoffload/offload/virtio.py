"""virtio_net_hdr: the Linux wire form of the packet extension.

Layouts (include/uapi/linux/virtio_net.h)::

    legacy (10)  u8 flags, u8 gso_type, u16 hdr_len, u16 gso_size,
                 u16 csum_start, u16 csum_offset
    v1 (12)      + u16 num_buffers
    v1_hash (20) + u32 hash_value, u16 hash_report, u16 padding

Unpacking checks only the layout; whether the values are acceptable for a
given frame is the kernel's header validation, done in
``netoffload.engine.validate``. Unknown ``gso_type`` values therefore
survive a round trip.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Literal

from netoffload.offload.errors import RequestError, VirtioHdrError
from netoffload.offload.extension import (
    ChecksumRequest,
    ChecksumStatus,
    GsoType,
    HashReport,
    RxInfo,
    SegmentationRequest,
    TxRequest,
)

ByteOrder = Literal["little", "big"]


class VirtioFlags(enum.IntFlag):
    NONE = 0
    NEEDS_CSUM = 1
    DATA_VALID = 2
    RSC_INFO = 4


GSO_ECN = 0x80

_LEGACY = {"little": struct.Struct("<BBHHHH"), "big": struct.Struct(">BBHHHH")}
_TAIL_V1 = {"little": struct.Struct("<H"), "big": struct.Struct(">H")}
_TAIL_HASH = {"little": struct.Struct("<IHxx"), "big": struct.Struct(">IHxx")}


@dataclass(frozen=True, slots=True)
class VirtioNetHdr:
    """One virtio_net_hdr, in any of its three sizes."""

    LEGACY_SIZE: ClassVar[int] = 10
    SIZE: ClassVar[int] = 12
    HASH_SIZE: ClassVar[int] = 20

    flags: int = 0
    gso_type: int = 0
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0
    hash_value: int = 0
    hash_report: int = 0

    def __post_init__(self) -> None:
        for name, limit in (
            ("flags", 0xFF),
            ("gso_type", 0xFF),
            ("hdr_len", 0xFFFF),
            ("gso_size", 0xFFFF),
            ("csum_start", 0xFFFF),
            ("csum_offset", 0xFFFF),
            ("num_buffers", 0xFFFF),
            ("hash_value", 0xFFFFFFFF),
            ("hash_report", 0xFFFF),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= limit:
                raise VirtioHdrError(f"virtio_net_hdr {name}={value!r} outside 0..{limit:#x}")

    # -- views of the fields -------------------------------------------------
    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & VirtioFlags.NEEDS_CSUM)

    @property
    def data_valid(self) -> bool:
        return bool(self.flags & VirtioFlags.DATA_VALID)

    @property
    def ecn(self) -> bool:
        return bool(self.gso_type & GSO_ECN)

    @property
    def gso_kind(self) -> GsoType | None:
        """The segmentation type without the ECN bit; ``None`` if it is not a known one."""
        try:
            return GsoType(self.gso_type & ~GSO_ECN)
        except ValueError:
            return None

    # -- codec ---------------------------------------------------------------
    def pack(self, size: int = SIZE, byteorder: ByteOrder = "little") -> bytes:
        buf = bytearray(size)
        self.pack_into(buf, 0, size, byteorder)
        return bytes(buf)

    def pack_into(
        self,
        buf: bytearray | memoryview,
        offset: int = 0,
        size: int = SIZE,
        byteorder: ByteOrder = "little",
    ) -> None:
        _check_size(size)
        _check_order(byteorder)
        if offset < 0 or offset + size > len(buf):
            raise VirtioHdrError(f"no room for a {size}-byte virtio_net_hdr at offset {offset}")
        _LEGACY[byteorder].pack_into(
            buf,
            offset,
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )
        if size >= self.SIZE:
            _TAIL_V1[byteorder].pack_into(buf, offset + 10, self.num_buffers)
        if size == self.HASH_SIZE:
            _TAIL_HASH[byteorder].pack_into(buf, offset + 12, self.hash_value, self.hash_report)

    @classmethod
    def unpack(
        cls,
        data: bytes | bytearray | memoryview,
        size: int = SIZE,
        byteorder: ByteOrder = "little",
        offset: int = 0,
    ) -> VirtioNetHdr:
        """Read a header of ``size`` bytes at ``offset``; ``VirtioHdrError`` if it is short."""
        _check_size(size)
        _check_order(byteorder)
        if offset < 0 or len(data) - offset < size:
            raise VirtioHdrError(
                f"virtio_net_hdr needs {size} bytes, {max(len(data) - offset, 0)} available"
            )
        legacy = _LEGACY[byteorder].unpack_from(data, offset)
        flags, gso_type, hdr_len, gso_size, start, off = legacy
        num_buffers = hash_value = hash_report = 0
        if size >= cls.SIZE:
            (num_buffers,) = _TAIL_V1[byteorder].unpack_from(data, offset + 10)
        if size == cls.HASH_SIZE:
            hash_value, hash_report = _TAIL_HASH[byteorder].unpack_from(data, offset + 12)
        return cls(
            flags, gso_type, hdr_len, gso_size, start, off, num_buffers, hash_value, hash_report
        )

    # -- conversions to and from the extension ------------------------------
    @classmethod
    def from_tx_request(cls, request: TxRequest) -> VirtioNetHdr:
        """The header that asks Linux for the same work.

        Linux always fills the IPv4 header checksum itself; a request that
        needs crypto, a digest or a launch time has no virtio form and is
        refused rather than silently losing a task.
        """
        missing = [
            name
            for name, value in (
                ("sa_handle", request.sa_handle),
                ("digest", request.digest),
                ("launch_time_ns", request.launch_time_ns),
            )
            if value is not None
        ]
        if missing:
            raise VirtioHdrError(f"virtio_net_hdr cannot carry {', '.join(missing)}")
        return cls(*vnet_fields(request))

    def to_tx_request(self) -> TxRequest:
        """The request this header makes (what a TAP reader is asked to do).

        ``VirtioHdrError`` when a field is one no request can hold (an unknown
        gso_type, a gso_size of 0 or 0xFFFF).
        """
        try:
            checksum = (
                ChecksumRequest(self.csum_start, self.csum_offset) if self.needs_csum else None
            )
            return TxRequest(checksum=checksum, segmentation=self._segmentation())
        except RequestError as exc:
            raise VirtioHdrError(f"virtio_net_hdr: {exc}") from None

    def _segmentation(self) -> SegmentationRequest | None:
        kind = self.gso_kind
        if kind is None:
            raise VirtioHdrError(f"unknown gso_type {self.gso_type:#x}")
        if kind is GsoType.NONE:
            return None
        try:
            return SegmentationRequest(kind, self.gso_size, self.hdr_len, self.ecn)
        except RequestError as exc:
            raise VirtioHdrError(f"virtio_net_hdr: {exc}") from None

    def to_rx_info(self, segments: int = 1) -> RxInfo:
        """What a received header says: checksum state, assembly, flow hash."""
        known = self.hash_report in HashReport._value2member_map_
        report = HashReport(self.hash_report) if known else HashReport.NONE
        # NEEDS_CSUM on receive is a local sender's partial checksum: the data never
        # crossed a medium, and Linux counts it as validated (skb_csum_unnecessary).
        trusted = self.flags & (VirtioFlags.DATA_VALID | VirtioFlags.NEEDS_CSUM)
        return RxInfo(
            l4=ChecksumStatus.VERIFIED if trusted else ChecksumStatus.NOT_CHECKED,
            checksum_partial=(
                ChecksumRequest(self.csum_start, self.csum_offset) if self.needs_csum else None
            ),
            assembled=self._segmentation(),
            segments=segments,
            flow_hash=self.hash_value if report is not HashReport.NONE else None,
            hash_report=report,
        )

    @classmethod
    def from_rx_info(cls, info: RxInfo) -> VirtioNetHdr:
        """The header a device writes in front of a received frame (as Linux does on TAP read)."""
        flags = 0
        start = offset = 0
        if info.checksum_partial is not None:
            flags |= VirtioFlags.NEEDS_CSUM
            start, offset = info.checksum_partial.start, info.checksum_partial.offset
        elif info.l4 is ChecksumStatus.VERIFIED:
            flags |= VirtioFlags.DATA_VALID
        gso_type = hdr_len = gso_size = 0
        if info.assembled is not None:
            gso_type = int(info.assembled.gso_type) | (GSO_ECN if info.assembled.ecn else 0)
            hdr_len, gso_size = info.assembled.hdr_len, info.assembled.size
        hash_value = info.flow_hash or 0
        return cls(
            flags,
            gso_type,
            hdr_len,
            gso_size,
            start,
            offset,
            0,
            hash_value,
            int(info.hash_report) if info.flow_hash is not None else 0,
        )


def vnet_fields(request: TxRequest) -> tuple[int, int, int, int, int, int]:
    """``(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)`` of ``request``.

    The checksum and segmentation parts of a request in virtio_net_hdr terms:
    the one encoder every path uses (a TAP or AF_PACKET write, the SoftNic's
    descriptors, the engine's header validation). The request's own checks
    keep every value within its field.
    """
    flags = start = offset = 0
    checksum = request.checksum
    if checksum is not None:
        flags = VirtioFlags.NEEDS_CSUM.value
        start, offset = checksum.start, checksum.offset
    seg = request.segmentation
    if seg is None:
        return flags, 0, 0, 0, start, offset
    gso_type = seg.gso_type.value | (GSO_ECN if seg.ecn else 0)
    return flags, gso_type, seg.hdr_len, seg.size, start, offset


def _check_order(byteorder: object) -> None:
    if byteorder not in _LEGACY:
        raise VirtioHdrError(f"virtio_net_hdr byte order is 'little' or 'big', not {byteorder!r}")


def _check_size(size: int) -> None:
    if size not in (VirtioNetHdr.LEGACY_SIZE, VirtioNetHdr.SIZE, VirtioNetHdr.HASH_SIZE):
        raise VirtioHdrError(f"virtio_net_hdr size must be 10, 12 or 20, not {size}")
