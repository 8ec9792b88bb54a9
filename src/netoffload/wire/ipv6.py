"""IPv6 headers (RFC 8200) and the extension header chain.

Hop-by-hop options (0), routing (43), fragment (44) and destination options
(60) are walked; any other next header, AH (51) and ESP (50) included, ends
the chain and is reported as the upper-layer protocol.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import ClassVar, Final, NamedTuple, Self, TypeAlias

from netoffload.wire._ip import IpAddressView
from netoffload.wire._view import HeaderView, byte_view, check_range
from netoffload.wire.checksum import Buffer
from netoffload.wire.error import WireError
from netoffload.wire.ipv4 import IpProtocol, ip_protocol

VER_TC_FLOW: Final = 0
PAYLOAD_LEN: Final = 4
NEXT_HEADER: Final = 6
HOP_LIMIT: Final = 7
SRC: Final = slice(8, 24)
DST: Final = slice(24, 40)
HEADER_LEN: Final = 40

# Extension headers: next header and length bytes, then the rest.
EXT_NEXT_HEADER: Final = 0
EXT_LEN: Final = 1
EXT_MIN_LEN: Final = 8
FRAG_OFFSET_FLAGS: Final = 2
FRAG_IDENT: Final = 4
FRAG_HEADER_LEN: Final = 8
ROUTING_TYPE: Final = 2
ROUTING_SEGMENTS_LEFT: Final = 3
ROUTING_DATA: Final = 4
OPTIONS_DATA: Final = 2
MAX_EXT_HEADER_LEN: Final = 8 * 256

#: The walk gives up after this many extension headers (RFC 8200 uses at most 6 kinds).
MAX_EXT_HEADERS: Final = 16
#: The next header values the walk steps over.
EXTENSION_HEADERS: Final = frozenset(
    {IpProtocol.HOPOPT, IpProtocol.IPV6_ROUTE, IpProtocol.IPV6_FRAG, IpProtocol.IPV6_OPTS}
)

OPTION_PAD1: Final = 0
OPTION_PADN: Final = 1

_FIXED = struct.Struct("!IHBB")


def _writable_at(buf: Buffer, offset: int, length: int) -> memoryview:
    """``buf`` as a writable memoryview with ``length`` bytes free at ``offset``."""
    view = byte_view(buf)
    if view.readonly:
        raise WireError("cannot emit into a read-only buffer")
    if offset < 0 or offset + length > len(view):
        raise WireError(f"buffer too short for {length} bytes", offset)
    return view


class Ipv6Packet(IpAddressView[IPv6Address]):
    """A zero-copy view of an IPv6 packet (fixed header plus payload).

    ``Ipv6Packet(buf)`` does not check anything; use ``Ipv6Packet.checked(buf)``
    on untrusted input, after which no accessor can fail. Bytes past the
    payload length (Ethernet padding) are allowed and are not payload.
    """

    __slots__ = ()

    SRC: ClassVar[slice] = SRC
    DST: ClassVar[slice] = DST

    def check_len(self) -> None:
        """Raise ``WireError`` unless the version and the payload length fit the buffer."""
        n = len(self._buf)
        if n < HEADER_LEN:
            raise WireError(f"IPv6 packet of {n} bytes is shorter than {HEADER_LEN}", 0)
        if self.version != 6:
            raise WireError(f"IP version {self.version}, expected 6", VER_TC_FLOW)
        if HEADER_LEN + self.payload_len > n:
            raise WireError(
                f"IPv6 payload length {self.payload_len} overruns a {n}-byte buffer", PAYLOAD_LEN
            )

    @property
    def version(self) -> int:
        """IP version (6 for a valid packet)."""
        return self._buf[VER_TC_FLOW] >> 4

    @property
    def traffic_class(self) -> int:
        """Traffic class (DSCP and ECN)."""
        return (self._u32(VER_TC_FLOW) >> 20) & 0xFF

    @traffic_class.setter
    def traffic_class(self, value: int) -> None:
        word = (self._u32(VER_TC_FLOW) & ~(0xFF << 20)) | ((value & 0xFF) << 20)
        self._set_u32(VER_TC_FLOW, word)

    @property
    def flow_label(self) -> int:
        """20-bit flow label."""
        return self._u32(VER_TC_FLOW) & 0xFFFFF

    @flow_label.setter
    def flow_label(self, value: int) -> None:
        word = (self._u32(VER_TC_FLOW) & ~0xFFFFF) | (value & 0xFFFFF)
        self._set_u32(VER_TC_FLOW, word)

    @property
    def payload_len(self) -> int:
        """Bytes after the fixed header, extension headers included."""
        return self._u16(PAYLOAD_LEN)

    @payload_len.setter
    def payload_len(self, value: int) -> None:
        self._set_u16(PAYLOAD_LEN, value)

    @property
    def next_header(self) -> int:
        """The first next header value (an ``IpProtocol`` member when known)."""
        return ip_protocol(self._buf[NEXT_HEADER])

    @next_header.setter
    def next_header(self, value: int) -> None:
        self._set_u8(NEXT_HEADER, value)

    @property
    def hop_limit(self) -> int:
        """Hop limit."""
        return self._buf[HOP_LIMIT]

    @hop_limit.setter
    def hop_limit(self, value: int) -> None:
        self._set_u8(HOP_LIMIT, value)

    def _address(self, packed: bytes) -> IPv6Address:
        return IPv6Address(packed)

    @property
    def payload(self) -> memoryview:
        """The ``payload_len`` bytes after the fixed header (no copy)."""
        return self._buf[HEADER_LEN : HEADER_LEN + self.payload_len]


@dataclass(frozen=True, slots=True)
class Ipv6Repr:
    """The fixed IPv6 header as checked values."""

    src: IPv6Address
    dst: IPv6Address
    next_header: int
    payload_len: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    def __post_init__(self) -> None:
        check_range("IPv6 next header", self.next_header, 0xFF)
        check_range("IPv6 payload length", self.payload_len, 0xFFFF)
        check_range("IPv6 hop limit", self.hop_limit, 0xFF)
        check_range("IPv6 traffic class", self.traffic_class, 0xFF)
        check_range("IPv6 flow label", self.flow_label, 0xFFFFF)

    @classmethod
    def parse(cls, data: Buffer) -> Ipv6Repr:
        """Parse and check the fixed IPv6 header at the start of ``data``."""
        packet = Ipv6Packet.checked(data)
        return cls(
            src=packet.src,
            dst=packet.dst,
            next_header=packet.next_header,
            payload_len=packet.payload_len,
            hop_limit=packet.hop_limit,
            traffic_class=packet.traffic_class,
            flow_label=packet.flow_label,
        )

    @property
    def header_len(self) -> int:
        """Always 40: extension headers are separate values."""
        return HEADER_LEN

    def buffer_len(self) -> int:
        """Header plus payload length in bytes."""
        return HEADER_LEN + self.payload_len

    def emit(self, buf: Buffer, offset: int = 0) -> None:
        """Write this header into ``buf`` at ``offset``."""
        view = _writable_at(buf, offset, HEADER_LEN)
        first = (6 << 28) | (self.traffic_class << 20) | self.flow_label
        _FIXED.pack_into(view, offset, first, self.payload_len, self.next_header, self.hop_limit)
        view[offset + 8 : offset + 24] = self.src.packed
        view[offset + 24 : offset + 40] = self.dst.packed

    def to_bytes(self, payload: Buffer = b"") -> bytes:
        """The header followed by ``payload``, which must be ``payload_len`` bytes."""
        if len(payload) != self.payload_len:
            raise WireError(
                f"payload is {len(payload)} bytes but payload_len is {self.payload_len}"
            )
        out = bytearray(self.buffer_len())
        self.emit(out)
        out[HEADER_LEN:] = payload
        return bytes(out)


# --- extension headers -------------------------------------------------------


class Ipv6ExtHeader(HeaderView):
    """A zero-copy view of a hop-by-hop, routing or destination options header.

    These share a layout: next header, length in 8-byte units not counting
    the first 8, then ``data``. ``checked`` guarantees the whole header fits.
    """

    __slots__ = ()

    def check_len(self) -> None:
        """Raise ``WireError`` unless the whole header fits in the buffer."""
        n = len(self._buf)
        if n < EXT_MIN_LEN:
            raise WireError(f"IPv6 extension header of {n} bytes is shorter than 8", 0)
        if self.header_len > n:
            raise WireError(
                f"IPv6 extension header length {self.header_len} overruns {n} bytes", EXT_LEN
            )

    @property
    def next_header(self) -> int:
        """The header that follows."""
        return ip_protocol(self._buf[EXT_NEXT_HEADER])

    @next_header.setter
    def next_header(self, value: int) -> None:
        self._set_u8(EXT_NEXT_HEADER, value)

    @property
    def header_len(self) -> int:
        """The whole header's length in bytes."""
        return (self._buf[EXT_LEN] + 1) * 8

    @property
    def data(self) -> memoryview:
        """Everything after the next header and length bytes (no copy)."""
        return self._buf[2 : self.header_len]


