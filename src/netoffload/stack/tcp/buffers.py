"""The send and receive buffers: fixed rings addressed by sequence number.

Both are allocated once at their configured size and never grow. Sequence
numbers here are unwrapped (they keep counting past 2³²); byte ``s`` of the
stream lives at ring index ``(s - start) % size``, so the first wrap comes
after a whole ring of data.

The send ring holds what the application wrote, from the oldest unacknowledged
byte to the last byte written. Transmissions are memoryviews into it, cut at
the wrap point rather than copied, and a byte's memory is reused only once it
is acknowledged. The ring may live in memory a device lent (``SendMemory``,
an ``XdpDevice``'s UMEM): the device then sends the payload from where the
application's bytes were written, and a byte is reused only once it is
acknowledged *and* the device no longer reads it.

The receive ring holds in-order data not yet read, and out-of-order ranges at
their final place, so that filling a hole needs no second copy. The
advertised window never reaches past ``read + size``, so held data can never
overwrite unread data.
"""

from __future__ import annotations

import mmap
from typing import Protocol

#: Rings this large are anonymous mappings: pages are committed when first written.
_MAPPED_FROM = 1 << 18


def _ring(size: int) -> memoryview:
    return memoryview(mmap.mmap(-1, size) if size >= _MAPPED_FROM else bytearray(size))


class SendMemory(Protocol):
    """Memory a device lent for a send ring, which it may still be reading from."""

    @property
    def view(self) -> memoryview:
        """The memory: writable, at least as long as the ring."""
        ...

    def settled(self, start: int, length: int) -> int:
        """How many of the ``length`` bytes of ``view`` from ``start`` the device no
        longer reads (counted from ``start``): only those may be written."""
        ...

    def close(self) -> None:
        """Give the memory back."""
        ...


class SendBuffer:
    """Bytes from ``head`` (oldest unacknowledged) to ``tail`` (end of what was written).

    With ``memory`` the ring is that memory's first ``size`` bytes, else its own.
    """

    __slots__ = ("_start", "_view", "head", "held_bytes", "memory", "size", "tail")

    def __init__(self, size: int, start: int, memory: SendMemory | None = None) -> None:
        self.size = size
        self._start = start
        self.memory = memory
        if memory is None:
            self._view = _ring(size)
        else:
            view = memory.view
            if view.nbytes < size or view.readonly:
                raise ValueError(f"send memory of {view.nbytes} bytes cannot hold {size}")
            self._view = view.cast("B")[:size]
        self.head = start
        self.tail = start
        #: Bytes a write left out because the device still read their place.
        self.held_bytes = 0

    def used(self) -> int:
        """Bytes held: written and not yet acknowledged."""
        return self.tail - self.head

    def free(self) -> int:
        """Room for more writes."""
        return self.size - (self.tail - self.head)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Copy as much of ``data`` as fits (the one copy a sent byte ever gets).

        In a device's memory, a write stops short of the first byte the device
        still reads (so it may take less than ``free`` says).
        """
        n = min(len(data), self.size - (self.tail - self.head))
        if n <= 0:
            return 0
        size = self.size
        i = (self.tail - self._start) % size
        first = min(n, size - i)
        memory = self.memory
        if memory is not None:
            ok = memory.settled(i, first)
            if ok == first and n > first:
                ok += memory.settled(0, n - first)
            if ok < n:
                self.held_bytes += n - ok
                n = ok
                first = min(n, first)
                if n <= 0:
                    return 0
        src = memoryview(data)
        if not src.c_contiguous:
            src = memoryview(src.tobytes())
        if src.format != "B" or src.ndim != 1:
            src = src.cast("B")
        self._view[i : i + first] = src[:first]
        if n > first:
            self._view[: n - first] = src[first:n]
        self.tail += n
        return n

    def view(self, seq: int, length: int) -> memoryview:
        """Up to ``length`` bytes from ``seq``, stopping at the ring's wrap point."""
        size = self.size
        i = (seq - self._start) % size
        end = i + length
        end = min(end, size)
        return self._view[i:end]

    def release(self, seq: int) -> None:
        """Everything before ``seq`` was acknowledged: its memory may be reused."""
        if seq > self.head:
            self.head = seq if seq < self.tail else self.tail


