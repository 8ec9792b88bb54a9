"""AH (RFC 4302): header view and value; the ICV is opaque bytes of SA-defined length."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Final

from netoffload.wire._ipsec import SpiSequenceView
from netoffload.wire._view import check_bits, writable_view
from netoffload.wire.checksum import Buffer
from netoffload.wire.error import WireError

NEXT_HEADER: Final = 0
PAYLOAD_LEN: Final = 1
RESERVED: Final = 2
SPI: Final = 4
SEQUENCE_NUMBER: Final = 8
ICV: Final = 12
FIXED_LEN: Final = 12
#: Largest header the 8-bit payload length can describe: (255 + 2) * 4 bytes.
MAX_HEADER_LEN: Final = (0xFF + 2) * 4

_HEADER = struct.Struct("!BBHII")


class AhPacket(SpiSequenceView):
    """A zero-copy view of an AH header and what follows it.

    ``AhPacket.checked(buf)`` checks the payload length field against the
    buffer, after which no accessor can fail.
    """

    __slots__ = ()

    SPI: ClassVar[int] = SPI
    SEQUENCE_NUMBER: ClassVar[int] = SEQUENCE_NUMBER

    def check_len(self) -> None:
        """Raise ``WireError`` unless the payload length field fits the buffer."""
        n = len(self._buf)
        if n < FIXED_LEN:
            raise WireError(f"AH header of {n} bytes is shorter than {FIXED_LEN}", 0)
        header_len = self.header_len
        if header_len < FIXED_LEN:
            raise WireError(f"AH payload length {self.payload_len} is below 1", PAYLOAD_LEN)
        if header_len > n:
            raise WireError(f"AH header of {header_len} bytes overruns {n} bytes", PAYLOAD_LEN)

    @property
    def next_header(self) -> int:
        """IP protocol number of what follows the AH header."""
        return self._buf[NEXT_HEADER]

    @next_header.setter
    def next_header(self, value: int) -> None:
        check_bits("next header", value, 8)
        self._set_u8(NEXT_HEADER, value)

    @property
    def payload_len(self) -> int:
        """The payload length field: header length in 32-bit words, minus 2."""
        return self._buf[PAYLOAD_LEN]

    @property
    def header_len(self) -> int:
        """Header length in bytes, ICV included."""
        return (self._buf[PAYLOAD_LEN] + 2) * 4

    @property
    def reserved(self) -> int:
        """The reserved field (zero when sent)."""
        return (self._buf[RESERVED] << 8) | self._buf[RESERVED + 1]

    @property
    def icv(self) -> memoryview:
        """Integrity check value, with any padding the SA adds (no copy).

        Writable when the buffer is, so that it can be zeroed while the ICV is
        computed and then filled in.
        """
        return self._buf[ICV : self.header_len]

    @property
    def payload(self) -> memoryview:
        """The bytes after the AH header (no copy)."""
        return self._buf[self.header_len :]


@dataclass(frozen=True, slots=True)
class AhRepr:
    """An AH header as checked values; ``icv`` must keep the header 4-byte aligned."""

    next_header: int
    spi: int
    sequence_number: int
    icv: bytes = b""

    def __post_init__(self) -> None:
        check_bits("next header", self.next_header, 8)
        check_bits("SPI", self.spi, 32)
        check_bits("sequence number", self.sequence_number, 32)
        if not isinstance(self.icv, bytes):
            raise WireError("the ICV must be bytes")
        if len(self.icv) % 4 or FIXED_LEN + len(self.icv) > MAX_HEADER_LEN:
            raise WireError(f"an ICV of {len(self.icv)} bytes is not a multiple of 4 up to 1016")

    @classmethod
    def parse(cls, data: Buffer) -> AhRepr:
        """Parse and check the AH header at the start of ``data``."""
        packet = AhPacket.checked(data)
        return cls(
            next_header=packet.next_header,
            spi=packet.spi,
            sequence_number=packet.sequence_number,
            icv=bytes(packet.icv),
        )

    @property
    def header_len(self) -> int:
        """Bytes this header takes on the wire."""
        return FIXED_LEN + len(self.icv)

    @property
    def payload_len(self) -> int:
        """The payload length field this header is sent with."""
        return self.header_len // 4 - 2

    def buffer_len(self, payload_len: int = 0) -> int:
        """Bytes of this header followed by ``payload_len`` bytes."""
        return self.header_len + payload_len

    def emit(self, buf: Buffer, offset: int = 0, *, payload: Buffer = b"") -> None:
        """Write the header (reserved field zero) and ``payload`` into ``buf`` at ``offset``."""
        view = writable_view(buf)
        total = self.header_len + len(payload)
        if offset < 0 or offset + total > len(view):
            raise WireError(f"buffer too short for {total} bytes of AH and payload", offset)
        _HEADER.pack_into(
            view, offset, self.next_header, self.payload_len, 0, self.spi, self.sequence_number
        )
        view[offset + ICV : offset + self.header_len] = self.icv
        view[offset + self.header_len : offset + total] = payload

    def to_bytes(self, payload: Buffer = b"") -> bytes:
        """The header followed by ``payload`` as new bytes."""
        out = bytearray(self.buffer_len(len(payload)))
        self.emit(out, payload=payload)
        return bytes(out)
