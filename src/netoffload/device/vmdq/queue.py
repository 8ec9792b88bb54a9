"""Descriptor queues in shared memory, and sealed memory files to hold them.

A queue is a single-producer single-consumer ring of fixed 96-byte
descriptors (``DESC``). Each side owns one free-running 32-bit index on its
own cache line of the region's first page; the producer writes entries and
then publishes its index, the consumer reads entries up to it and then
publishes its own (x86 keeps stores in order; every hand-over also goes
through an eventfd, which is a full barrier).

The peer on the other side of a queue may be hostile (a guest writes its own
rings). Nothing read from shared memory is trusted: an index that claims more
entries than the ring holds marks the queue ``broken`` and reads as empty
(and full), and descriptors are copied out of the ring before anyone looks at
them, so a peer rewriting an entry under us changes nothing.

Memory a peer hands over is a ``memfd`` sealed against shrinking: a mapping
of a file that shrinks later would fault (SIGBUS) on the next access.
``sealed_memfd`` makes one; ``map_sealed`` refuses one without the seals or
smaller than asked.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

PAGE = 4096
CACHE_LINE = 64
_U32 = struct.Struct("<I")
_WRAP = 0xFFFFFFFF

#: One descriptor. ``buffer``/``gen`` name a buffer of a window and its generation;
#: ``offset``/``length`` locate the frame in it; ``ext`` is the SoftNic TX or RX
#: extension (``layout.encode_tx_ext`` / ``encode_rx_ext``); ``pool`` the window's
#: pool; ``status`` a ``Status``; ``vlan`` and ``mac`` what the NIC side read from
#: a transmitted frame (the switch learns from them); ``flags`` per queue.
DESC = np.dtype(
    [
        ("buffer", "<u4"),
        ("gen", "<u4"),
        ("offset", "<u4"),
        ("length", "<u4"),
        ("ext", "V52"),
        ("pool", "<u4"),
        ("status", "<u2"),
        ("vlan", "<u2"),
        ("mac", "<u8"),
        ("flags", "<u4"),
        ("spare", "V8"),
    ]
)
assert DESC.itemsize == 96

Descs = npt.NDArray[np.void]


class Status(enum.IntEnum):
    """A descriptor's ``status``: what became of it."""

    OK = 0
    STALE = 1  # its generation is not the buffer's: released already, or from an earlier life
    NOT_OWNED = 2  # the buffer is not the guest's to give now (posted, or in flight)
    OUT_OF_RANGE = 3  # no such buffer, or a frame outside its buffer
    OVER_QUOTA = 4  # more buffers or descriptors than the guest's quota
    MALFORMED = 5  # a request that cannot be decoded
    DROPPED = 6  # taken and dropped by the NIC side (the reason is in its counters)
    GONE = 7  # its pool was detached (the guest is gone)


# ``flags`` of a descriptor on a receive queue or ring.
RX_COPIED = 0x1  # written from host memory (a copy), not from the wire
RX_GROUP = 0x2  # one replica of a broadcast, multicast or flooded frame
RX_LOOPBACK = 0x4  # sent by another pool on this switch
# ``flags`` of a descriptor on a done queue or ring.
DONE_LEARNED = 0x1  # ``vlan`` and ``mac`` are the sent frame's VLAN and source MAC
DONE_POST = 0x2  # a refused receive buffer (from the post ring)
DONE_TX = 0x4  # a transmit buffer given back (sent, dropped or refused)

REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class UnsafeMemory(ValueError):
    """Memory handed over by a peer that cannot be used (unsealed, too small, not a file)."""


def descs(count: int) -> Descs:
    """``count`` zeroed descriptors to fill in."""
    return np.zeros(count, dtype=DESC)


