"""The memory the host and the SoftNic firmware share: rings and a buffer pool.

One anonymous memory file (``memfd``) holds everything; both processes map
it. The model is AF_XDP's four rings over one pool of fixed-size slots:

* **TX** (host → NIC): descriptors naming a slot, the frame's offset and
  length in it, and the packet's ``TxRequest``.
* **completion** (NIC → host): slot numbers the firmware is done sending.
* **fill** (host → NIC): empty slots the firmware may receive into.
* **RX** (NIC → host): descriptors naming a filled slot and its ``RxInfo``.

Every ring has one producer and one consumer, each owning one free-running
32-bit index (``producer`` / ``consumer``) on its own cache line. The
producer writes entries and then publishes its index; the consumer reads
entries up to the producer index and then publishes its own. On x86 stores
are seen in order; every hand-over also goes through an eventfd syscall.

The slots are split once: ``[0, tx_slots)`` belong to the host's transmit
side, the rest are posted to the fill ring. A slot is owned by exactly one
side at a time, and moves only through a ring.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from netoffload.offload import (
    ChecksumRequest,
    ChecksumStatus,
    CryptoStatus,
    DigestAlgorithm,
    DigestRequest,
    FilterVerdict,
    GsoType,
    HashReport,
    RxInfo,
    SegmentationRequest,
    TxRequest,
    VirtioHdrError,
    VirtioNetHdr,
)
from netoffload.offload.virtio import vnet_fields

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

PAGE = 4096
CACHE_LINE = 64
DESC_SIZE = 64
MAGIC = 0x534F_4E31  # "SON1"

# Room for the largest IPv6 super-packet (14 + 40 + 65535) plus headroom for headers
# a later layer prepends in place (VLAN, ESP).
DEFAULT_SLOT_BYTES = 69632
HEADROOM = 256


@dataclass(frozen=True, slots=True)
class Geometry:
    """Sizes of the shared region; both processes derive every offset from it."""

    ring_entries: int = 512
    tx_slots: int = 128
    rx_slots: int = 128
    slot_bytes: int = DEFAULT_SLOT_BYTES

    def __post_init__(self) -> None:
        if self.ring_entries & (self.ring_entries - 1) or self.ring_entries < 8:
            raise ValueError("ring_entries must be a power of two, at least 8")
        if self.tx_slots + self.rx_slots > self.ring_entries:
            # A ring never has to hold more entries than there are slots.
            raise ValueError("tx_slots + rx_slots must not exceed ring_entries")
        if self.tx_slots < 1 or self.rx_slots < 1:
            raise ValueError("need at least one transmit and one receive slot")
        if self.slot_bytes < HEADROOM + 2048 or self.slot_bytes % CACHE_LINE:
            raise ValueError("slot_bytes must be a multiple of 64 and hold a frame")

    @property
    def slots(self) -> int:
        return self.tx_slots + self.rx_slots

    # Offsets: a header page with the ring indices, the four rings, then the pool.
    @property
    def tx_ring_offset(self) -> int:
        return PAGE

    @property
    def rx_ring_offset(self) -> int:
        return self.tx_ring_offset + self.ring_entries * DESC_SIZE

    @property
    def completion_ring_offset(self) -> int:
        return self.rx_ring_offset + self.ring_entries * DESC_SIZE

    @property
    def fill_ring_offset(self) -> int:
        return self.completion_ring_offset + self.ring_entries * 4

    @property
    def pool_offset(self) -> int:
        end = self.fill_ring_offset + self.ring_entries * 4
        return end + (-end % PAGE)

    @property
    def total_bytes(self) -> int:
        return self.pool_offset + self.slots * self.slot_bytes

    def as_dict(self) -> dict[str, int]:
        return {
            "ring_entries": self.ring_entries,
            "tx_slots": self.tx_slots,
            "rx_slots": self.rx_slots,
            "slot_bytes": self.slot_bytes,
        }


# Index cache lines in the header page, in ring order tx, rx, completion, fill.
_INDEX_LINES = {"tx": 1, "rx": 3, "completion": 5, "fill": 7}
_U32 = struct.Struct("<I")
# A TX or RX descriptor: u32 slot, offset, length, then its extension (layouts below).
DESC_DTYPE = np.dtype(
    [("slot", "<u4"), ("offset", "<u4"), ("length", "<u4"), ("ext", f"V{DESC_SIZE - 12}")]
)


def create_region(geometry: Geometry) -> tuple[int, mmap.mmap]:
    """A fresh memfd of the right size, mapped; returns (fd, map)."""
    fd = os.memfd_create("softnic", 0)  # no /dev/shm name: nothing to leak or unlink
    try:
        os.ftruncate(fd, geometry.total_bytes)
        region = mmap.mmap(fd, geometry.total_bytes)
    except BaseException:
        os.close(fd)
        raise
    _U32.pack_into(region, 0, MAGIC)
    return fd, region


def map_region(fd: int, geometry: Geometry) -> mmap.mmap:
    """Map a region another process created; checks its size and magic number."""
    region = mmap.mmap(fd, geometry.total_bytes)
    if _U32.unpack_from(region, 0)[0] != MAGIC:
        region.close()
        raise ValueError("shared region has the wrong magic number")
    return region


class Ring:
    """One single-producer single-consumer ring in the shared region.

    Entries are ``entry_size`` bytes at ``entries_offset``; the two indices
    count entries ever produced / consumed (mod 2**32).
    """

    __slots__ = (
        "_cons",
        "_mask",
        "_mem",
        "_prod",
        "capacity",
        "entries_offset",
        "entry_size",
    )

    def __init__(
        self, mem: memoryview, name: str, entries_offset: int, capacity: int, entry_size: int
    ) -> None:
        line = _INDEX_LINES[name]
        self._mem = mem
        # The other process reads an index while this one writes it, so each is one
        # aligned word read and written whole (a memoryview item): struct.pack_into
        # clears its target before writing it, and a reader could see that 0 (an index
        # hundreds of entries off).
        prod_at, cons_at = line * CACHE_LINE, (line + 1) * CACHE_LINE
        self._prod = mem[prod_at : prod_at + 4].cast("I")
        self._cons = mem[cons_at : cons_at + 4].cast("I")
        self.entries_offset = entries_offset
        self.capacity = capacity
        self.entry_size = entry_size
        self._mask = capacity - 1

    @property
    def producer(self) -> int:
        return int(self._prod[0])

    @property
    def consumer(self) -> int:
        return int(self._cons[0])

    def publish_producer(self, value: int) -> None:
        self._prod[0] = value & 0xFFFFFFFF

    def publish_consumer(self, value: int) -> None:
        self._cons[0] = value & 0xFFFFFFFF

    def available(self) -> int:
        """Entries the consumer may read."""
        return (self.producer - self.consumer) & 0xFFFFFFFF

    def space(self) -> int:
        """Entries the producer may write."""
        return self.capacity - self.available()

    def entry_offset(self, index: int) -> int:
        """Byte offset in the region of entry ``index`` (a free-running index)."""
        return self.entries_offset + (index & self._mask) * self.entry_size


class SlotRing(Ring):
    """A ring of 32-bit slot numbers (completion and fill), read and written in batches."""

    __slots__ = ("_array",)

    def __init__(self, mem: memoryview, name: str, entries_offset: int, capacity: int) -> None:
        super().__init__(mem, name, entries_offset, capacity, 4)
        self._array: npt.NDArray[np.uint32] = np.frombuffer(
            mem, dtype="<u4", count=capacity, offset=entries_offset
        )

    def push(self, slots: list[int] | npt.NDArray[np.uint32]) -> None:
        """Append slot numbers; the caller made sure there is space."""
        n = len(slots)
        if n == 0:
            return
        head = self.producer
        if n > self.space():
            raise OverflowError("slot ring overflow")
        positions = (head + np.arange(n, dtype=np.uint32)) & np.uint32(self._mask)
        self._array[positions] = slots
        self.publish_producer(head + n)

    def pop(self, limit: int | None = None) -> list[int]:
        """Take up to ``limit`` slot numbers (all available when ``None``)."""
        tail = self.consumer
        n = (self.producer - tail) & 0xFFFFFFFF
        if limit is not None:
            n = min(n, limit)
        if n == 0:
            return []
        positions = (tail + np.arange(n, dtype=np.uint32)) & np.uint32(self._mask)
        out: list[int] = self._array[positions].tolist()
        self.publish_consumer(tail + n)
        return out


class DescRing(Ring):
    """A ring of 64-byte descriptors, read and written a batch at a time.

    A row is ``(slot, offset, length, ext)``: the common head as integers and
    the extension as its raw bytes, which the codecs below (and their memos)
    take as they are. One NumPy gather or scatter per batch replaces a struct
    call and a slice per descriptor.
    """

    __slots__ = ("_array",)

    def __init__(self, mem: memoryview, name: str, entries_offset: int, capacity: int) -> None:
        super().__init__(mem, name, entries_offset, capacity, DESC_SIZE)
        self._array: npt.NDArray[np.void] = np.frombuffer(
            mem, dtype=DESC_DTYPE, count=capacity, offset=entries_offset
        )

    def _positions(self, start: int, count: int) -> npt.NDArray[np.uint32]:
        return (np.uint32(start & 0xFFFFFFFF) + np.arange(count, dtype=np.uint32)) & np.uint32(
            self._mask
        )

    def read(self, start: int, count: int) -> list[tuple[int, int, int, bytes]]:
        """Rows of the ``count`` entries from free-running index ``start``."""
        rows: list[tuple[int, int, int, bytes]] = self._array[
            self._positions(start, count)
        ].tolist()
        return rows

    def write(self, start: int, rows: list[tuple[int, int, int, bytes]]) -> None:
        """Store ``rows`` from free-running index ``start`` (publishing is the caller's)."""
        if rows:
            self._array[self._positions(start, len(rows))] = np.array(rows, dtype=DESC_DTYPE)


# -- transmit descriptors ---------------------------------------------------------
#
#   u32 slot, u32 offset, u32 length                          12
#   u8 xflags, 3 pad                                           16
#   virtio_net_hdr v1 (12 bytes, little-endian)                28
#   u32 sa_handle, u64 launch_time_ns                          40
#   u8 digest algorithm, pad, u16 start, u32 key, u16 length,
#   u16 result offset                                          52
#   u64 esp_seq, u16 context length, 2 pad                     64
#
# An SA's context (the first packet that uses its handle) travels in the slot
# itself, in front of the frame: ``context length`` bytes at the slot's start
# (``TXF_SA_CONTEXT``), the binary layout of ``engine.ipsec_offload``.
#
# The checksum and segmentation part is literally a virtio_net_hdr, so a frame
# written with any header Linux could be handed (including ones it rejects)
# reaches the firmware unchanged; the rest carries what virtio cannot.

TX_HEAD = struct.Struct("<III")
TX_EXT = struct.Struct("<B3xBBHHHH2xIQBxHIHHQH2x")
assert TX_HEAD.size + TX_EXT.size == DESC_SIZE

TXF_IPV4_HEADER = 0x01
TXF_FIXED_ID = 0x02
TXF_SA = 0x04
TXF_LAUNCH = 0x08
TXF_DIGEST = 0x10
TXF_SA_CONTEXT = 0x20
TXF_UNKNOWN = ~0x3F & 0xFF


def encode_tx_ext(request: TxRequest, context_len: int = 0) -> bytes:
    """The extension part of a transmit descriptor (everything after the head);
    ``context_len`` is the length of the SA context written at the slot's start."""
    flags = TXF_SA_CONTEXT if context_len else 0
    seg = request.segmentation
    if seg is not None and seg.fixed_id:
        flags |= TXF_FIXED_ID
    if request.ipv4_header_checksum:
        flags |= TXF_IPV4_HEADER
    sa = seq = 0
    if request.sa_handle is not None:
        flags |= TXF_SA
        sa = request.sa_handle
        seq = request.esp_seq or 0
    launch = 0
    if request.launch_time_ns is not None:
        flags |= TXF_LAUNCH
        launch = request.launch_time_ns
    alg = key = d_start = d_len = d_res = 0
    if request.digest is not None:
        flags |= TXF_DIGEST
        d = request.digest
        alg, key, d_start, d_len, d_res = (
            int(d.algorithm),
            d.key_handle,
            d.start,
            d.length,
            d.result_offset,
        )
    return TX_EXT.pack(
        flags, *vnet_fields(request), sa, launch, alg, d_start, key, d_len, d_res, seq,
        context_len,
    )  # fmt: skip


def encode_tx_ext_vnet(hdr: VirtioNetHdr) -> bytes:
    """A transmit extension carrying exactly ``hdr`` (a TAP-style write)."""
    return TX_EXT.pack(
        0, hdr.flags, hdr.gso_type, hdr.hdr_len, hdr.gso_size, hdr.csum_start, hdr.csum_offset,
        0, 0, 0, 0, 0, 0, 0, 0, 0,
    )  # fmt: skip


def decode_tx_ext(ext: bytes | memoryview) -> TxRequest:
    """Parse a transmit extension; raises ``VirtioHdrError`` for values no request can have."""
    (
        flags, vflags, gso_type, hdr_len, gso_size, start, offset,
        sa, launch, alg, d_start, key, d_len, d_res, seq, _context_len,
    ) = TX_EXT.unpack(ext)  # fmt: skip
    if flags & TXF_UNKNOWN:
        raise VirtioHdrError(f"unknown descriptor flags {flags:#x}")
    if vflags & ~0x01:
        # DATA_VALID / RSC_INFO are receive-only flags; Linux rejects them on write.
        raise VirtioHdrError(f"virtio_net_hdr flags {vflags:#x} not valid on transmit")
    request = VirtioNetHdr(vflags, gso_type, hdr_len, gso_size, start, offset).to_tx_request()
    seg = request.segmentation
    if seg is not None and flags & TXF_FIXED_ID:
        seg = SegmentationRequest(seg.gso_type, seg.size, seg.hdr_len, seg.ecn, True)
    digest = None
    if flags & TXF_DIGEST:
        try:
            algorithm = DigestAlgorithm(alg)
        except ValueError:
            raise VirtioHdrError(f"unknown digest algorithm {alg:#x}") from None
        digest = DigestRequest(algorithm, key, d_start, d_len, d_res)
    return TxRequest(
        checksum=request.checksum,
        ipv4_header_checksum=bool(flags & TXF_IPV4_HEADER),
        segmentation=seg,
        sa_handle=sa if flags & TXF_SA else None,
        digest=digest,
        launch_time_ns=launch if flags & TXF_LAUNCH else None,
        esp_seq=seq if flags & TXF_SA else None,
    )


def tx_context_len(ext: bytes | memoryview) -> int:
    """The length of the SA context in front of the frame (0 when there is none)."""
    flags = ext[0]
    if not flags & TXF_SA_CONTEXT:
        return 0
    return int.from_bytes(ext[TX_EXT.size - 4 : TX_EXT.size - 2], "little")


# -- receive descriptors ------------------------------------------------------------
#
#   u32 slot, u32 offset, u32 length                            12
#   u8 ipv4_header, u8 l4, u8 xflags, u8 verdict                16
#   u16 csum_start, csum_offset, gso_size, hdr_len              24
#   u8 gso_type, u8 crypto, u16 hash_report                     28
#   u32 segments, flow_hash, queue, mark, filter_rule, sa       52

RX_HEAD = struct.Struct("<III")
RX_EXT = struct.Struct("<BBBBHHHHBBHIIIIII12x")
assert RX_HEAD.size + RX_EXT.size == DESC_SIZE

RXF_PARTIAL = 0x01
RXF_ASSEMBLED = 0x02
RXF_ECN = 0x04
RXF_FIXED_ID = 0x08
RXF_HASH = 0x10
RXF_MARK = 0x20
RXF_RULE = 0x40
RXF_SA = 0x80


def encode_rx_ext(info: RxInfo) -> bytes:
    """The extension part of a receive descriptor."""
    flags = 0
    start = offset = gso_size = hdr_len = gso_type = 0
    if info.checksum_partial is not None:
        flags |= RXF_PARTIAL
        start, offset = info.checksum_partial.start, info.checksum_partial.offset
    if info.assembled is not None:
        a = info.assembled
        flags |= RXF_ASSEMBLED | (RXF_ECN if a.ecn else 0) | (RXF_FIXED_ID if a.fixed_id else 0)
        gso_type, gso_size, hdr_len = int(a.gso_type), a.size, a.hdr_len
    flow_hash = mark = rule = sa = 0
    if info.flow_hash is not None:
        flags |= RXF_HASH
        flow_hash = info.flow_hash
    if info.mark is not None:
        flags |= RXF_MARK
        mark = info.mark
    if info.filter_rule is not None:
        flags |= RXF_RULE
        rule = info.filter_rule
    if info.sa_handle is not None:
        flags |= RXF_SA
        sa = info.sa_handle
    return RX_EXT.pack(
        int(info.ipv4_header), int(info.l4), flags, int(info.verdict),
        start, offset, gso_size, hdr_len, gso_type, int(info.crypto), int(info.hash_report),
        info.segments, flow_hash, info.queue, mark, rule, sa,
    )  # fmt: skip


def decode_rx_ext(ext: bytes | memoryview) -> RxInfo:
    """Parse a receive extension (written by our own firmware, so trusted)."""
    (
        ip_status, l4, flags, verdict, start, offset, gso_size, hdr_len, gso_type, crypto,
        report, segments, flow_hash, queue, mark, rule, sa,
    ) = RX_EXT.unpack(ext)  # fmt: skip
    assembled = None
    if flags & RXF_ASSEMBLED:
        assembled = SegmentationRequest(
            GsoType(gso_type), gso_size, hdr_len, bool(flags & RXF_ECN), bool(flags & RXF_FIXED_ID)
        )
    return RxInfo(
        ipv4_header=ChecksumStatus(ip_status),
        l4=ChecksumStatus(l4),
        checksum_partial=ChecksumRequest(start, offset) if flags & RXF_PARTIAL else None,
        assembled=assembled,
        segments=segments,
        flow_hash=flow_hash if flags & RXF_HASH else None,
        hash_report=HashReport(report),
        queue=queue,
        mark=mark if flags & RXF_MARK else None,
        verdict=FilterVerdict(verdict),
        filter_rule=rule if flags & RXF_RULE else None,
        crypto=CryptoStatus(crypto),
        sa_handle=sa if flags & RXF_SA else None,
    )


class Memo(Generic[K, V]):
    """Memoises a pure codec function: a flow's packets repeat a handful of extensions.

    Bounded: cleared when it grows past ``limit`` entries, so a stream of
    distinct values costs only the encoding it would have cost anyway.
    """

    __slots__ = ("_fn", "_table", "limit")

    def __init__(self, fn: Callable[[K], V], limit: int = 4096) -> None:
        self._fn = fn
        self._table: dict[K, V] = {}
        self.limit = limit

    def __call__(self, key: K) -> V:
        hit = self._table.get(key)
        if hit is None:
            if len(self._table) >= self.limit:
                self._table.clear()
            hit = self._fn(key)
            self._table[key] = hit
        return hit