class Ipv6FragmentHeader(HeaderView):
    """A zero-copy view of an IPv6 fragment header (always 8 bytes)."""

    __slots__ = ()

    def check_len(self) -> None:
        """Raise ``WireError`` unless the 8 bytes are there."""
        if len(self._buf) < FRAG_HEADER_LEN:
            raise WireError(f"IPv6 fragment header of {len(self._buf)} bytes is shorter than 8", 0)

    def _word(self) -> int:
        return self._u16(FRAG_OFFSET_FLAGS)

    @property
    def next_header(self) -> int:
        """The header that follows."""
        return ip_protocol(self._buf[EXT_NEXT_HEADER])

    @next_header.setter
    def next_header(self, value: int) -> None:
        self._set_u8(EXT_NEXT_HEADER, value)

    @property
    def frag_offset(self) -> int:
        """Fragment offset in 8-byte units, as on the wire."""
        return self._word() >> 3

    @frag_offset.setter
    def frag_offset(self, value: int) -> None:
        self._set_u16(FRAG_OFFSET_FLAGS, (value << 3) | (self._word() & 7))

    @property
    def more_frags(self) -> bool:
        """The M flag."""
        return bool(self._word() & 1)

    @more_frags.setter
    def more_frags(self, value: bool) -> None:
        self._set_u16(FRAG_OFFSET_FLAGS, (self._word() & ~1) | int(value))

    @property
    def ident(self) -> int:
        """Identification."""
        return self._u32(FRAG_IDENT)

    @ident.setter
    def ident(self, value: int) -> None:
        self._set_u32(FRAG_IDENT, value)


