"""A guest's window: its own memory of fixed-size buffers, and the rings beside it.

Buffers ``[0, rx_buffers)`` are for receiving (the guest posts them, the NIC
side fills them), ``[rx_buffers, buffers)`` for transmitting (the guest builds
frames in them). A frame starts ``HEADROOM`` bytes into its buffer, so that a
tag or header can be put in front in place.

The geometry comes from the guest, so it is checked like any input from a
peer: every size is bounded and the window cannot claim more memory than
``MAX_WINDOW_BYTES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netoffload.device.vmdq.queue import QueueLayout

HEADROOM = 128
#: Room for a 64 KiB super-packet with its Ethernet header and a VLAN tag behind HEADROOM.
DEFAULT_BUFFER_BYTES = 69632
MIN_BUFFER_BYTES = HEADROOM + 2048
MAX_BUFFER_BYTES = 1 << 20
MAX_BUFFERS = 8192
MAX_WINDOW_BYTES = 1 << 30
#: The four rings every guest has: receive buffers posted, frames received, frames to
#: send, and everything the switch gives back (sent buffers, refused descriptors).
GUEST_RINGS = ("post", "rx", "tx", "done")
#: The queues between the switch and the NIC side, the same four roles for every pool.
NIC_QUEUES = ("fill", "rx", "tx", "done")


class GeometryError(ValueError):
    """A window geometry no switch accepts (the message is one line)."""


@dataclass(frozen=True, slots=True)
class WindowGeometry:
    """How a guest's window is cut into buffers."""

    rx_buffers: int = 64
    tx_buffers: int = 64
    buffer_bytes: int = DEFAULT_BUFFER_BYTES

    def __post_init__(self) -> None:
        for name in ("rx_buffers", "tx_buffers", "buffer_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise GeometryError(f"{name} must be an integer, not {value!r}")
        if not 1 <= self.rx_buffers <= MAX_BUFFERS or not 1 <= self.tx_buffers <= MAX_BUFFERS:
            raise GeometryError(f"a window has 1..{MAX_BUFFERS} receive and transmit buffers")
        b = self.buffer_bytes
        if not MIN_BUFFER_BYTES <= b <= MAX_BUFFER_BYTES or b % 64:
            raise GeometryError(
                f"buffer_bytes must be a multiple of 64 in {MIN_BUFFER_BYTES}..{MAX_BUFFER_BYTES}"
            )
        if self.total_bytes > MAX_WINDOW_BYTES:
            raise GeometryError(f"a window may hold at most {MAX_WINDOW_BYTES >> 20} MiB")

    @property
    def buffers(self) -> int:
        return self.rx_buffers + self.tx_buffers

    @property
    def total_bytes(self) -> int:
        return self.buffers * self.buffer_bytes

    @property
    def frame_capacity(self) -> int:
        """The largest frame a buffer holds."""
        return self.buffer_bytes - HEADROOM

    def offset(self, buffer: int) -> int:
        """Byte offset of ``buffer`` in the window."""
        return buffer * self.buffer_bytes

    def as_dict(self) -> dict[str, int]:
        return {
            "rx_buffers": self.rx_buffers,
            "tx_buffers": self.tx_buffers,
            "buffer_bytes": self.buffer_bytes,
        }

    @classmethod
    def from_dict(cls, data: Any) -> WindowGeometry:
        """The geometry a peer sent; ``GeometryError`` for anything else than one."""
        if not isinstance(data, dict) or set(data) != {"rx_buffers", "tx_buffers", "buffer_bytes"}:
            raise GeometryError("a window geometry is rx_buffers, tx_buffers and buffer_bytes")
        return cls(data["rx_buffers"], data["tx_buffers"], data["buffer_bytes"])


def guest_rings(capacity: int) -> QueueLayout:
    """The layout of a guest's rings memory with ``capacity`` entries per ring."""
    return QueueLayout(GUEST_RINGS, capacity)


def nic_queues(capacity: int) -> QueueLayout:
    """The layout of the switch's queues to the NIC side."""
    return QueueLayout(NIC_QUEUES, capacity)
