"""The reset a closed port sends (RFC 9293 §3.10.7.1)."""

from __future__ import annotations

from typing import Final

from netoffload.stack.tcp.segment import (
    ACK,
    EMPTY_PAYLOAD,
    FIN,
    RST,
    SYN,
    TcpSegmentIn,
    TcpSegmentOut,
)

_MASK32: Final = 0xFFFFFFFF
#: Irrelevant for a segment without payload; the RFC 9293 default MSS.
_MSS: Final = 536


def reset_for(seg: TcpSegmentIn) -> TcpSegmentOut | None:
    """The RST answering ``seg`` where no connection exists; ``None`` for an incoming RST.

    With ACK set: ``<SEQ=SEG.ACK><CTL=RST>``; without: ``<SEQ=0><ACK=SEG.SEQ+SEG.LEN>
    <CTL=RST,ACK>``, SEG.LEN counting SYN and FIN.
    """
    flags = seg.flags
    if flags & RST:
        return None
    if flags & ACK:
        return TcpSegmentOut(seg.ack, 0, RST, 0, b"", EMPTY_PAYLOAD, _MSS, False, False)
    length = len(seg.payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
    return TcpSegmentOut(
        0, (seg.seq + length) & _MASK32, RST | ACK, 0, b"", EMPTY_PAYLOAD, _MSS, False, False
    )
