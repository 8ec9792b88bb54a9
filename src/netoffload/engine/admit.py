"""Per-packet admission: what a device may do for one packet, within its enabled records.

An enabled capability record is a set of real limits, not a name: which
checksums per protocol and direction, which IP versions a segmentation
record covers, the largest super-packet and the most (and fewest) segments.
``Limits`` holds them, and ``Limits.admit`` answers, for one packet and its
``TxRequest``, which of the requested tasks this device will do, and for
each task it will not, the ``Refusal`` that explains why.

Who acts on the answer:

* the SoftNic firmware drops a packet whose request it does not admit
  (``DropReason.OUTSIDE_CAPABILITY``): a host that bypasses ``HostOffload``
  asked for something the device never offered;
* ``HostOffload`` does the refused tasks itself with the same engine and
  counts each as a fallback with its reason; the frames on the wire are the
  same either way.

Two rules come from Linux rather than from the records. A packet whose
payload fits in one segment is not a GSO packet (``virtio_net_hdr_to_skb``
"too small packets are not really GSO ones"): its segmentation request is
dropped and it goes out whole, which is not a fallback. And whoever
segments a packet also fills its checksums (``skb_gso_segment`` computes
each segment's sum), so a refused segmentation moves the packet's checksum
work to the host as well.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import NamedTuple, TypeAlias

from netoffload.engine.dissect import (
    ETH_HLEN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    DissectError,
    l3_offset,
)
from netoffload.engine.validate import VnetHdrRejected, plan_vnet_hdr
from netoffload.offload.caps import (
    CapabilityRecord,
    ChecksumCaps,
    ChecksumFlags,
    CryptoAlgorithm,
    CryptoFeatures,
    DigestAlgorithm,
    DigestCaps,
    EncryptCaps,
    IpVersions,
    KeySizes,
    TcpAssemblyCaps,
    TcpSegmentationCaps,
    UdpAssemblyCaps,
    UdpSegmentationCaps,
)
from netoffload.offload.extension import (
    TCP_CSUM_OFFSET,
    U32_MAX,
    UDP_CSUM_OFFSET,
    GsoType,
    SegmentationRequest,
    TxRequest,
)
from netoffload.offload.task import Task
from netoffload.offload.virtio import VirtioNetHdr, vnet_fields

Buffer: TypeAlias = bytes | bytearray | memoryview

SEGMENTATION = frozenset({Task.TCP_SEGMENTATION, Task.UDP_SEGMENTATION})
ASSEMBLY = frozenset({Task.TCP_ASSEMBLY, Task.UDP_ASSEMBLY})
#: The transmit tasks a host or device runs with the engine today.
TX_TASKS = frozenset({Task.CHECKSUM, *SEGMENTATION})


class Refusal(enum.StrEnum):
    """Why a device will not do a requested task for one packet. Stable names."""

    NOT_ENABLED = "not_enabled"
    IP_VERSION = "ip_version"
    PROTOCOL = "protocol"
    TOO_LARGE = "too_large"
    TOO_MANY_SEGMENTS = "too_many_segments"
    TOO_FEW_SEGMENTS = "too_few_segments"
    ECN = "ecn"
    UNPARSABLE = "unparsable"
    HOST_CHOICE = "host_choice"
    #: An SA handle outside the record's ``0..max_sas-1``.
    NO_SUCH_HANDLE = "no_such_handle"
    #: An SA context whose algorithm, key size or mode the record does not offer.
    ALGORITHM = "algorithm"


class Admitted(NamedTuple):
    """One packet's answer: the tasks the device does, the request it gets, the refusals.

    ``request`` is the packet's request as the device should see it (the
    segmentation part removed when the payload fits one segment).
    """

    tasks: frozenset[Task]
    request: TxRequest
    refused: tuple[tuple[Task, Refusal], ...]


_ALL_L4 = (
    ChecksumFlags.TCP_IPV4
    | ChecksumFlags.UDP_IPV4
    | ChecksumFlags.TCP_IPV6
    | ChecksumFlags.UDP_IPV6
)
_BOTH = IpVersions.IPV4 | IpVersions.IPV6
_ALL_DIGESTS = (
    DigestAlgorithm.HMAC_SHA1_96
    | DigestAlgorithm.HMAC_SHA256_128
    | DigestAlgorithm.HMAC_SHA512_256
    | DigestAlgorithm.CRC32C
)
_SEGMENT_RECORDS = (TcpSegmentationCaps, UdpSegmentationCaps, TcpAssemblyCaps, UdpAssemblyCaps)
_NONE: frozenset[Task] = frozenset()
# (protocol by checksum offset, IP version) -> the checksum flag it needs.
_CSUM_FLAG = {
    (TCP_CSUM_OFFSET, 4): ChecksumFlags.TCP_IPV4,
    (TCP_CSUM_OFFSET, 6): ChecksumFlags.TCP_IPV6,
    (UDP_CSUM_OFFSET, 4): ChecksumFlags.UDP_IPV4,
    (UDP_CSUM_OFFSET, 6): ChecksumFlags.UDP_IPV6,
}


class _Pieces:
    """A frame as admission sees it: maybe in two pieces, joined only if it must be read."""

    __slots__ = ("_joined", "frame", "head")

    def __init__(self, head: Buffer, frame: Buffer) -> None:
        self.head = head
        self.frame = frame
        self._joined: Buffer | None = None if head else frame

    def __len__(self) -> int:
        return len(self.head) + len(self.frame)

    def whole(self) -> Buffer:
        if self._joined is None:
            self._joined = b"".join((self.head, self.frame))
        return self._joined

    def ip_version(self) -> int:
        # The EtherType (and any VLAN tags) lie in the headers, which come first.
        first = self.head if len(self.head) >= ETH_HLEN + 8 else self.whole()
        return ip_version(first)


def _cannot_exceed(limits: _SegLimits, seg: SegmentationRequest, length: int) -> bool:
    """True when no ``length``-byte frame asking ``seg`` lies outside ``limits``."""
    if limits.versions & _BOTH != _BOTH or (seg.ecn and not limits.versions & IpVersions.ECN):
        return False
    return (
        length - ETH_HLEN <= limits.max_size_bytes
        and -(-length // seg.size) <= limits.max_segments
        and limits.min_segments <= 2
    )


def ip_version(frame: Buffer) -> int:
    """4 or 6 from the frame's EtherType (VLAN tags skipped), 0 when it is neither."""
    if len(frame) < ETH_HLEN:
        return 0
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype in (ETH_P_8021Q, ETH_P_8021AD):
        try:
            _, ethertype = l3_offset(frame)
        except DissectError:
            return 0
    if ethertype == ETH_P_IP:
        return 4
    return 6 if ethertype == ETH_P_IPV6 else 0


