"""UDP datagram headers (RFC 768; RFC 8200 section 8.1 for IPv6): view, value, checksum.

A checksum field of 0 means "no checksum" over IPv4 and is invalid over
IPv6; a computed checksum of 0 is sent as 0xFFFF. The length field may be
shorter than the buffer (trailing bytes are not part of the datagram) but
never longer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Final

from netoffload.wire._transport import (
    TransportView,
    emit_addresses,
    emitted_checksum,
    parse_addresses,
)
from netoffload.wire._view import check_bits, writable_view
from netoffload.wire.checksum import IPPROTO_UDP, Address, Buffer, ChecksumKind, address_bytes
from netoffload.wire.error import WireError

SRC_PORT: Final = 0
DST_PORT: Final = 2
LENGTH: Final = 4
CHECKSUM: Final = 6
HEADER_LEN: Final = 8
MAX_LENGTH: Final = 0xFFFF

_U16 = struct.Struct("!H")
_HEADER = struct.Struct("!HHHH")


def _is_ipv6(src: Address, dst: Address) -> bool:
    n_src, n_dst = len(address_bytes(src)), len(address_bytes(dst))
    if n_src != n_dst or n_src not in (4, 16):
        raise WireError(f"addresses must both be 4 or 16 bytes, got {n_src} and {n_dst}")
    return n_src == 16


class UdpPacket(TransportView):
    """A zero-copy view of a UDP datagram.

    ``UdpPacket(buf)`` checks nothing; ``UdpPacket.checked(buf)`` checks the
    length field against the buffer, after which no accessor can fail. A
    source port of 0 means none; a checksum field of 0 means none was sent
    (IPv4 only).
    """

    __slots__ = ()

    PROTOCOL: ClassVar[int] = IPPROTO_UDP
    CHECKSUM: ClassVar[int] = CHECKSUM

    def check_len(self) -> None:
        """Raise ``WireError`` unless the header is whole and the length field fits the buffer."""
        n = len(self._buf)
        if n < HEADER_LEN:
            raise WireError(f"UDP datagram of {n} bytes is shorter than {HEADER_LEN}", 0)
        length = self.length
        if length < HEADER_LEN:
            raise WireError(f"UDP length field {length} is below {HEADER_LEN}", LENGTH)
        if length > n:
            raise WireError(f"UDP length field {length} overruns a {n}-byte buffer", LENGTH)

    def _covered(self) -> memoryview:
        return self.datagram

    @property
    def length(self) -> int:
        """Length field: header plus payload, in bytes."""
        return self._u16(LENGTH)

    @length.setter
    def length(self, value: int) -> None:
        self._put_u16(LENGTH, "UDP length", value)

    @property
    def datagram(self) -> memoryview:
        """Header and payload as the length field says (no copy)."""
        return self._buf[: self.length]

    @property
    def payload(self) -> memoryview:
        """The payload as the length field says (no copy)."""
        return self._buf[HEADER_LEN : self.length]

    def compute_checksum(self, src: Address, dst: Address) -> int:
        """The value the checksum field should hold (never 0), whatever it holds now."""
        return super().compute_checksum(src, dst) or 0xFFFF

    def verify_checksum(self, src: Address, dst: Address) -> bool:
        """True when the checksum is right; a 0 field passes over IPv4 only."""
        if self.checksum == 0:
            return not _is_ipv6(src, dst)
        return super().verify_checksum(src, dst)


@dataclass(frozen=True, slots=True)
class UdpRepr:
    """A UDP header as checked values; the length comes from the payload."""

    src_port: int
    dst_port: int

    def __post_init__(self) -> None:
        check_bits("source port", self.src_port, 16)
        check_bits("destination port", self.dst_port, 16)

    @classmethod
    def parse(
        cls,
        data: Buffer,
        *,
        src: Address | None = None,
        dst: Address | None = None,
        verify_checksum: bool = True,
    ) -> UdpRepr:
        """Parse and check the datagram ``data``.

        With ``src`` and ``dst`` the checksum is verified too (a 0 checksum
        passes over IPv4, fails over IPv6), unless ``verify_checksum`` is false.
        """
        packet = UdpPacket.checked(data)
        addresses = parse_addresses(src, dst, verify_checksum)
        if addresses is not None and not packet.verify_checksum(*addresses):
            if packet.checksum == 0:
                raise WireError("UDP over IPv6 must carry a checksum", CHECKSUM)
            raise WireError("UDP checksum is wrong", CHECKSUM)
        return cls(src_port=packet.src_port, dst_port=packet.dst_port)

    @property
    def header_len(self) -> int:
        """Bytes this header takes on the wire."""
        return HEADER_LEN

    def buffer_len(self, payload_len: int = 0) -> int:
        """Bytes of a datagram with ``payload_len`` bytes of payload."""
        return HEADER_LEN + payload_len

    def emit(
        self,
        buf: Buffer,
        offset: int = 0,
        *,
        payload: Buffer = b"",
        src: Address | None = None,
        dst: Address | None = None,
        checksum: int | ChecksumKind | None = None,
    ) -> None:
        """Write the header and ``payload`` into ``buf`` at ``offset``.

        ``checksum=None`` computes it (``src`` and ``dst`` are then needed; a
        computed 0 is written as 0xFFFF); ``checksum=PARTIAL`` writes the
        pseudo-header sum for a device to finish (Linux CHECKSUM_PARTIAL); any
        other value is written as given, so ``checksum=0`` sends no checksum
        over IPv4.
        """
        view = writable_view(buf)
        total = HEADER_LEN + len(payload)
        if total > MAX_LENGTH:
            raise WireError(f"UDP datagram of {total} bytes exceeds {MAX_LENGTH}")
        if offset < 0 or offset + total > len(view):
            raise WireError(f"buffer too short for a {total}-byte datagram", offset)
        addresses = emit_addresses(src, dst, checksum)
        _HEADER.pack_into(
            view,
            offset,
            self.src_port,
            self.dst_port,
            total,
            checksum if isinstance(checksum, int) else 0,
        )
        view[offset + HEADER_LEN : offset + total] = payload
        if addresses is not None:
            datagram = view[offset : offset + total]
            value = emitted_checksum(datagram, IPPROTO_UDP, addresses, checksum) or 0xFFFF
            _U16.pack_into(view, offset + CHECKSUM, value)

    def to_bytes(
        self,
        payload: Buffer = b"",
        *,
        src: Address | None = None,
        dst: Address | None = None,
        checksum: int | ChecksumKind | None = None,
    ) -> bytes:
        """The datagram (header and ``payload``) as new bytes."""
        out = bytearray(self.buffer_len(len(payload)))
        self.emit(out, payload=payload, src=src, dst=dst, checksum=checksum)
        return bytes(out)
