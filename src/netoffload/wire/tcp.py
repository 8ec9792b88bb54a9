"""TCP segment headers (RFC 9293): a zero-copy view, a checked value, options, checksum.

Options are values in wire order, NOPs and the end-of-list marker included,
so that emitting a parsed option list reproduces the original layout byte for
byte. Bytes after an end-of-list option are padding and are not kept; emit
fills them (and any shortfall to a 4-byte boundary) with zeros.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar, Final, Self, TypeAlias

from netoffload.wire._transport import (
    TransportView,
    emit_addresses,
    emitted_checksum,
    parse_addresses,
)
from netoffload.wire._view import byte_view, check_bits, writable_view
from netoffload.wire.checksum import IPPROTO_TCP, Address, Buffer, ChecksumKind
from netoffload.wire.error import WireError

SRC_PORT: Final = 0
DST_PORT: Final = 2
SEQ_NUMBER: Final = 4
ACK_NUMBER: Final = 8
#: Data offset (4 bits), reserved (3 bits), then the nine flag bits.
DATA_OFFSET_FLAGS: Final = 12
WINDOW: Final = 14
CHECKSUM: Final = 16
URGENT_POINTER: Final = 18
OPTIONS: Final = 20
HEADER_LEN: Final = 20
MAX_HEADER_LEN: Final = 60
MAX_OPTIONS_LEN: Final = MAX_HEADER_LEN - HEADER_LEN
MAX_SACK_BLOCKS: Final = 4

_FLAG_MASK: Final = 0x1FF
_U16 = struct.Struct("!H")
_HEADER = struct.Struct("!HHIIHHHH")
_TIMESTAMPS = struct.Struct("!II")


class TcpFlags(IntFlag):
    """The TCP control bits; ``AE`` (RFC 9768, formerly ``NS``) is the ninth."""

    FIN = 0x001
    SYN = 0x002
    RST = 0x004
    PSH = 0x008
    ACK = 0x010
    URG = 0x020
    ECE = 0x040
    CWR = 0x080
    AE = 0x100
    NS = 0x100


class TcpOptionKind(IntEnum):
    """Option kinds this module decodes; any other kind is kept as raw bytes."""

    EOL = 0
    NOP = 1
    MSS = 2
    WINDOW_SCALE = 3
    SACK_PERMITTED = 4
    SACK = 5
    TIMESTAMPS = 8


_KNOWN_KINDS: Final = frozenset(int(k) for k in TcpOptionKind)
_NO_FLAGS: Final = TcpFlags(0)


@dataclass(frozen=True, slots=True)
class TcpEndOfList:
    """End of option list (kind 0); what follows it is padding."""

    def to_bytes(self) -> bytes:
        """The option as it appears on the wire."""
        return b"\x00"


@dataclass(frozen=True, slots=True)
class TcpNoOperation:
    """No-operation (kind 1), used to align the next option."""

    def to_bytes(self) -> bytes:
        """The option as it appears on the wire."""
        return b"\x01"


@dataclass(frozen=True, slots=True)
class TcpMss:
    """Maximum segment size (kind 2)."""

    mss_bytes: int

    def __post_init__(self) -> None:
        check_bits("MSS", self.mss_bytes, 16)

    def to_bytes(self) -> bytes:
        """The option as it appears on the wire."""
        return b"\x02\x04" + _U16.pack(self.mss_bytes)


@dataclass(frozen=True, slots=True)
class TcpWindowScale:
    """Window scale shift count (kind 3, RFC 7323); kept as sent, even above 14."""

    shift: int

    def __post_init__(self) -> None:
        check_bits("window scale shift", self.shift, 8)

    def to_bytes(self) -> bytes:
        """The option as it appears on the wire."""
        return bytes((3, 3, self.shift))


@dataclass(frozen=True, slots=True)
class TcpSackPermitted:
    """SACK permitted (kind 4, RFC 2018)."""

    def to_bytes(self) -> bytes:
        """The option as it appears on the wire."""
        return b"\x04\x02"


@dataclass(frozen=True, slots=True)
class TcpSack:
    """Selective acknowledgment (kind 5, RFC 2018): 1 to 4 (left, right) edges."""

    blocks: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.blocks) <= MAX_SACK_BLOCKS:
            raise WireError(f"a SACK option holds 1 to 4 blocks, not {len(self.blocks)}")
        for left, right in self.blocks:
            check_bits("SACK edge", left, 32)
            check_bits("SACK edge", right, 32)

    def to_bytes(self) -> bytes:
        """The option as it appears on the wire."""
        out = bytearray((5, 2 + 8 * len(self.blocks)))
        for left, right in self.blocks:
            out += _TIMESTAMPS.pack(left, right)
        return bytes(out)


@dataclass(frozen=True, slots=True)
class TcpTimestamps:
    """Timestamps (kind 8, RFC 7323): the sender's clock and the echoed one."""

    tsval: int
    tsecr: int

    def __post_init__(self) -> None:
        check_bits("TSval", self.tsval, 32)
        check_bits("TSecr", self.tsecr, 32)

    def to_bytes(self) -> bytes:
        """The option as it appears on the wire."""
        return b"\x08\x0a" + _TIMESTAMPS.pack(self.tsval, self.tsecr)


