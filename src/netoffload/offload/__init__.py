"""The offload contract between a host stack and a network device.

Query (capability records and their binary chain), enable (``Selection``),
and the per-packet extension (``TxRequest`` down, ``RxInfo`` up, and their
Linux form ``VirtioNetHdr``).
"""

from netoffload.offload.caps import (
    CapabilityRecord,
    ChecksumCaps,
    ChecksumFlags,
    ClassificationCaps,
    Clocks,
    CryptoAlgorithm,
    DecryptCaps,
    DigestAlgorithm,
    DigestCaps,
    DosFilterCaps,
    DosRuleKinds,
    EncryptCaps,
    IpVersions,
    KeySizes,
    RssHashTypes,
    TcpAssemblyCaps,
    TcpSegmentationCaps,
    TxSchedulingCaps,
    UdpAssemblyCaps,
    UdpSegmentationCaps,
    UnknownCapability,
)
from netoffload.offload.chain import AnyRecord, decode_capabilities, encode_capabilities
from netoffload.offload.errors import (
    CapabilityError,
    OffloadError,
    SelectionError,
    VirtioHdrError,
)
from netoffload.offload.extension import (
    NO_INFO,
    NO_REQUEST,
    ChecksumRequest,
    ChecksumStatus,
    CryptoStatus,
    DigestRequest,
    FilterVerdict,
    GsoType,
    HashReport,
    RxInfo,
    SegmentationRequest,
    TxRequest,
)
from netoffload.offload.packet import Packet
from netoffload.offload.selection import CapabilityStatus, Selection
from netoffload.offload.stats import DeviceStats, DropReason
from netoffload.offload.task import Task
from netoffload.offload.virtio import GSO_ECN, VirtioFlags, VirtioNetHdr

__all__ = [
    "GSO_ECN",
    "NO_INFO",
    "NO_REQUEST",
    "AnyRecord",
    "CapabilityError",
    "CapabilityRecord",
    "CapabilityStatus",
    "ChecksumCaps",
    "ChecksumFlags",
    "ChecksumRequest",
    "ChecksumStatus",
    "ClassificationCaps",
    "Clocks",
    "CryptoAlgorithm",
    "CryptoStatus",
    "DecryptCaps",
    "DeviceStats",
    "DigestAlgorithm",
    "DigestCaps",
    "DigestRequest",
    "DosFilterCaps",
    "DosRuleKinds",
    "DropReason",
    "EncryptCaps",
    "FilterVerdict",
    "GsoType",
    "HashReport",
    "IpVersions",
    "KeySizes",
    "OffloadError",
    "Packet",
    "RssHashTypes",
    "RxInfo",
    "SegmentationRequest",
    "Selection",
    "SelectionError",
    "Task",
    "TcpAssemblyCaps",
    "TcpSegmentationCaps",
    "TxRequest",
    "TxSchedulingCaps",
    "UdpAssemblyCaps",
    "UdpSegmentationCaps",
    "UnknownCapability",
    "VirtioFlags",
    "VirtioHdrError",
    "VirtioNetHdr",
    "decode_capabilities",
    "encode_capabilities",
]
