"""The one packet representation that crosses the device boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from netoffload.offload.extension import NO_INFO, NO_REQUEST, RxInfo, TxRequest

Buffer: TypeAlias = bytes | bytearray | memoryview


@dataclass(slots=True)
class Packet:
    """A frame (starting at its Ethernet header) plus its extension.

    ``tx`` is what the host asks on the way down; ``rx`` is what the device
    reports on the way up. ``data`` may be a memoryview into a device's
    buffer pool: it is not copied between layers.
    """

    data: Buffer
    tx: TxRequest = NO_REQUEST
    rx: RxInfo = NO_INFO

    def __len__(self) -> int:
        return len(self.data)
