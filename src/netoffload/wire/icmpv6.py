"""ICMPv6 (RFC 4443) echo and neighbor discovery (RFC 4861) solicitation/advertisement.

The checksum covers the IPv6 pseudo-header, so checksum work takes the
source and destination addresses. Other message types are kept as
``Icmpv6OtherRepr`` with their raw rest-of-header word and body.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv6Address
from typing import ClassVar, Final, TypeAlias

from netoffload.wire._icmp import (
    CHECKSUM,
    CODE,
    ECHO_IDENT,
    ECHO_SEQ,
    HEADER_LEN,
    REST,
    TYPE,
    IcmpEchoFields,
    IcmpRepr,
    IcmpView,
)
from netoffload.wire._view import check_range
from netoffload.wire.checksum import Buffer, pseudo_header_sum
from netoffload.wire.error import WireError
from netoffload.wire.ethernet import MacAddress
from netoffload.wire.ipv4 import IpProtocol

# The header offsets come from _icmp (both versions share them) and stay importable here.
__all__ = [
    "CHECKSUM",
    "CODE",
    "ECHO_IDENT",
    "ECHO_SEQ",
    "FLAG_OVERRIDE",
    "FLAG_ROUTER",
    "FLAG_SOLICITED",
    "HEADER_LEN",
    "NDP_OPTIONS",
    "NDP_TARGET",
    "REST",
    "TYPE",
    "Icmpv6EchoRepr",
    "Icmpv6NeighborAdvertRepr",
    "Icmpv6NeighborSolicitRepr",
    "Icmpv6OtherRepr",
    "Icmpv6Packet",
    "Icmpv6Repr",
    "Icmpv6Type",
    "Ipv6AddressLike",
    "NdpLinkAddress",
    "NdpOption",
    "NdpOptionType",
    "NdpRawOption",
]

NDP_TARGET: Final = slice(8, 24)
NDP_OPTIONS: Final = 24

FLAG_ROUTER: Final = 0x8000_0000
FLAG_SOLICITED: Final = 0x4000_0000
FLAG_OVERRIDE: Final = 0x2000_0000

#: An IPv6 address for the pseudo-header: an ``IPv6Address`` or 16 packed bytes.
Ipv6AddressLike: TypeAlias = IPv6Address | Buffer


class Icmpv6Type(IntEnum):
    """ICMPv6 message types the stack knows by name."""

    DEST_UNREACHABLE = 1
    PACKET_TOO_BIG = 2
    TIME_EXCEEDED = 3
    PARAMETER_PROBLEM = 4
    ECHO_REQUEST = 128
    ECHO_REPLY = 129
    ROUTER_SOLICIT = 133
    ROUTER_ADVERT = 134
    NEIGHBOR_SOLICIT = 135
    NEIGHBOR_ADVERT = 136
    REDIRECT = 137


class NdpOptionType(IntEnum):
    """Neighbor discovery option types."""

    SOURCE_LINK_ADDR = 1
    TARGET_LINK_ADDR = 2
    PREFIX_INFO = 3
    REDIRECTED_HEADER = 4
    MTU = 5


def _packed(addr: Ipv6AddressLike) -> Buffer:
    packed = addr.packed if isinstance(addr, IPv6Address) else addr
    if len(packed) != 16:
        raise WireError(f"an IPv6 address is 16 bytes, got {len(packed)}")
    return packed


def _pseudo_sum(src: Ipv6AddressLike, dst: Ipv6AddressLike, length: int) -> int:
    return pseudo_header_sum(_packed(src), _packed(dst), IpProtocol.ICMPV6, length)


def _check_range(what: str, value: int, top: int) -> None:
    check_range(f"ICMPv6 {what}", value, top)


class Icmpv6Packet(IcmpView):
    """A zero-copy view of one ICMPv6 message; the buffer is the whole message.

    ``Icmpv6Packet(buf)`` does not check anything; use ``Icmpv6Packet.checked``
    on untrusted input, after which no accessor can fail. The rest-of-header
    word holds the echo id/seq, NDP flags, an MTU or a pointer, by type.
    """

    __slots__ = ()

    NAME: ClassVar[str] = "ICMPv6"
    TYPES: ClassVar[type[IntEnum]] = Icmpv6Type

    def compute_checksum(self, src: Ipv6AddressLike, dst: Ipv6AddressLike) -> int:
        """The checksum the message should carry between ``src`` and ``dst``."""
        return self._checksum_for(_pseudo_sum(src, dst, len(self._buf)))

    def fill_checksum(self, src: Ipv6AddressLike, dst: Ipv6AddressLike) -> None:
        """Compute the checksum and write it into the checksum field."""
        self.checksum = self.compute_checksum(src, dst)

    def verify_checksum(self, src: Ipv6AddressLike, dst: Ipv6AddressLike) -> bool:
        """True when the checksum is correct for a message from ``src`` to ``dst``."""
        return self._checksum_ok(_pseudo_sum(src, dst, len(self._buf)))


# --- neighbor discovery options ---------------------------------------------


@dataclass(frozen=True, slots=True)
class NdpLinkAddress:
    """A source (1) or target (2) link-layer address option for Ethernet."""

    option_type: int
    address: MacAddress

    def __post_init__(self) -> None:
        if self.option_type not in (NdpOptionType.SOURCE_LINK_ADDR, NdpOptionType.TARGET_LINK_ADDR):
            raise WireError(f"NDP option type {self.option_type} is not a link-layer address")

    @property
    def wire_len(self) -> int:
        """Always 8."""
        return 8

    def _emit(self, view: memoryview, pos: int) -> None:
        view[pos : pos + 8] = bytes((self.option_type, 1)) + self.address.octets


@dataclass(frozen=True, slots=True)
class NdpRawOption:
    """Any other option, kept raw; ``data`` follows the type and length bytes."""

    option_type: int
    data: bytes

    def __post_init__(self) -> None:
        _check_range("NDP option type", self.option_type, 0xFF)
        n = 2 + len(self.data)
        if n % 8 or n > 8 * 255:
            raise WireError(f"NDP option of {n} bytes is not a multiple of 8 up to 2040")

    @property
    def wire_len(self) -> int:
        """Bytes on the wire, type and length included."""
        return 2 + len(self.data)

    def _emit(self, view: memoryview, pos: int) -> None:
        view[pos] = self.option_type
        view[pos + 1] = self.wire_len // 8
        view[pos + 2 : pos + self.wire_len] = self.data


NdpOption: TypeAlias = NdpLinkAddress | NdpRawOption


def _parse_ndp_options(data: memoryview, base: int) -> tuple[NdpOption, ...]:
    """The options in ``data``; ``base`` is its offset for error messages."""
    options: list[NdpOption] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise WireError("NDP option header runs past the end", base + pos)
        kind, units = data[pos], data[pos + 1]
        if units == 0:
            raise WireError("NDP option with length 0", base + pos + 1)
        end = pos + 8 * units
        if end > len(data):
            raise WireError(f"NDP option {kind} runs past the end", base + pos + 1)
        if kind in (NdpOptionType.SOURCE_LINK_ADDR, NdpOptionType.TARGET_LINK_ADDR) and units == 1:
            options.append(NdpLinkAddress(kind, MacAddress(bytes(data[pos + 2 : end]))))
        else:
            options.append(NdpRawOption(kind, bytes(data[pos + 2 : end])))
        pos = end
    return tuple(options)


# --- messages ------------------------------------------------------------------


class Icmpv6Repr(IcmpRepr):
    """An ICMPv6 message as checked values; ``parse`` picks the subclass."""

    __slots__ = ()

    NAME: ClassVar[str] = "ICMPv6"

    @abstractmethod
    def body_len(self) -> int:
        """Bytes after the 8-byte header."""

    @classmethod
    def parse(
        cls,
        data: Buffer,
        src: Ipv6AddressLike,
        dst: Ipv6AddressLike,
        *,
        verify_checksum: bool = True,
    ) -> Icmpv6Repr:
        """Parse and check one whole ICMPv6 message sent from ``src`` to ``dst``."""
        packet = Icmpv6Packet.checked(data)
        if verify_checksum and not packet.verify_checksum(src, dst):
            raise WireError(f"ICMPv6 checksum {packet.checksum:#06x} is wrong", CHECKSUM)
        kind, code, rest = packet.icmp_type, packet.code, packet.rest
        if kind in (Icmpv6Type.ECHO_REQUEST, Icmpv6Type.ECHO_REPLY) and code == 0:
            return Icmpv6EchoRepr(
                packet.echo_ident,
                packet.echo_seq,
                bytes(packet.data),
                reply=kind == Icmpv6Type.ECHO_REPLY,
            )
        if kind in (Icmpv6Type.NEIGHBOR_SOLICIT, Icmpv6Type.NEIGHBOR_ADVERT):
            # RFC 4861 7.1.1 / 7.1.2: receivers discard these, so they are errors here.
            if code != 0:
                raise WireError(f"neighbor discovery message with code {code}", CODE)
            buf = packet.buffer
            if len(buf) < NDP_OPTIONS:
                raise WireError(f"neighbor discovery message of {len(buf)} bytes is short", 0)
            target = IPv6Address(bytes(buf[NDP_TARGET]))
            options = _parse_ndp_options(buf[NDP_OPTIONS:], NDP_OPTIONS)
            if kind == Icmpv6Type.NEIGHBOR_SOLICIT:
                return Icmpv6NeighborSolicitRepr(target, options)
            return Icmpv6NeighborAdvertRepr(
                target,
                router=bool(rest & FLAG_ROUTER),
                solicited=bool(rest & FLAG_SOLICITED),
                override=bool(rest & FLAG_OVERRIDE),
                options=options,
            )
        return Icmpv6OtherRepr(kind, code, rest, bytes(packet.data))

    def buffer_len(self) -> int:
        """Bytes of the whole message."""
        return HEADER_LEN + self.body_len()

    def emit(
        self,
        buf: Buffer,
        offset: int = 0,
        *,
        src: Ipv6AddressLike,
        dst: Ipv6AddressLike,
        checksum: int | None = None,
    ) -> None:
        """Write the whole message into ``buf`` at ``offset``.

        The checksum (over the pseudo-header of ``src`` and ``dst``) is
        computed unless ``checksum`` is given (0 included).
        """
        view = self._reserve(buf, offset, checksum)
        self._write(view, offset, checksum, _pseudo_sum(src, dst, self.buffer_len()))

    def to_bytes(
        self, src: Ipv6AddressLike, dst: Ipv6AddressLike, *, checksum: int | None = None
    ) -> bytes:
        """The whole message as bytes, checksummed for ``src`` to ``dst``."""
        out = bytearray(self.buffer_len())
        self.emit(out, src=src, dst=dst, checksum=checksum)
        return bytes(out)


@dataclass(frozen=True, slots=True)
class Icmpv6EchoRepr(IcmpEchoFields, Icmpv6Repr):
    """An echo request, or an echo reply when ``reply`` is true."""

    ECHO_REQUEST: ClassVar[int] = Icmpv6Type.ECHO_REQUEST
    ECHO_REPLY: ClassVar[int] = Icmpv6Type.ECHO_REPLY

    def body_len(self) -> int:
        """Length of the echo data."""
        return len(self.data)

    def _emit_body(self, view: memoryview, pos: int) -> None:
        view[pos : pos + len(self.data)] = self.data


def _emit_ndp(
    view: memoryview, pos: int, target: IPv6Address, options: tuple[NdpOption, ...]
) -> None:
    view[pos : pos + 16] = target.packed
    pos += 16
    for option in options:
        option._emit(view, pos)
        pos += option.wire_len


@dataclass(frozen=True, slots=True)
class Icmpv6NeighborSolicitRepr(Icmpv6Repr):
    """A neighbor solicitation for ``target``."""

    target: IPv6Address
    options: tuple[NdpOption, ...] = ()

    @property
    def icmp_type(self) -> int:
        """Neighbor solicitation."""
        return Icmpv6Type.NEIGHBOR_SOLICIT

    @property
    def icmp_code(self) -> int:
        """Always 0."""
        return 0

    @property
    def rest(self) -> int:
        """Reserved, zero."""
        return 0

    def body_len(self) -> int:
        """Target address and options."""
        return 16 + sum(o.wire_len for o in self.options)

    def _emit_body(self, view: memoryview, pos: int) -> None:
        _emit_ndp(view, pos, self.target, self.options)


@dataclass(frozen=True, slots=True)
class Icmpv6NeighborAdvertRepr(Icmpv6Repr):
    """A neighbor advertisement for ``target`` with the R, S and O flags."""

    target: IPv6Address
    router: bool = False
    solicited: bool = False
    override: bool = False
    options: tuple[NdpOption, ...] = ()

    @property
    def icmp_type(self) -> int:
        """Neighbor advertisement."""
        return Icmpv6Type.NEIGHBOR_ADVERT

    @property
    def icmp_code(self) -> int:
        """Always 0."""
        return 0

    @property
    def rest(self) -> int:
        """The flags; the reserved bits are zero."""
        return (
            (FLAG_ROUTER if self.router else 0)
            | (FLAG_SOLICITED if self.solicited else 0)
            | (FLAG_OVERRIDE if self.override else 0)
        )

    def body_len(self) -> int:
        """Target address and options."""
        return 16 + sum(o.wire_len for o in self.options)

    def _emit_body(self, view: memoryview, pos: int) -> None:
        _emit_ndp(view, pos, self.target, self.options)


@dataclass(frozen=True, slots=True)
class Icmpv6OtherRepr(Icmpv6Repr):
    """Any other message, kept raw: type, code, rest-of-header word, body."""

    kind: int
    code: int
    rest_word: int
    data: bytes = b""

    def __post_init__(self) -> None:
        _check_range("type", self.kind, 0xFF)
        _check_range("code", self.code, 0xFF)
        _check_range("rest of header", self.rest_word, 0xFFFFFFFF)
        if self.kind in (Icmpv6Type.NEIGHBOR_SOLICIT, Icmpv6Type.NEIGHBOR_ADVERT):
            raise WireError("use the neighbor discovery reprs for types 135 and 136")

    @property
    def icmp_type(self) -> int:
        """The type as given."""
        return self.kind

    @property
    def icmp_code(self) -> int:
        """The code as given."""
        return self.code

    @property
    def rest(self) -> int:
        """The rest-of-header word as given."""
        return self.rest_word

    def body_len(self) -> int:
        """Length of the body as given."""
        return len(self.data)

    def _emit_body(self, view: memoryview, pos: int) -> None:
        view[pos : pos + len(self.data)] = self.data