@dataclass(frozen=True, slots=True)
class Ipv6Option:
    """One TLV option of a hop-by-hop or destination options header.

    Pad1 (type 0) is the one option without a length byte; its ``data`` is
    empty. Padding is kept as options so that a header re-emits byte for byte.
    """

    option_type: int
    data: bytes = b""

    def __post_init__(self) -> None:
        check_range("IPv6 option type", self.option_type, 0xFF)
        if self.option_type == OPTION_PAD1 and self.data:
            raise WireError("a Pad1 option has no data")
        check_range("IPv6 option data length", len(self.data), 0xFF)

    @property
    def wire_len(self) -> int:
        """Bytes this option takes on the wire."""
        return 1 if self.option_type == OPTION_PAD1 else 2 + len(self.data)

    @classmethod
    def padding(cls, length: int) -> tuple[Ipv6Option, ...]:
        """Options that fill exactly ``length`` bytes (Pad1 or one PadN)."""
        if length == 0:
            return ()
        if length == 1:
            return (cls(OPTION_PAD1),)
        return (cls(OPTION_PADN, bytes(length - 2)),)


def pad_options(options: tuple[Ipv6Option, ...]) -> tuple[Ipv6Option, ...]:
    """``options`` followed by the padding that makes the header a multiple of 8."""
    used = OPTIONS_DATA + sum(o.wire_len for o in options)
    return options + Ipv6Option.padding(-used % 8)


def _parse_options(data: memoryview, base: int) -> tuple[Ipv6Option, ...]:
    """The TLV options in ``data``; ``base`` is its offset for error messages."""
    options = []
    pos = 0
    while pos < len(data):
        kind = data[pos]
        if kind == OPTION_PAD1:
            options.append(Ipv6Option(OPTION_PAD1))
            pos += 1
            continue
        if pos + 2 > len(data) or pos + 2 + data[pos + 1] > len(data):
            raise WireError(f"IPv6 option {kind} runs past the end of its header", base + pos)
        end = pos + 2 + data[pos + 1]
        options.append(Ipv6Option(kind, bytes(data[pos + 2 : end])))
        pos = end
    return tuple(options)


