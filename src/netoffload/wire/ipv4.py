"""IPv4 headers (RFC 791), options carried through byte for byte."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address
from typing import ClassVar, Final

from netoffload.wire._ip import IpAddressView
from netoffload.wire._view import check_range, writable_view
from netoffload.wire.checksum import Buffer, internet_checksum, ones_sum
from netoffload.wire.error import WireError

VER_IHL: Final = 0
DSCP_ECN: Final = 1
TOTAL_LEN: Final = 2
IDENT: Final = 4
FLAGS_FRAG: Final = 6
TTL: Final = 8
PROTOCOL: Final = 9
CHECKSUM: Final = 10
SRC: Final = slice(12, 16)
DST: Final = slice(16, 20)
HEADER_LEN: Final = 20
MAX_HEADER_LEN: Final = 60
MAX_OPTIONS_LEN: Final = MAX_HEADER_LEN - HEADER_LEN

FLAG_DF: Final = 0x4000
FLAG_MF: Final = 0x2000
FRAG_OFFSET_MASK: Final = 0x1FFF

_U16 = struct.Struct("!H")
#: The fixed header up to the addresses: ver/ihl, tos, len, id, flags/frag, ttl, proto, csum.
_FIXED = struct.Struct("!BBHHHBBH")


class IpProtocol(IntEnum):
    """IP protocol numbers (IPv4 protocol field, IPv6 next header)."""

    HOPOPT = 0
    ICMP = 1
    IGMP = 2
    IPV4 = 4
    TCP = 6
    UDP = 17
    IPV6 = 41
    IPV6_ROUTE = 43
    IPV6_FRAG = 44
    GRE = 47
    ESP = 50
    AH = 51
    ICMPV6 = 58
    IPV6_NONXT = 59
    IPV6_OPTS = 60
    SCTP = 132
    UDPLITE = 136


def ip_protocol(value: int) -> int:
    """``value`` as an ``IpProtocol`` member when it has a name, else the plain int."""
    try:
        return IpProtocol(value)
    except ValueError:
        return value


class Ipv4Packet(IpAddressView[IPv4Address]):
    """A zero-copy view of an IPv4 packet.

    ``Ipv4Packet(buf)`` does not check anything; use ``Ipv4Packet.checked(buf)``
    on untrusted input, after which no accessor can fail. Bytes past
    ``total_len`` (Ethernet padding) are allowed and are not payload.
    """

    __slots__ = ()

    SRC: ClassVar[slice] = SRC
    DST: ClassVar[slice] = DST

    def check_len(self) -> None:
        """Raise ``WireError`` unless the version and every length field fit the buffer."""
        n = len(self._buf)
        if n < HEADER_LEN:
            raise WireError(f"IPv4 packet of {n} bytes is shorter than {HEADER_LEN}", 0)
        if self.version != 4:
            raise WireError(f"IP version {self.version}, expected 4", VER_IHL)
        if self.ihl < 5:
            raise WireError(f"IPv4 IHL {self.ihl} is below 5", VER_IHL)
        if self.header_len > n:
            raise WireError(
                f"IPv4 header of {self.header_len} bytes overruns a {n}-byte buffer", VER_IHL
            )
        if self.total_len < self.header_len:
            raise WireError(
                f"IPv4 total length {self.total_len} is less than the header length "
                f"{self.header_len}",
                TOTAL_LEN,
            )
        if self.total_len > n:
            raise WireError(
                f"IPv4 total length {self.total_len} overruns a {n}-byte buffer", TOTAL_LEN
            )

    @property
    def version(self) -> int:
        """IP version (4 for a valid packet)."""
        return self._buf[VER_IHL] >> 4

    @property
    def ihl(self) -> int:
        """Header length in 32-bit words."""
        return self._buf[VER_IHL] & 0x0F

    @property
    def header_len(self) -> int:
        """Header length in bytes."""
        return (self._buf[VER_IHL] & 0x0F) * 4

    @property
    def dscp(self) -> int:
        """Differentiated services code point."""
        return self._buf[DSCP_ECN] >> 2

    @dscp.setter
    def dscp(self, value: int) -> None:
        buf = self._writable()
        buf[DSCP_ECN] = ((value & 0x3F) << 2) | (buf[DSCP_ECN] & 0x03)

    @property
    def ecn(self) -> int:
        """Explicit congestion notification bits."""
        return self._buf[DSCP_ECN] & 0x03

    @ecn.setter
    def ecn(self, value: int) -> None:
        buf = self._writable()
        buf[DSCP_ECN] = (buf[DSCP_ECN] & 0xFC) | (value & 0x03)

    @property
    def total_len(self) -> int:
        """Header plus payload length in bytes."""
        return self._u16(TOTAL_LEN)

    @total_len.setter
    def total_len(self, value: int) -> None:
        self._set_u16(TOTAL_LEN, value)

    @property
    def ident(self) -> int:
        """Identification field."""
        return self._u16(IDENT)

    @ident.setter
    def ident(self, value: int) -> None:
        self._set_u16(IDENT, value)

    def _flags_frag(self) -> int:
        return self._u16(FLAGS_FRAG)

    @property
    def dont_frag(self) -> bool:
        """The DF flag."""
        return bool(self._flags_frag() & FLAG_DF)

    @dont_frag.setter
    def dont_frag(self, value: bool) -> None:
        word = self._flags_frag() & ~FLAG_DF
        self._set_u16(FLAGS_FRAG, word | (FLAG_DF if value else 0))

    @property
    def more_frags(self) -> bool:
        """The MF flag."""
        return bool(self._flags_frag() & FLAG_MF)

    @more_frags.setter
    def more_frags(self, value: bool) -> None:
        word = self._flags_frag() & ~FLAG_MF
        self._set_u16(FLAGS_FRAG, word | (FLAG_MF if value else 0))

    @property
    def frag_offset(self) -> int:
        """Fragment offset in 8-byte units, as on the wire."""
        return self._flags_frag() & FRAG_OFFSET_MASK

    @frag_offset.setter
    def frag_offset(self, value: int) -> None:
        word = self._flags_frag() & ~FRAG_OFFSET_MASK
        self._set_u16(FLAGS_FRAG, word | (value & FRAG_OFFSET_MASK))

    @property
    def ttl(self) -> int:
        """Time to live."""
        return self._buf[TTL]

    @ttl.setter
    def ttl(self, value: int) -> None:
        self._set_u8(TTL, value)

    @property
    def protocol(self) -> int:
        """The payload's protocol (an ``IpProtocol`` member when known)."""
        return ip_protocol(self._buf[PROTOCOL])

    @protocol.setter
    def protocol(self, value: int) -> None:
        self._set_u8(PROTOCOL, value)

    @property
    def checksum(self) -> int:
        """Header checksum field."""
        return self._u16(CHECKSUM)

    @checksum.setter
    def checksum(self, value: int) -> None:
        self._set_u16(CHECKSUM, value)

    def _address(self, packed: bytes) -> IPv4Address:
        return IPv4Address(packed)

    @property
    def options(self) -> memoryview:
        """The option bytes between the fixed header and the payload (no copy)."""
        return self._buf[HEADER_LEN : self.header_len]

    @property
    def payload(self) -> memoryview:
        """The bytes from the end of the header to ``total_len`` (no copy)."""
        return self._buf[self.header_len : self.total_len]

    def compute_checksum(self) -> int:
        """The checksum the header should carry (the field itself is skipped)."""
        header = self._buf[: self.header_len]
        return internet_checksum(header[CHECKSUM + 2 :], ones_sum(header[:CHECKSUM]))

    def fill_checksum(self) -> None:
        """Compute the header checksum and write it into the checksum field."""
        self.checksum = self.compute_checksum()

    def verify_checksum(self) -> bool:
        """True when the header checksum is correct."""
        return internet_checksum(self._buf[: self.header_len]) == 0


