"""Receive-side scaling: the Toeplitz hash of Microsoft's RSS specification, per frame and batch.

The hash (``toeplitz_hash``) follows the specification's pseudo-code: for
every bit of the input, from the most significant bit of its first byte on,
XOR the leftmost 32 bits of the key into the result when the bit is set, then
shift the key left by one bit. The input ("hash type") is the specification's,
fields in network byte order:

* IPv4 with TCP or UDP: source address, destination address, source port,
  destination port (12 bytes); IPv4 alone: the two addresses (8 bytes).
* IPv6 with TCP or UDP: the same with 16-byte addresses (36 bytes); IPv6
  alone: the two addresses (32 bytes). The addresses are those of the fixed
  header (the specification's "Ex" types, which hash a home address option
  or a routing header's final destination instead, are not offered).

Which types a device hashes is an ``RssHashTypes`` set, and what each frame
got is reported as virtio does (``HashReport``, VIRTIO_NET_HASH_REPORT_*): a
TCP or UDP frame is hashed on its 4-tuple when its type is enabled, else on
its addresses when the plain IP type is; a fragment (which may not carry the
ports) always on its addresses; a frame without an intact IP header, or of a
type not enabled, is not hashed (report NONE, hash 0) and goes to the default
queue. The queue is ``table[hash % len(table)]`` (the hash's low bits, the
table's size a power of two), as both specifications have it.

**Batches.** The hash is linear over GF(2), so the hash of an input is the XOR
of one contribution per input byte. ``Rss`` precomputes, for every byte
position, a 256-entry table of 32-bit contributions; a batch is hashed by
gathering one table entry per byte of every frame and XOR-reducing each row,
with no per-frame or per-bit Python.

**Symmetric hashing** (``symmetric=True``) puts both directions of a flow on
one queue by sorting the input, as DPDK's "symmetric Toeplitz sort" does: the
two addresses are put in ascending order, and the two ports by themselves in
ascending order, before hashing. The result is no longer the specification's
value for the packet, only the same for both of its directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine.fields import Buffer, Fields, FrameBatch, extract
from netoffload.offload.caps import RssHashTypes
from netoffload.offload.extension import HashReport

U32Array: TypeAlias = npt.NDArray[np.uint32]
U8Array: TypeAlias = npt.NDArray[np.uint8]
IntArray: TypeAlias = npt.NDArray[np.int64]

#: The 40-byte key of the specification's verification suite (and of most NICs' defaults).
MICROSOFT_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)
#: The longest input: two IPv6 addresses and two ports.
MAX_INPUT_BYTES = 36
ALL_HASH_TYPES = (
    RssHashTypes.IPV4
    | RssHashTypes.TCP_IPV4
    | RssHashTypes.UDP_IPV4
    | RssHashTypes.IPV6
    | RssHashTypes.TCP_IPV6
    | RssHashTypes.UDP_IPV6
)
#: The default indirection table's size (virtio's and most NICs' common size).
DEFAULT_TABLE_SIZE = 128

_IPPROTO_TCP = 6
_IPPROTO_UDP = 17


def toeplitz_hash(key: bytes, data: bytes) -> int:
    """The Toeplitz hash of ``data`` under ``key``, exactly as the RSS specification computes it.

    ``key`` must hold at least ``len(data) + 4`` bytes (32 key bits per input bit window).
    """
    if len(key) < len(data) + 4:
        raise ValueError(f"a {len(key)}-byte key cannot hash {len(data)} bytes")
    k = int.from_bytes(key, "big")
    key_bits = len(key) * 8
    result = 0
    for i in range(len(data) * 8):
        if data[i >> 3] & (0x80 >> (i & 7)):
            result ^= (k >> (key_bits - 32 - i)) & 0xFFFFFFFF
    return result


def hash_input_ipv4(
    src: IPv4Address | str, dst: IPv4Address | str, ports: tuple[int, int] | None = None
) -> bytes:
    """The specification's IPv4 input: addresses, then (source, destination) ports if given."""
    data = IPv4Address(src).packed + IPv4Address(dst).packed
    if ports is not None:
        data += ports[0].to_bytes(2, "big") + ports[1].to_bytes(2, "big")
    return data


def hash_input_ipv6(
    src: IPv6Address | str, dst: IPv6Address | str, ports: tuple[int, int] | None = None
) -> bytes:
    """The specification's IPv6 input: addresses, then (source, destination) ports if given."""
    data = IPv6Address(src).packed + IPv6Address(dst).packed
    if ports is not None:
        data += ports[0].to_bytes(2, "big") + ports[1].to_bytes(2, "big")
    return data


