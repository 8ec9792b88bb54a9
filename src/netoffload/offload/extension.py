"""The packet extension: per-packet offload requests (transmit) and results (receive)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from netoffload.offload.caps import CryptoAlgorithm, DigestAlgorithm, KeySizes
from netoffload.offload.errors import RequestError
from netoffload.offload.task import Task

U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
#: The largest segment size: 0xFFFF is GSO_BY_FRAGS, which Linux refuses from user space.
GSO_SIZE_MAX = 0xFFFE
TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6
IPPROTO_TCP = 6
IPPROTO_UDP = 17


def _check_int(what: str, value: object, low: int, high: int) -> None:
    # bool is an int subclass; a flag where a number belongs is a caller's mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{what} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise RequestError(f"{what} {value} is outside {low}..{high:#x}")


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

    def __post_init__(self) -> None:
        _check_int("checksum start", self.start, 0, U16_MAX)
        _check_int("checksum offset", self.offset, 0, U16_MAX)


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

    def __post_init__(self) -> None:
        kind: object = self.gso_type
        if not isinstance(kind, GsoType):
            try:
                object.__setattr__(self, "gso_type", GsoType(kind))  # type: ignore[arg-type]
            except (ValueError, TypeError):
                raise RequestError(f"unknown segmentation type {kind!r}") from None
        if self.gso_type is GsoType.NONE:
            raise RequestError("a segmentation request needs a segmentation type, not NONE")
        _check_int("segment size", self.size, 1, GSO_SIZE_MAX)
        _check_int("header length hint", self.hdr_len, 0, U16_MAX)
        if not isinstance(self.ecn, bool) or not isinstance(self.fixed_id, bool):
            raise RequestError("ecn and fixed_id are booleans")

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

    def __post_init__(self) -> None:
        algorithm = self.algorithm
        if not isinstance(algorithm, DigestAlgorithm) or algorithm.value.bit_count() != 1:
            raise RequestError(f"a digest request names one algorithm, not {algorithm!r}")
        _check_int("digest key handle", self.key_handle, 0, U32_MAX)
        _check_int("digest start", self.start, 0, U16_MAX)
        _check_int("digest length", self.length, 0, U16_MAX)
        _check_int("digest result offset", self.result_offset, 0, U16_MAX)


@runtime_checkable
class SecurityContext(Protocol):
    """The whole context of an outbound security association, as the first packet that
    uses a handle carries it (``netoffload.engine.esp_sa.EspConfig`` is one).

    The contract only needs what a device checks against its capability
    record; the engine reads the rest. Its repr never shows a key.
    """

    @property
    def spi(self) -> int: ...

    @property
    def algorithm(self) -> CryptoAlgorithm: ...

    @property
    def key_size(self) -> KeySizes: ...


@dataclass(frozen=True, slots=True)
class TxRequest:
    """What the host asks the device to do to one transmitted packet.

    Encryption: ``sa_handle`` names the SA; ``esp_seq`` is the sequence
    number the host allocated for the packet's first segment (the next ones
    get ``esp_seq + 1``, ...); ``sa_context`` is the SA's whole context, on
    the first packet that uses the handle (after that the handle alone).
    """

    checksum: ChecksumRequest | None = None
    ipv4_header_checksum: bool = False
    segmentation: SegmentationRequest | None = None
    sa_handle: int | None = None
    digest: DigestRequest | None = None
    launch_time_ns: int | None = None
    esp_seq: int | None = None
    sa_context: SecurityContext | None = None
    # Asked for on every packet on every hot path: computed once, when the request is made.
    _tasks: frozenset[Task] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name, kind in (
            ("checksum", ChecksumRequest),
            ("segmentation", SegmentationRequest),
            ("digest", DigestRequest),
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise RequestError(f"{name} must be a {kind.__name__}, not {value!r}")
        if not isinstance(self.ipv4_header_checksum, bool):
            raise RequestError("ipv4_header_checksum is a boolean")
        if self.sa_handle is not None:
            _check_int("security association handle", self.sa_handle, 0, U32_MAX)
            if self.esp_seq is None:
                raise RequestError("an encryption request carries the sequence number (esp_seq)")
            _check_int("ESP sequence number", self.esp_seq, 1, U64_MAX)
            if self.sa_context is not None and not isinstance(self.sa_context, SecurityContext):
                raise RequestError("sa_context must be a security context")
        elif self.esp_seq is not None or self.sa_context is not None:
            raise RequestError("esp_seq and sa_context go with an sa_handle")
        if self.launch_time_ns is not None:
            _check_int("launch time", self.launch_time_ns, 0, U64_MAX)
        object.__setattr__(self, "_tasks", self._compute_tasks())

    # -- builders: what a stack asks for, from the offsets it already knows -----------
    @classmethod
    def checksum_l4(cls, *, l4_offset: int, protocol: int) -> TxRequest:
        """ "Fill this TCP or UDP checksum": the CHECKSUM_PARTIAL request for a packet
        whose L4 header starts at ``l4_offset`` and whose checksum field holds the
        pseudo-header sum (``TcpRepr.emit(..., checksum=PARTIAL)`` writes it)."""
        return cls(checksum=ChecksumRequest(l4_offset, _csum_offset(protocol)))

    @classmethod
    def segment_l4(
        cls,
        *,
        l4_offset: int,
        protocol: int,
        ip_version: int,
        mss: int,
        header_len: int = 0,
        ecn: bool = False,
        fixed_id: bool = False,
    ) -> TxRequest:
        """ "Segment this TCP or UDP super-packet at ``mss`` payload bytes and fill every
        checksum": TSO (TCPV4/TCPV6) or USO (UDP_L4), as Linux GSO asks a device.

        ``header_len`` (every header up to the L4 payload) is a hint only;
        ``ecn`` marks a packet whose CWR flag must stay on the first segment.
        """
        if protocol == IPPROTO_TCP:
            if ip_version not in (4, 6):
                raise RequestError(f"IP version must be 4 or 6, not {ip_version!r}")
            kind = GsoType.TCPV4 if ip_version == 4 else GsoType.TCPV6
        elif protocol == IPPROTO_UDP:
            if ip_version not in (4, 6):
                raise RequestError(f"IP version must be 4 or 6, not {ip_version!r}")
            kind = GsoType.UDP_L4
        else:
            raise RequestError(f"segmentation is for TCP or UDP, not IP protocol {protocol!r}")
        return cls(
            checksum=ChecksumRequest(l4_offset, _csum_offset(protocol)),
            segmentation=SegmentationRequest(kind, mss, header_len, ecn, fixed_id),
        )

    def encrypted(self, handle: int, seq: int, context: SecurityContext | None = None) -> TxRequest:
        """This request with "encrypt with SA ``handle`` from sequence number ``seq``" added
        (and the SA's ``context`` when this is the handle's first packet)."""
        return TxRequest(
            self.checksum,
            self.ipv4_header_checksum,
            self.segmentation,
            handle,
            self.digest,
            self.launch_time_ns,
            seq,
            context,
        )

    def tasks(self) -> frozenset[Task]:
        """The tasks this request needs a device (or the host fallback) to perform."""
        return self._tasks

    def _compute_tasks(self) -> frozenset[Task]:
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


def _csum_offset(protocol: int) -> int:
    if protocol == IPPROTO_TCP:
        return TCP_CSUM_OFFSET
    if protocol == IPPROTO_UDP:
        return UDP_CSUM_OFFSET
    raise RequestError(f"a checksum request is for TCP or UDP, not IP protocol {protocol!r}")


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
    """The DoS filter's verdict on a frame. A dropped frame never reaches the host (its
    drop is counted by reason); ``SYN_COOKIE`` is a SYN over its destination's SYN rate,
    which the stack answers with a SYN cookie, keeping no state."""

    PASS = 0
    DROP = 1
    RATE_LIMITED = 2
    SYN_COOKIE = 3


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
