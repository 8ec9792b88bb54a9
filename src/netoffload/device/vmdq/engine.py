"""The NIC side of VMDq pools: frames written straight into the buffers guests posted.

A ``PoolEngine`` maps every attached guest window and does what a NIC with
virtual machine queues does with them, talking to the switch through four
queues (``window.NIC_QUEUES``):

* **fill** (switch -> NIC): receive buffers a guest posted, ``(pool, buffer,
  gen)``; kept per pool until a frame needs one.
* **rx** (NIC -> switch): a buffer filled, with the frame's offset, length
  and ``RxInfo``. ``receive`` steers every frame from the uplink
  (``steer.SteeringTable``) and writes it, tag taken off or put on as the
  pool's VLAN wants, into a posted buffer of each destination pool: one write
  per pool, and no other copy. A pool without a posted buffer loses the
  frame (``no_buffer``): the other pools are not held up by it.
* **tx** (switch -> NIC): frames guests sent from their transmit buffers.
  ``transmit`` steers each one: to another pool on the switch it is copied
  once into that pool's posted buffer (the one counted guest-to-guest copy),
  with the sender's offload request carried over as the receiver's
  ``RxInfo`` (a partial checksum, a super-packet); to the uplink it is handed
  back, as a view of the guest's buffer, for the caller to put on the wire.
* **done** (NIC -> switch): each transmit buffer given back, with the frame's
  VLAN and source MAC for the switch to learn from.

Every buffer is wholly rewritten before its guest sees it again: the bytes
past a new frame, up to the furthest the NIC side ever wrote into that
buffer, are zeroed with it. Nothing read from a window or a queue is trusted:
a bad descriptor costs only itself and is counted.

The engine runs in the SoftNic firmware (frames come from the wire, so a
write is the NIC's DMA) or in the switch for a Linux uplink
(``host_memory=True``: frames are in the switch's memory, and writing one
into a guest is a copy, counted as such).
"""

from __future__ import annotations

import collections
import contextlib
import mmap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.device.softnic import layout
from netoffload.device.softnic.layout import Memo
from netoffload.device.vmdq.queue import (
    DONE_LEARNED,
    RX_COPIED,
    RX_GROUP,
    RX_LOOPBACK,
    Descs,
    Queue,
    Status,
    descs,
    map_sealed,
    ring_eventfd,
)
from netoffload.device.vmdq.steer import (
    AS_IS,
    Egress,
    Kind,
    PortVlans,
    SteeringTable,
    insert_tag,
    source_mac_key,
)
from netoffload.device.vmdq.window import HEADROOM, WindowGeometry
from netoffload.offload import (
    NO_INFO,
    ChecksumRequest,
    ChecksumStatus,
    OffloadError,
    Packet,
    RxInfo,
    SegmentationRequest,
    Task,
    TxRequest,
)

Buffer: TypeAlias = bytes | bytearray | memoryview

ETH_ADDRESSES = 12  # destination and source MAC: what stays in front of a tag
_TAG_BYTES = 4
_SEGMENTATION = frozenset({Task.CHECKSUM, Task.TCP_SEGMENTATION, Task.UDP_SEGMENTATION})
#: Copy kinds: how the bytes of a delivered frame came to be in the guest's buffer.
COPY_GROUP = "group"  # one replica per pool of a broadcast, multicast or flooded frame
COPY_GUEST = "guest"  # from another guest's transmit buffer
COPY_UPLINK = "uplink"  # from the switch's memory (a Linux uplink's receive buffer)


