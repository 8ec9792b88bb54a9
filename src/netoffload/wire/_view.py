"""What every header view shares: a flat byte memoryview, typed field access, range checks."""

from __future__ import annotations

import struct
from typing import Self, TypeAlias

from netoffload.wire.error import WireError

Buffer: TypeAlias = bytes | bytearray | memoryview

# Bound once: the accessors below run per packet.
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_unpack_u16 = _U16.unpack_from
_unpack_u32 = _U32.unpack_from
_pack_u16 = _U16.pack_into
_pack_u32 = _U32.pack_into


def byte_view(buf: Buffer) -> memoryview:
    """``buf`` as a one-dimensional memoryview of bytes, without copying."""
    view = memoryview(buf)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def writable_view(buf: Buffer) -> memoryview:
    """``byte_view(buf)``, refusing a read-only buffer (the target of an ``emit``)."""
    view = byte_view(buf)
    if view.readonly:
        raise WireError("cannot emit into a read-only buffer")
    return view


def check_range(what: str, value: int, top: int) -> None:
    """Raise ``WireError`` unless ``0 <= value <= top``."""
    if not 0 <= value <= top:
        raise WireError(f"{what} {value} not in 0..{top}")


def check_bits(what: str, value: int, bits: int) -> None:
    """Raise ``WireError`` unless ``value`` is an ``int`` that fits in ``bits`` unsigned bits."""
    if not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise WireError(f"{what} {value!r} does not fit in {bits} bits")


class HeaderView:
    """Base of the zero-copy header views: holds the buffer, guards the setters.

    A view over ``bytes`` is read-only (setters raise ``WireError``); over a
    ``bytearray`` or writable memoryview, setters write through. Subclasses
    that define ``check_len`` get ``checked`` from here.
    """

    __slots__ = ("_buf",)

    def __init__(self, buf: Buffer) -> None:
        self._buf = byte_view(buf)

    @classmethod
    def checked(cls, buf: Buffer) -> Self:
        """A view of ``buf`` after ``check_len`` passes; then no accessor can fail."""
        view = cls(buf)
        view.check_len()
        return view

    def check_len(self) -> None:
        """Raise ``WireError`` unless every accessor is safe on this buffer."""
        raise NotImplementedError

    def _writable(self) -> memoryview:
        if self._buf.readonly:
            raise WireError("cannot set a field of a read-only buffer")
        return self._buf

    def _u16(self, offset: int) -> int:
        value: int = _unpack_u16(self._buf, offset)[0]
        return value

    def _u32(self, offset: int) -> int:
        value: int = _unpack_u32(self._buf, offset)[0]
        return value

    # Setters check the value first, so a bad one is a WireError, never struct.error.
    def _set_u8(self, offset: int, value: int) -> None:
        check_bits(f"field at offset {offset}", value, 8)
        self._writable()[offset] = value

    def _set_u16(self, offset: int, value: int) -> None:
        check_bits(f"field at offset {offset}", value, 16)
        _pack_u16(self._writable(), offset, value)

    def _set_u32(self, offset: int, value: int) -> None:
        check_bits(f"field at offset {offset}", value, 32)
        _pack_u32(self._writable(), offset, value)

    def _put_u16(self, offset: int, what: str, value: int) -> None:
        """``_set_u16`` after ``check_bits``, for the views whose setters check values."""
        check_bits(what, value, 16)
        _pack_u16(self._writable(), offset, value)

    def _put_u32(self, offset: int, what: str, value: int) -> None:
        """``_set_u32`` after ``check_bits``, for the views whose setters check values."""
        check_bits(what, value, 32)
        _pack_u32(self._writable(), offset, value)

    @property
    def buffer(self) -> memoryview:
        """The whole underlying buffer."""
        return self._buf
