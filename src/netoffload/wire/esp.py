"""ESP (RFC 4303): the cleartext header view and value, and the trailer of a decrypted payload.

On the wire ESP is SPI, sequence number, then opaque bytes (IV, ciphertext,
ICV) whose layout depends on the security association; no crypto is done
here. Once decrypted, the plaintext ends with padding, the pad length and
the next header (section 2.4-2.6); ``EspTrailer`` reads and writes that end.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Final

from netoffload.wire._ipsec import SpiSequenceView
from netoffload.wire._view import byte_view, check_bits, writable_view
from netoffload.wire.checksum import Buffer
from netoffload.wire.error import WireError

SPI: Final = 0
SEQUENCE_NUMBER: Final = 4
HEADER_LEN: Final = 8
TRAILER_LEN: Final = 2
#: Next header 59: no next header, used by dummy packets (RFC 4303 section 2.6).
NEXT_HEADER_NONE: Final = 59

_HEADER = struct.Struct("!II")


class EspPacket(SpiSequenceView):
    """A zero-copy view of an ESP packet: SPI, sequence number, then opaque data.

    ``EspPacket.checked(buf)`` checks that the header fits, after which no
    accessor can fail.
    """

    __slots__ = ()

    SPI: ClassVar[int] = SPI
    SEQUENCE_NUMBER: ClassVar[int] = SEQUENCE_NUMBER

    def check_len(self) -> None:
        """Raise ``WireError`` unless the 8-byte header is there."""
        if len(self._buf) < HEADER_LEN:
            raise WireError(f"ESP packet of {len(self._buf)} bytes is shorter than 8", 0)

    @property
    def data(self) -> memoryview:
        """IV, ciphertext and ICV, as one opaque span (no copy)."""
        return self._buf[HEADER_LEN:]


@dataclass(frozen=True, slots=True)
class EspRepr:
    """The cleartext ESP header as checked values."""

    spi: int
    sequence_number: int

    def __post_init__(self) -> None:
        check_bits("SPI", self.spi, 32)
        check_bits("sequence number", self.sequence_number, 32)

    @classmethod
    def parse(cls, data: Buffer) -> EspRepr:
        """Parse and check the ESP header at the start of ``data``."""
        packet = EspPacket.checked(data)
        return cls(spi=packet.spi, sequence_number=packet.sequence_number)

    @property
    def header_len(self) -> int:
        """Bytes this header takes on the wire."""
        return HEADER_LEN

    def buffer_len(self, payload_len: int = 0) -> int:
        """Bytes of a packet with ``payload_len`` bytes of IV, ciphertext and ICV."""
        return HEADER_LEN + payload_len

    def emit(self, buf: Buffer, offset: int = 0, *, payload: Buffer = b"") -> None:
        """Write the header and the opaque ``payload`` into ``buf`` at ``offset``."""
        view = writable_view(buf)
        total = HEADER_LEN + len(payload)
        if offset < 0 or offset + total > len(view):
            raise WireError(f"buffer too short for a {total}-byte ESP packet", offset)
        _HEADER.pack_into(view, offset, self.spi, self.sequence_number)
        view[offset + HEADER_LEN : offset + total] = payload

    def to_bytes(self, payload: Buffer = b"") -> bytes:
        """The header followed by ``payload`` as new bytes."""
        out = bytearray(self.buffer_len(len(payload)))
        self.emit(out, payload=payload)
        return bytes(out)


def pad_len_for(payload_len: int, block_bytes: int = 4) -> int:
    """Padding so payload, padding and the 2-byte trailer fill whole blocks.

    The result is aligned to at least 4 bytes, as RFC 4303 section 2.4 requires.
    """
    if block_bytes < 1 or payload_len < 0:
        raise WireError("block size must be positive and payload length non-negative")
    align = block_bytes if block_bytes % 4 == 0 else block_bytes * 4
    return -(payload_len + TRAILER_LEN) % align


@dataclass(frozen=True, slots=True)
class EspTrailer:
    """The end of a decrypted ESP payload: pad length and next header.

    The padding itself is the default sequence 1, 2, 3, ... (section 2.4).
    """

    pad_len: int
    next_header: int

    def __post_init__(self) -> None:
        if not isinstance(self.pad_len, int) or not 0 <= self.pad_len <= 0xFF:
            raise WireError(f"pad length {self.pad_len!r} not in 0..255")
        if not isinstance(self.next_header, int) or not 0 <= self.next_header <= 0xFF:
            raise WireError(f"next header {self.next_header!r} not in 0..255")

    @classmethod
    def for_payload(cls, payload_len: int, next_header: int, block_bytes: int = 4) -> EspTrailer:
        """The trailer that pads ``payload_len`` bytes to the cipher's block size."""
        return cls(pad_len_for(payload_len, block_bytes), next_header)

    @classmethod
    def parse(
        cls, plaintext: Buffer, *, check_padding: bool = True
    ) -> tuple[memoryview, EspTrailer]:
        """Split a decrypted payload into (inner payload, trailer).

        With ``check_padding`` the padding must be the default 1, 2, 3, ...
        """
        view = byte_view(plaintext)
        n = len(view)
        if n < TRAILER_LEN:
            raise WireError(f"decrypted ESP payload of {n} bytes has no trailer", 0)
        pad_len, next_header = view[n - 2], view[n - 1]
        end = n - TRAILER_LEN - pad_len
        if end < 0:
            raise WireError(f"pad length {pad_len} exceeds the payload", n - 2)
        if check_padding and bytes(view[end : n - TRAILER_LEN]) != bytes(range(1, pad_len + 1)):
            raise WireError("ESP padding is not 1, 2, 3, ...", end)
        return view[:end], cls(pad_len, next_header)

    @property
    def trailer_len(self) -> int:
        """Padding plus the two trailer bytes."""
        return self.pad_len + TRAILER_LEN

    def to_bytes(self) -> bytes:
        """Padding, pad length and next header, as they follow the inner payload."""
        return bytes(range(1, self.pad_len + 1)) + bytes((self.pad_len, self.next_header))

    def emit(self, buf: Buffer, offset: int) -> None:
        """Write padding and trailer into ``buf`` at ``offset`` (the end of the payload)."""
        view = writable_view(buf)
        if offset < 0 or offset + self.trailer_len > len(view):
            raise WireError("buffer too short for the ESP trailer", offset)
        view[offset : offset + self.trailer_len] = self.to_bytes()
