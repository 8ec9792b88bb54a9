"""``GuestPort``: a guest's network device, over its own window and rings.

A guest makes its window (a sealed memfd of buffers, ``vswitch-window-NAME``)
and its rings (``vswitch-rings-NAME``), hands both to the switch with two
eventfds, and from then on talks to the switch only through the rings:

* **post** (guest -> switch): receive buffers it gives the NIC side to fill,
  at start and every time it releases one;
* **rx** (switch -> guest): filled buffers, each a frame with its ``RxInfo``;
* **tx** (guest -> switch): frames it built in its transmit buffers;
* **done** (switch -> guest): transmit buffers given back, and descriptors
  the switch refused (stale, not the guest's, over its quota), which
  ``take_errors`` returns.

It implements ``Device``, so a netoffload ``Stack`` runs on it unchanged:
``recv`` hands out views of the window (valid until ``release``, which posts
the buffer again), ``send`` builds each frame in a free transmit buffer (one
copy, like a driver's, counted in ``tx_copies``), the capabilities are what
the switch does for every guest (checksums and segmentation on transmit;
checksums and assembled super-packets on receive, which it always hands
over, so those are fixed).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from netoffload.device.base import Device, DeviceError, poll_fds
from netoffload.device.softnic import layout
from netoffload.device.softnic.layout import Memo
from netoffload.device.vmdq.queue import (
    DONE_POST,
    DONE_TX,
    Queue,
    Status,
    descs,
    drain_eventfd,
    ring_eventfd,
    sealed_memfd,
)
from netoffload.device.vmdq.steer import PortVlans
from netoffload.device.vmdq.window import HEADROOM, WindowGeometry, guest_rings
from netoffload.offload import (
    AnyRecord,
    CapabilityRecord,
    ChecksumCaps,
    ChecksumFlags,
    DeviceStats,
    DropReason,
    IpVersions,
    Packet,
    Selection,
    SelectionError,
    Task,
    TcpAssemblyCaps,
    TcpSegmentationCaps,
    UdpAssemblyCaps,
    UdpSegmentationCaps,
)
from netoffload.vswitch.pool import Quota
from netoffload.vswitch.protocol import ProtocolError, recv_message, send_message
from netoffload.wire import MacAddress

_BOTH = IpVersions.IPV4 | IpVersions.IPV6
_L4 = (
    ChecksumFlags.TCP_IPV4
    | ChecksumFlags.UDP_IPV4
    | ChecksumFlags.TCP_IPV6
    | ChecksumFlags.UDP_IPV6
)
#: Receive tasks the switch always does for a guest: they cannot be turned off.
_FIXED = frozenset({Task.TCP_ASSEMBLY, Task.UDP_ASSEMBLY})


def guest_capabilities() -> list[CapabilityRecord]:
    """What every guest port offers (the switch's uplink or its fallback does the work)."""
    return [
        ChecksumCaps(tx=_L4 | ChecksumFlags.IPV4_HEADER, rx=_L4),
        TcpSegmentationCaps(max_size_bytes=65536, versions=_BOTH | IpVersions.ECN),
        UdpSegmentationCaps(max_size_bytes=65536, versions=_BOTH),
        TcpAssemblyCaps(max_size_bytes=65536, versions=_BOTH),
        UdpAssemblyCaps(max_size_bytes=65536, versions=_BOTH),
    ]


@dataclass(frozen=True, slots=True)
class DescriptorError:
    """A descriptor the switch refused: which ring, which buffer and generation, why."""

    ring: str  # "post" or "tx"
    buffer: int
    gen: int
    status: Status


@dataclass(frozen=True, slots=True)
class Attachment:
    """What the switch said when the guest attached."""

    pool: int
    mac: MacAddress
    mtu: int
    vlans: PortVlans
    quota: Quota


class GuestPort(Device):
    """A guest's port on a virtual switch; see the module docstring.

    ``sock`` is the guest's end of its socket pair with the switch (or its
    descriptor). Attaching waits at most ``timeout_s`` for the switch.
    ``post`` is how many receive buffers to post at once (default: as many as
    the quota allows).
    """

    def __init__(
        self,
        sock: socket.socket | int,
        *,
        name: str = "guest",
        geometry: WindowGeometry | None = None,
        ring_entries: int = 256,
        post: int | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.name = name
        self.geometry = g = geometry or WindowGeometry()
        self._sock = sock if isinstance(sock, socket.socket) else socket.socket(fileno=sock)
        self._fds: list[int] = []
        self._closed = False
        self._gone = False
        try:
            self._window_fd = self._own(sealed_memfd(f"vswitch-window-{name}", g.total_bytes))
            self._window = mmap.mmap(self._window_fd, g.total_bytes)
            layout_ = guest_rings(ring_entries)
            self._rings_fd = self._own(sealed_memfd(f"vswitch-rings-{name}", layout_.total_bytes))
            self._rings_map = mmap.mmap(self._rings_fd, layout_.total_bytes)
            flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC
            self._kick = self._own(os.eventfd(0, flags))
            self._irq = self._own(os.eventfd(0, flags))
            self.attachment = self._attach(ring_entries, timeout_s)
        except BaseException:
            self._release()
            raise
        self._mem = memoryview(self._window)
        #: The guest's own ring memory (the rings live in it). The switch trusts none of it.
        self.ring_memory = memoryview(self._rings_map)
        self.ring_layout = layout_
        self.rings: dict[str, Queue] = layout_.queues(self.ring_memory)
        self._stats = DeviceStats()
        self._errors: list[DescriptorError] = []
        self._encode_tx = Memo(layout.encode_tx_ext)
        self._decode_rx = Memo(layout.decode_rx_ext)
        self._enabled = Selection(guest_capabilities())
        self._held: dict[int, tuple[int, int]] = {}
        self._flags: dict[int, int] = {}
        self._tx_gen = np.zeros(g.buffers, dtype=np.int64)
        self._tx_free: list[int] = list(range(g.buffers - 1, g.rx_buffers - 1, -1))
        self._in_flight = 0
        quota = self.attachment.quota
        count = min(g.rx_buffers, quota.rx_buffers, ring_entries)
        if post is not None:
            count = min(count, post)
        self._post_rows([(b, 0) for b in range(count)])

    def _own(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def _attach(self, ring_entries: int, timeout_s: float) -> Attachment:
        hello = {
            "op": "attach",
            "name": self.name,
            "geometry": self.geometry.as_dict(),
            "ring_entries": ring_entries,
        }
        try:
            send_message(
                self._sock, hello, [self._window_fd, self._rings_fd, self._kick, self._irq]
            )
        except OSError as exc:
            raise DeviceError(f"cannot reach the switch: {exc.strerror or exc}") from None
        if not poll_fds([self._sock.fileno()], timeout_s):
            raise DeviceError(f"the switch did not answer within {timeout_s:g}s")
        try:
            got = recv_message(self._sock)
        except (OSError, ProtocolError) as exc:
            raise DeviceError(f"the switch's answer: {exc}") from None
        if got is None:
            raise DeviceError("the switch closed the connection")
        reply, fds = got
        for fd in fds:
            os.close(fd)
        if not reply.get("ok"):
            raise DeviceError(f"the switch refused {self.name}: {reply.get('error')}")
        try:
            return Attachment(
                pool=int(reply["pool"]),
                mac=MacAddress.parse(reply["mac"]),
                mtu=int(reply["mtu"]),
                vlans=PortVlans.parse(reply["vlans"]),
                quota=Quota(**reply["quota"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DeviceError(f"the switch's answer is malformed: {exc}") from None

    # -- capabilities -----------------------------------------------------------------
    def capabilities(self) -> list[AnyRecord]:
        return list(guest_capabilities())

    def enabled(self) -> Selection:
        return self._enabled

    def fixed_selection(self) -> Selection:
        return Selection(r for r in guest_capabilities() if r.task in _FIXED)

    def enable(self, selection: Selection) -> Selection:
        selection.check_against(guest_capabilities())
        if not set(selection) >= _FIXED:
            raise SelectionError("receive assembly is always on: the switch hands super-packets")
        self._enabled = selection
        return selection

    # -- link -------------------------------------------------------------------------
    @property
    def mtu(self) -> int:
        return self.attachment.mtu

    @property
    def mac(self) -> MacAddress:
        return self.attachment.mac

    @property
    def link_up(self) -> bool:
        return not self._closed and not self._gone

    @property
    def pool(self) -> int:
        return self.attachment.pool

    def _check(self) -> None:
        if self._closed:
            raise DeviceError(f"{self.name} is closed")
        if self._gone:
            raise DeviceError(f"{self.name}: the switch is gone")

    def _service_socket(self) -> None:
        """Read what the switch said (nothing is expected but its going away)."""
        while True:
            try:
                got = recv_message(self._sock)
            except BlockingIOError:
                return
            except (OSError, ProtocolError):
                got = None
            if got is None:
                self._gone = True
                return
            for fd in got[1]:
                os.close(fd)

    # -- transmit ---------------------------------------------------------------------
    def _reap(self) -> None:
        rows = self.rings["done"].take()
        if not len(rows):
            return
        gens = self._tx_gen
        for buffer, gen, status, flags in zip(
            rows["buffer"].tolist(),
            rows["gen"].tolist(),
            rows["status"].tolist(),
            rows["flags"].tolist(),
            strict=True,
        ):
            g = self.geometry
            if flags & DONE_TX and g.rx_buffers <= buffer < g.buffers:
                if status == Status.OK:
                    gens[buffer] = gen
                    self._tx_free.append(buffer)
                    self._in_flight -= 1
                    continue
                self._errors.append(DescriptorError("tx", buffer, gen, Status(status)))
                self._stats.drop(DropReason.BAD_REQUEST)
                if status in (Status.OVER_QUOTA, Status.MALFORMED, Status.DROPPED):
                    self._tx_free.append(buffer)
                    self._in_flight -= 1
            elif flags & DONE_POST:
                self._errors.append(DescriptorError("post", buffer, gen, Status(status)))

    def send(self, batch: Sequence[Packet]) -> int:
        """Build each frame in a free transmit buffer and post it; how many were taken."""
        self._check()
        self._reap()
        ring = self.rings["tx"]
        room = min(ring.space(), len(batch), self.attachment.quota.tx_in_flight - self._in_flight)
        g, mem = self.geometry, self._mem
        capacity = g.frame_capacity
        buffers: list[int] = []
        lengths: list[int] = []
        exts: list[bytes] = []
        taken = 0
        stats = self._stats
        for i in range(max(room, 0)):
            packet = batch[i]
            try:
                head, data = packet.head, packet.data
                size = len(head) + len(data)
                ext = self._encode_tx(packet.tx)
            except Exception:  # not a buffer and a request: this packet's cost
                stats.drop(DropReason.BAD_REQUEST)
                taken += 1
                continue
            if size > capacity:
                stats.drop(DropReason.TOO_LARGE)
                taken += 1
                continue
            if not self._tx_free:
                break
            buffer = self._tx_free.pop()
            start = g.offset(buffer) + HEADROOM
            try:
                if head:
                    mem[start : start + len(head)] = head
                    mem[start + len(head) : start + size] = data
                else:
                    mem[start : start + size] = data
            except (TypeError, ValueError):
                self._tx_free.append(buffer)
                stats.drop(DropReason.BAD_REQUEST)
                taken += 1
                continue
            buffers.append(buffer)
            lengths.append(size)
            exts.append(ext)
            stats.tx_packets += 1
            stats.tx_bytes += size
            stats.tx_copies += 1
            stats.tx_copy_bytes += size
            taken += 1
        if buffers:
            rows = descs(len(buffers))
            rows["buffer"] = buffers
            rows["gen"] = self._tx_gen[buffers]
            rows["offset"] = HEADROOM
            rows["length"] = lengths
            rows["ext"] = np.array(exts, dtype="V52")
            ring.put(rows)
            self._in_flight += len(buffers)
            ring_eventfd(self._kick)
        return taken

    # -- receive ----------------------------------------------------------------------
    def recv(self, max_packets: int = 64) -> list[Packet]:
        """Up to ``max_packets`` received frames, as views of this guest's window."""
        self._check()
        drain_eventfd(self._irq)
        self._reap()
        rows = self.rings["rx"].take(max_packets)
        if not len(rows):
            return []
        g, mem = self.geometry, self._mem
        decode = self._decode_rx
        held, flags_of = self._held, self._flags
        out: list[Packet] = []
        stats = self._stats
        for buffer, gen, offset, length, ext, flags in zip(
            rows["buffer"].tolist(),
            rows["gen"].tolist(),
            rows["offset"].tolist(),
            rows["length"].tolist(),
            rows["ext"].tolist(),
            rows["flags"].tolist(),
            strict=True,
        ):
            if buffer >= g.rx_buffers or offset + length > g.buffer_bytes:
                stats.drop(DropReason.MALFORMED_FRAME)
                continue
            start = g.offset(buffer) + offset
            view = mem[start : start + length]
            out.append(Packet(view, rx=decode(ext)))
            held[id(view)] = (buffer, gen)
            flags_of[id(view)] = flags
            stats.rx_packets += 1
            stats.rx_bytes += length
        if self.rings["rx"].available():
            ring_eventfd(self._irq)  # more is waiting: keep fileno() readable
        return out

    def residue(self, packet: Packet) -> int:
        """Non-zero bytes in the buffer of a received packet after its frame: always 0 (the
        NIC side zeroes what an earlier frame left), unless this guest wrote there itself."""
        where = self._held.get(id(packet.data))
        if where is None:
            return 0
        g = self.geometry
        start = g.offset(where[0]) + HEADROOM + len(packet.data)
        end = g.offset(where[0]) + g.buffer_bytes
        return int(np.count_nonzero(np.frombuffer(self._window, np.uint8, end - start, start)))

    def bounce(self, max_packets: int = 512) -> int:
        """Post every received buffer straight back without looking at it (a guest that
        wants nothing of its packets: the least a guest can cost); how many."""
        self._check()
        drain_eventfd(self._irq)
        rows = self.rings["rx"].take(max_packets)
        n = len(rows)
        if n:
            back = descs(n)
            back["buffer"] = rows["buffer"]
            back["gen"] = rows["gen"]
            self.rings["post"].put(back)
            ring_eventfd(self._kick)
            self._stats.rx_packets += n
            self._stats.rx_bytes += int(rows["length"].sum())
        if self.rings["rx"].available():
            ring_eventfd(self._irq)
        return n

    def flags(self, packet: Packet) -> int:
        """The receive flags of a packet ``recv`` handed out (``queue.RX_*``)."""
        return self._flags.get(id(packet.data), 0)

    def location(self, packet: Packet) -> tuple[int, int] | None:
        """(buffer, generation) of a packet ``recv`` handed out and not released yet."""
        return self._held.get(id(packet.data))

    def release(self, packets: Iterable[Packet] | None = None) -> None:
        """Post the packets' buffers again (``None``: every buffer held)."""
        held = self._held
        if not held or self._closed:
            return
        if packets is None:
            back = list(held.values())
            held.clear()
            self._flags.clear()
        else:
            back = []
            for packet in packets:
                key = id(packet.data)
                where = held.pop(key, None)
                if where is not None:
                    self._flags.pop(key, None)
                    back.append(where)
        self._post_rows(back)

    def _post_rows(self, pairs: list[tuple[int, int]]) -> None:
        if not pairs or self._gone:
            return
        rows = descs(len(pairs))
        rows["buffer"] = [b for b, _ in pairs]
        rows["gen"] = [g for _, g in pairs]
        self.rings["post"].put(rows)
        ring_eventfd(self._kick)

    @property
    def rx_held(self) -> int:
        return len(self._held)

    @property
    def tx_free(self) -> int:
        self._reap()
        return len(self._tx_free)

    def take_errors(self) -> list[DescriptorError]:
        """Descriptors the switch refused since the last call."""
        self._reap()
        errors, self._errors = self._errors, []
        return errors

    def kick(self) -> None:
        """Tell the switch the rings have work (after writing them directly)."""
        ring_eventfd(self._kick)

    # -- waiting ----------------------------------------------------------------------
    def fileno(self) -> int:
        return self._irq

    def filenos(self) -> list[int]:
        return [self._irq]

    def wait(self, timeout_s: float, *, for_tx: bool = False) -> bool:
        """Until the switch rings (or goes away); True when woken."""
        self._check()
        ready = poll_fds([self._irq, self._sock.fileno()], timeout_s)
        if self._sock.fileno() in ready:
            self._service_socket()
            self._check()
        return bool(ready)

    def switch_alive(self) -> bool:
        """Whether the switch is still there (reads what it said, never waits)."""
        if not self._gone and poll_fds([self._sock.fileno()], 0.0):
            self._service_socket()
        return not self._gone

    def report(self, data: dict[str, Any]) -> None:
        """Send counters or results to the switch (shown by ``vswitch stats``)."""
        with contextlib.suppress(OSError, ProtocolError):
            send_message(self._sock, {"op": "report", "data": data})

    def stats(self) -> DeviceStats:
        out = DeviceStats()
        out.merge(self._stats)
        return out

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ProtocolError):
            send_message(self._sock, {"op": "bye"})
        self._release()

    def _release(self) -> None:
        self._closed = True
        for name in ("_mem", "ring_memory"):
            view = getattr(self, name, None)
            if isinstance(view, memoryview):
                with contextlib.suppress(BufferError):
                    view.release()
        for attr in ("_window", "_rings_map"):
            region = getattr(self, attr, None)
            if isinstance(region, mmap.mmap):
                with contextlib.suppress(BufferError):
                    region.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        self._sock.close()
