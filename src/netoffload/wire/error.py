"""The one error the wire layer raises."""

from __future__ import annotations


class WireError(ValueError):
    """A buffer is not a valid header of the kind asked for.

    ``offset`` is the byte offset, from the start of the buffer handed to the
    parser, of the field that is wrong (``None`` when no single field is).
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.message = message
        self.offset = offset
        super().__init__(message if offset is None else f"{message} (at offset {offset})")
