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


@dataclass(slots=True)
class DeviceStats:
    """Mutable counters; ``as_dict`` gives a JSON-ready snapshot."""

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    tasks: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)

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
        self.tasks.update(other.tasks)
        self.drops.update(other.drops)

    def as_dict(self) -> dict[str, object]:
        return {
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tasks": dict(sorted(self.tasks.items())),
            "drops": dict(sorted(self.drops.items())),
        }
