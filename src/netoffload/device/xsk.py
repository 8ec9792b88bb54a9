"""An AF_XDP socket, its UMEM and its four rings, as NumPy views over the shared memory.

The layouts are the kernel's UAPI (``linux/if_xdp.h``)::

    struct sockaddr_xdp   { u16 family, flags; u32 ifindex, queue_id, shared_umem_fd; }
    struct xdp_umem_reg   { u64 addr, len; u32 chunk_size, headroom, flags, tx_metadata_len; }
    struct xdp_ring_offset { u64 producer, consumer, desc, flags; }   (x4: rx, tx, fill, completion)
    struct xdp_desc       { u64 addr; u32 len, options; }           (RX and TX rings)
    u64 addresses                                                   (fill and completion rings)

A ring is a power-of-two array of entries with a free-running 32-bit
producer and consumer index each in its own cache line; one side only ever
writes the producer, the other only the consumer. ``Ring`` works on any
buffer with that layout, so its index arithmetic and bounds are tested
without a kernel.

Ordering: an entry is written before the producer index that publishes it,
and read before the consumer index that frees it. NumPy stores are plain
stores in program order, which x86-64 keeps (TSO); on a weakly ordered CPU
the kernel's acquire loads would need a barrier this module cannot issue,
so only x86-64 is supported for the data path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import platform
import socket
import struct
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.device.base import DeviceError

AF_XDP = 44
SOL_XDP = 283

XDP_MMAP_OFFSETS = 1
XDP_RX_RING = 2
XDP_TX_RING = 3
XDP_UMEM_REG = 4
XDP_UMEM_FILL_RING = 5
XDP_UMEM_COMPLETION_RING = 6
XDP_STATISTICS = 7
XDP_OPTIONS = 8
XDP_MAX_TX_SKB_BUDGET = 9

XDP_SHARED_UMEM = 1 << 0
XDP_COPY = 1 << 1
XDP_ZEROCOPY = 1 << 2
XDP_OPTIONS_ZEROCOPY = 1 << 0

XDP_PGOFF_RX_RING = 0
XDP_PGOFF_TX_RING = 0x80000000
XDP_UMEM_PGOFF_FILL_RING = 0x100000000
XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000

#: Headroom the kernel keeps before a received frame in its UMEM chunk (copy mode).
XDP_PACKET_HEADROOM = 256

_SOCKADDR = struct.Struct("=HHIII")
_UMEM_REG = struct.Struct("=QQIIII")
_OFFSETS = struct.Struct("=16Q")
_STATISTICS = struct.Struct("=6Q")
STAT_NAMES = (
    "rx_dropped",
    "rx_invalid_descs",
    "tx_invalid_descs",
    "rx_ring_full",
    "rx_fill_ring_empty_descs",
    "tx_ring_empty_descs",
)

ADDR = np.dtype("<u8")
U32 = np.dtype("<u4")
Addresses: TypeAlias = npt.NDArray[np.uint64]

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.bind.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
_LIBC.bind.restype = ctypes.c_int


def data_path_supported() -> str | None:
    """Why the AF_XDP data path cannot run on this machine, or None."""
    if platform.machine() != "x86_64":
        return f"the AF_XDP rings need x86-64's store ordering, not {platform.machine()}"
    return None


class Ring:
    """One ring over ``buf``: its producer and consumer words and ``size`` entries at ``desc``.

    ``cached_prod``/``cached_cons`` are this side's copies of the indices: a
    producer side publishes ``cached_prod`` and reads the consumer, a
    consumer side the other way round. Indices are free-running modulo 2**32.
    ``addr`` is every entry's address (a fill or completion entry is only
    that); ``DescRing`` adds each descriptor's length and options.
    """

    ENTRY_BYTES = 8

    def __init__(
        self, buf: mmap.mmap | bytearray, *, producer: int, consumer: int, desc: int, size: int
    ) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"a ring's size is a power of two, not {size}")
        self.size = size
        self.mask = size - 1
        self.producer = np.frombuffer(buf, U32, 1, producer)
        self.consumer = np.frombuffer(buf, U32, 1, consumer)
        words = self.ENTRY_BYTES // 8
        self.addr: Addresses = np.frombuffer(buf, ADDR, size * words, desc)[::words]
        self.cached_prod = int(self.producer[0])
        self.cached_cons = int(self.consumer[0])

    # -- producer side (fill, TX) ------------------------------------------------------
    def free(self) -> int:
        """Entries this producer may still write (the consumer's index read now)."""
        self.cached_cons = int(self.consumer[0])
        return self.size - ((self.cached_prod - self.cached_cons) & 0xFFFFFFFF)

    def slots(self, count: int) -> npt.NDArray[np.int64]:
        """The entry positions of the next ``count`` entries to produce."""
        return (self.cached_prod + np.arange(count, dtype=np.int64)) & self.mask

    def publish(self, count: int) -> None:
        """Make ``count`` more written entries visible to the consumer."""
        self.cached_prod = (self.cached_prod + count) & 0xFFFFFFFF
        self.producer[0] = self.cached_prod

    def pending(self) -> int:
        """Entries produced that the consumer has not taken yet."""
        self.cached_cons = int(self.consumer[0])
        return (self.cached_prod - self.cached_cons) & 0xFFFFFFFF

    # -- consumer side (RX, completion) ------------------------------------------------
    def available(self) -> int:
        """Entries ready to consume (the producer's index read now), at most the ring's size.

        A producer index further ahead than the ring holds is not believed:
        the excess would be entries overwritten or never written.
        """
        self.cached_prod = int(self.producer[0])
        return min((self.cached_prod - self.cached_cons) & 0xFFFFFFFF, self.size)

    def peek(self, count: int) -> npt.NDArray[np.int64]:
        """The entry positions of the next ``count`` entries to consume."""
        return (self.cached_cons + np.arange(count, dtype=np.int64)) & self.mask

    def consume(self, count: int) -> None:
        """Give ``count`` consumed entries back to the producer."""
        self.cached_cons = (self.cached_cons + count) & 0xFFFFFFFF
        self.consumer[0] = self.cached_cons

    def release_views(self) -> None:
        """Drop the views into the ring's memory (before it is unmapped)."""
        spare = np.zeros(2, U32)
        self.producer = spare[:1]
        self.consumer = spare[1:]
        self.addr = np.zeros(0, ADDR)


class DescRing(Ring):
    """An RX or TX ring: ``struct xdp_desc`` entries, as ``addr``, ``len`` and ``options``."""

    ENTRY_BYTES = 16

    def __init__(
        self, buf: mmap.mmap | bytearray, *, producer: int, consumer: int, desc: int, size: int
    ) -> None:
        super().__init__(buf, producer=producer, consumer=consumer, desc=desc, size=size)
        words = np.frombuffer(buf, U32, size * 4, desc)
        self.len: npt.NDArray[np.uint32] = words[2::4]
        self.options: npt.NDArray[np.uint32] = words[3::4]

    def release_views(self) -> None:
        super().release_views()
        self.len = np.zeros(0, U32)
        self.options = self.len


class XskSocket:
    """An AF_XDP socket bound to ``ifindex``/``queue`` with a UMEM of ``frames`` chunks.

    ``fill_size``/``comp_size``/``rx_size``/``tx_size`` are the ring sizes
    (powers of two). ``bind_flags`` carries XDP_COPY or XDP_ZEROCOPY. The
    UMEM is one private anonymous mapping; ``umem`` is a NumPy view of it.
    Everything opened is closed again when a step fails.
    """

    def __init__(
        self,
        ifname: str,
        ifindex: int,
        queue: int,
        *,
        frames: int,
        frame_size: int,
        fill_size: int,
        comp_size: int,
        rx_size: int,
        tx_size: int,
        bind_flags: int,
    ) -> None:
        self.ifname = ifname
        self.frame_size = frame_size
        self.frames = frames
        self._maps: list[mmap.mmap] = []
        self.umem_map: mmap.mmap | None = None
        self.sock: socket.socket | None = None
        try:
            self._open(ifindex, queue, (fill_size, comp_size, rx_size, tx_size), bind_flags)
        except BaseException:
            self.close()
            raise

    def _open(
        self, ifindex: int, queue: int, sizes: tuple[int, int, int, int], bind_flags: int
    ) -> None:
        fill_size, comp_size, rx_size, tx_size = sizes
        name = self.ifname
        try:
            self.sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
        except OSError as exc:
            raise DeviceError(f"cannot open an AF_XDP socket for {name!r}: {_why(exc)}") from None
        fd = self.sock.fileno()
        size = self.frames * self.frame_size
        self.umem_map = mmap.mmap(
            -1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
        )
        probe = ctypes.c_char.from_buffer(self.umem_map)
        self.umem_address = ctypes.addressof(probe)
        del probe
        reg = _UMEM_REG.pack(self.umem_address, size, self.frame_size, 0, 0, 0)
        sock = self.sock
        try:
            sock.setsockopt(SOL_XDP, XDP_UMEM_REG, reg)
        except OSError as exc:
            raise DeviceError(f"cannot register a UMEM of {size} bytes: {_why(exc)}") from None
        for option, count, what in (
            (XDP_UMEM_FILL_RING, fill_size, "fill"),
            (XDP_UMEM_COMPLETION_RING, comp_size, "completion"),
            (XDP_RX_RING, rx_size, "RX"),
            (XDP_TX_RING, tx_size, "TX"),
        ):
            try:
                sock.setsockopt(SOL_XDP, option, struct.pack("=I", count))
            except OSError as exc:
                raise DeviceError(f"cannot size the {what} ring at {count}: {_why(exc)}") from None
        off = _OFFSETS.unpack(sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, _OFFSETS.size))
        rx_off, tx_off, fr_off, cr_off = off[0:4], off[4:8], off[8:12], off[12:16]
        self.fill = Ring(**self._map(fd, XDP_UMEM_PGOFF_FILL_RING, fr_off, fill_size, 8))
        self.comp = Ring(**self._map(fd, XDP_UMEM_PGOFF_COMPLETION_RING, cr_off, comp_size, 8))
        self.rx = DescRing(**self._map(fd, XDP_PGOFF_RX_RING, rx_off, rx_size, 16))
        self.tx = DescRing(**self._map(fd, XDP_PGOFF_TX_RING, tx_off, tx_size, 16))
        # More frames per kick than the default 32, where the kernel has the option (6.17+).
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_XDP, XDP_MAX_TX_SKB_BUDGET, struct.pack("=I", tx_size))
        addr = bytearray(_SOCKADDR.pack(AF_XDP, bind_flags, ifindex, queue, 0))
        raw = (ctypes.c_char * len(addr)).from_buffer(addr)
        if _LIBC.bind(fd, ctypes.addressof(raw), len(addr)) != 0:
            err = ctypes.get_errno()
            mode = "zero-copy" if bind_flags & XDP_ZEROCOPY else "copy"
            if bind_flags & XDP_COPY == 0 and bind_flags & XDP_ZEROCOPY == 0:
                mode = "any"
            raise DeviceError(
                f"cannot bind AF_XDP to {name!r} queue {queue} in {mode} mode: "
                f"{_why(OSError(err, os.strerror(err)))}"
            )
        options = sock.getsockopt(SOL_XDP, XDP_OPTIONS, 4)
        self.zero_copy = bool(struct.unpack("=I", options)[0] & XDP_OPTIONS_ZEROCOPY)
        self.umem = np.frombuffer(self.umem_map, np.uint8)

    def _map(
        self, fd: int, pgoff: int, offsets: tuple[int, ...], size: int, entry_bytes: int
    ) -> dict[str, Any]:
        """Map one ring; the keyword arguments of its ``Ring``."""
        producer, consumer, desc, _flags = offsets
        try:
            m = mmap.mmap(
                fd,
                desc + size * entry_bytes,
                flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
                offset=pgoff,
            )
        except OSError as exc:
            raise DeviceError(f"cannot map an AF_XDP ring: {_why(exc)}") from None
        self._maps.append(m)
        return {"buf": m, "producer": producer, "consumer": consumer, "desc": desc, "size": size}

    def fileno(self) -> int:
        if self.sock is None:
            raise DeviceError(f"AF_XDP socket on {self.ifname!r} is closed")
        return self.sock.fileno()

    def kick(self) -> int:
        """Ask the kernel to send what the TX ring holds: 0, or the errno it answered."""
        if self.sock is None:
            return errno.EBADF
        try:
            self.sock.send(b"", socket.MSG_DONTWAIT)
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    def statistics(self) -> dict[str, int]:
        """The kernel's counters for this socket (``struct xdp_statistics``), cumulative."""
        if self.sock is None:
            return dict.fromkeys(STAT_NAMES, 0)
        raw = self.sock.getsockopt(SOL_XDP, XDP_STATISTICS, _STATISTICS.size)
        values = _STATISTICS.unpack(raw.ljust(_STATISTICS.size, b"\0"))
        return dict(zip(STAT_NAMES, values, strict=True))

    def close(self) -> None:
        """Close the socket (the kernel lets go of the UMEM) and unmap what no view holds."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for name in ("fill", "comp", "rx", "tx"):
            ring = getattr(self, name, None)
            if isinstance(ring, Ring):
                ring.release_views()
        for m in self._maps:
            with contextlib.suppress(BufferError):
                m.close()  # a view still alive keeps it mapped until it goes
        self._maps.clear()
        if self.umem_map is not None:
            self.umem = np.zeros(0, np.uint8)
            with contextlib.suppress(BufferError):
                self.umem_map.close()
            self.umem_map = None


def _why(exc: OSError) -> str:
    if exc.errno == errno.EPERM:
        return "not permitted (needs CAP_NET_RAW)"
    if exc.errno == errno.EAFNOSUPPORT:
        return "the kernel has no AF_XDP (CONFIG_XDP_SOCKETS)"
    if exc.errno in {errno.ENOMEM, errno.ENOBUFS}:
        return f"{os.strerror(exc.errno)} (RLIMIT_MEMLOCK, or CAP_IPC_LOCK)"
    return os.strerror(exc.errno or 0)
