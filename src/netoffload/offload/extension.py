"""The packet extension: per-packet offload requests (transmit) and results (receive)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from netoffload.offload.caps import DigestAlgorithm
from netoffload.offload.task import Task


class GsoType(enum.IntEnum):
    """Segmentation kinds, numbered as virtio's VIRTIO_NET_HDR_GSO_*."""

    NONE = 0
    TCPV4 = 1
    UDP = 3  # legacy UFO (IP fragmentation); accepted on read, never produced
    TCPV6 = 4
    UDP_L4 = 5


@dataclass(frozen=True, slots=True)
class ChecksumRequest:
    """Fill in an L4 checksum as Linux CHECKSUM_PARTIAL does.

    The checksum field at ``start + offset`` already holds the folded
    pseudo-header sum (not complemented); the device sums from ``start`` to
    the end of the packet and stores the complement there.
    """

    start: int
    offset: int


@dataclass(frozen=True, slots=True)
class SegmentationRequest:
    """Cut a super-packet into segments of ``size`` payload bytes each.

    ``hdr_len`` is a hint only (as in Linux): the real header length is
    computed from the L4 header. ``fixed_id`` keeps one IPv4 ID for every
    segment (Linux SKB_GSO_TCP_FIXEDID; legal only with DF).
    """

    gso_type: GsoType
    size: int
    hdr_len: int = 0
    ecn: bool = False
    fixed_id: bool = False

    @property
    def task(self) -> Task:
        if self.gso_type in (GsoType.UDP_L4, GsoType.UDP):
            return Task.UDP_SEGMENTATION
        return Task.TCP_SEGMENTATION


@dataclass(frozen=True, slots=True)
class DigestRequest:
    """Compute a keyed digest over ``[start, start+length)`` and write it at ``result_offset``."""

    algorithm: DigestAlgorithm
    key_handle: int
    start: int
    length: int
    result_offset: int


@dataclass(frozen=True, slots=True)
class TxRequest:
    """What the host asks the device to do to one transmitted packet."""

    checksum: ChecksumRequest | None = None
    ipv4_header_checksum: bool = False
    segmentation: SegmentationRequest | None = None
    sa_handle: int | None = None
    digest: DigestRequest | None = None
    launch_time_ns: int | None = None

    def tasks(self) -> frozenset[Task]:
        """The tasks this request needs a device (or the host fallback) to perform."""
        out: set[Task] = set()
        if self.checksum is not None or self.ipv4_header_checksum:
            out.add(Task.CHECKSUM)
        if self.segmentation is not None:
            out.add(self.segmentation.task)
        if self.sa_handle is not None:
            out.add(Task.ENCRYPT)
        if self.digest is not None:
            out.add(Task.DIGEST)
        if self.launch_time_ns is not None:
            out.add(Task.TX_SCHEDULING)
        return frozenset(out)


NO_REQUEST = TxRequest()


class ChecksumStatus(enum.IntEnum):
    """What the device found when it checked one checksum."""

    NOT_CHECKED = 0
    VERIFIED = 1
    FAILED = 2
    ABSENT = 3  # a UDP checksum of zero over IPv4: nothing to check


class HashReport(enum.IntEnum):
    """Which fields a flow hash covers, numbered as virtio's VIRTIO_NET_HASH_REPORT_*."""

    NONE = 0
    IPV4 = 1
    TCPV4 = 2
    UDPV4 = 3
    IPV6 = 4
    TCPV6 = 5
    UDPV6 = 6


class FilterVerdict(enum.IntEnum):
    PASS = 0
    DROP = 1
    RATE_LIMITED = 2


class CryptoStatus(enum.IntEnum):
    NONE = 0
    DECRYPTED = 1
    AUTH_FAILED = 2
    NO_SA = 3
    REPLAYED = 4


@dataclass(frozen=True, slots=True)
class RxInfo:
    """What the device did and found for one received packet."""

    ipv4_header: ChecksumStatus = ChecksumStatus.NOT_CHECKED
    l4: ChecksumStatus = ChecksumStatus.NOT_CHECKED
    checksum_partial: ChecksumRequest | None = None
    assembled: SegmentationRequest | None = None
    segments: int = 1
    flow_hash: int | None = None
    hash_report: HashReport = HashReport.NONE
    queue: int = 0
    mark: int | None = None
    verdict: FilterVerdict = FilterVerdict.PASS
    filter_rule: int | None = None
    crypto: CryptoStatus = CryptoStatus.NONE
    sa_handle: int | None = None


NO_INFO = RxInfo()