class ReceiveBuffer:
    """In-order bytes ``[read, nxt)`` for the application and out-of-order ranges past ``nxt``."""

    __slots__ = (
        "_start",
        "_view",
        "max_ranges",
        "nxt",
        "ooo",
        "ooo_bytes",
        "read",
        "recent",
        "size",
    )

    def __init__(self, size: int, start: int, max_ranges: int) -> None:
        self.size = size
        self._start = start
        self._view = _ring(size)
        self.read = start
        self.nxt = start
        self.max_ranges = max_ranges
        #: Disjoint, non-adjacent [start, end) ranges past ``nxt``, in order.
        self.ooo: list[list[int]] = []
        self.ooo_bytes = 0
        #: Out-of-order ranges most recently changed first (RFC 2018 §4 SACK order).
        self.recent: list[list[int]] = []

    def readable(self) -> int:
        """In-order bytes the application has not read."""
        return self.nxt - self.read

    def _copy_in(self, seq: int, data: memoryview) -> None:
        size = self.size
        n = len(data)
        i = (seq - self._start) % size
        if i + n <= size:
            self._view[i : i + n] = data
        else:
            first = size - i
            self._view[i:] = data[:first]
            self._view[: n - first] = data[first:]

    def append(self, data: memoryview) -> None:
        """Store in-order bytes at ``nxt`` (the caller checked the window)."""
        n = len(data)
        size = self.size
        i = (self.nxt - self._start) % size
        if i + n <= size:
            self._view[i : i + n] = data
        else:
            self._copy_in(self.nxt, data)
        self.nxt += n
        if self.ooo and self.ooo[0][0] <= self.nxt:
            self._absorb()

    def _absorb(self) -> None:
        ooo = self.ooo
        while ooo and ooo[0][0] <= self.nxt:
            start, end = ooo.pop(0)
            self.ooo_bytes -= end - start
            self.nxt = max(self.nxt, end)
        self.recent = [r for r in self.recent if r[1] > self.nxt]

    def insert(self, seq: int, data: memoryview) -> bool | None:
        """Hold out-of-order bytes at ``seq`` > ``nxt``.

        Returns ``True`` if every byte was already held (a duplicate),
        ``False`` if some were new, ``None`` if refused because it would
        make more than ``max_ranges`` ranges.
        """
        end = seq + len(data)
        ooo = self.ooo
        # Ranges that overlap or touch [seq, end) are merged with it.
        lo = 0
        while lo < len(ooo) and ooo[lo][1] < seq:
            lo += 1
        hi = lo
        while hi < len(ooo) and ooo[hi][0] <= end:
            hi += 1
        if hi - lo == 1 and ooo[lo][0] <= seq and end <= ooo[lo][1]:
            self._touch(ooo[lo])
            return True
        if hi == lo and len(ooo) >= self.max_ranges:
            return None
        self._copy_in(seq, data)
        if hi > lo:
            merged = [min(seq, ooo[lo][0]), max(end, ooo[hi - 1][1])]
            self.ooo_bytes -= sum(r[1] - r[0] for r in ooo[lo:hi])
        else:
            merged = [seq, end]
        ooo[lo:hi] = [merged]
        self.ooo_bytes += merged[1] - merged[0]
        self._touch(merged)
        return False

    def _touch(self, block: list[int]) -> None:
        start, end = block
        self.recent = [block, *[r for r in self.recent if r[1] < start or r[0] > end][:3]]

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` held ranges, the most recently changed first (RFC 2018 §4)."""
        out: list[tuple[int, int]] = []
        for start, end in self.recent:
            if len(out) >= limit:
                break
            out.append((start, end))
        return out

    def read_bytes(self, limit: int) -> bytes:
        """Take up to ``limit`` in-order bytes."""
        n = min(limit, self.nxt - self.read)
        if n <= 0:
            return b""
        size = self.size
        i = (self.read - self._start) % size
        self.read += n
        if i + n <= size:
            return bytes(self._view[i : i + n])
        return bytes(self._view[i:]) + bytes(self._view[: n - (size - i)])

    def read_into(self, target: memoryview) -> int:
        """Copy up to ``len(target)`` in-order bytes into ``target``."""
        n = min(len(target), self.nxt - self.read)
        if n <= 0:
            return 0
        size = self.size
        i = (self.read - self._start) % size
        first = min(n, size - i)
        target[:first] = self._view[i : i + first]
        if n > first:
            target[first:n] = self._view[: n - first]
        self.read += n
        return n