@dataclass(frozen=True, slots=True)
class TcpUnknownOption:
    """An option of a kind this module does not decode, kept as its data bytes."""

    kind: int
    data: bytes

    def __post_init__(self) -> None:
        if self.kind in _KNOWN_KINDS:
            raise WireError(f"option kind {self.kind} has its own type")
        check_bits("option kind", self.kind, 8)
        if not isinstance(self.data, bytes) or len(self.data) > MAX_OPTIONS_LEN - 2:
            raise WireError(f"option data must be at most {MAX_OPTIONS_LEN - 2} bytes")

    def to_bytes(self) -> bytes:
        """The option as it appears on the wire."""
        return bytes((self.kind, 2 + len(self.data))) + self.data


TcpOption: TypeAlias = (
    TcpEndOfList
    | TcpNoOperation
    | TcpMss
    | TcpWindowScale
    | TcpSackPermitted
    | TcpSack
    | TcpTimestamps
    | TcpUnknownOption
)
_OPTION_TYPES: Final = (
    TcpEndOfList,
    TcpNoOperation,
    TcpMss,
    TcpWindowScale,
    TcpSackPermitted,
    TcpSack,
    TcpTimestamps,
    TcpUnknownOption,
)
_EOL: Final = TcpEndOfList()
_NOP: Final = TcpNoOperation()
_FIXED_LEN: Final[dict[int, int]] = {
    TcpOptionKind.MSS: 4,
    TcpOptionKind.WINDOW_SCALE: 3,
    TcpOptionKind.SACK_PERMITTED: 2,
    TcpOptionKind.TIMESTAMPS: 10,
}


def parse_options(data: Buffer, base_offset: int = OPTIONS) -> tuple[TcpOption, ...]:
    """Decode an option area; ``base_offset`` is only used in error offsets.

    Raises ``WireError`` on a length byte below 2, an option running past the
    area, or a known kind with the wrong length.
    """
    view = byte_view(data)
    n = len(view)
    out: list[TcpOption] = []
    i = 0
    while i < n:
        kind = view[i]
        if kind == TcpOptionKind.EOL:
            out.append(_EOL)
            break
        if kind == TcpOptionKind.NOP:
            out.append(_NOP)
            i += 1
            continue
        if i + 1 >= n:
            raise WireError(f"option kind {kind} has no length byte", base_offset + i)
        length = view[i + 1]
        if length < 2 or i + length > n:
            raise WireError(f"option kind {kind} has bad length {length}", base_offset + i + 1)
        body = view[i + 2 : i + length]
        expected = _FIXED_LEN.get(kind)
        if expected is not None and length != expected:
            raise WireError(
                f"option kind {kind} must be {expected} bytes, not {length}", base_offset + i + 1
            )
        out.append(_decode_option(kind, length, body, base_offset + i))
        i += length
    return tuple(out)


def _decode_option(kind: int, length: int, body: memoryview, offset: int) -> TcpOption:
    if kind == TcpOptionKind.MSS:
        return TcpMss(_U16.unpack_from(body)[0])
    if kind == TcpOptionKind.WINDOW_SCALE:
        return TcpWindowScale(body[0])
    if kind == TcpOptionKind.SACK_PERMITTED:
        return TcpSackPermitted()
    if kind == TcpOptionKind.TIMESTAMPS:
        tsval, tsecr = _TIMESTAMPS.unpack_from(body)
        return TcpTimestamps(tsval, tsecr)
    if kind == TcpOptionKind.SACK:
        count, rest = divmod(length - 2, 8)
        if rest or not 1 <= count <= MAX_SACK_BLOCKS:
            raise WireError(f"SACK option length {length} is not 2 + 8 * (1..4)", offset + 1)
        blocks = tuple(_TIMESTAMPS.unpack_from(body, 8 * k) for k in range(count))
        return TcpSack(blocks)
    return TcpUnknownOption(kind, bytes(body))


