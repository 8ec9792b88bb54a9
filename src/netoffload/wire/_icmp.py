"""What ICMPv4 and ICMPv6 share: the 8-byte message header, its view and its emit."""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final

from netoffload.wire._view import HeaderView, check_range, writable_view
from netoffload.wire.checksum import Buffer, internet_checksum, ones_sum
from netoffload.wire.error import WireError

TYPE: Final = 0
CODE: Final = 1
CHECKSUM: Final = 2
REST: Final = 4
ECHO_IDENT: Final = 4
ECHO_SEQ: Final = 6
HEADER_LEN: Final = 8

_U16 = struct.Struct("!H")
_HEADER = struct.Struct("!BBHI")


class IcmpView(HeaderView):
    """The header fields every ICMP message has; the buffer is the whole message.

    Subclasses name their version (``NAME``) and their type enum (``TYPES``)
    and add the checksum methods, which differ in what they cover.
    """

    __slots__ = ()

    NAME: ClassVar[str]
    TYPES: ClassVar[type[IntEnum]]

    def check_len(self) -> None:
        """Raise ``WireError`` unless the 8-byte header is there."""
        n = len(self._buf)
        if n < HEADER_LEN:
            raise WireError(f"{self.NAME} message of {n} bytes is shorter than {HEADER_LEN}", 0)

    @property
    def icmp_type(self) -> int:
        """Message type (a member of the type enum when known)."""
        value = self._buf[TYPE]
        try:
            return self.TYPES(value)
        except ValueError:
            return value

    @icmp_type.setter
    def icmp_type(self, value: int) -> None:
        self._set_u8(TYPE, value)

    @property
    def code(self) -> int:
        """Message code."""
        return self._buf[CODE]

    @code.setter
    def code(self, value: int) -> None:
        self._set_u8(CODE, value)

    @property
    def checksum(self) -> int:
        """Checksum field."""
        return self._u16(CHECKSUM)

    @checksum.setter
    def checksum(self, value: int) -> None:
        self._set_u16(CHECKSUM, value)

    @property
    def rest(self) -> int:
        """The 32-bit rest-of-header word, whatever the type makes of it."""
        return self._u32(REST)

    @rest.setter
    def rest(self, value: int) -> None:
        self._set_u32(REST, value)

    @property
    def echo_ident(self) -> int:
        """Echo identifier."""
        return self._u16(ECHO_IDENT)

    @echo_ident.setter
    def echo_ident(self, value: int) -> None:
        self._set_u16(ECHO_IDENT, value)

    @property
    def echo_seq(self) -> int:
        """Echo sequence number."""
        return self._u16(ECHO_SEQ)

    @echo_seq.setter
    def echo_seq(self, value: int) -> None:
        self._set_u16(ECHO_SEQ, value)

    @property
    def data(self) -> memoryview:
        """Everything after the 8-byte header (no copy)."""
        return self._buf[HEADER_LEN:]

    def _checksum_for(self, initial: int) -> int:
        """The checksum the message should carry, ``initial`` being the pseudo-header sum."""
        return internet_checksum(self._buf[REST:], ones_sum(self._buf[:CHECKSUM], initial))

    def _checksum_ok(self, initial: int) -> bool:
        return internet_checksum(self._buf, initial) == 0


class IcmpRepr(ABC):
    """The header part of an ICMP message value; subclasses supply the body."""

    __slots__ = ()

    NAME: ClassVar[str]

    @property
    @abstractmethod
    def icmp_type(self) -> int:
        """Message type."""

    @property
    @abstractmethod
    def icmp_code(self) -> int:
        """Message code."""

    @property
    @abstractmethod
    def rest(self) -> int:
        """The 32-bit rest-of-header word."""

    @abstractmethod
    def buffer_len(self) -> int:
        """Bytes of the whole message."""

    @abstractmethod
    def _emit_body(self, view: memoryview, pos: int) -> None:
        """Write the bytes after the 8-byte header at ``pos``."""

    def _reserve(self, buf: Buffer, offset: int, checksum: int | None) -> memoryview:
        """``buf`` as a writable view with room for the message, ``checksum`` checked."""
        view = writable_view(buf)
        n = self.buffer_len()
        if offset < 0 or offset + n > len(view):
            raise WireError(f"buffer too short for a {n}-byte message", offset)
        if checksum is not None:
            check_range(f"{self.NAME} checksum", checksum, 0xFFFF)
        return view

    def _write(self, view: memoryview, offset: int, checksum: int | None, initial: int) -> None:
        """Write the message; a ``None`` checksum is computed from ``initial`` on."""
        _HEADER.pack_into(view, offset, self.icmp_type, self.icmp_code, 0, self.rest)
        self._emit_body(view, offset + HEADER_LEN)
        if checksum is None:
            checksum = internet_checksum(view[offset : offset + self.buffer_len()], initial)
        _U16.pack_into(view, offset + CHECKSUM, checksum)


@dataclass(frozen=True, slots=True)
class IcmpEchoFields:
    """An echo request, or an echo reply when ``reply`` is true.

    Mixed in ahead of a version's ``*Repr``, which names the two types.
    """

    NAME: ClassVar[str]
    ECHO_REQUEST: ClassVar[int]
    ECHO_REPLY: ClassVar[int]

    ident: int
    seq: int
    data: bytes = b""
    reply: bool = False

    def __post_init__(self) -> None:
        check_range(f"{self.NAME} echo identifier", self.ident, 0xFFFF)
        check_range(f"{self.NAME} echo sequence number", self.seq, 0xFFFF)

    @property
    def icmp_type(self) -> int:
        """Echo reply or echo request."""
        return self.ECHO_REPLY if self.reply else self.ECHO_REQUEST

    @property
    def icmp_code(self) -> int:
        """Always 0."""
        return 0

    @property
    def rest(self) -> int:
        """Identifier and sequence number."""
        return (self.ident << 16) | self.seq
