"""ICMPv4 messages (RFC 792): echo, destination unreachable, time exceeded.

Other message types are kept as ``Icmpv4OtherRepr`` with their raw
rest-of-header word and body, so they re-emit byte for byte.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final

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
from netoffload.wire.checksum import Buffer
from netoffload.wire.error import WireError

# The header offsets come from _icmp (both versions share them) and stay importable here.
__all__ = [
    "CHECKSUM",
    "CODE",
    "ECHO_IDENT",
    "ECHO_SEQ",
    "HEADER_LEN",
    "NEXT_HOP_MTU",
    "REST",
    "TYPE",
    "DestUnreachableCode",
    "Icmpv4DestUnreachableRepr",
    "Icmpv4EchoRepr",
    "Icmpv4OtherRepr",
    "Icmpv4Packet",
    "Icmpv4Repr",
    "Icmpv4TimeExceededRepr",
    "Icmpv4Type",
    "TimeExceededCode",
]

NEXT_HOP_MTU: Final = 6


class Icmpv4Type(IntEnum):
    """ICMPv4 message types the stack knows by name."""

    ECHO_REPLY = 0
    DEST_UNREACHABLE = 3
    REDIRECT = 5
    ECHO_REQUEST = 8
    TIME_EXCEEDED = 11
    PARAMETER_PROBLEM = 12


class DestUnreachableCode(IntEnum):
    """Codes of destination unreachable messages."""

    NET = 0
    HOST = 1
    PROTOCOL = 2
    PORT = 3
    FRAG_NEEDED = 4
    SOURCE_ROUTE_FAILED = 5
    ADMIN_PROHIBITED = 13


class TimeExceededCode(IntEnum):
    """Codes of time exceeded messages."""

    TTL = 0
    REASSEMBLY = 1


def _check_range(what: str, value: int, top: int) -> None:
    check_range(f"ICMPv4 {what}", value, top)


class Icmpv4Packet(IcmpView):
    """A zero-copy view of one ICMPv4 message; the buffer is the whole message.

    ``Icmpv4Packet(buf)`` does not check anything; use ``Icmpv4Packet.checked``
    on untrusted input, after which no accessor can fail.
    """

    __slots__ = ()

    NAME: ClassVar[str] = "ICMPv4"
    TYPES: ClassVar[type[IntEnum]] = Icmpv4Type

    @property
    def next_hop_mtu(self) -> int:
        """Next-hop MTU of a "fragmentation needed" message (RFC 1191)."""
        return self._u16(NEXT_HOP_MTU)

    def compute_checksum(self) -> int:
        """The checksum the message should carry (the field itself is skipped)."""
        return self._checksum_for(0)

    def fill_checksum(self) -> None:
        """Compute the checksum and write it into the checksum field."""
        self.checksum = self.compute_checksum()

    def verify_checksum(self) -> bool:
        """True when the checksum is correct."""
        return self._checksum_ok(0)


class Icmpv4Repr(IcmpRepr):
    """An ICMPv4 message as checked values; ``parse`` picks the subclass."""

    __slots__ = ()

    NAME: ClassVar[str] = "ICMPv4"

    @property
    @abstractmethod
    def body(self) -> bytes:
        """The bytes after the 8-byte header."""

    @classmethod
    def parse(cls, data: Buffer, *, verify_checksum: bool = True) -> Icmpv4Repr:
        """Parse and check one whole ICMPv4 message."""
        packet = Icmpv4Packet.checked(data)
        if verify_checksum and not packet.verify_checksum():
            raise WireError(f"ICMPv4 checksum {packet.checksum:#06x} is wrong", CHECKSUM)
        kind, code, body = packet.icmp_type, packet.code, bytes(packet.data)
        if kind in (Icmpv4Type.ECHO_REQUEST, Icmpv4Type.ECHO_REPLY) and code == 0:
            return Icmpv4EchoRepr(
                packet.echo_ident, packet.echo_seq, body, reply=kind == Icmpv4Type.ECHO_REPLY
            )
        # The unused rest-of-header bits must be zero to be re-emitted exactly as a typed
        # message; anything else is kept raw.
        if (
            kind == Icmpv4Type.DEST_UNREACHABLE
            and packet.rest >> 16 == 0
            and (code == DestUnreachableCode.FRAG_NEEDED or packet.next_hop_mtu == 0)
        ):
            return Icmpv4DestUnreachableRepr(code, body, packet.next_hop_mtu)
        if kind == Icmpv4Type.TIME_EXCEEDED and code <= 1 and packet.rest == 0:
            return Icmpv4TimeExceededRepr(code, body)
        return Icmpv4OtherRepr(kind, code, packet.rest, body)

    def buffer_len(self) -> int:
        """Bytes of the whole message."""
        return HEADER_LEN + len(self.body)

    def _emit_body(self, view: memoryview, pos: int) -> None:
        body = self.body
        view[pos : pos + len(body)] = body

    def emit(self, buf: Buffer, offset: int = 0, *, checksum: int | None = None) -> None:
        """Write the whole message into ``buf`` at ``offset``.

        The checksum is computed unless ``checksum`` is given (0 included).
        """
        view = self._reserve(buf, offset, checksum)
        self._write(view, offset, checksum, 0)

    def to_bytes(self, *, checksum: int | None = None) -> bytes:
        """The whole message as bytes."""
        out = bytearray(self.buffer_len())
        self.emit(out, checksum=checksum)
        return bytes(out)


@dataclass(frozen=True, slots=True)
class Icmpv4EchoRepr(IcmpEchoFields, Icmpv4Repr):
    """An echo request, or an echo reply when ``reply`` is true."""

    ECHO_REQUEST: ClassVar[int] = Icmpv4Type.ECHO_REQUEST
    ECHO_REPLY: ClassVar[int] = Icmpv4Type.ECHO_REPLY

    @property
    def body(self) -> bytes:
        """The echo data."""
        return self.data


@dataclass(frozen=True, slots=True)
class Icmpv4DestUnreachableRepr(Icmpv4Repr):
    """Destination unreachable; ``quoted`` is the start of the offending datagram.

    ``next_hop_mtu`` is only meaningful with code ``FRAG_NEEDED`` (RFC 1191).
    """

    code: int
    quoted: bytes
    next_hop_mtu: int = 0

    def __post_init__(self) -> None:
        _check_range("code", self.code, 0xFF)
        _check_range("next-hop MTU", self.next_hop_mtu, 0xFFFF)
        if self.next_hop_mtu and self.code != DestUnreachableCode.FRAG_NEEDED:
            raise WireError("a next-hop MTU is only sent with code 4 (fragmentation needed)")

    @property
    def icmp_type(self) -> int:
        """Destination unreachable."""
        return Icmpv4Type.DEST_UNREACHABLE

    @property
    def icmp_code(self) -> int:
        """The reason."""
        return self.code

    @property
    def rest(self) -> int:
        """Unused, or the next-hop MTU in the low 16 bits."""
        return self.next_hop_mtu

    @property
    def body(self) -> bytes:
        """The quoted datagram."""
        return self.quoted


@dataclass(frozen=True, slots=True)
class Icmpv4TimeExceededRepr(Icmpv4Repr):
    """Time exceeded (TTL or reassembly); ``quoted`` is the offending datagram."""

    code: int
    quoted: bytes

    def __post_init__(self) -> None:
        _check_range("time exceeded code", self.code, 1)

    @property
    def icmp_type(self) -> int:
        """Time exceeded."""
        return Icmpv4Type.TIME_EXCEEDED

    @property
    def icmp_code(self) -> int:
        """TTL (0) or reassembly (1)."""
        return self.code

    @property
    def rest(self) -> int:
        """Unused."""
        return 0

    @property
    def body(self) -> bytes:
        """The quoted datagram."""
        return self.quoted


@dataclass(frozen=True, slots=True)
class Icmpv4OtherRepr(Icmpv4Repr):
    """Any other message, kept raw: type, code, rest-of-header word, body."""

    kind: int
    code: int
    rest_word: int
    data: bytes = b""

    def __post_init__(self) -> None:
        _check_range("type", self.kind, 0xFF)
        _check_range("code", self.code, 0xFF)
        _check_range("rest of header", self.rest_word, 0xFFFFFFFF)

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

    @property
    def body(self) -> bytes:
        """The body as given."""
        return self.data