def options_bytes(options: tuple[TcpOption, ...]) -> bytes:
    """The option area for ``options``, zero-padded to a multiple of 4 bytes."""
    raw = b"".join(opt.to_bytes() for opt in options)
    return raw + bytes(-len(raw) % 4)


class TcpPacket(TransportView):
    """A zero-copy view of a TCP segment: the buffer is the header and the payload.

    ``TcpPacket(buf)`` checks nothing; ``TcpPacket.checked(buf)`` checks the
    header length and the options, after which no accessor can fail. Setters
    need a writable buffer (a ``bytearray`` or writable ``memoryview``).
    """

    __slots__ = ()

    PROTOCOL: ClassVar[int] = IPPROTO_TCP
    CHECKSUM: ClassVar[int] = CHECKSUM

    @classmethod
    def checked(cls, buf: Buffer, *, options: bool = True) -> Self:
        """A view of ``buf`` after ``check_len`` passes; then no accessor can fail.

        ``options=False`` checks the fixed header and the data offset only, as
        Linux's offload paths do (``tcp_gso_segment``, ``tcp_gro_receive``):
        then ``parsed_options`` parses on access and may raise ``WireError``.
        """
        view = cls(buf)
        if options:
            view.check_len()
        else:
            view._check_header()
        return view

    def check_len(self) -> None:
        """Raise ``WireError`` unless the header and its options are whole and well formed."""
        self._check_header()
        parse_options(self.options)

    def _check_header(self) -> None:
        n = len(self._buf)
        if n < HEADER_LEN:
            raise WireError(f"TCP segment of {n} bytes is shorter than {HEADER_LEN}", 0)
        header_len = self.header_len
        if header_len < HEADER_LEN:
            raise WireError(f"TCP data offset {header_len // 4} is below 5", DATA_OFFSET_FLAGS)
        if header_len > n:
            raise WireError(
                f"TCP header of {header_len} bytes overruns a {n}-byte segment", DATA_OFFSET_FLAGS
            )

    @property
    def seq_number(self) -> int:
        """Sequence number."""
        return self._u32(SEQ_NUMBER)

    @seq_number.setter
    def seq_number(self, value: int) -> None:
        self._put_u32(SEQ_NUMBER, "sequence number", value)

    @property
    def ack_number(self) -> int:
        """Acknowledgment number (meaningful when ACK is set)."""
        return self._u32(ACK_NUMBER)

    @ack_number.setter
    def ack_number(self, value: int) -> None:
        self._put_u32(ACK_NUMBER, "acknowledgment number", value)

    @property
    def header_len(self) -> int:
        """Header length in bytes (the data offset times 4)."""
        return (self._buf[DATA_OFFSET_FLAGS] >> 4) * 4

    @header_len.setter
    def header_len(self, value: int) -> None:
        if value % 4 or not HEADER_LEN <= value <= MAX_HEADER_LEN:
            raise WireError(f"TCP header length {value} is not a multiple of 4 in 20..60")
        buf = self._writable()
        buf[DATA_OFFSET_FLAGS] = (value // 4) << 4 | (buf[DATA_OFFSET_FLAGS] & 0x0F)

    @property
    def flags(self) -> TcpFlags:
        """The nine control bits."""
        return TcpFlags(self._u16(DATA_OFFSET_FLAGS) & _FLAG_MASK)

    @flags.setter
    def flags(self, value: int) -> None:
        check_bits("TCP flags", value, 9)
        word = self._u16(DATA_OFFSET_FLAGS)
        self._set_u16(DATA_OFFSET_FLAGS, (word & ~_FLAG_MASK) | int(value))

    @property
    def reserved_bits(self) -> int:
        """The three reserved bits between the data offset and the flags."""
        return (self._buf[DATA_OFFSET_FLAGS] >> 1) & 0x7

    @property
    def window_len(self) -> int:
        """Window field (before any window scaling)."""
        return self._u16(WINDOW)

    @window_len.setter
    def window_len(self, value: int) -> None:
        self._put_u16(WINDOW, "window", value)

    @property
    def urgent_pointer(self) -> int:
        """Urgent pointer (meaningful when URG is set)."""
        return self._u16(URGENT_POINTER)

    @urgent_pointer.setter
    def urgent_pointer(self, value: int) -> None:
        self._put_u16(URGENT_POINTER, "urgent pointer", value)

    @property
    def options(self) -> memoryview:
        """The raw option area, padding included (no copy)."""
        return self._buf[OPTIONS : self.header_len]

    @property
    def parsed_options(self) -> tuple[TcpOption, ...]:
        """The options decoded, in wire order."""
        return parse_options(self.options)

    @property
    def payload(self) -> memoryview:
        """The bytes after the header (no copy)."""
        return self._buf[self.header_len :]


@dataclass(frozen=True, slots=True)
class TcpRepr:
    """A TCP header as checked values; options in wire order (see the module doc)."""

    src_port: int
    dst_port: int
    seq_number: int
    ack_number: int = 0
    flags: TcpFlags = _NO_FLAGS
    window_len: int = 0
    urgent_pointer: int = 0
    options: tuple[TcpOption, ...] = ()

    def __post_init__(self) -> None:
        check_bits("source port", self.src_port, 16)
        check_bits("destination port", self.dst_port, 16)
        check_bits("sequence number", self.seq_number, 32)
        check_bits("acknowledgment number", self.ack_number, 32)
        check_bits("TCP flags", self.flags, 9)
        check_bits("window", self.window_len, 16)
        check_bits("urgent pointer", self.urgent_pointer, 16)
        if not isinstance(self.options, tuple):
            raise WireError("options must be a tuple")
        for opt in self.options:
            if not isinstance(opt, _OPTION_TYPES):
                raise WireError(f"{opt!r} is not a TCP option")
        if self.header_len > MAX_HEADER_LEN:
            raise WireError(f"options make a {self.header_len}-byte header, over 60")

    @classmethod
    def parse(
        cls,
        data: Buffer,
        *,
        src: Address | None = None,
        dst: Address | None = None,
        verify_checksum: bool = True,
    ) -> TcpRepr:
        """Parse and check the segment ``data`` (header and payload).

        With ``src`` and ``dst`` the checksum is verified too, unless
        ``verify_checksum`` is false.
        """
        packet = TcpPacket.checked(data)
        addresses = parse_addresses(src, dst, verify_checksum)
        if addresses is not None and not packet.verify_checksum(*addresses):
            raise WireError("TCP checksum is wrong", CHECKSUM)
        return cls(
            src_port=packet.src_port,
            dst_port=packet.dst_port,
            seq_number=packet.seq_number,
            ack_number=packet.ack_number,
            flags=packet.flags,
            window_len=packet.window_len,
            urgent_pointer=packet.urgent_pointer,
            options=packet.parsed_options,
        )

    @property
    def header_len(self) -> int:
        """Bytes this header takes on the wire, options and padding included."""
        raw = sum(len(opt.to_bytes()) for opt in self.options)
        return HEADER_LEN + raw + (-raw % 4)

    def buffer_len(self, payload_len: int = 0) -> int:
        """Bytes of a segment with this header and ``payload_len`` bytes of payload."""
        return self.header_len + payload_len

    def emit(
        self,
        buf: Buffer,
        offset: int = 0,
        *,
        payload: Buffer = b"",
        src: Address | None = None,
        dst: Address | None = None,
        checksum: int | ChecksumKind | None = None,
    ) -> None:
        """Write the header and ``payload`` into ``buf`` at ``offset``.

        ``checksum=None`` computes the checksum (``src`` and ``dst`` are then
        needed); ``checksum=PARTIAL`` writes the pseudo-header sum for a device
        to finish (Linux CHECKSUM_PARTIAL; ``src`` and ``dst`` needed too); any
        other value is written as given (0 included).
        """
        view = writable_view(buf)
        opts = options_bytes(self.options)
        header_len = HEADER_LEN + len(opts)
        total = header_len + len(payload)
        if offset < 0 or offset + total > len(view):
            raise WireError(f"buffer too short for a {total}-byte segment", offset)
        addresses = emit_addresses(src, dst, checksum)
        _HEADER.pack_into(
            view,
            offset,
            self.src_port,
            self.dst_port,
            self.seq_number,
            self.ack_number,
            (header_len // 4) << 12 | int(self.flags),
            self.window_len,
            checksum if isinstance(checksum, int) else 0,
            self.urgent_pointer,
        )
        view[offset + HEADER_LEN : offset + header_len] = opts
        view[offset + header_len : offset + total] = payload
        if addresses is not None:
            segment = view[offset : offset + total]
            value = emitted_checksum(segment, IPPROTO_TCP, addresses, checksum)
            _U16.pack_into(view, offset + CHECKSUM, value)

    def to_bytes(
        self,
        payload: Buffer = b"",
        *,
        src: Address | None = None,
        dst: Address | None = None,
        checksum: int | ChecksumKind | None = None,
    ) -> bytes:
        """The segment (header and ``payload``) as new bytes."""
        out = bytearray(self.buffer_len(len(payload)))
        self.emit(out, payload=payload, src=src, dst=dst, checksum=checksum)
        return bytes(out)