@dataclass(slots=True)
class PoolCounters:
    """One pool's traffic as the NIC side saw it."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    copies: collections.Counter[str] = field(default_factory=collections.Counter)
    copied_bytes: collections.Counter[str] = field(default_factory=collections.Counter)
    drops: collections.Counter[str] = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "copies": dict(sorted(self.copies.items())),
            "copied_bytes": dict(sorted(self.copied_bytes.items())),
            "drops": dict(sorted(self.drops.items())),
        }


class _Pool:
    """One attached window: its map, its posted buffers, how far each buffer is dirty."""

    __slots__ = ("bytes", "counters", "dirty", "free", "geometry", "id", "mem", "region", "vlans")

    def __init__(self, pool: int, fd: int, geometry: WindowGeometry, vlans: PortVlans) -> None:
        self.id = pool
        self.geometry = geometry
        self.vlans = vlans
        self.region: mmap.mmap = map_sealed(fd, geometry.total_bytes)
        self.mem = memoryview(self.region)
        self.bytes: npt.NDArray[np.uint8] = np.frombuffer(self.region, dtype=np.uint8)
        self.free: collections.deque[tuple[int, int]] = collections.deque()
        # Window offset up to which each receive buffer may hold old bytes. A fresh window
        # is the guest's own: its content is not known, so all of it counts as dirty.
        offsets = np.arange(geometry.rx_buffers, dtype=np.int64) * geometry.buffer_bytes
        self.dirty: npt.NDArray[np.int64] = offsets + geometry.buffer_bytes
        self.counters = PoolCounters()

    def close(self) -> None:
        self.free.clear()
        self.mem.release()
        del self.bytes
        with contextlib.suppress(BufferError):  # a view still held elsewhere keeps the map
            self.region.close()


@dataclass(slots=True)
class TxWork:
    """What ``transmit`` took: frames for the uplink (views of guest buffers) and the
    completions to publish once the uplink no longer needs those views."""

    packets: list[Packet]
    done: Descs


@dataclass(slots=True)
class _Rows:
    """Receive descriptors being gathered for one publish."""

    pool: list[int] = field(default_factory=list)
    buffer: list[int] = field(default_factory=list)
    gen: list[int] = field(default_factory=list)
    length: list[int] = field(default_factory=list)
    ext: list[bytes] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pool)

    def add(self, pool: int, buffer: int, gen: int, length: int, *, ext: bytes, flags: int) -> None:
        self.pool.append(pool)
        self.buffer.append(buffer)
        self.gen.append(gen)
        self.length.append(length)
        self.ext.append(ext)
        self.flags.append(flags)


class PoolEngine:
    """See the module docstring. ``queues`` are the NIC side's ends of the four queues;
    ``bell`` is rung whenever the switch has something to read."""

    def __init__(
        self, queues: Mapping[str, Queue], bell: int | None = None, *, host_memory: bool = False
    ) -> None:
        self.fill = queues["fill"]
        self.rx = queues["rx"]
        self.tx = queues["tx"]
        self.done = queues["done"]
        self.bell = bell
        self.host_memory = host_memory
        self.pools: dict[int, _Pool] = {}
        self.table = SteeringTable({})
        #: Decisions and drops of the switching itself (not of any one pool).
        self.switching: collections.Counter[str] = collections.Counter()
        #: Payload bytes copied from host memory into guests on the unicast receive path.
        self.unicast_rx_copied_bytes = 0
        self._rows = _Rows()
        self._encode_rx = Memo(layout.encode_rx_ext)
        self._decode_tx = Memo(layout.decode_tx_ext)
        self._shifted: dict[tuple[RxInfo, int], RxInfo] = {}
        self._rung = False

    # -- configuration --------------------------------------------------------------
    def attach(self, pool: int, fd: int, geometry: WindowGeometry, vlans: PortVlans) -> None:
        """Map ``pool``'s window from ``fd`` (the caller keeps and closes ``fd``)."""
        if pool in self.pools:
            raise ValueError(f"pool {pool} is attached already")
        self.pools[pool] = _Pool(pool, fd, geometry, vlans)

    def detach(self, pool: int) -> PoolCounters | None:
        """Forget ``pool``: its posted buffers, its window map. Its counters, or ``None``."""
        gone = self.pools.pop(pool, None)
        if gone is None:
            return None
        gone.close()
        return gone.counters

    def set_table(self, table: SteeringTable) -> None:
        self.table = table

    def close(self) -> None:
        for pool in list(self.pools):
            self.detach(pool)

    # -- receive buffers --------------------------------------------------------------
    def take_fills(self) -> int:
        """Move posted buffers from the fill queue to their pools; how many came."""
        rows = self.fill.take()
        n = len(rows)
        if not n:
            return 0
        pools = self.pools
        for pool, buffer, gen in zip(
            rows["pool"].tolist(), rows["buffer"].tolist(), rows["gen"].tolist(), strict=True
        ):
            p = pools.get(pool)
            if p is None:
                self.switching["fill_for_gone_pool"] += 1
            elif buffer >= p.geometry.rx_buffers:
                self.switching["fill_out_of_range"] += 1
            else:
                p.free.append((buffer, gen))
        return n

    def has_buffers(self) -> bool:
        """True when some pool has a posted buffer."""
        return any(p.free for p in self.pools.values())

    def posted(self, pool: int) -> int:
        p = self.pools.get(pool)
        return 0 if p is None else len(p.free)

    # -- receive ----------------------------------------------------------------------
    def receive(self, packets: Sequence[Packet]) -> tuple[int, int]:
        """Steer frames from the uplink into the pools' buffers; (writes made, their bytes)."""
        if not packets:
            return 0, 0
        table = self.table
        rules = table.classify([p.data for p in packets]) if table.rules else None
        copied = COPY_UPLINK if self.host_memory else None
        switching = self.switching
        written = nbytes = 0
        for i, packet in enumerate(packets):
            frame = packet.data
            steer = table.from_uplink(frame, None if rules is None else rules[i])
            kind = steer.kind
            if kind >= Kind.DROP_UNKNOWN:
                switching[f"drop_{kind.name[5:].lower()}"] += 1
                continue
            switching[kind.name.lower()] += 1
            if kind is Kind.GROUP or kind is Kind.FLOOD:
                flags = RX_GROUP | RX_COPIED
                for pool in steer.pools:
                    size = self._write(
                        pool, frame, packet.rx, vlan=steer.vlan, flags=flags, copy_kind=COPY_GROUP
                    )
                    written += int(size > 0)
                    nbytes += size
                continue
            size = self._write(
                steer.pools[0],
                frame,
                packet.rx,
                vlan=steer.vlan,
                flags=RX_COPIED if copied else 0,
                copy_kind=copied,
            )
            written += int(size > 0)
            nbytes += size
            if copied:
                self.unicast_rx_copied_bytes += size
        self.publish()
        return written, nbytes

    def prefill(self, pool: int, buffer: int, frame: bytes) -> None:
        """Write ``frame`` into a receive buffer ahead of time, the rest of it zeroed: what a
        NIC's DMA left there. ``deliver_in_place`` hands it over later (benchmarks)."""
        p = self.pools[pool]
        start = p.geometry.offset(buffer) + HEADROOM
        end = start + len(frame)
        p.mem[start:end] = frame
        p.bytes[end : int(p.dirty[buffer])] = 0
        p.dirty[buffer] = end

    def deliver_in_place(self, pool: int, buffer: int, gen: int, length: int) -> bool:
        """Hand over a buffer the NIC has filled already (its DMA wrote the frame there):
        steer it by its own header and queue its descriptor, writing nothing
        (``publish`` sends what was queued)."""
        p = self.pools.get(pool)
        if p is None:
            return False
        base = p.geometry.offset(buffer) + HEADROOM
        steer = self.table.from_uplink(p.mem[base : base + length])
        if steer.dropped or steer.pools != (pool,):
            self.switching["drop_misdelivered"] += 1
            p.free.append((buffer, gen))
            return False
        self.switching["unicast"] += 1
        self._rows.add(pool, buffer, gen, length, ext=self._encode_rx(NO_INFO), flags=0)
        p.counters.rx_packets += 1
        p.counters.rx_bytes += length
        return True

    def _write(
        self,
        pool: int,
        frame: Buffer,
        info: RxInfo,
        *,
        vlan: int,
        flags: int,
        copy_kind: str | None,
    ) -> int:
        """One frame into one posted buffer of ``pool``; the bytes written, 0 (counted)
        when it cannot be."""
        p = self.pools.get(pool)
        if p is None:
            self.switching["drop_pool_gone"] += 1
            return 0
        egress = self.table.egress(frame, vlan, pool)
        size = len(frame) + egress.delta
        counters = p.counters
        if size > p.geometry.frame_capacity:
            counters.drops["too_large"] += 1
            return 0
        if not p.free:
            # Buffers posted after this batch began are on the fill queue: take them first.
            self.take_fills()
            if not p.free:
                counters.drops["no_buffer"] += 1
                return 0
        buffer, gen = p.free.popleft()
        start = p.geometry.offset(buffer) + HEADROOM
        end = start + size
        _place(p.mem, start, frame, egress)
        dirty = int(p.dirty[buffer])
        if dirty > end:
            p.bytes[end:dirty] = 0
        p.dirty[buffer] = end
        if egress is not AS_IS and info is not NO_INFO:
            info = self._shift(info, egress.delta)
        self._rows.add(pool, buffer, gen, size, ext=self._encode_rx(info), flags=flags)
        counters.rx_packets += 1
        counters.rx_bytes += size
        if copy_kind is not None:
            counters.copies[copy_kind] += 1
            counters.copied_bytes[copy_kind] += size
        return size

    def _shift(self, info: RxInfo, delta: int) -> RxInfo:
        key = (info, delta)
        shifted = self._shifted.get(key)
        if shifted is None:
            if len(self._shifted) > 1024:
                self._shifted.clear()
            shifted = self._shifted[key] = shift_rx_info(info, delta)
        return shifted

    def publish(self) -> None:
        """Queue the receive descriptors gathered since the last call for the switch."""
        rows = self._rows
        n = len(rows)
        if not n:
            return
        self._rows = _Rows()
        out = descs(n)
        out["pool"] = rows.pool
        out["buffer"] = rows.buffer
        out["gen"] = rows.gen
        out["offset"] = HEADROOM
        out["length"] = rows.length
        out["ext"] = np.array(rows.ext, dtype="V52")
        out["flags"] = rows.flags
        room = self.rx.space()
        if room < n:  # the switch keeps fewer buffers posted than the queue holds: a bug
            self.switching["drop_rx_queue_full"] += n - room
            for pool, buffer, gen in zip(
                rows.pool[room:], rows.buffer[room:], rows.gen[room:], strict=True
            ):
                p = self.pools.get(pool)
                if p is not None:
                    p.free.append((buffer, gen))
            out = out[:room]
        self.rx.put(out)
        self._rung = True

    # -- transmit ---------------------------------------------------------------------
    def transmit(self, limit: int = 128) -> TxWork | None:
        """Take up to ``limit`` frames guests sent: loop back what is for other pools, and
        return what goes out of the uplink with the completions (``complete`` them after)."""
        rows = self.tx.take(limit)
        n = len(rows)
        if not n:
            return None
        done = rows.copy()
        done["status"] = Status.OK
        done["flags"] = 0
        status = done["status"]
        learned_vlan = done["vlan"]
        learned_mac = done["mac"]
        learned = done["flags"]
        out: list[Packet] = []
        table = self.table
        decode = self._decode_tx
        switching = self.switching
        for i, (pool, buffer, offset, length, ext) in enumerate(
            zip(
                rows["pool"].tolist(),
                rows["buffer"].tolist(),
                rows["offset"].tolist(),
                rows["length"].tolist(),
                rows["ext"].tolist(),
                strict=True,
            )
        ):
            p = self.pools.get(pool)
            if p is None:
                status[i] = Status.GONE
                continue
            g = p.geometry
            if not g.rx_buffers <= buffer < g.buffers or offset + length > g.buffer_bytes:
                status[i] = Status.OUT_OF_RANGE
                p.counters.drops["tx_out_of_range"] += 1
                continue
            try:
                request = decode(ext)
            except OffloadError:
                status[i] = Status.MALFORMED
                p.counters.drops["bad_request"] += 1
                continue
            base = g.offset(buffer) + offset
            frame = p.mem[base : base + length]
            steer = table.from_pool(pool, frame)
            kind = steer.kind
            if kind >= Kind.DROP_UNKNOWN:
                status[i] = Status.DROPPED
                p.counters.drops[f"tx_{kind.name[5:].lower()}"] += 1
                continue
            learned[i] = DONE_LEARNED
            learned_vlan[i] = steer.vlan
            learned_mac[i] = source_mac_key(frame)
            p.counters.tx_packets += 1
            p.counters.tx_bytes += length
            switching[f"tx_{kind.name.lower()}"] += 1
            if steer.pools:
                group = kind is Kind.GROUP or kind is Kind.FLOOD
                self._loop_back(steer.pools, frame, request, steer.vlan, group)
            if steer.uplink:
                out.append(self._to_uplink(frame, request, steer.vlan))
        self.publish()
        return TxWork(out, done)

    def _loop_back(
        self,
        pools: Sequence[int],
        frame: memoryview,
        request: TxRequest,
        vlan: int,
        group: bool,
    ) -> None:
        """Copy a guest's frame into each destination pool (one copy per pool)."""
        info = loopback_info(request)
        flags = RX_COPIED | RX_LOOPBACK | (RX_GROUP if group else 0)
        kind = COPY_GROUP if group else COPY_GUEST
        for pool in pools:
            p = self.pools.get(pool)
            delta = self.table.egress(frame, vlan, pool).delta
            if p is not None and len(frame) + delta > p.geometry.frame_capacity:
                # Too big for that guest's buffers: cut it here, as the host fallback would.
                for segment in _segment(frame, request):
                    self._write(pool, segment, NO_INFO, vlan=vlan, flags=flags, copy_kind=kind)
                self.switching["loopback_segmented"] += 1
                continue
            if request.ipv4_header_checksum and request.segmentation is None:
                filled = _fill_checksums(frame, request)
                if filled is not None:
                    self._write(pool, filled, NO_INFO, vlan=vlan, flags=flags, copy_kind=kind)
                continue
            self._write(pool, frame, info, vlan=vlan, flags=flags, copy_kind=kind)

    def _to_uplink(self, frame: memoryview, request: TxRequest, vlan: int) -> Packet:
        egress = self.table.egress(frame, vlan, None)
        if egress is AS_IS:
            return Packet(frame, request)
        head = bytes(frame[:ETH_ADDRESSES])
        if egress.insert is not None:
            head += insert_tag(egress.insert)
        rest = frame[ETH_ADDRESSES + (_TAG_BYTES if egress.strip else 0) :]
        return Packet(rest, shift_tx_request(request, egress.delta), head=head)

    def complete(self, work: TxWork) -> None:
        """Give the transmit buffers of ``work`` back to the switch."""
        done = work.done
        if not len(done):
            return
        room = self.done.space()
        if room < len(done):  # more in flight than the queue holds: the switch's bug
            self.switching["drop_done_queue_full"] += len(done) - room
            done = done[:room]
        self.done.put(done)
        self._rung = True

    def ring(self) -> None:
        """Ring the switch's bell if anything was queued for it since the last ring."""
        if self._rung:
            self._rung = False
            if self.bell is not None:
                ring_eventfd(self.bell)

    # -- counters ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "pools": {str(p): pool.counters.as_dict() for p, pool in sorted(self.pools.items())},
            "posted": {str(p): len(pool.free) for p, pool in sorted(self.pools.items())},
            "switching": dict(sorted(self.switching.items())),
            "unicast_rx_copied_bytes": self.unicast_rx_copied_bytes,
        }