def byte_tables(key: bytes, positions: int = MAX_INPUT_BYTES) -> U32Array:
    """``(positions, 256)`` contributions: entry ``[j, v]`` is the hash of byte ``v`` at ``j``.

    The hash of an input is the XOR of ``table[j, data[j]]`` over its bytes.
    """
    if len(key) < positions + 4:
        raise ValueError(f"a {len(key)}-byte key cannot hash {positions} bytes")
    k = int.from_bytes(key, "big")
    key_bits = len(key) * 8
    windows = np.array(
        [(k >> (key_bits - 32 - i)) & 0xFFFFFFFF for i in range(positions * 8)], dtype=np.uint32
    ).reshape(positions, 8)
    values = np.arange(256, dtype=np.uint32)
    tables = np.zeros((positions, 256), dtype=np.uint32)
    for bit in range(8):
        on = ((values >> np.uint32(7 - bit)) & np.uint32(1)).astype(bool)
        tables[:, on] ^= windows[:, bit : bit + 1]
    return tables


def _report_table(types: RssHashTypes) -> tuple[U8Array, npt.NDArray[np.bool_]]:
    """(report by ``version * 512 + proto * 2 + l4_ok``, whether a report hashes the ports)."""
    reports = np.zeros(7 * 512, dtype=np.uint8)
    for version, ip_type, l4_types in (
        (4, RssHashTypes.IPV4, ((6, RssHashTypes.TCP_IPV4), (17, RssHashTypes.UDP_IPV4))),
        (6, RssHashTypes.IPV6, ((6, RssHashTypes.TCP_IPV6), (17, RssHashTypes.UDP_IPV6))),
    ):
        plain = HashReport.IPV4 if version == 4 else HashReport.IPV6
        for proto in range(256):
            for l4_ok in (0, 1):
                code = plain if types & ip_type else HashReport.NONE
                for number, l4_type in l4_types:
                    if proto == number and l4_ok and types & l4_type:
                        code = _L4_REPORT[version, number]
                reports[version * 512 + proto * 2 + l4_ok] = code
    with_ports = np.zeros(len(HashReport), dtype=bool)
    for code in (HashReport.TCPV4, HashReport.UDPV4, HashReport.TCPV6, HashReport.UDPV6):
        with_ports[code] = True
    return reports, with_ports


_L4_REPORT = {
    (4, 6): HashReport.TCPV4,
    (4, 17): HashReport.UDPV4,
    (6, 6): HashReport.TCPV6,
    (6, 17): HashReport.UDPV6,
}


def default_table(queues: int, size: int = DEFAULT_TABLE_SIZE) -> tuple[int, ...]:
    """Queues spread round-robin over ``size`` entries (ethtool's default table)."""
    if queues < 1:
        raise ValueError("at least one queue")
    return tuple(i % queues for i in range(size))


@dataclass(frozen=True, slots=True, eq=False)
class RssResult:
    """Per frame: the hash (0 when not hashed), its ``HashReport`` value, and the queue."""

    hash: U32Array
    report: U8Array
    queue: IntArray

    def __len__(self) -> int:
        return len(self.hash)


