"""What every header view shares: a flat byte memoryview and the writable check."""

from __future__ import annotations

from typing import TypeAlias

from netoffload.wire.error import WireError

Buffer: TypeAlias = bytes | bytearray | memoryview


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


class HeaderView:
    """Base of the zero-copy header views: holds the buffer, guards the setters.

    A view over ``bytes`` is read-only (setters raise ``WireError``); over a
    ``bytearray`` or writable memoryview, setters write through.
    """

    __slots__ = ("_buf",)

    def __init__(self, buf: Buffer) -> None:
        self._buf = byte_view(buf)

    def _writable(self) -> memoryview:
        if self._buf.readonly:
            raise WireError("cannot set a field of a read-only buffer")
        return self._buf

    @property
    def buffer(self) -> memoryview:
        """The whole underlying buffer."""
        return self._buf
