"""What crosses between the TCP core and the interface: one segment in, one (super-)segment out.

Both are named tuples of plain ints and buffers so that building and reading
one costs a tuple, not a checked object. The interface owns everything below
TCP: IP, checksums, the 4-tuple, and the cutting of an outgoing super-packet
into ``mss``-sized pieces (in software or by the device with TSO).
"""

from __future__ import annotations

from typing import Final, NamedTuple

from netoffload.wire.tcp import TcpFlags

# The flag bits as plain ints: per-segment arithmetic on IntFlag members costs more.
FIN: Final = int(TcpFlags.FIN)
SYN: Final = int(TcpFlags.SYN)
RST: Final = int(TcpFlags.RST)
PSH: Final = int(TcpFlags.PSH)
ACK: Final = int(TcpFlags.ACK)
URG: Final = int(TcpFlags.URG)
ECE: Final = int(TcpFlags.ECE)
CWR: Final = int(TcpFlags.CWR)


class TcpSegmentIn(NamedTuple):
    """One received segment, or a GRO super-packet standing for ``segments`` of them.

    ``payload`` is valid only during the call that receives it: the core
    copies what it keeps.
    """

    seq: int
    ack: int
    #: The nine raw flag bits (``netoffload.wire.TcpFlags`` values).
    flags: int
    #: The raw 16-bit window field, before window scaling.
    window: int
    #: The raw option bytes (padding included), ``b""`` when there are none.
    options: bytes | memoryview
    payload: memoryview
    #: How many wire segments this stands for (the GRO count).
    segments: int = 1
    #: The IP header carried ECN CE.
    ce: bool = False


class TcpSegmentOut(NamedTuple):
    """One segment to send, or a super-packet to be cut at ``mss`` (Linux GSO rules).

    When ``payload`` is longer than ``mss`` the pieces carry FIN and PSH on the
    last piece only and CWR on the first only. ``payload`` is a view into the
    connection's send buffer, which is not reused before it is acknowledged.
    """

    seq: int
    ack: int
    flags: int
    #: The 16-bit window field to write (already scaled down).
    window: int
    #: Encoded options, padded to a multiple of 4 bytes.
    options: bytes
    payload: memoryview
    #: Payload bytes per wire segment when the payload is cut.
    mss: int
    #: Mark the IP header ECT(0): new data only, never pure ACKs or retransmissions
    #: (RFC 3168 §6.1.4, §6.1.5).
    ect: bool
    retransmission: bool

    @property
    def segments(self) -> int:
        """How many wire segments this becomes once cut at ``mss`` (at least 1)."""
        n = len(self.payload)
        return max(1, -(-n // self.mss)) if self.mss > 0 else 1


EMPTY_PAYLOAD = memoryview(b"")