@dataclass(frozen=True, slots=True)
class _SegLimits:
    versions: IpVersions
    max_size_bytes: int
    min_segments: int
    max_segments: int


def _context_features(context: object) -> CryptoFeatures:
    """The features a context needs (read by name: the contract does not know its type)."""
    wanted = CryptoFeatures.NONE
    mode = getattr(context, "mode", None)
    wanted |= (
        CryptoFeatures.TUNNEL
        if getattr(mode, "value", "") == "tunnel"
        else (CryptoFeatures.TRANSPORT)
    )
    if getattr(context, "esn", False):
        wanted |= CryptoFeatures.ESN
    if getattr(context, "nat_t", None) is not None:
        wanted |= CryptoFeatures.NAT_T
    return wanted


@dataclass(frozen=True, slots=True)
class _CryptoLimits:
    algorithms: CryptoAlgorithm
    key_sizes: KeySizes
    max_sas: int
    features: CryptoFeatures


@dataclass(frozen=True, slots=True)
class Limits:
    """The per-packet limits of an enabled selection (see the module docstring).

    ``tasks`` are the enabled task names; the other fields are the enabled
    records' parameters. ``Limits.unlimited()`` is the host's own engine,
    which does every task for any packet it can parse.
    """

    tasks: frozenset[Task]
    tx_checksum: ChecksumFlags = ChecksumFlags.NONE
    rx_checksum: ChecksumFlags = ChecksumFlags.NONE
    tcp_segmentation: _SegLimits | None = None
    udp_segmentation: _SegLimits | None = None
    tcp_assembly: _SegLimits | None = None
    udp_assembly: _SegLimits | None = None
    encrypt: _CryptoLimits | None = None
    #: The enabled digest record: its algorithms and how many keys it holds.
    digest: DigestCaps | None = None

    @classmethod
    def from_records(cls, records: Iterable[object]) -> Limits:
        """Limits of the enabled records (a ``Selection``'s values, or ``enabled().records()``)."""
        tasks: set[Task] = set()
        tx = rx = ChecksumFlags.NONE
        seg: dict[Task, _SegLimits] = {}
        encrypt: _CryptoLimits | None = None
        digest: DigestCaps | None = None
        for record in records:
            if not isinstance(record, CapabilityRecord):
                continue
            tasks.add(record.task)
            if isinstance(record, ChecksumCaps):
                tx, rx = record.tx, record.rx
            elif isinstance(record, EncryptCaps):
                encrypt = _CryptoLimits(
                    record.algorithms, record.key_sizes, record.max_sas, record.features
                )
            elif isinstance(record, DigestCaps):
                digest = record
            elif isinstance(
                record,
                TcpSegmentationCaps | UdpSegmentationCaps | TcpAssemblyCaps | UdpAssemblyCaps,
            ):
                seg[record.task] = _SegLimits(
                    record.versions,
                    record.max_size_bytes,
                    record.min_segments,
                    record.max_segments,
                )
        return cls(
            frozenset(tasks),
            tx,
            rx,
            seg.get(Task.TCP_SEGMENTATION),
            seg.get(Task.UDP_SEGMENTATION),
            seg.get(Task.TCP_ASSEMBLY),
            seg.get(Task.UDP_ASSEMBLY),
            encrypt,
            digest,
        )

    @classmethod
    def unlimited(cls, tasks: Iterable[Task] = TX_TASKS | ASSEMBLY) -> Limits:
        """No limit but the task names: what the host's own engine does."""
        full = _SegLimits(_BOTH | IpVersions.ECN, 1 << 30, 1, 1 << 30)
        chosen = frozenset(tasks)
        flags = _ALL_L4 | ChecksumFlags.IPV4_HEADER
        has = chosen.__contains__
        return cls(
            chosen,
            flags if has(Task.CHECKSUM) else ChecksumFlags.NONE,
            flags if has(Task.CHECKSUM) else ChecksumFlags.NONE,
            full if has(Task.TCP_SEGMENTATION) else None,
            full if has(Task.UDP_SEGMENTATION) else None,
            full if has(Task.TCP_ASSEMBLY) else None,
            full if has(Task.UDP_ASSEMBLY) else None,
            digest=DigestCaps(algorithms=_ALL_DIGESTS, max_keys=U32_MAX)
            if has(Task.DIGEST)
            else None,
        )

    def restricted(self, allow: Iterable[Task]) -> Limits:
        """These limits with only the tasks in ``allow`` kept (the host's own choice)."""
        keep = frozenset(allow)
        if keep >= self.tasks:
            return self
        has = keep.__contains__
        return Limits(
            self.tasks & keep,
            self.tx_checksum if has(Task.CHECKSUM) else ChecksumFlags.NONE,
            self.rx_checksum if has(Task.CHECKSUM) else ChecksumFlags.NONE,
            self.tcp_segmentation if has(Task.TCP_SEGMENTATION) else None,
            self.udp_segmentation if has(Task.UDP_SEGMENTATION) else None,
            self.tcp_assembly if has(Task.TCP_ASSEMBLY) else None,
            self.udp_assembly if has(Task.UDP_ASSEMBLY) else None,
            self.encrypt if has(Task.ENCRYPT) else None,
            self.digest if has(Task.DIGEST) else None,
        )

    # -- transmit -------------------------------------------------------------------
    def admit(
        self,
        frame: Buffer,
        request: TxRequest,
        allow: frozenset[Task] | None = None,
        *,
        head: Buffer = b"",
    ) -> Admitted:
        """Which of ``request``'s tasks this device does for ``frame``; never raises.

        ``allow`` is the host's own choice: an enabled task outside it is
        refused with ``HOST_CHOICE``. A frame in two pieces is ``head`` then
        ``frame``: they are joined only if the frame has to be read.
        """
        admitted = self._admit(_Pieces(head, frame), request)
        if allow is None or admitted.tasks <= allow:
            return admitted
        tasks = set(admitted.tasks)
        refused = list(admitted.refused)
        for task in sorted(admitted.tasks - allow):
            tasks.discard(task)
            refused.append((task, Refusal.HOST_CHOICE))
        if SEGMENTATION & (admitted.tasks - allow) and Task.CHECKSUM in tasks:
            tasks.discard(Task.CHECKSUM)  # whoever cuts the segments fills their checksums
        if Task.CHECKSUM not in tasks and tasks & SEGMENTATION:
            # Checksums on the host force segmentation there too (the device could not
            # checksum segments it cuts after the host has filled the super-packet's).
            refused += [(t, Refusal.HOST_CHOICE) for t in sorted(tasks & SEGMENTATION)]
            tasks -= SEGMENTATION
        if request.sa_handle is not None and Task.ENCRYPT not in tasks and tasks:
            # Encryption on the host: it comes last, so everything before it is the host's.
            refused += [(t, Refusal.HOST_CHOICE) for t in sorted(tasks)]
            tasks = set()
        return Admitted(frozenset(tasks), admitted.request, tuple(refused))

    def _admit(self, frame: _Pieces, request: TxRequest) -> Admitted:
        seg = request.segmentation
        wants_csum = request.checksum is not None or request.ipv4_header_checksum
        refused: list[tuple[Task, Refusal]] = []
        version = 0
        if seg is not None:
            outcome = self._admit_segmentation(frame, request, seg)
            if outcome is None:
                # Fits in one segment: Linux sends it whole; only the checksum is left.
                request = replace(request, segmentation=None)
                seg = None
            elif isinstance(outcome, Refusal):
                # The host segments, so the host fills every checksum of the segments too.
                return Admitted(_NONE, request, ((seg.task, outcome),))
            else:
                version = outcome
        tasks: set[Task] = set()
        if seg is not None:
            tasks.add(seg.task)
        if wants_csum:
            refusal = self._admit_checksum(frame, request, version)
            if refusal is None:
                tasks.add(Task.CHECKSUM)
            elif seg is not None:
                # A device cannot checksum segments it did not cut: the host does both.
                return Admitted(_NONE, request, ((Task.CHECKSUM, refusal),))
            else:
                refused.append((Task.CHECKSUM, refusal))
        for task in request.tasks() - tasks - {Task.CHECKSUM, *SEGMENTATION}:
            if task not in self.tasks:
                refused.append((task, Refusal.NOT_ENABLED))
            elif task is Task.ENCRYPT or task is Task.DIGEST:
                refusal = (
                    self._admit_encrypt(request)
                    if task is Task.ENCRYPT
                    else self._admit_digest(request)
                )
                if refusal is not None:
                    refused.append((task, refusal))
                else:
                    tasks.add(task)
            else:
                tasks.add(task)  # scheduling: admitted by name
        if request.sa_handle is not None and Task.ENCRYPT not in tasks and tasks:
            # The host encrypts, and encryption comes last: the host does it all.
            return Admitted(
                _NONE, request, (*refused, *((t, Refusal.HOST_CHOICE) for t in sorted(tasks)))
            )
        return Admitted(frozenset(tasks), request, tuple(refused))

    def _admit_encrypt(self, request: TxRequest) -> Refusal | None:
        """Whether the device may encrypt with ``request``'s SA: a handle in its range, and a
        context (when the packet carries one) it offers the algorithm, key size and mode of."""
        limits = self.encrypt
        handle = request.sa_handle
        if limits is None or handle is None or handle >= limits.max_sas:
            return Refusal.NO_SUCH_HANDLE
        context = request.sa_context
        if context is None:
            return None
        if context.algorithm & ~limits.algorithms or context.key_size & ~limits.key_sizes:
            return Refusal.ALGORITHM
        wanted = _context_features(context)
        if wanted & ~limits.features:
            return Refusal.ALGORITHM
        return None

    def _admit_digest(self, request: TxRequest) -> Refusal | None:
        """Whether the device may compute ``request``'s digest: an algorithm its record
        offers and, for a keyed one, a key handle in its ``0..max_keys-1``."""
        limits, digest = self.digest, request.digest
        if limits is None or digest is None:
            return None if limits is not None else Refusal.NOT_ENABLED
        if digest.algorithm & ~limits.algorithms:
            return Refusal.ALGORITHM
        if digest.algorithm is not DigestAlgorithm.CRC32C and digest.key_handle >= limits.max_keys:
            return Refusal.NO_SUCH_HANDLE
        return None

    def _admit_segmentation(
        self, pieces: _Pieces, request: TxRequest, seg: SegmentationRequest
    ) -> Refusal | int | None:
        """The IP version when admitted, ``None`` when the packet is not GSO, else a refusal."""
        limits = (
            self.tcp_segmentation if seg.task is Task.TCP_SEGMENTATION else self.udp_segmentation
        )
        if limits is not None and _cannot_exceed(limits, seg, len(pieces)):
            # No frame this long can lie outside the record: nothing to parse. Whether it
            # is GSO at all, the device's own header rules decide, as they would here.
            return pieces.ip_version()
        frame = pieces.whole()
        # The engine's own header rules decide whether this is a GSO packet at all, so that
        # the answer here and what segmentation later does can never disagree.
        try:
            plan = plan_vnet_hdr(VirtioNetHdr(*vnet_fields(request)), frame)
        except VnetHdrRejected:
            # The engine will drop it with the precise reason; no device takes it.
            return Refusal.UNPARSABLE if limits is not None else Refusal.NOT_ENABLED
        d = plan.dissection
        if d is None:
            return None
        if seg.gso_type is GsoType.UDP_L4:
            payload = len(frame) - d.l4 - 8
        else:
            payload = len(frame) - d.payload
        if limits is None:
            return Refusal.NOT_ENABLED
        if d.version == 4 and not limits.versions & IpVersions.IPV4:
            return Refusal.IP_VERSION
        if d.version == 6 and not limits.versions & IpVersions.IPV6:
            return Refusal.IP_VERSION
        if seg.ecn and not limits.versions & IpVersions.ECN:
            return Refusal.ECN
        if len(frame) - d.l3 > limits.max_size_bytes:
            return Refusal.TOO_LARGE
        count = -(-payload // seg.size)
        if count > limits.max_segments:
            return Refusal.TOO_MANY_SEGMENTS
        if count < limits.min_segments:
            return Refusal.TOO_FEW_SEGMENTS
        return d.version

    def _admit_checksum(self, frame: _Pieces, request: TxRequest, version: int) -> Refusal | None:
        flags = self.tx_checksum
        if not flags:
            return Refusal.NOT_ENABLED
        checksum = request.checksum
        if request.ipv4_header_checksum and not flags & ChecksumFlags.IPV4_HEADER:
            return Refusal.PROTOCOL
        if checksum is None:
            return None
        offset = checksum.offset
        if offset not in (TCP_CSUM_OFFSET, UDP_CSUM_OFFSET):
            # Not a TCP or UDP field: only a device that checksums any L4 (all flags) takes it.
            return None if flags & _ALL_L4 == _ALL_L4 else Refusal.PROTOCOL
        both = _CSUM_FLAG[offset, 4] | _CSUM_FLAG[offset, 6]
        if flags & both == both:
            return None
        if not version:
            version = frame.ip_version()
        need = _CSUM_FLAG.get((offset, version))
        if need is None or not flags & need:
            return Refusal.PROTOCOL
        return None