class Rss:
    """A device's RSS settings: key, indirection table, hash types; hashes whole batches.

    ``table`` maps ``hash % len(table)`` to a queue (its size a power of two);
    frames that are not hashed go to ``default_queue``.
    """

    __slots__ = (
        "_family_tables",
        "_queues",
        "_reports",
        "_tables",
        "_with_ports",
        "default_queue",
        "hash_types",
        "key",
        "symmetric",
        "table",
    )

    def __init__(
        self,
        *,
        key: bytes = MICROSOFT_KEY,
        table: Sequence[int] | None = None,
        queues: int = 1,
        hash_types: RssHashTypes = ALL_HASH_TYPES,
        symmetric: bool = False,
        default_queue: int = 0,
    ) -> None:
        if len(key) < MAX_INPUT_BYTES + 4:
            raise ValueError(f"an RSS key needs {MAX_INPUT_BYTES + 4} bytes, not {len(key)}")
        entries = tuple(table) if table is not None else default_table(queues)
        if not entries or len(entries) & (len(entries) - 1):
            raise ValueError("the indirection table's size must be a power of two")
        if min(entries) < 0 or default_queue < 0:
            raise ValueError("queues are numbered from 0")
        self.key = bytes(key)
        self.table = entries
        self.hash_types = hash_types
        self.symmetric = symmetric
        self.default_queue = default_queue
        self._tables = byte_tables(self.key)
        self._queues = np.array(entries, dtype=np.int64)
        self._reports, self._with_ports = _report_table(hash_types)
        # Per family, the table of each column of ``hash_fields``'s layout (IPv6, then IPv4).
        v4 = np.zeros((MAX_INPUT_BYTES, 256), dtype=np.uint32)
        v4[4:12] = self._tables[0:8]
        v4[32:36] = self._tables[8:12]
        self._family_tables = np.concatenate([self._tables, v4]).reshape(-1)

    def hash_rows(self, data: U8Array) -> U32Array:
        """The Toeplitz hash of every row of a ``(n, L)`` byte matrix (``L <= 36``)."""
        width = data.shape[1]
        if width > MAX_INPUT_BYTES:
            raise ValueError(f"rows of {width} bytes are longer than {MAX_INPUT_BYTES}")
        return _xor_columns(self._tables, np.ascontiguousarray(data.T))

    def queue_of(self, hashes: U32Array) -> IntArray:
        """The indirection table's queue for every hash."""
        mask = np.uint32(len(self.table) - 1)
        queues: IntArray = self._queues[hashes & mask]
        return queues

    def hash_fields(self, fields: Fields) -> RssResult:
        """Hash, report and queue of every frame whose header fields are ``fields``."""
        report = self._reports[fields.version * 512 + fields.proto * 2 + fields.l4_ok]
        if self.symmetric:
            hashes = self._hash_sorted(fields, report)
        else:
            # Column j of every frame: byte 8 + j of its IP header (j < 32), then its ports.
            # IPv6 hashes columns 0..35 as they are; IPv4 maps its addresses (columns 4..11)
            # and ports to table positions 0..11 and the other columns to zero tables.
            # 16-bit table indexes (both families' tables have 18,432 entries), one row per
            # column, C-ordered so that every step and the reduction run along rows.
            index = np.empty((MAX_INPUT_BYTES, len(report)), dtype=np.uint16)
            index[:32] = fields.ip[:, 8:40].T
            index[32:] = fields.l4_head[:, 0:4].T
            # A zero byte adds nothing to the hash: a 2-tuple is a 4-tuple with zero ports.
            index[32:] *= self._with_ports[report]
            index += _OFFSETS
            index += (fields.version == 4) * np.uint16(MAX_INPUT_BYTES * 256)
            hashes = np.bitwise_xor.reduce(np.take(self._family_tables, index), axis=0)
            hashes *= report != 0
        queue = self.queue_of(hashes)
        if not report.all():
            queue[report == 0] = self.default_queue
        return RssResult(hashes, report, queue)

    def _hash_sorted(self, fields: Fields, report: U8Array) -> U32Array:
        hashes = np.zeros(len(fields), dtype=np.uint32)
        for family, begin, size in ((4, 12, 4), (6, 8, 16)):
            rows = np.flatnonzero((report != 0) & (fields.version == family))
            if not len(rows):
                continue
            addresses, ports = _sorted_pairs(
                fields.ip[rows, begin : begin + 2 * size], fields.l4_head[rows, 0:4], size
            )
            data = np.concatenate([addresses.T, ports.T])
            data[2 * size :] *= self._with_ports[report[rows]]
            hashes[rows] = _xor_columns(self._tables, data)
        return hashes

    def hash_batch(self, batch: FrameBatch) -> RssResult:
        """``hash_fields`` of a batch, its fields extracted first."""
        return self.hash_fields(extract(batch))

    def hash_frames(self, frames: Sequence[Buffer]) -> RssResult:
        """Hash, report and queue of every raw Ethernet frame in ``frames``."""
        return self.hash_batch(FrameBatch.from_frames(frames))


def _xor_columns(tables: U32Array, data: U8Array) -> U32Array:
    """XOR over rows ``j`` of ``tables[j, data[j]]``: the hash of every column of ``(L, n)`` bytes.

    Byte ``j`` of every input is row ``j``, so each step runs over the whole
    batch and the reduction runs down contiguous rows.
    """
    width = data.shape[0]
    index = np.empty(data.shape, dtype=np.uint16)
    index[:] = data
    index += _OFFSETS[:width]
    parts = np.take(tables.reshape(-1), index)
    result: U32Array = np.bitwise_xor.reduce(parts, axis=0)
    return result


_OFFSETS = (np.arange(MAX_INPUT_BYTES, dtype=np.uint16) * 256)[:, None]


def _sorted_pairs(addresses: U8Array, ports: U8Array, size: int) -> tuple[U8Array, U8Array]:
    """Addresses in ascending order, and ports in ascending order, per row."""
    src, dst = addresses[:, :size], addresses[:, size:]
    # The first differing byte decides, as a comparison of big-endian numbers does.
    differ = src != dst
    first = differ.argmax(axis=1)
    rows = np.arange(len(addresses))
    swap = differ.any(axis=1) & (src[rows, first] > dst[rows, first])
    addresses = np.where(swap[:, None], np.concatenate([dst, src], axis=1), addresses)
    sport = ports[:, 0].astype(np.int64) << 8 | ports[:, 1]
    dport = ports[:, 2].astype(np.int64) << 8 | ports[:, 3]
    pswap = sport > dport
    ports = np.where(pswap[:, None], np.concatenate([ports[:, 2:], ports[:, :2]], axis=1), ports)
    return addresses, ports
