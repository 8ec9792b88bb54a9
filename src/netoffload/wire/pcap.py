"""Capture files: classic pcap and pcapng writers, and small readers for both.

Timestamps are passed in as integer nanoseconds; nothing here reads a
clock. The writers only write to the file object they are handed (or to the
one file they open when handed a path), which is the one piece of I/O the
wire layer allows itself.

Formats: classic pcap as in draft-ietf-opsawg-pcap (magic ``a1b2c3d4`` for
microsecond, ``a1b23c4d`` for nanosecond timestamps); pcapng as in
draft-ietf-opsawg-pcapng (section header, interface description with
``if_tsresol``, enhanced packet blocks).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import BinaryIO, Final, Self, TypeAlias

from netoffload.wire.checksum import Buffer
from netoffload.wire.error import WireError

LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101
LINKTYPE_LINUX_SLL: Final = 113
DEFAULT_SNAPLEN: Final = 262144

PCAP_MAGIC_US: Final = 0xA1B2C3D4
PCAP_MAGIC_NS: Final = 0xA1B23C4D

BLOCK_SHB: Final = 0x0A0D0D0A
BLOCK_IDB: Final = 0x00000001
BLOCK_SPB: Final = 0x00000003
BLOCK_EPB: Final = 0x00000006
BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D
OPT_ENDOFOPT: Final = 0
OPT_COMMENT: Final = 1
OPT_SHB_USERAPPL: Final = 4
OPT_IF_NAME: Final = 2
OPT_IF_TSRESOL: Final = 9

_PCAP_HEADER = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")
_MAX_U32: Final = 0xFFFFFFFF

Target: TypeAlias = BinaryIO | str | os.PathLike[str]


def _split_ns(timestamp_ns: int, per_second: int) -> tuple[int, int]:
    if not isinstance(timestamp_ns, int) or timestamp_ns < 0:
        raise WireError(f"timestamp {timestamp_ns!r} must be a non-negative integer of ns")
    seconds, ns = divmod(timestamp_ns, 1_000_000_000)
    if seconds > _MAX_U32:
        raise WireError(f"timestamp {timestamp_ns} is past what pcap can hold")
    return seconds, ns * per_second // 1_000_000_000


class _Sink:
    """The file written to, and whether closing it is ours to do."""

    __slots__ = ("_file", "_owned")

    def __init__(self, target: Target) -> None:
        if isinstance(target, str | os.PathLike):
            self._file: BinaryIO = open(target, "wb")  # noqa: SIM115 (closed by close())
            self._owned = True
        else:
            self._file = target
            self._owned = False

    def write(self, data: Buffer) -> None:
        self._file.write(data)

    def close(self) -> None:
        if self._owned:
            self._file.close()
        else:
            self._file.flush()


class _Writer:
    """What both writers share: the sink, the timestamp unit, the snap length, closing."""

    def __init__(self, target: Target, *, nanosecond: bool, snaplen: int) -> None:
        self._per_second = 1_000_000_000 if nanosecond else 1_000_000
        self._snaplen = snaplen
        self._sink = _Sink(target)

    def _captured(self, frame: Buffer) -> tuple[memoryview, memoryview]:
        """The whole frame and the part of it that is kept (at most ``snaplen`` bytes)."""
        whole = memoryview(frame).cast("B")
        return whole, whole[: self._snaplen]

    def close(self) -> None:
        """Close the file if this writer opened it, else flush it."""
        self._sink.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PcapWriter(_Writer):
    """Writes a classic pcap file: ``write(frame, timestamp_ns)``, then ``close()``.

    ``nanosecond=True`` uses the nanosecond magic; otherwise timestamps are
    truncated to microseconds. Frames longer than ``snaplen`` are cut, with
    their original length recorded.
    """

    def __init__(
        self,
        target: Target,
        *,
        linktype: int = LINKTYPE_ETHERNET,
        nanosecond: bool = False,
        snaplen: int = DEFAULT_SNAPLEN,
    ) -> None:
        if not 0 < snaplen <= _MAX_U32 or not 0 <= linktype <= _MAX_U32:
            raise WireError("snaplen and linktype must fit in 32 bits (snaplen above 0)")
        super().__init__(target, nanosecond=nanosecond, snaplen=snaplen)
        magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
        self._sink.write(_PCAP_HEADER.pack(magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, frame: Buffer, timestamp_ns: int) -> None:
        """Append one frame captured at ``timestamp_ns``."""
        seconds, fraction = _split_ns(timestamp_ns, self._per_second)
        whole, data = self._captured(frame)
        self._sink.write(_PCAP_RECORD.pack(seconds, fraction, len(data), len(whole)))
        self._sink.write(data)


def _option(code: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise WireError(f"pcapng option of {len(value)} bytes is too long")
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def _options(items: list[tuple[int, bytes]]) -> bytes:
    if not items:
        return b""
    return b"".join(_option(code, value) for code, value in items) + _option(OPT_ENDOFOPT, b"")


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapngWriter(_Writer):
    """Writes a pcapng file with one Ethernet (by default) interface.

    Timestamps are stored in nanoseconds (``if_tsresol`` = 9) unless
    ``nanosecond=False`` (the pcapng default, microseconds). ``comment`` goes
    in the section header, ``if_name`` in the interface description, and each
    frame may carry its own comment.
    """

    def __init__(
        self,
        target: Target,
        *,
        linktype: int = LINKTYPE_ETHERNET,
        nanosecond: bool = True,
        snaplen: int = DEFAULT_SNAPLEN,
        if_name: str | None = None,
        comment: str | None = None,
        application: str | None = "netoffload",
    ) -> None:
        if not 0 <= linktype <= 0xFFFF or not 0 <= snaplen <= _MAX_U32:
            raise WireError("pcapng linktype must fit in 16 bits and snaplen in 32")
        super().__init__(target, nanosecond=nanosecond, snaplen=snaplen or _MAX_U32)
        shb_opts: list[tuple[int, bytes]] = []
        if comment is not None:
            shb_opts.append((OPT_COMMENT, comment.encode()))
        if application is not None:
            shb_opts.append((OPT_SHB_USERAPPL, application.encode()))
        shb = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + _options(shb_opts)
        idb_opts: list[tuple[int, bytes]] = []
        if if_name is not None:
            idb_opts.append((OPT_IF_NAME, if_name.encode()))
        if nanosecond:
            idb_opts.append((OPT_IF_TSRESOL, bytes([9])))
        idb = struct.pack("<HHI", linktype, 0, snaplen) + _options(idb_opts)
        self._sink.write(_block(BLOCK_SHB, shb) + _block(BLOCK_IDB, idb))

    def write(self, frame: Buffer, timestamp_ns: int, *, comment: str | None = None) -> None:
        """Append one frame captured at ``timestamp_ns`` as an enhanced packet block."""
        seconds, fraction = _split_ns(timestamp_ns, self._per_second)
        units = seconds * self._per_second + fraction
        whole, kept = self._captured(frame)
        data = bytes(kept)
        body = (
            struct.pack("<IIIII", 0, units >> 32, units & _MAX_U32, len(data), len(whole))
            + data
            + bytes(-len(data) % 4)
            + _options([] if comment is None else [(OPT_COMMENT, comment.encode())])
        )
        self._sink.write(_block(BLOCK_EPB, body))


# --- readers ------------------------------------------------------------------------

Source: TypeAlias = BinaryIO | str | os.PathLike[str]


@contextmanager
def _opened(source: Source) -> Iterator[BinaryIO]:
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            yield f
    else:
        yield source


def _read_exact(f: BinaryIO, n: int, what: str, offset: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise WireError(f"capture file ends inside {what}", offset)
    return data


def read_pcap(source: Source) -> Iterator[tuple[int, bytes]]:
    """Yield ``(timestamp_ns, frame)`` from a classic pcap file (either byte order)."""
    with _opened(source) as f:
        header = _read_exact(f, 24, "the file header", 0)
        magic_le = struct.unpack_from("<I", header)[0]
        magic_be = struct.unpack_from(">I", header)[0]
        if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            order, magic = "<", magic_le
        elif magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            order, magic = ">", magic_be
        else:
            raise WireError(f"not a pcap file (magic {magic_le:#010x})", 0)
        scale = 1 if magic == PCAP_MAGIC_NS else 1000
        record = struct.Struct(order + "IIII")
        offset = 24
        while True:
            head = f.read(16)
            if not head:
                return
            if len(head) != 16:
                raise WireError("capture file ends inside a record header", offset)
            seconds, fraction, incl_len, _orig_len = record.unpack(head)
            if incl_len > DEFAULT_SNAPLEN * 4:
                raise WireError(f"record of {incl_len} bytes is implausibly long", offset + 8)
            data = _read_exact(f, incl_len, "a record", offset + 16)
            yield seconds * 1_000_000_000 + fraction * scale, data
            offset += 16 + incl_len


def _tsresol_ns(value: int) -> tuple[int, int]:
    """(numerator, denominator) turning a timestamp in units of ``if_tsresol`` into ns."""
    exponent = value & 0x7F
    per_second = 2**exponent if value & 0x80 else 10**exponent
    return 1_000_000_000, per_second


def _walk_options(body: bytes, start: int, order: str) -> Iterator[tuple[int, bytes]]:
    pos = start
    while pos + 4 <= len(body):
        code, length = struct.unpack_from(order + "HH", body, pos)
        if code == OPT_ENDOFOPT:
            return
        value = body[pos + 4 : pos + 4 + length]
        if len(value) != length:
            raise WireError("pcapng option runs past its block")
        yield code, value
        pos += 4 + length + (-length % 4)


_SHB_BYTES = b"\x0a\x0d\x0d\x0a"


def read_pcapng(source: Source) -> Iterator[tuple[int, bytes]]:
    """Yield ``(timestamp_ns, frame)`` from the packet blocks of a pcapng file.

    Simple packet blocks (which carry no timestamp) are skipped, as are block
    types this reader does not know.
    """
    with _opened(source) as f:
        order = "<"
        interfaces: list[tuple[int, int]] = []
        offset = 0
        first = True
        while True:
            head = f.read(8)
            if not head:
                return
            if len(head) != 8:
                raise WireError("capture file ends inside a block header", offset)
            # The section header's type reads the same in both byte orders; every other
            # block's type is in the section's order.
            block_type = struct.unpack_from(order + "I", head)[0]
            if head[:4] == _SHB_BYTES:
                block_type = BLOCK_SHB
                magic = _read_exact(f, 4, "a section header", offset + 8)
                order = "<" if struct.unpack("<I", magic)[0] == BYTE_ORDER_MAGIC else ">"
                if struct.unpack(order + "I", magic)[0] != BYTE_ORDER_MAGIC:
                    raise WireError("bad pcapng byte-order magic", offset + 8)
                interfaces = []
                prefix = magic
            elif first:
                raise WireError("not a pcapng file (no section header first)", 0)
            else:
                prefix = b""
            first = False
            total = struct.unpack_from(order + "I", head, 4)[0]
            if total < 12 + len(prefix) or total % 4 or total > 1 << 26:
                raise WireError(f"bad pcapng block length {total}", offset + 4)
            body = prefix + _read_exact(f, total - 8 - len(prefix), "a block", offset + 8)
            body = body[:-4]
            if block_type == BLOCK_IDB:
                if len(body) < 8:
                    raise WireError("interface description block too short", offset)
                tsresol = 6
                for code, value in _walk_options(body, 8, order):
                    if code == OPT_IF_TSRESOL and value:
                        tsresol = value[0]
                interfaces.append(_tsresol_ns(tsresol))
            elif block_type == BLOCK_EPB:
                if len(body) < 20:
                    raise WireError("enhanced packet block too short", offset)
                iface, high, low, cap_len, _orig = struct.unpack_from(order + "IIIII", body)
                if iface >= len(interfaces):
                    raise WireError(f"packet on undeclared interface {iface}", offset + 8)
                if 20 + cap_len > len(body):
                    raise WireError("packet data runs past its block", offset + 20)
                num, den = interfaces[iface]
                yield ((high << 32) | low) * num // den, body[20 : 20 + cap_len]
            offset += total
