"""XdpDevice: an existing interface through an AF_XDP socket, frames in a UMEM the kernel reads.

One AF_XDP socket bound to one receive queue of the interface, a UMEM of
``frames`` chunks of ``frame_size`` bytes (the first half receives, the
second half transmits), and the XDP program that redirects the queue's
frames to the socket (``netoffload.device.bpf``; detached by ``close()``,
and by the kernel should the process die).

* **recv** hands out the frames the kernel put on the RX ring as views into
  their UMEM chunks, nothing copied. A chunk stays the caller's until the
  packet is passed to ``release``, which puts it back on the fill ring; a
  caller that holds every receive chunk makes the kernel drop what arrives
  (counted as ``no_buffer``), it never overwrites a held one. Descriptors
  are checked before use: one pointing outside the receive chunks, at a
  chunk not with the kernel, or past its chunk is dropped
  (``malformed_frame``).
* **send** posts frames on the TX ring and kicks the kernel. A frame built
  in this device's memory -- a view from ``tx_buffers``, or a row of
  ``tx_rows`` (where ``HostOffload`` segments and checksums) -- is posted
  where it lies (``tx_in_place``); anything else is copied into a free
  chunk (``tx_copies``, ``tx_copy_bytes``). A chunk is free again once the
  kernel reports it on the completion ring.
* **Capabilities**: none. A frame leaves as it lies in the UMEM: no
  checksum or segmentation offload (AF_XDP's TX metadata checksum request,
  Linux 6.8+, is not used), so a request naming any task is dropped
  (``outside_capability``). ``HostOffload`` does that work on the host, in
  UMEM rows the device lends it.

In copy mode (``zero_copy=False``, the only mode a veth has) the kernel
itself copies each frame between the UMEM and its socket buffers; the
counters above count only what this process copies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import time
from collections.abc import Iterable, Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.device.base import Device, DeviceError, poll_fds
from netoffload.device.bpf import XDP_MODES, XskRedirect, create_xskmap
from netoffload.device.link import interface_exists, interface_mac, interface_mtu, interface_up
from netoffload.device.xsk import (
    AF_XDP,
    XDP_COPY,
    XDP_PACKET_HEADROOM,
    XDP_ZEROCOPY,
    XskSocket,
    data_path_supported,
)
from netoffload.offload import (
    AnyRecord,
    DeviceStats,
    DropReason,
    Packet,
    Selection,
)
from netoffload.wire import MacAddress

ByteMatrix: TypeAlias = npt.NDArray[np.uint8]

MIN_FRAME = 14  # an Ethernet header
#: How long link facts (MTU) are trusted on the send path before they are read again.
LINK_REFRESH_S = 1.0
# Kicks per send at most: each sends up to the kernel's budget (32 frames before 6.17).
_MAX_KICKS = 4096
_FREE, _LENT, _FLIGHT = 0, 1, 2
_WITH_KERNEL, _HELD = 0, 1
_NO_SELECTION = Selection()


class XdpDevice(Device):
    """An interface driven through AF_XDP; see the module doc.

    ``frames`` (a power of two, at least 4) chunks of ``frame_size`` bytes
    (2048 or 4096); ``queue`` is the receive queue served (frames on other
    queues go to the kernel's stack). ``zero_copy``: False binds in copy
    mode, True insists on zero-copy (a driver that cannot is an error), None
    lets the kernel choose. ``xdp_mode`` is how the program attaches:
    ``auto`` (the driver's own XDP where it has one: veth does, and then
    stops its peer from sending GSO super-packets), ``native`` or ``skb``.
    With ``data_path=False`` nothing is opened until the first
    ``send``/``recv``/``fileno`` (from a thread in the interface's network
    namespace), so querying capabilities leaves the interface alone. A
    device that is garbage-collected without ``close()`` detaches its program
    too.
    """

    def __init__(
        self,
        ifname: str,
        *,
        queue: int = 0,
        frames: int = 4096,
        frame_size: int = 4096,
        zero_copy: bool | None = False,
        xdp_mode: str = "auto",
        data_path: bool = True,
    ) -> None:
        if frames < 4 or frames & (frames - 1):
            raise ValueError(f"frames must be a power of two of at least 4, not {frames}")
        if frame_size not in (2048, 4096):
            raise ValueError(f"frame_size must be 2048 or 4096, not {frame_size}")
        if queue < 0:
            raise ValueError(f"queue must not be negative, not {queue}")
        if xdp_mode not in XDP_MODES:
            raise ValueError(f"xdp_mode must be one of {sorted(XDP_MODES)}, not {xdp_mode!r}")
        if not interface_exists(ifname):
            raise DeviceError(f"no such interface {ifname!r}")
        self.name = ifname
        self.queue = queue
        self.frames = frames
        self.frame_size = frame_size
        self.zero_copy_requested = zero_copy
        self.xdp_mode = xdp_mode
        self.rx_frames = frames // 2
        self.tx_frames = frames - self.rx_frames
        # Link ioctls and the namespace: everything is opened where the device was made.
        self._link_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._ifindex = socket.if_nametoindex(ifname)
        self._netns = _netns()
        self._stats = DeviceStats()
        # The kernel's cumulative counters as last read (``stats`` adds what is new).
        self._kernel_seen = dict.fromkeys(
            ("rx_dropped", "rx_fill_ring_empty_descs", "rx_ring_full", "tx_invalid_descs"), 0
        )
        self._xsk: XskSocket | None = None
        self._redirect: XskRedirect | None = None
        self._umem: ByteMatrix = np.zeros(0, np.uint8)
        self._umem_address = 0
        self._rx_state = np.zeros(self.rx_frames, np.uint8)
        self._tx_state = np.zeros(self.tx_frames, np.uint8)
        self._tx_cursor = 0
        self._rx_views: dict[int, tuple[memoryview, int]] = {}
        self._largest = 0
        self._largest_at = 0.0
        self._closed = False
        if data_path:
            self._open()

    # -- set-up -------------------------------------------------------------------------
    def _open(self) -> XskSocket:
        if self._xsk is not None:
            return self._xsk
        if self._closed:
            raise DeviceError(f"XDP device {self.name!r} is closed")
        why = data_path_supported()
        if why is not None:
            raise DeviceError(f"cannot use AF_XDP on {self.name!r}: {why}")
        if _netns() != self._netns:
            # The socket and the link are made in the calling thread's namespace.
            raise DeviceError(
                f"{self.name!r} is in another network namespace: open its data path there"
            )
        flags = {False: XDP_COPY, True: XDP_ZEROCOPY, None: 0}[self.zero_copy_requested]
        redirect = XskRedirect(self.name, self._ifindex, entries=self.queue + 1, mode=self.xdp_mode)
        try:
            xsk = XskSocket(
                self.name,
                self._ifindex,
                self.queue,
                frames=self.frames,
                frame_size=self.frame_size,
                fill_size=self.rx_frames,
                comp_size=self.tx_frames,
                rx_size=self.rx_frames,
                tx_size=self.tx_frames,
                bind_flags=flags,
            )
        except BaseException:
            redirect.close()
            raise
        try:
            # Every receive chunk to the kernel before the first frame is redirected.
            fill = xsk.fill
            fill.addr[fill.slots(self.rx_frames)] = (
                np.arange(self.rx_frames, dtype=np.uint64) * self.frame_size
            )
            fill.publish(self.rx_frames)
            redirect.add(self.queue, xsk.fileno())
        except BaseException:
            redirect.close()
            xsk.close()
            raise
        self._redirect = redirect
        self._xsk = xsk
        self._umem = xsk.umem
        self._umem_address = xsk.umem_address
        return xsk

    @property
    def zero_copy(self) -> bool:
        """Whether the socket runs in zero-copy mode (the driver DMAs into the UMEM)."""
        return self._open().zero_copy

    # -- capabilities: none ---------------------------------------------------------------
    def capabilities(self) -> list[AnyRecord]:
        """Nothing: AF_XDP has no checksum or segmentation offload here."""
        return []

    def enabled(self) -> Selection:
        return _NO_SELECTION

    def enable(self, selection: Selection) -> Selection:
        """Only the empty selection: anything else is a ``SelectionError``."""
        selection.check_against([])
        return _NO_SELECTION

    # -- link -----------------------------------------------------------------------------
    @property
    def mtu(self) -> int:
        """The interface's MTU, capped by what a receive chunk holds after the kernel's headroom."""
        room = self.frame_size - XDP_PACKET_HEADROOM - 14
        return min(interface_mtu(self.name, self._link_sock), room)

    @property
    def mac(self) -> MacAddress:
        """The interface's own MAC address."""
        return interface_mac(self.name, self._link_sock)

    @property
    def link_up(self) -> bool:
        return not self._closed and interface_up(self.name, self._link_sock)

    def _largest_frame(self) -> int:
        """The longest frame the interface sends (MTU, Ethernet header, one VLAN tag)."""
        now = time.monotonic()
        if now - self._largest_at >= LINK_REFRESH_S:
            self._largest = min(interface_mtu(self.name, self._link_sock) + 18, self.frame_size)
            self._largest_at = now
        return self._largest

    # -- transmit memory ------------------------------------------------------------------
    def _tx_base(self, index: int) -> int:
        return (self.rx_frames + index) * self.frame_size

    def _reap(self) -> None:
        """Free the transmit chunks the kernel has completed."""
        xsk = self._xsk
        if xsk is None:
            return
        comp = xsk.comp
        n = comp.available()
        if not n:
            return
        addrs = comp.addr[comp.peek(n)].astype(np.int64)
        comp.consume(n)
        index = addrs // self.frame_size - self.rx_frames
        index = index[(index >= 0) & (index < self.tx_frames)]
        state = self._tx_state
        index = index[state[index] == _FLIGHT]
        state[index] = _FREE

    def _take(self, count: int) -> list[int]:
        """Up to ``count`` free transmit chunks, marked lent, in ring order from the cursor."""
        free = np.flatnonzero(self._tx_state == _FREE)
        if not len(free):
            return []
        at = int(np.searchsorted(free, self._tx_cursor))
        if at:
            free = np.concatenate((free[at:], free[:at]))
        chosen = free[:count]
        self._tx_state[chosen] = _LENT
        self._tx_cursor = (int(chosen[-1]) + 1) % self.tx_frames
        out: list[int] = chosen.tolist()
        return out

    def _take_run(self, count: int) -> int | None:
        """The first of ``count`` free transmit chunks side by side (marked lent), or None."""
        state = self._tx_state
        total = len(state)
        if count <= 0 or count > total:
            return None
        c = self._tx_cursor
        if c + count <= total and not state[c : c + count].any():
            start = c
        else:
            sums = np.concatenate(([0], np.cumsum(state == _FREE)))
            fits = np.flatnonzero(sums[count:] - sums[:-count] == count)
            if not len(fits):
                return None
            after = fits[fits >= c]
            start = int(after[0] if len(after) else fits[0])
        state[start : start + count] = _LENT
        self._tx_cursor = (start + count) % total
        return start

    def tx_buffers(self, count: int) -> list[memoryview]:
        """Lend up to ``count`` free transmit chunks, as writable views to build a frame in.

        Pass ``Packet(view[:length], request)`` to ``send``: it is posted where it
        lies. A view not sent after all goes back with ``return_tx_buffers``.
        """
        self._open()
        self._reap()
        mem = self._umem.data
        fs = self.frame_size
        return [mem[self._tx_base(i) : self._tx_base(i) + fs] for i in self._take(count)]

    def tx_rows(self, count: int, width: int) -> ByteMatrix | None:
        """Lend ``count`` transmit chunks side by side as the rows of one ``(count,
        frame_size)`` matrix, or None when no such run is free or a row is too narrow.

        What ``HostOffload`` builds frames in (segments, checksummed frames); a
        row's frame goes to ``send`` as a view of its first bytes.
        """
        if width > self.frame_size or count <= 0:
            return None
        self._open()
        self._reap()
        start = self._take_run(count)
        if start is None:
            return None
        base = self._tx_base(start)
        matrix: ByteMatrix = self._umem[base : base + count * self.frame_size].reshape(
            count, self.frame_size
        )
        return matrix

    def return_tx_buffers(self, views: Iterable[memoryview | ByteMatrix]) -> None:
        """Give back lent chunks not sent after all: views from ``tx_buffers``, or
        matrices from ``tx_rows`` (every row)."""
        for view in views:
            parts = [memoryview(row) for row in view] if isinstance(view, np.ndarray) else [view]
            for part in parts:
                where = self._locate(part)
                if where is not None and self._tx_state[where[0]] == _LENT:
                    self._tx_state[where[0]] = _FREE

    def _address(self, data: object) -> int | None:
        """Offset of ``data`` in the UMEM when it is a writable view into it."""
        if not isinstance(data, memoryview) or self._xsk is None:
            return None
        try:
            address = ctypes.addressof(ctypes.c_char.from_buffer(data))
        except (TypeError, ValueError):
            return None
        offset = address - self._umem_address
        if offset < 0 or offset + data.nbytes > self.frames * self.frame_size:
            return None
        return offset

    def _locate(self, data: object) -> tuple[int, int] | None:
        """(transmit chunk, offset in it) of a view that lies within one transmit chunk."""
        offset = self._address(data)
        if offset is None:
            return None
        chunk, within = divmod(offset, self.frame_size)
        index = chunk - self.rx_frames
        assert isinstance(data, memoryview)
        if not 0 <= index < self.tx_frames or within + data.nbytes > self.frame_size:
            return None
        return index, within

    @property
    def tx_free(self) -> int:
        """Transmit chunks free now (neither lent nor in flight)."""
        self._reap()
        return int(np.count_nonzero(self._tx_state == _FREE))

    # -- data path ------------------------------------------------------------------------
    def send(self, batch: Sequence[Packet]) -> int:
        """Post as much of ``batch`` as the TX ring and free chunks take; never blocks.

        Returns how many packets were taken; each is sent (``tx_packets``) or
        dropped with its reason (``drops``). Frames built in lent chunks are
        posted in place; the rest are copied into free chunks.
        """
        xsk = self._open()
        self._reap()
        tx = xsk.tx
        room = tx.free()
        if not room:
            self._kick(xsk)
            return 0
        stats = self._stats
        state = self._tx_state
        fs = self.frame_size
        largest = self._largest_frame()
        umem = self._umem
        mem = umem.data
        addrs: list[int] = []
        lengths: list[int] = []
        spare: list[int] = []  # chunks taken for copies, not used yet
        taken = 0
        for packet in batch:
            if len(addrs) >= room:
                break
            try:
                head = packet.head
                data = packet.data
                size = len(head) + len(data)
                tasks = packet.tx.tasks()
            except Exception:  # not a buffer and a request: costs this packet only
                stats.drop(DropReason.BAD_REQUEST)
                taken += 1
                continue
            if tasks:
                reason: DropReason | None = DropReason.OUTSIDE_CAPABILITY
            elif size < MIN_FRAME:
                reason = DropReason.MALFORMED_FRAME
            elif size > fs:
                reason = DropReason.TOO_LARGE
            elif size > largest:
                reason = DropReason.MTU_EXCEEDED
            else:
                reason = None
            where = None if head else self._locate(data)
            if where is not None and state[where[0]] == _LENT:
                index, within = where
                if reason is not None:
                    state[index] = _FREE
                    stats.drop(reason)
                    taken += 1
                    continue
                state[index] = _FLIGHT
                addrs.append(self._tx_base(index) + within)
                lengths.append(size)
                stats.tx_in_place += 1
                taken += 1
                continue
            if reason is not None:
                stats.drop(reason)
                taken += 1
                continue
            if not spare:
                spare = self._take(room - len(addrs))
                if not spare:
                    break  # every chunk is lent or in flight: the caller keeps the rest
            index = spare.pop()
            base = self._tx_base(index)
            try:
                if head:
                    split = base + len(head)
                    mem[base:split] = head
                    mem[split : base + size] = data
                else:
                    mem[base : base + size] = data
            except (TypeError, ValueError):
                spare.append(index)
                stats.drop(DropReason.BAD_REQUEST)
                taken += 1
                continue
            state[index] = _FLIGHT
            addrs.append(base)
            lengths.append(size)
            stats.tx_copies += 1
            stats.tx_copy_bytes += size
            taken += 1
        if spare:
            state[spare] = _FREE
        if addrs:
            slots = tx.slots(len(addrs))
            tx.addr[slots] = addrs
            tx.len[slots] = lengths
            tx.options[slots] = 0
            tx.publish(len(addrs))
            sent = sum(lengths)
            stats.tx_packets += len(addrs)
            stats.tx_frames += len(addrs)
            stats.tx_bytes += sent
        self._kick(xsk)
        return taken

    def _kick(self, xsk: XskSocket) -> None:
        """Have the kernel send what the TX ring holds (each kick sends a budget's worth)."""
        tx = xsk.tx
        left = tx.pending()
        for _ in range(_MAX_KICKS):
            if not left:
                return
            err = xsk.kick()
            now = tx.pending()
            if err not in (0, errno.EAGAIN, errno.EBUSY, errno.ENOBUFS) or now >= left:
                return  # the kernel took nothing more (link down, completions full)
            left = now

    def tx_pending(self) -> int:
        """Frames posted that the kernel has not completed yet."""
        self._reap()
        return int(np.count_nonzero(self._tx_state == _FLIGHT))

    def recv(self, max_packets: int = 64) -> list[Packet]:
        """Up to ``max_packets`` frames from the RX ring as views into UMEM; never blocks.

        Each stays valid, and the kernel never writes it, until it is passed to ``release``.
        """
        xsk = self._open()
        rx = xsk.rx
        n = min(rx.available(), max_packets)
        if n <= 0:
            return []
        at = rx.peek(n)
        addrs: list[int] = rx.addr[at].tolist()
        lengths: list[int] = rx.len[at].tolist()
        rx.consume(n)
        fs = self.frame_size
        limit = self.rx_frames
        state = self._rx_state
        mem = self._umem.data
        views = self._rx_views
        stats = self._stats
        out: list[Packet] = []
        back: list[int] = []
        for addr, length in zip(addrs, lengths, strict=True):
            chunk, within = divmod(addr, fs)
            if chunk >= limit or state[chunk] != _WITH_KERNEL or within + length > fs:
                # Not a chunk the kernel had: nothing to give back, nothing to trust.
                stats.drop(DropReason.MALFORMED_FRAME)
                continue
            if length < MIN_FRAME:
                stats.drop(DropReason.MALFORMED_FRAME)
                back.append(chunk)
                continue
            view = mem[addr : addr + length]
            state[chunk] = _HELD
            views[id(view)] = (view, chunk)
            out.append(Packet(view))
        if back:
            self._refill(back)
        if out:
            stats.rx_packets += len(out)
            stats.rx_frames += len(out)
            stats.rx_bytes += sum(len(p.data) for p in out)
        return out

    def _refill(self, chunks: list[int]) -> None:
        xsk = self._xsk
        if xsk is None:
            return
        fill = xsk.fill
        self._rx_state[chunks] = _WITH_KERNEL
        fill.addr[fill.slots(len(chunks))] = np.asarray(chunks, np.uint64) * self.frame_size
        fill.publish(len(chunks))

    def release(self, packets: Iterable[Packet] | None = None) -> None:
        """Give received frames' chunks back to the kernel (``None``: every one held)."""
        views = self._rx_views
        if not views:
            return
        if packets is None:
            back = [chunk for _, chunk in views.values()]
            views.clear()
        else:
            back = []
            for packet in packets:
                entry = views.pop(id(packet.data), None)
                if entry is None:
                    continue
                if entry[0] is not packet.data:
                    views[id(packet.data)] = entry  # another object at a reused id
                    continue
                back.append(entry[1])
        if back:
            self._refill(back)

    @property
    def rx_held(self) -> int:
        """Receive chunks handed out by ``recv`` and not released yet."""
        return len(self._rx_views)

    def fileno(self) -> int:
        return self._open().fileno()

    def wait(self, timeout_s: float, *, for_tx: bool = False) -> bool:
        """``poll(2)`` for frames to receive, or with ``for_tx`` for room to send.

        Room to send is a free chunk and TX ring space: completions are
        reaped while waiting for them.
        """
        xsk = self._open()
        if not for_tx:
            return bool(poll_fds([xsk.fileno()], timeout_s))
        deadline = time.monotonic() + timeout_s
        while True:
            self._kick(xsk)
            if self.tx_free and xsk.tx.free():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.0005))

    def stats(self) -> DeviceStats:
        """Our counters plus the kernel's: receive drops (``no_buffer``: the fill ring was
        empty; ``ring_full``: the RX ring was; ``too_large``: a frame longer than a
        chunk) and transmit descriptors it refused (``bad_request``)."""
        if self._xsk is not None:
            kernel = self._xsk.statistics()
            seen = self._kernel_seen
            delta = {k: kernel[k] - seen[k] for k in seen}
            seen.update({k: kernel[k] for k in seen})
            empty = delta["rx_fill_ring_empty_descs"]
            if empty:
                self._stats.drop(DropReason.NO_BUFFER, empty)
            if delta["rx_dropped"] > empty:
                self._stats.drop(DropReason.TOO_LARGE, delta["rx_dropped"] - empty)
            if delta["rx_ring_full"]:
                self._stats.drop(DropReason.RING_FULL, delta["rx_ring_full"])
            if delta["tx_invalid_descs"]:
                self._stats.drop(DropReason.BAD_REQUEST, delta["tx_invalid_descs"])
                self._stats.tx_packets -= delta["tx_invalid_descs"]
        snapshot = DeviceStats()
        snapshot.merge(self._stats)
        return snapshot

    def close(self) -> None:
        """Detach the program, close the socket and unmap what no view holds; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None
        self._rx_views.clear()
        self._umem = np.zeros(0, np.uint8)
        if self._xsk is not None:
            self._xsk.close()
            self._xsk = None
        with contextlib.suppress(OSError):
            self._link_sock.close()


def af_xdp_missing() -> str | None:
    """Why this machine cannot run an ``XdpDevice`` (the kernel feature it lacks), or None.

    Probes what the device needs: the architecture, an AF_XDP socket, and an XSKMAP
    made with bpf(2) (root or CAP_BPF).
    """
    why = data_path_supported()
    if why is not None:
        return why
    try:
        socket.socket(AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as exc:
        if exc.errno in {errno.EAFNOSUPPORT, errno.EINVAL}:
            return "the kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS)"
        return f"cannot open an AF_XDP socket: {os.strerror(exc.errno or 0)}"
    try:
        os.close(create_xskmap(1))
    except OSError as exc:
        if exc.errno in {errno.ENOSYS, errno.EINVAL}:
            return "the kernel has no bpf(2) XSKMAP (CONFIG_BPF_SYSCALL, CONFIG_XDP_SOCKETS)"
        return f"cannot create an XSKMAP with bpf(2): {os.strerror(exc.errno or 0)}"
    return None


def _netns() -> int:
    """The calling thread's network namespace (its inode number)."""
    return os.stat("/proc/thread-self/ns/net").st_ino