def sealed_memfd(name: str, size: int) -> int:
    """A memfd of ``size`` bytes sealed against shrinking, growing and further sealing."""
    fd = os.memfd_create(name, os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, REQUIRED_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def map_sealed(fd: int, size: int, *, writable: bool = True) -> mmap.mmap:
    """Map the first ``size`` bytes of a peer's sealed memfd; ``UnsafeMemory`` when unsafe."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        actual = os.fstat(fd).st_size
    except OSError as exc:
        raise UnsafeMemory(f"not a sealed memory file: {exc.strerror or exc}") from None
    if seals & REQUIRED_SEALS != REQUIRED_SEALS:
        raise UnsafeMemory("memory file is not sealed against shrinking and growing")
    if actual < size:
        raise UnsafeMemory(f"memory file holds {actual} bytes, {size} needed")
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    try:
        return mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
    except OSError as exc:
        raise UnsafeMemory(f"cannot map memory file: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class QueueLayout:
    """Named queues of ``capacity`` descriptors each after one page of indices."""

    names: tuple[str, ...]
    capacity: int

    def __post_init__(self) -> None:
        c = self.capacity
        if c < 8 or c & (c - 1) or c > 1 << 16:
            raise ValueError("queue capacity must be a power of two in 8..65536")
        if not 0 < len(self.names) <= (PAGE - CACHE_LINE) // (2 * CACHE_LINE):
            raise ValueError("between 1 and 31 queues in one region")

    def index_offset(self, i: int) -> int:
        return CACHE_LINE + 2 * CACHE_LINE * i

    def entries_offset(self, i: int) -> int:
        return PAGE + i * self.capacity * DESC.itemsize

    @property
    def total_bytes(self) -> int:
        end = self.entries_offset(len(self.names))
        return end + (-end % PAGE)

    def queues(self, mem: memoryview) -> dict[str, Queue]:
        """The queues of a region mapped at ``mem``."""
        if len(mem) < self.total_bytes:
            raise ValueError("region is smaller than its layout")
        return {
            name: Queue(mem, self.index_offset(i), self.entries_offset(i), self.capacity, name)
            for i, name in enumerate(self.names)
        }


class Queue:
    """One single-producer single-consumer descriptor ring (see the module docstring).

    Each side keeps its own index privately and only publishes it: a peer that
    rewrites our index in shared memory cannot make us read or write anywhere
    else. An object may serve both sides (tests), as one writer of both indices.
    """

    __slots__ = (
        "_array",
        "_cons_at",
        "_head",
        "_mask",
        "_mem",
        "_prod_at",
        "_tail",
        "broken",
        "capacity",
        "name",
    )

    def __init__(
        self, mem: memoryview, index_at: int, entries_at: int, capacity: int, name: str
    ) -> None:
        self._mem = mem
        self._prod_at = index_at
        self._cons_at = index_at + CACHE_LINE
        self.capacity = capacity
        self._mask = capacity - 1
        self.name = name
        #: Set when the peer published an index no ring can have: it is not to be trusted.
        self.broken = False
        self._array: Descs = np.frombuffer(mem, dtype=DESC, count=capacity, offset=entries_at)
        self._head = int(_U32.unpack_from(mem, self._prod_at)[0])
        self._tail = int(_U32.unpack_from(mem, self._cons_at)[0])

    def _peer_producer(self) -> int:
        return int(_U32.unpack_from(self._mem, self._prod_at)[0])

    def _peer_consumer(self) -> int:
        return int(_U32.unpack_from(self._mem, self._cons_at)[0])

    def available(self) -> int:
        """Entries the consumer may read (0 when the producer's index is impossible)."""
        used = (self._peer_producer() - self._tail) & _WRAP
        if used > self.capacity:
            self.broken = True
            return 0
        return used

    def space(self) -> int:
        """Entries the producer may write (0 when the consumer's index is impossible)."""
        used = (self._head - self._peer_consumer()) & _WRAP
        if used > self.capacity:
            self.broken = True
            return 0
        return self.capacity - used

    def _positions(self, start: int, count: int) -> npt.NDArray[np.intp]:
        return (np.arange(start, start + count, dtype=np.int64) & self._mask).astype(np.intp)

    def take(self, limit: int | None = None) -> Descs:
        """Copy out and consume up to ``limit`` descriptors (all available when ``None``)."""
        n = self.available()
        if limit is not None:
            n = min(n, limit)
        if n <= 0:
            return np.zeros(0, dtype=DESC)
        tail = self._tail
        rows: Descs = self._array[self._positions(tail, n)]  # fancy indexing: a copy
        self._tail = (tail + n) & _WRAP
        _U32.pack_into(self._mem, self._cons_at, self._tail)
        return rows

    def put(self, rows: Descs | Sequence[object]) -> None:
        """Append ``rows`` and publish them; ``OverflowError`` when they do not fit."""
        n = len(rows)
        if n == 0:
            return
        if n > self.space():
            raise OverflowError(f"queue {self.name} has no room for {n} descriptors")
        head = self._head
        self._array[self._positions(head, n)] = rows
        self._head = (head + n) & _WRAP
        _U32.pack_into(self._mem, self._prod_at, self._head)


def drain_eventfd(fd: int) -> None:
    """Consume an eventfd's count (non-blocking; nothing to read is fine)."""
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(fd)


def ring_eventfd(fd: int) -> bool:
    """Add one to an eventfd; False when its reader is gone or it cannot be written."""
    try:
        os.eventfd_write(fd, 1)
    except OSError:
        return False
    return True
