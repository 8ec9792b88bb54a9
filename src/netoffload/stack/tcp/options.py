"""TCP options as the connection needs them: a fast parser and precomputed encodings.

``parse_options`` in ``netoffload.wire.tcp`` is the project's option parser;
this one reads the same bytes into the few fields a connection uses, without
building option objects, and agrees with it on every input (a property test
holds the two together): where ``parse_options`` raises, ``parse_segment_options``
returns ``None`` and the segment is dropped and counted. Duplicate options:
the last one wins, as in Linux's ``tcp_parse_options``.

The common case, exactly NOP, NOP, timestamps, is ``timestamps_only``: one
``unpack_from`` and one comparison.
"""

from __future__ import annotations

import struct
from typing import Final

#: NOP, NOP, kind 8, length 10 as one big-endian word.
TS_PREFIX: Final = 0x0101080A
TS_OPTION_LEN: Final = 12
#: With timestamps, 40 - 12 - 4 leaves room for three SACK blocks; without, four.
MAX_SACK_BLOCKS_WITH_TS: Final = 3
MAX_SACK_BLOCKS: Final = 4

_TS12 = struct.Struct("!III")
_unpack_ts12 = _TS12.unpack_from
_pack_ts12 = _TS12.pack
_U16 = struct.Struct("!H")
_PAIR = struct.Struct("!II")
_FIXED_LEN: Final = {2: 4, 3: 3, 4: 2, 8: 10}


def timestamps_only(raw: bytes | memoryview) -> tuple[int, int] | None:
    """(TSval, TSecr) when the options are exactly NOP, NOP, timestamps; else ``None``."""
    if len(raw) != TS_OPTION_LEN:
        return None
    head, tsval, tsecr = _unpack_ts12(raw)
    if head != TS_PREFIX:
        return None
    return tsval, tsecr


class ParsedOptions:
    """The options a connection acts on; ``None`` for each one absent."""

    __slots__ = ("mss", "sack", "sack_permitted", "tsecr", "tsval", "wscale")

    def __init__(self) -> None:
        self.mss: int | None = None
        self.wscale: int | None = None
        self.sack_permitted = False
        self.tsval: int | None = None
        self.tsecr: int | None = None
        self.sack: tuple[tuple[int, int], ...] | None = None

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in sorted(self.__slots__))
        return f"ParsedOptions({fields})"


def parse_segment_options(raw: bytes | memoryview) -> ParsedOptions | None:
    """Decode ``raw``; ``None`` exactly when ``netoffload.wire.tcp.parse_options`` would raise."""
    out = ParsedOptions()
    ts = timestamps_only(raw)
    if ts is not None:
        out.tsval, out.tsecr = ts
        return out
    n = len(raw)
    i = 0
    while i < n:
        kind = raw[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n:
            return None
        length = raw[i + 1]
        if length < 2 or i + length > n:
            return None
        expected = _FIXED_LEN.get(kind)
        if expected is not None and length != expected:
            return None
        if kind == 2:
            out.mss = _U16.unpack_from(raw, i + 2)[0]
        elif kind == 3:
            out.wscale = raw[i + 2]
        elif kind == 4:
            out.sack_permitted = True
        elif kind == 8:
            out.tsval, out.tsecr = _PAIR.unpack_from(raw, i + 2)
        elif kind == 5:
            count, rest = divmod(length - 2, 8)
            if rest or not 1 <= count <= MAX_SACK_BLOCKS:
                return None
            out.sack = tuple(_PAIR.unpack_from(raw, i + 2 + 8 * k) for k in range(count))
        elif length - 2 > 38:
            return None  # an unknown option longer than any header can hold
        i += length
    return out


def encode_timestamps(tsval: int, tsecr: int) -> bytes:
    """NOP, NOP, timestamps: the 12 bytes on every segment of a timestamp connection."""
    return _pack_ts12(TS_PREFIX, tsval, tsecr)


def encode_sack(blocks: list[tuple[int, int]]) -> bytes:
    """NOP, NOP, SACK with ``blocks`` (32-bit edges): 4 + 8·n bytes."""
    head = bytes((1, 1, 5, 2 + 8 * len(blocks)))
    return head + b"".join(_PAIR.pack(left, right) for left, right in blocks)


def encode_syn(
    mss: int, wscale: int | None, sack_permitted: bool, timestamps: tuple[int, int] | None
) -> bytes:
    """SYN or SYN-ACK options in Linux's layout (MSS, SACK-permitted with timestamps, wscale)."""
    out = b"\x02\x04" + _U16.pack(mss)
    if timestamps is not None:
        head = b"\x04\x02\x08\x0a" if sack_permitted else b"\x01\x01\x08\x0a"
        out += head + _PAIR.pack(*timestamps)
    elif sack_permitted:
        out += b"\x01\x01\x04\x02"
    if wscale is not None:
        out += bytes((1, 3, 3, wscale))
    return out