def _place(mem: memoryview, start: int, frame: Buffer, egress: Egress) -> None:
    """Write ``frame`` at ``start``, its tag taken off or put on: one pass over its bytes."""
    if egress is AS_IS:
        mem[start : start + len(frame)] = frame
        return
    mem[start : start + ETH_ADDRESSES] = frame[:ETH_ADDRESSES]
    at = start + ETH_ADDRESSES
    if egress.insert is not None:
        mem[at : at + _TAG_BYTES] = insert_tag(egress.insert)
        at += _TAG_BYTES
    rest = frame[ETH_ADDRESSES + (_TAG_BYTES if egress.strip else 0) :]
    mem[at : at + len(rest)] = rest


def loopback_info(request: TxRequest) -> RxInfo:
    """What a frame sent by a local guest carries to another: its partial checksum (which
    Linux counts as validated) and, for a super-packet, its segmentation as assembly."""
    partial = request.checksum
    seg = request.segmentation
    if partial is None and seg is None:
        return NO_INFO
    return RxInfo(
        l4=ChecksumStatus.VERIFIED if partial is not None else ChecksumStatus.NOT_CHECKED,
        checksum_partial=partial,
        assembled=seg,
    )


def shift_rx_info(info: RxInfo, delta: int) -> RxInfo:
    """``info`` for the same frame with ``delta`` bytes more in front of its L3 header."""
    partial = info.checksum_partial
    seg = info.assembled
    return replace(
        info,
        checksum_partial=None if partial is None else _shift_partial(partial, delta),
        assembled=None if seg is None else _shift_seg(seg, delta),
    )


