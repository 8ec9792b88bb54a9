"""UDP datagram headers (RFC 768; RFC 8200 section 8.1 for IPv6): view, value, checksum.

A checksum field of 0 means "no checksum" over IPv4 and is invalid over
IPv6; a computed checksum of 0 is sent as 0xFFFF. The length field may be
shorter than the buffer (trailing bytes are not part of the datagram) but
never longer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from netoffload.wire._view import HeaderView, writable_view
from netoffload.wire.checksum import (
    IPPROTO_UDP,
    Address,
    Buffer,
    add16,
    address_bytes,
    internet_checksum,
    ones_sum,
    pseudo_header_sum,
)
from netoffload.wire.error import WireError

SRC_PORT: Final = 0
DST_PORT: Final = 2
LENGTH: Final = 4
CHECKSUM: Final = 6
HEADER_LEN: Final = 8
MAX_LENGTH: Final = 0xFFFF

_U16 = struct.Struct("!H")
_HEADER = struct.Struct("!HHHH")


def _check_u16(name: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise WireError(f"{name} {value!r} does not fit in 16 bits")


def _is_ipv6(src: Address, dst: Address) -> bool:
    n_src, n_dst = len(address_bytes(src)), len(address_bytes(dst))
    if n_src != n_dst or n_src not in (4, 16):
        raise WireError(f"addresses must both be 4 or 16 bytes, got {n_src} and {n_dst}")
    return n_src == 16


class UdpPacket(HeaderView):
    """A zero-copy view of a UDP datagram.

    ``UdpPacket(buf)`` checks nothing; ``UdpPacket.checked(buf)`` checks the
    length field against the buffer, after which no accessor can fail.
    """

    __slots__ = ()

    @classmethod
    def checked(cls, buf: Buffer) -> UdpPacket:
        """A view of ``buf`` after checking the header and length field."""
        packet = cls(buf)
        packet.check_len()
        return packet

    def check_len(self) -> None:
        """Raise ``WireError`` unless every accessor is safe on this buffer."""
        n = len(self._buf)
        if n < HEADER_LEN:
            raise WireError(f"UDP datagram of {n} bytes is shorter than {HEADER_LEN}", 0)
        length = self.length
        if length < HEADER_LEN:
            raise WireError(f"UDP length field {length} is below {HEADER_LEN}", LENGTH)
        if length > n:
            raise WireError(f"UDP length field {length} overruns a {n}-byte buffer", LENGTH)

    def _put16(self, offset: int, name: str, value: int) -> None:
        _check_u16(name, value)
        _U16.pack_into(self._writable(), offset, value)

    @property
    def src_port(self) -> int:
        """Source port (0 when unused)."""
        value: int = _U16.unpack_from(self._buf, SRC_PORT)[0]
        return value

    @src_port.setter
    def src_port(self, value: int) -> None:
        self._put16(SRC_PORT, "source port", value)

    @property
    def dst_port(self) -> int:
        """Destination port."""
        value: int = _U16.unpack_from(self._buf, DST_PORT)[0]
        return value

    @dst_port.setter
    def dst_port(self, value: int) -> None:
        self._put16(DST_PORT, "destination port", value)

    @property
    def length(self) -> int:
        """Length field: header plus payload, in bytes."""
        value: int = _U16.unpack_from(self._buf, LENGTH)[0]
        return value

    @length.setter
    def length(self, value: int) -> None:
        self._put16(LENGTH, "UDP length", value)

    @property
    def checksum(self) -> int:
        """Checksum field as it is in the buffer (0: none was sent, IPv4 only)."""
        value: int = _U16.unpack_from(self._buf, CHECKSUM)[0]
        return value

    @checksum.setter
    def checksum(self, value: int) -> None:
        self._put16(CHECKSUM, "checksum", value)

    @property
    def datagram(self) -> memoryview:
        """Header and payload as the length field says (no copy)."""
        return self._buf[: self.length]

    @property
    def payload(self) -> memoryview:
        """The payload as the length field says (no copy)."""
        return self._buf[HEADER_LEN : self.length]

    def _sum(self, src: Address, dst: Address) -> int:
        datagram = self.datagram
        pseudo = pseudo_header_sum(src, dst, IPPROTO_UDP, len(datagram))
        return add16(pseudo, ones_sum(datagram))

    def compute_checksum(self, src: Address, dst: Address) -> int:
        """The value the checksum field should hold (never 0), whatever it holds now."""
        without_field = add16(self._sum(src, dst), ~self.checksum & 0xFFFF)
        return (~without_field & 0xFFFF) or 0xFFFF

    def verify_checksum(self, src: Address, dst: Address) -> bool:
        """True when the checksum is right; a 0 field passes over IPv4 only."""
        if self.checksum == 0:
            return not _is_ipv6(src, dst)
        return self._sum(src, dst) == 0xFFFF

    def fill_checksum(self, src: Address, dst: Address) -> None:
        """Compute the checksum and write it into the buffer."""
        self.checksum = self.compute_checksum(src, dst)


@dataclass(frozen=True, slots=True)
class UdpRepr:
    """A UDP header as checked values; the length comes from the payload."""

    src_port: int
    dst_port: int

    def __post_init__(self) -> None:
        _check_u16("source port", self.src_port)
        _check_u16("destination port", self.dst_port)

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
        if (src is None) != (dst is None):
            raise WireError("give both src and dst, or neither")
        if (
            verify_checksum
            and src is not None
            and dst is not None
            and not packet.verify_checksum(src, dst)
        ):
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
        checksum: int | None = None,
    ) -> None:
        """Write the header and ``payload`` into ``buf`` at ``offset``.

        ``checksum=None`` computes it (``src`` and ``dst`` are then needed; a
        computed 0 is written as 0xFFFF); any other value is written as given,
        so ``checksum=0`` sends no checksum over IPv4.
        """
        view = writable_view(buf)
        total = HEADER_LEN + len(payload)
        if total > MAX_LENGTH:
            raise WireError(f"UDP datagram of {total} bytes exceeds {MAX_LENGTH}")
        if offset < 0 or offset + total > len(view):
            raise WireError(f"buffer too short for a {total}-byte datagram", offset)
        if checksum is None and (src is None or dst is None):
            raise WireError("src and dst are needed to compute the checksum")
        if checksum is not None:
            _check_u16("checksum", checksum)
        _HEADER.pack_into(
            view, offset, self.src_port, self.dst_port, total, 0 if checksum is None else checksum
        )
        view[offset + HEADER_LEN : offset + total] = payload
        if checksum is None:
            assert src is not None and dst is not None
            pseudo = pseudo_header_sum(src, dst, IPPROTO_UDP, total)
            value = internet_checksum(view[offset : offset + total], pseudo) or 0xFFFF
            _U16.pack_into(view, offset + CHECKSUM, value)

    def to_bytes(
        self,
        payload: Buffer = b"",
        *,
        src: Address | None = None,
        dst: Address | None = None,
        checksum: int | None = None,
    ) -> bytes:
        """The datagram (header and ``payload``) as new bytes."""
        out = bytearray(self.buffer_len(len(payload)))
        self.emit(out, payload=payload, src=src, dst=dst, checksum=checksum)
        return bytes(out)
