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

    On transmit a frame may come in two pieces, ``head`` then ``data`` (a
    stack's headers, and a view of its send buffer): a device gathers them
    (``writev``, or one copy into its own buffer) so the payload is never
    joined on the way. ``head`` is empty for a frame in one piece, and always
    on receive.
    """

    data: Buffer
    tx: TxRequest = NO_REQUEST
    rx: RxInfo = NO_INFO
    head: Buffer = b""

    def __len__(self) -> int:
        return len(self.head) + len(self.data)

    def frame(self) -> Buffer:
        """The whole frame in one piece (a copy only when it comes in two)."""
        if not self.head:
            return self.data
        return b"".join((self.head, self.data))

    def flat(self) -> Packet:
        """This packet with its frame in one piece (itself when it already is)."""
        if not self.head:
            return self
        return Packet(self.frame(), self.tx, self.rx)