@dataclass(frozen=True, slots=True)
class _Ipv6OptionsRepr:
    """Shared body of the hop-by-hop and destination options headers."""

    PROTOCOL: ClassVar[int]

    next_header: int
    options: tuple[Ipv6Option, ...] = ()

    def __post_init__(self) -> None:
        check_range("IPv6 next header", self.next_header, 0xFF)
        used = OPTIONS_DATA + sum(o.wire_len for o in self.options)
        if used % 8 or used > MAX_EXT_HEADER_LEN:
            raise WireError(
                f"IPv6 options header would be {used} bytes; it must be a multiple of 8 "
                "(pad with pad_options())"
            )

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse and check the header at the start of ``data``."""
        header = Ipv6ExtHeader.checked(data)
        return cls(header.next_header, _parse_options(header.data, OPTIONS_DATA))

    @property
    def header_len(self) -> int:
        """Bytes this header takes on the wire."""
        return OPTIONS_DATA + sum(o.wire_len for o in self.options)

    def emit(self, buf: Buffer, offset: int = 0) -> None:
        """Write this header into ``buf`` at ``offset``."""
        n = self.header_len
        view = _writable_at(buf, offset, n)
        view[offset] = self.next_header
        view[offset + 1] = n // 8 - 1
        pos = offset + OPTIONS_DATA
        for option in self.options:
            view[pos] = option.option_type
            if option.option_type != OPTION_PAD1:
                view[pos + 1] = len(option.data)
                view[pos + 2 : pos + option.wire_len] = option.data
            pos += option.wire_len

    def to_bytes(self) -> bytes:
        """This header as bytes."""
        out = bytearray(self.header_len)
        self.emit(out)
        return bytes(out)


@dataclass(frozen=True, slots=True)
class Ipv6HopByHopRepr(_Ipv6OptionsRepr):
    """A hop-by-hop options header (next header 0)."""

    PROTOCOL: ClassVar[int] = IpProtocol.HOPOPT


@dataclass(frozen=True, slots=True)
class Ipv6DestOptionsRepr(_Ipv6OptionsRepr):
    """A destination options header (next header 60)."""

    PROTOCOL: ClassVar[int] = IpProtocol.IPV6_OPTS


@dataclass(frozen=True, slots=True)
class Ipv6RoutingRepr:
    """A routing header; ``data`` is the type-specific part after segments left."""

    PROTOCOL: ClassVar[int] = IpProtocol.IPV6_ROUTE

    next_header: int
    routing_type: int
    segments_left: int
    data: bytes = bytes(4)

    def __post_init__(self) -> None:
        check_range("IPv6 next header", self.next_header, 0xFF)
        check_range("IPv6 routing type", self.routing_type, 0xFF)
        check_range("IPv6 segments left", self.segments_left, 0xFF)
        n = ROUTING_DATA + len(self.data)
        if n % 8 or n > MAX_EXT_HEADER_LEN:
            raise WireError(f"IPv6 routing header would be {n} bytes, not a multiple of 8")

    @classmethod
    def parse(cls, data: Buffer) -> Ipv6RoutingRepr:
        """Parse and check the header at the start of ``data``."""
        header = Ipv6ExtHeader.checked(data)
        body = header.data
        return cls(header.next_header, body[0], body[1], bytes(body[2:]))

    @property
    def header_len(self) -> int:
        """Bytes this header takes on the wire."""
        return ROUTING_DATA + len(self.data)

    def emit(self, buf: Buffer, offset: int = 0) -> None:
        """Write this header into ``buf`` at ``offset``."""
        n = self.header_len
        view = _writable_at(buf, offset, n)
        view[offset : offset + ROUTING_DATA] = bytes(
            (self.next_header, n // 8 - 1, self.routing_type, self.segments_left)
        )
        view[offset + ROUTING_DATA : offset + n] = self.data

    def to_bytes(self) -> bytes:
        """This header as bytes."""
        out = bytearray(self.header_len)
        self.emit(out)
        return bytes(out)


@dataclass(frozen=True, slots=True)
class Ipv6FragmentRepr:
    """A fragment header; ``frag_offset`` is in 8-byte units, as on the wire."""

    PROTOCOL: ClassVar[int] = IpProtocol.IPV6_FRAG

    next_header: int
    frag_offset: int
    more_frags: bool
    ident: int

    def __post_init__(self) -> None:
        check_range("IPv6 next header", self.next_header, 0xFF)
        check_range("IPv6 fragment offset", self.frag_offset, 0x1FFF)
        check_range("IPv6 fragment identification", self.ident, 0xFFFFFFFF)

    @classmethod
    def parse(cls, data: Buffer) -> Ipv6FragmentRepr:
        """Parse and check the header at the start of ``data`` (reserved bits ignored)."""
        header = Ipv6FragmentHeader.checked(data)
        return cls(header.next_header, header.frag_offset, header.more_frags, header.ident)

    @property
    def header_len(self) -> int:
        """Always 8."""
        return FRAG_HEADER_LEN

    def emit(self, buf: Buffer, offset: int = 0) -> None:
        """Write this header into ``buf`` at ``offset`` (reserved bits zero)."""
        view = _writable_at(buf, offset, FRAG_HEADER_LEN)
        struct.pack_into(
            "!BBHI",
            view,
            offset,
            self.next_header,
            0,
            (self.frag_offset << 3) | int(self.more_frags),
            self.ident,
        )

    def to_bytes(self) -> bytes:
        """This header as bytes."""
        out = bytearray(FRAG_HEADER_LEN)
        self.emit(out)
        return bytes(out)


Ipv6ExtRepr: TypeAlias = Ipv6HopByHopRepr | Ipv6DestOptionsRepr | Ipv6RoutingRepr | Ipv6FragmentRepr

_EXT_PARSERS: Final[dict[int, type[Ipv6ExtRepr]]] = {
    IpProtocol.HOPOPT: Ipv6HopByHopRepr,
    IpProtocol.IPV6_ROUTE: Ipv6RoutingRepr,
    IpProtocol.IPV6_FRAG: Ipv6FragmentRepr,
    IpProtocol.IPV6_OPTS: Ipv6DestOptionsRepr,
}


class Ipv6ExtChain(NamedTuple):
    """The result of walking the extension headers of one IPv6 packet.

    ``upper_offset`` counts from the start of the IPv6 header. After a
    fragment header with a non-zero offset the walk stops: what follows is
    fragment data, and ``upper_protocol`` is that header's next header.
    """

    headers: tuple[Ipv6ExtRepr, ...]
    upper_protocol: int
    upper_offset: int


#: The extension headers Linux's GSO and GRO step over (``INET6_PROTO_GSO_EXTHDR``).
GSO_WALKED: Final = frozenset({IpProtocol.HOPOPT, IpProtocol.IPV6_ROUTE, IpProtocol.IPV6_OPTS})


def gso_extension_walk(buf: Buffer, offset: int, next_header: int, end: int) -> tuple[int, int]:
    """Step over extension headers as Linux's offload paths do (``ipv6_gso_pull_exthdrs``).

    From the header of type ``next_header`` at ``offset`` in ``buf`` (the
    first after the fixed IPv6 header), hop-by-hop, routing and destination
    options headers are skipped by their length alone; a fragment header or
    any other type ends the walk. Returns ``(offset, type)`` of the header the
    walk stopped at. ``WireError`` when a header does not fit before ``end``.
    Unlike ``walk_extension_headers``, option contents and order are not
    judged: that is the receiving stack's business, not an offload's.
    """
    while next_header in GSO_WALKED:
        if end - offset < EXT_MIN_LEN:
            raise WireError("truncated IPv6 extension header", offset)
        length = (buf[offset + EXT_LEN] + 1) * 8
        if offset + length > end:
            raise WireError(f"IPv6 extension header length {length} overruns the packet", offset)
        next_header = buf[offset + EXT_NEXT_HEADER]
        offset += length
    return offset, next_header


def walk_extension_headers(packet: Buffer) -> Ipv6ExtChain:
    """Walk the extension headers of the IPv6 packet in ``packet``.

    Every length is checked against the IPv6 payload length; a hop-by-hop
    header anywhere but first, or more than ``MAX_EXT_HEADERS`` headers,
    raises ``WireError``.
    """
    ip = Ipv6Packet.checked(packet)
    end = HEADER_LEN + ip.payload_len
    buf = ip.buffer[:end]
    next_header = ip.next_header
    offset = HEADER_LEN
    headers: list[Ipv6ExtRepr] = []
    while next_header in EXTENSION_HEADERS:
        if len(headers) == MAX_EXT_HEADERS:
            raise WireError(f"more than {MAX_EXT_HEADERS} IPv6 extension headers", offset)
        if next_header == IpProtocol.HOPOPT and headers:
            raise WireError("IPv6 hop-by-hop header not first", offset)
        try:
            header = _EXT_PARSERS[next_header].parse(buf[offset:])
        except WireError as err:
            raise WireError(err.message, offset + (err.offset or 0)) from err
        headers.append(header)
        offset += header.header_len
        next_header = header.next_header
        if isinstance(header, Ipv6FragmentRepr) and header.frag_offset != 0:
            break
    return Ipv6ExtChain(tuple(headers), next_header, offset)