def shift_tx_request(request: TxRequest, delta: int) -> TxRequest:
    """``request`` for the same frame with ``delta`` bytes more in front of its L3 header."""
    partial = request.checksum
    seg = request.segmentation
    if partial is None and seg is None:
        return request
    return replace(
        request,
        checksum=None
        if partial is None
        else ChecksumRequest(partial.start + delta, partial.offset),
        segmentation=None if seg is None else _shift_seg(seg, delta),
    )


def _shift_partial(partial: ChecksumRequest, delta: int) -> ChecksumRequest:
    return ChecksumRequest(partial.start + delta, partial.offset)


def _shift_seg(seg: SegmentationRequest, delta: int) -> SegmentationRequest:
    hint = seg.hdr_len + delta if seg.hdr_len else 0
    return SegmentationRequest(seg.gso_type, seg.size, max(hint, 0), seg.ecn, seg.fixed_id)


def _segment(frame: memoryview, request: TxRequest) -> list[Buffer]:
    """The frames the host fallback makes of a super-packet (or the frame, when none)."""
    from netoffload.engine import pipeline

    outcome = pipeline.transmit([Packet(frame, request)], _SEGMENTATION)
    return [p.data for p in outcome.packets if not p.tx.tasks() & _SEGMENTATION]


def _fill_checksums(frame: memoryview, request: TxRequest) -> Buffer | None:
    from netoffload.engine import pipeline

    outcome = pipeline.transmit([Packet(frame, request)], frozenset({Task.CHECKSUM}))
    return outcome.packets[0].data if outcome.packets else None