@dataclass(frozen=True, slots=True)
class Ipv4Repr:
    """An IPv4 header as checked values.

    ``frag_offset`` is in 8-byte units, as on the wire. ``options`` are the raw
    option bytes (a multiple of 4, at most 40), kept byte for byte.
    """

    src: IPv4Address
    dst: IPv4Address
    protocol: int
    payload_len: int
    ttl: int = 64
    dscp: int = 0
    ecn: int = 0
    ident: int = 0
    dont_frag: bool = False
    more_frags: bool = False
    frag_offset: int = 0
    options: bytes = b""

    def __post_init__(self) -> None:
        for name, value, top in (
            ("protocol", self.protocol, 0xFF),
            ("ttl", self.ttl, 0xFF),
            ("dscp", self.dscp, 0x3F),
            ("ecn", self.ecn, 0x03),
            ("ident", self.ident, 0xFFFF),
            ("frag_offset", self.frag_offset, FRAG_OFFSET_MASK),
        ):
            check_range(f"IPv4 {name}", value, top)
        if len(self.options) % 4 or len(self.options) > MAX_OPTIONS_LEN:
            raise WireError(
                f"IPv4 options are {len(self.options)} bytes; need a multiple of 4, at most 40"
            )
        if not 0 <= self.payload_len <= 0xFFFF - self.header_len:
            raise WireError(f"IPv4 payload length {self.payload_len} does not fit")

    @classmethod
    def parse(cls, data: Buffer, *, verify_checksum: bool = True) -> Ipv4Repr:
        """Parse and check the IPv4 header at the start of ``data``."""
        packet = Ipv4Packet.checked(data)
        if verify_checksum and not packet.verify_checksum():
            raise WireError(f"IPv4 header checksum {packet.checksum:#06x} is wrong", CHECKSUM)
        return cls(
            src=packet.src,
            dst=packet.dst,
            protocol=packet.protocol,
            payload_len=packet.total_len - packet.header_len,
            ttl=packet.ttl,
            dscp=packet.dscp,
            ecn=packet.ecn,
            ident=packet.ident,
            dont_frag=packet.dont_frag,
            more_frags=packet.more_frags,
            frag_offset=packet.frag_offset,
            options=bytes(packet.options),
        )

    @property
    def header_len(self) -> int:
        """Header length in bytes, options included."""
        return HEADER_LEN + len(self.options)

    def buffer_len(self) -> int:
        """Header plus payload length in bytes (the total length field)."""
        return self.header_len + self.payload_len

    def emit(self, buf: Buffer, offset: int = 0, *, checksum: int | None = None) -> None:
        """Write this header into ``buf`` at ``offset``.

        The checksum is computed unless ``checksum`` is given (0 included, e.g.
        for a device that fills it in).
        """
        view = writable_view(buf)
        end = offset + self.header_len
        if offset < 0 or end > len(view):
            raise WireError(f"buffer too short for a {self.header_len}-byte header", offset)
        flags = (
            (FLAG_DF if self.dont_frag else 0)
            | (FLAG_MF if self.more_frags else 0)
            | self.frag_offset
        )
        _FIXED.pack_into(
            view,
            offset,
            0x40 | (self.header_len // 4),
            (self.dscp << 2) | self.ecn,
            self.buffer_len(),
            self.ident,
            flags,
            self.ttl,
            self.protocol,
            0,
        )
        view[offset + 12 : offset + 16] = self.src.packed
        view[offset + 16 : offset + 20] = self.dst.packed
        view[offset + HEADER_LEN : end] = self.options
        if checksum is None:
            checksum = internet_checksum(view[offset:end])
        elif not 0 <= checksum <= 0xFFFF:
            raise WireError(f"IPv4 checksum {checksum} not in 0..0xffff")
        _U16.pack_into(view, offset + CHECKSUM, checksum)

    def to_bytes(self, payload: Buffer = b"", *, checksum: int | None = None) -> bytes:
        """The header followed by ``payload``, which must be ``payload_len`` bytes."""
        if len(payload) != self.payload_len:
            raise WireError(
                f"payload is {len(payload)} bytes but payload_len is {self.payload_len}"
            )
        out = bytearray(self.buffer_len())
        self.emit(out, checksum=checksum)
        out[self.header_len :] = payload
        return bytes(out)
