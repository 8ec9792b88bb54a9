"""Capability records: what a device can do, one record per task.

A record is plain data. The same record types describe what a device
advertises and what the host enables (a selection is a set of records each
of which lies *within* the advertised one), and the binary capability chain
(`chain.py`) carries them.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

from netoffload.offload.errors import CapabilityError
from netoffload.offload.task import Task


def _flag_names(flag: enum.IntFlag) -> list[str]:
    return [m.name.lower() for m in type(flag) if m.name and m in flag]


class ChecksumFlags(enum.IntFlag):
    """Which checksums, per direction."""

    NONE = 0
    IPV4_HEADER = 0x01
    TCP_IPV4 = 0x02
    UDP_IPV4 = 0x04
    TCP_IPV6 = 0x08
    UDP_IPV6 = 0x10


class IpVersions(enum.IntFlag):
    """Network protocols a segmentation or assembly record applies to."""

    NONE = 0
    IPV4 = 0x01
    IPV6 = 0x02
    ECN = 0x04  # TCP segmentation of packets whose first segment has CWR


class CryptoAlgorithm(enum.IntFlag):
    NONE = 0
    AES_GCM = 0x01
    CHACHA20_POLY1305 = 0x02
    AES_CBC_HMAC_SHA256 = 0x04


class CryptoFeatures(enum.IntFlag):
    """What else an IPsec record offers: modes, extended sequence numbers, UDP encapsulation."""

    NONE = 0
    TRANSPORT = 0x01
    TUNNEL = 0x02
    ESN = 0x04
    NAT_T = 0x08


class KeySizes(enum.IntFlag):
    NONE = 0
    BITS_128 = 0x01
    BITS_192 = 0x02
    BITS_256 = 0x04


class DigestAlgorithm(enum.IntFlag):
    NONE = 0
    HMAC_SHA1_96 = 0x01
    HMAC_SHA256_128 = 0x02
    HMAC_SHA512_256 = 0x04
    CRC32C = 0x08


class RssHashTypes(enum.IntFlag):
    """Hash inputs, numbered as virtio's VIRTIO_NET_RSS_HASH_TYPE_* bits."""

    NONE = 0
    IPV4 = 0x001
    TCP_IPV4 = 0x002
    UDP_IPV4 = 0x004
    IPV6 = 0x008
    TCP_IPV6 = 0x010
    UDP_IPV6 = 0x020


class DosRuleKinds(enum.IntFlag):
    NONE = 0
    BLOCKLIST = 0x01
    RATE_LIMIT = 0x02
    SYN_FLOOD = 0x04
    MALFORMED = 0x08
    FRAGMENTS = 0x10


class Clocks(enum.IntFlag):
    NONE = 0
    TAI = 0x01
    MONOTONIC = 0x02
    REALTIME = 0x04


