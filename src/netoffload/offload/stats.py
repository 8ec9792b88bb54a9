"""Counters every device and engine keeps: packets, bytes, tasks done, drops by reason."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from netoffload.offload.task import Task


class DropReason(enum.StrEnum):
    """Why a packet was dropped. Values are stable names shown by `netoffload`."""

    MALFORMED_FRAME = "malformed_frame"
    BAD_VNET_HDR = "bad_vnet_hdr"
    GSO_TYPE_MISMATCH = "gso_type_mismatch"
    GSO_SIZE_INVALID = "gso_size_invalid"
    CSUM_OFFSETS_INVALID = "csum_offsets_invalid"
    TOO_MANY_SEGMENTS = "too_many_segments"
    TOO_LARGE = "too_large"
    TASK_NOT_ENABLED = "task_not_enabled"
    CHECKSUM_FAILED = "checksum_failed"
    MTU_EXCEEDED = "mtu_exceeded"
    RING_FULL = "ring_full"
    NO_BUFFER = "no_buffer"
    WIRE_LOSS = "wire_loss"
    WIRE_CORRUPT = "wire_corrupt"
    RATE_LIMITED = "rate_limited"
    GSO_UNSUPPORTED = "gso_unsupported"
    OUTSIDE_CAPABILITY = "outside_capability"
    BAD_REQUEST = "bad_request"
    # IPsec: the engine's reasons (``engine.ipsec_sa.IpsecDropReason``), same names.
    IPSEC_UNKNOWN_SPI = "ipsec_unknown_spi"  # also an unknown, revoked or foreign SA handle
    IPSEC_REPLAY = "ipsec_replay"
    IPSEC_BAD_ICV = "ipsec_bad_icv"
    IPSEC_BAD_PADDING = "ipsec_bad_padding"
    IPSEC_TRUNCATED = "ipsec_truncated"
    IPSEC_LIFETIME_EXPIRED = "ipsec_lifetime_expired"
    IPSEC_SEQUENCE_EXHAUSTED = "ipsec_sequence_exhausted"
    IPSEC_MALFORMED = "ipsec_malformed"
    IPSEC_NOT_IPSEC = "ipsec_not_ipsec"
    IPSEC_NAT_KEEPALIVE = "ipsec_nat_keepalive"
    IPSEC_DUMMY = "ipsec_dummy"
    IPSEC_FRAGMENT = "ipsec_fragment"
    IPSEC_TOO_BIG = "ipsec_too_big"
    IPSEC_ENCAPSULATION_MISMATCH = "ipsec_encapsulation_mismatch"
    IPSEC_MODE_MISMATCH = "ipsec_mode_mismatch"
    IPSEC_BAD_REQUEST = "ipsec_bad_request"
    IPSEC_UNSUPPORTED = "ipsec_unsupported"
    # Digest: the engine's reasons (``engine.digest.DigestFailure``), same names.
    DIGEST_UNKNOWN_KEY = "digest_unknown_key"
    DIGEST_ALGORITHM_MISMATCH = "digest_algorithm_mismatch"
    DIGEST_OUT_OF_BOUNDS = "digest_out_of_bounds"
    DIGEST_OVERLAP = "digest_overlap"
    DIGEST_MISMATCH = "digest_mismatch"


_COUNTERS = (
    "tx_packets",
    "tx_bytes",
    "rx_packets",
    "rx_bytes",
    "tx_frames",
    "rx_frames",
    "tx_copies",
    "tx_copy_bytes",
    "tx_in_place",
)


@dataclass(slots=True)
class DeviceStats:
    """Mutable counters; ``as_dict`` gives a JSON-ready snapshot.

    Packets are counted as the host sees them: a super-packet is one packet.
    ``tx_packets`` are packets sent (every packet a device takes is either
    sent or dropped with a reason, never both), ``rx_packets`` packets handed
    up. ``tx_frames`` / ``rx_frames`` count frames on the device's medium,
    after segmentation and before assembly, where the device knows them (a
    SoftNic does; the kernel behind a TAP does not say). ``fallbacks`` counts
    tasks the host did itself because the device would not, keyed
    ``task/reason``.
    """

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_frames: int = 0
    rx_frames: int = 0
    tx_copies: int = 0
    tx_copy_bytes: int = 0
    tx_in_place: int = 0
    tasks: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)

    def task_done(self, task: Task, count: int = 1) -> None:
        self.tasks[task.label] += count

    def drop(self, reason: DropReason, count: int = 1) -> None:
        self.drops[reason.value] += count

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def merge(self, other: DeviceStats) -> None:
        self.tx_packets += other.tx_packets
        self.tx_bytes += other.tx_bytes
        self.rx_packets += other.rx_packets
        self.rx_bytes += other.rx_bytes
        self.tx_frames += other.tx_frames
        self.rx_frames += other.rx_frames
        self.tx_copies += other.tx_copies
        self.tx_copy_bytes += other.tx_copy_bytes
        self.tx_in_place += other.tx_in_place
        self.tasks.update(other.tasks)
        self.drops.update(other.drops)
        self.fallbacks.update(other.fallbacks)

    def as_dict(self) -> dict[str, object]:
        return {
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_frames": self.tx_frames,
            "rx_frames": self.rx_frames,
            "tx_copies": self.tx_copies,
            "tx_copy_bytes": self.tx_copy_bytes,
            "tx_in_place": self.tx_in_place,
            "tasks": dict(sorted(self.tasks.items())),
            "drops": dict(sorted(self.drops.items())),
            "fallbacks": dict(sorted(self.fallbacks.items())),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DeviceStats:
        """The inverse of ``as_dict`` (counters sent between processes as JSON)."""
        out = cls()
        for name in _COUNTERS:
            value = data.get(name, 0)
            setattr(out, name, int(value) if isinstance(value, int) else 0)
        for name in ("tasks", "drops", "fallbacks"):
            table = data.get(name, {})
            if isinstance(table, dict):
                getattr(out, name).update({str(k): int(v) for k, v in table.items()})
        return out