class CapabilityRecord:
    """Base of every record. Subclasses are frozen dataclasses.

    ``task`` is the record's task; ``_layout`` the struct of its task buffer.
    A buffer longer than the layout is accepted (a newer device may append
    fields); a shorter one is a ``CapabilityError``.
    """

    task: ClassVar[Task]
    _layout: ClassVar[struct.Struct]

    def _values(self) -> tuple[int, ...]:
        return tuple(int(getattr(self, f.name)) for f in fields(self))  # type: ignore[arg-type]

    def encode_buffer(self) -> bytes:
        """The task buffer of this record."""
        try:
            return self._layout.pack(*self._values())
        except struct.error as exc:
            raise CapabilityError(f"{self.task.label}: field out of range: {exc}") from None

    @classmethod
    def decode_buffer(cls, buffer: bytes | memoryview) -> Self:
        """Parse a task buffer; raises ``CapabilityError`` when it is too short."""
        if len(buffer) < cls._layout.size:
            raise CapabilityError(
                f"{cls.task.label} record buffer is {len(buffer)} bytes, needs {cls._layout.size}"
            )
        values = cls._layout.unpack_from(buffer)
        kinds = [f.type for f in fields(cls)]  # type: ignore[arg-type]
        args = [_coerce(kind, v) for kind, v in zip(kinds, values, strict=True)]
        return cls(*args)

    def within(self, advertised: CapabilityRecord) -> bool:
        """True when enabling this record asks for no more than ``advertised`` offers."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The record's parameters as JSON-ready values (flags as lists of names)."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = _flag_names(value) if isinstance(value, enum.IntFlag) else value
        return out


_FLAG_TYPES: dict[str, type[enum.IntFlag]] = {}


def _coerce(kind: Any, value: int) -> Any:
    flag = _FLAG_TYPES.get(kind if isinstance(kind, str) else getattr(kind, "__name__", ""))
    return flag(value) if flag is not None else value


for _flag in (
    ChecksumFlags,
    IpVersions,
    CryptoAlgorithm,
    CryptoFeatures,
    KeySizes,
    DigestAlgorithm,
    RssHashTypes,
    DosRuleKinds,
    Clocks,
):
    _FLAG_TYPES[_flag.__name__] = _flag


def _subset(mine: enum.IntFlag, theirs: enum.IntFlag) -> bool:
    return (mine & ~theirs) == 0


@dataclass(frozen=True, slots=True)
class ChecksumCaps(CapabilityRecord):
    """Checksum offload: which checksums are computed on transmit / verified on receive."""

    task: ClassVar[Task] = Task.CHECKSUM
    _layout: ClassVar[struct.Struct] = struct.Struct("<II")
    tx: ChecksumFlags = ChecksumFlags.NONE
    rx: ChecksumFlags = ChecksumFlags.NONE

    def within(self, advertised: CapabilityRecord) -> bool:
        return (
            isinstance(advertised, ChecksumCaps)
            and _subset(self.tx, advertised.tx)
            and _subset(self.rx, advertised.rx)
        )


@dataclass(frozen=True, slots=True)
class _SegmentationCaps(CapabilityRecord):
    _layout: ClassVar[struct.Struct] = struct.Struct("<IHHI")
    max_size_bytes: int = 65536
    min_segments: int = 2
    max_segments: int = 0xFFFF
    versions: IpVersions = IpVersions.IPV4 | IpVersions.IPV6

    def within(self, advertised: CapabilityRecord) -> bool:
        return (
            type(advertised) is type(self)
            and isinstance(advertised, _SegmentationCaps)
            and self.max_size_bytes <= advertised.max_size_bytes
            and self.min_segments >= advertised.min_segments
            and self.max_segments <= advertised.max_segments
            and _subset(self.versions, advertised.versions)
        )


@dataclass(frozen=True, slots=True)
class TcpSegmentationCaps(_SegmentationCaps):
    """TCP segmentation (TSO): largest super-packet, fewest/most segments, IPv4/IPv6/ECN."""

    task: ClassVar[Task] = Task.TCP_SEGMENTATION


@dataclass(frozen=True, slots=True)
class UdpSegmentationCaps(_SegmentationCaps):
    """UDP segmentation (USO / UDP_L4 GSO)."""

    task: ClassVar[Task] = Task.UDP_SEGMENTATION
    max_segments: int = 128


@dataclass(frozen=True, slots=True)
class TcpAssemblyCaps(_SegmentationCaps):
    """TCP receive assembly (GRO/LRO): largest assembled packet, most segments."""

    task: ClassVar[Task] = Task.TCP_ASSEMBLY
    min_segments: int = 1


@dataclass(frozen=True, slots=True)
class UdpAssemblyCaps(_SegmentationCaps):
    """UDP receive assembly (UDP GRO)."""

    task: ClassVar[Task] = Task.UDP_ASSEMBLY
    min_segments: int = 1
    max_segments: int = 64


@dataclass(frozen=True, slots=True)
class _CryptoCaps(CapabilityRecord):
    """Security associations are referred to by handles ``0..max_sas-1``, allocated by the
    host; ``features`` are the modes and options the device handles."""

    _layout: ClassVar[struct.Struct] = struct.Struct("<IIII")
    algorithms: CryptoAlgorithm = CryptoAlgorithm.NONE
    key_sizes: KeySizes = KeySizes.NONE
    max_sas: int = 0
    features: CryptoFeatures = CryptoFeatures.NONE

    def within(self, advertised: CapabilityRecord) -> bool:
        return (
            type(advertised) is type(self)
            and isinstance(advertised, _CryptoCaps)
            and _subset(self.algorithms, advertised.algorithms)
            and _subset(self.key_sizes, advertised.key_sizes)
            and self.max_sas <= advertised.max_sas
            and _subset(self.features, advertised.features)
        )


@dataclass(frozen=True, slots=True)
class EncryptCaps(_CryptoCaps):
    """ESP encryption on transmit: algorithms, key sizes, security associations."""

    task: ClassVar[Task] = Task.ENCRYPT


@dataclass(frozen=True, slots=True)
class DecryptCaps(_CryptoCaps):
    """ESP decryption on receive."""

    task: ClassVar[Task] = Task.DECRYPT


@dataclass(frozen=True, slots=True)
class DigestCaps(CapabilityRecord):
    """Message digest: algorithms and how many keys the device stores."""

    task: ClassVar[Task] = Task.DIGEST
    _layout: ClassVar[struct.Struct] = struct.Struct("<II")
    algorithms: DigestAlgorithm = DigestAlgorithm.NONE
    max_keys: int = 0

    def within(self, advertised: CapabilityRecord) -> bool:
        return (
            isinstance(advertised, DigestCaps)
            and _subset(self.algorithms, advertised.algorithms)
            and self.max_keys <= advertised.max_keys
        )


@dataclass(frozen=True, slots=True)
class ClassificationCaps(CapabilityRecord):
    """Packet classification: rule slots, receive queues, RSS hash types."""

    task: ClassVar[Task] = Task.CLASSIFICATION
    _layout: ClassVar[struct.Struct] = struct.Struct("<IHxxI")
    rule_slots: int = 0
    queues: int = 1
    hash_types: RssHashTypes = RssHashTypes.NONE

    def within(self, advertised: CapabilityRecord) -> bool:
        return (
            isinstance(advertised, ClassificationCaps)
            and self.rule_slots <= advertised.rule_slots
            and self.queues <= advertised.queues
            and _subset(self.hash_types, advertised.hash_types)
        )


@dataclass(frozen=True, slots=True)
class DosFilterCaps(CapabilityRecord):
    """Denial-of-service filtering: rule kinds and slots."""

    task: ClassVar[Task] = Task.DOS_FILTER
    _layout: ClassVar[struct.Struct] = struct.Struct("<II")
    rule_kinds: DosRuleKinds = DosRuleKinds.NONE
    rule_slots: int = 0

    def within(self, advertised: CapabilityRecord) -> bool:
        return (
            isinstance(advertised, DosFilterCaps)
            and _subset(self.rule_kinds, advertised.rule_kinds)
            and self.rule_slots <= advertised.rule_slots
        )


@dataclass(frozen=True, slots=True)
class TxSchedulingCaps(CapabilityRecord):
    """Launch-time scheduling: clocks, how far ahead (horizon), granularity."""

    task: ClassVar[Task] = Task.TX_SCHEDULING
    _layout: ClassVar[struct.Struct] = struct.Struct("<IIQ")
    clocks: Clocks = Clocks.NONE
    granularity_ns: int = 0
    horizon_ns: int = 0

    def within(self, advertised: CapabilityRecord) -> bool:
        return (
            isinstance(advertised, TxSchedulingCaps)
            and _subset(self.clocks, advertised.clocks)
            and self.granularity_ns >= advertised.granularity_ns
            and self.horizon_ns <= advertised.horizon_ns
        )


@dataclass(frozen=True, slots=True)
class UnknownCapability:
    """A record for a task number this version does not know; kept and re-encoded as is."""

    task_id: int
    buffer: bytes


RECORD_TYPES: dict[Task, type[CapabilityRecord]] = {
    cls.task: cls
    for cls in (
        ChecksumCaps,
        EncryptCaps,
        DecryptCaps,
        DigestCaps,
        TcpSegmentationCaps,
        UdpSegmentationCaps,
        TcpAssemblyCaps,
        UdpAssemblyCaps,
        ClassificationCaps,
        DosFilterCaps,
        TxSchedulingCaps,
    )
}
