"""PacketDevice: an existing interface (veth, physical NIC) through AF_PACKET rings.

One AF_PACKET socket bound to the interface, with PACKET_VNET_HDR (the
10-byte legacy virtio_net_hdr in front of every frame, both directions),
TPACKET_V2, and a PACKET_RX_RING followed by a PACKET_TX_RING in one mmap:

* **send** copies header + frame straight into free TX slots, marks them
  SEND_REQUEST and kicks the kernel once per batch with a non-blocking
  ``send(b"")``. The kernel's ``tpacket_snd`` has read a vnet header from
  each TX slot since Linux 4.13 (verified on the running kernel by the
  tests: GSO super-packets leave through the ring).
* **recv** walks RX slots the kernel has marked TP_STATUS_USER, copies each
  frame out (a slot must go back to the kernel before the caller is done
  with the packet, and the Device API has no "release"), validates its
  header with the kernel's rules and hands the slot back.

Capabilities are the interface's real netdev features, read and changed
with the ethtool ioctl (``netoffload.device.ethtool``); ``FEATURE_TASKS``
is the mapping. With ``rings=False`` the rings are set up on first
use, so querying or changing features costs no ring memory.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import socket
import struct
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from netoffload.device.base import Device, DeviceError
from netoffload.device.ethtool import (
    FEATURE_TASKS,
    EthtoolFeatures,
    read_features,
    set_features,
)
from netoffload.device.link import (
    interface_exists,
    interface_index,
    interface_mac,
    interface_mtu,
    interface_up,
)
from netoffload.device.vnet import MIN_FRAME, RxDecoder, kernel_validator, plan_vnet_hdr_or_reason
from netoffload.offload import (
    AnyRecord,
    CapabilityRecord,
    CapabilityStatus,
    ChecksumCaps,
    ChecksumFlags,
    ClassificationCaps,
    DeviceStats,
    DropReason,
    IpVersions,
    Packet,
    RssHashTypes,
    Selection,
    SelectionError,
    Task,
    TcpAssemblyCaps,
    TcpSegmentationCaps,
    TxRequest,
    UdpAssemblyCaps,
    UdpSegmentationCaps,
    VirtioHdrError,
    VirtioNetHdr,
)
from netoffload.wire import MacAddress

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
TPACKET_V2 = 1
ETH_P_ALL = 0x0003

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_SENDING = 2
TP_STATUS_WRONG_FORMAT = 4

# struct tpacket2_hdr is 32 bytes; a TX frame's data starts right after it
# (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll)).
TX_DATA_OFFSET = 32
# How long ``enabled()`` trusts what it last read from the interface's features.
ENABLED_REFRESH_S = 1.0
VNET_SIZE = VirtioNetHdr.LEGACY_SIZE
_RX_HDR = struct.Struct("=IIIHH")  # tp_status, tp_len, tp_snaplen, tp_mac, tp_net
_STATUS = struct.Struct("=I")
_TX_HDR = struct.Struct("=III")  # tp_status, tp_len, tp_snaplen
_PAGE = mmap.PAGESIZE
# Room for a 64 KiB GSO super-packet, its Ethernet header and both ring headers.
DEFAULT_FRAME_BYTES = 65536 + 14 + 128

_RECORD_TYPES: dict[Task, type[CapabilityRecord]] = {
    Task.CHECKSUM: ChecksumCaps,
    Task.TCP_SEGMENTATION: TcpSegmentationCaps,
    Task.UDP_SEGMENTATION: UdpSegmentationCaps,
    Task.TCP_ASSEMBLY: TcpAssemblyCaps,
    Task.UDP_ASSEMBLY: UdpAssemblyCaps,
    Task.CLASSIFICATION: ClassificationCaps,
}
_FIELD_TYPES: dict[str, Any] = {
    "tx": ChecksumFlags,
    "rx": ChecksumFlags,
    "versions": IpVersions,
    "hash_types": RssHashTypes,
    "rule_slots": int,
}


def records_from_features(features: EthtoolFeatures, *, active_only: bool) -> list[AnyRecord]:
    """Task records from netdev features: what can be on (offered) or what is on (active).

    A feature is offered when it is on or can be turned on; a fixed-off
    feature contributes nothing.
    """
    fields: dict[Task, dict[str, int]] = defaultdict(dict)
    for feature in features.features:
        mapping = FEATURE_TASKS.get(feature.name)
        if mapping is None:
            continue
        usable = feature.active if active_only else feature.active or not feature.fixed
        if not usable:
            continue
        slot = fields[mapping.task]
        slot[mapping.field] = slot.get(mapping.field, 0) | mapping.bits
    out: list[AnyRecord] = []
    for task in sorted(fields):
        values = fields[task]
        if not any(values.values()):
            continue
        kwargs = {name: _FIELD_TYPES[name](bits) for name, bits in values.items()}
        out.append(_RECORD_TYPES[task](**kwargs))
    return out


class PacketDevice(Device):
    """An existing interface driven through an AF_PACKET socket with mmap'ed rings.

    The socket and rings are set up in the constructor (frames arriving
    earlier are not seen); with ``rings=False`` they are set up on the first
    ``send``/``recv``/``fileno``, which is what a query-only user wants.

    Queues: ``PacketDevice.queues(ifname, n)`` opens ``n`` devices on one
    interface in one PACKET_FANOUT group (``PACKET_FANOUT_HASH``): each is a
    receive queue of its own for a worker, and the kernel picks a frame's queue
    with its own flow hash (not our RSS key or rules: the capability records
    advertise no classification for it). Launch times: this kernel has no ETF or
    fq qdisc, so the records advertise no TX_SCHEDULING and the host paces in
    software (``HostOffload``).
    """

    def __init__(
        self,
        ifname: str,
        *,
        ring_frames: int = 64,
        frame_bytes: int = DEFAULT_FRAME_BYTES,
        rings: bool = True,
        fanout_group: int | None = None,
    ) -> None:
        if not interface_exists(ifname):
            raise DeviceError(f"no such interface {ifname!r}")
        self.name = ifname
        # Link ioctls go through a socket of the namespace the device was opened in.
        self._link_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._ring_frames = ring_frames
        self._frame_bytes = -(-frame_bytes // 16) * 16  # TPACKET_ALIGNMENT
        self._stats = DeviceStats()
        self._enabled: Selection | None = None
        self._enabled_at = 0.0
        self._rx = RxDecoder(self._stats, VNET_SIZE)
        self._tx_headers: dict[TxRequest, VirtioNetHdr | DropReason] = {}
        self._validate = kernel_validator()
        self._sock: socket.socket | None = None
        self._map: mmap.mmap | None = None
        self._rx_slots: list[int] = []
        self._tx_slots: list[int] = []
        self._rx_next = 0
        self._tx_next = 0
        self._closed = False
        self._fanout_group = fanout_group
        #: How many sockets share this interface's frames in its fanout group (``queues``).
        self._fanout_queues = 1
        if rings:
            self._open()

    @classmethod
    def queues(cls, ifname: str, count: int, *, group: int | None = None) -> list[PacketDevice]:
        """``count`` devices on ``ifname`` sharing its received frames by the kernel's flow
        hash (one PACKET_FANOUT group, ``group`` or one chosen from the process id)."""
        if not 1 <= count <= 64:
            raise DeviceError(f"1 to 64 queues, not {count}")
        chosen = (os.getpid() & 0xFFFF) if group is None else group
        out: list[PacketDevice] = []
        try:
            for _ in range(count):
                out.append(cls(ifname, fanout_group=chosen))
        except BaseException:
            for dev in out:
                dev.close()
            raise
        for dev in out:
            dev._fanout_queues = count
        return out

    # -- capabilities ----------------------------------------------------------
    def features(self) -> EthtoolFeatures:
        """The interface's netdev features now."""
        return read_features(self.name, self._link_sock)

    def _queue_records(self) -> list[CapabilityRecord]:
        """In a fanout group of several queues: a classification record that says how many
        and that the kernel picks a frame's queue (its own flow hash: no hash types of ours,
        no rule slots), always on."""
        if self._fanout_queues < 2:
            return []
        queues = self._fanout_queues
        return [ClassificationCaps(rule_slots=0, queues=queues, hash_types=RssHashTypes.NONE)]

    def capabilities(self) -> list[AnyRecord]:
        return [*records_from_features(self.features(), active_only=False), *self._queue_records()]

    def enabled(self) -> Selection:
        """What the interface's features give now; read again at most every
        ``ENABLED_REFRESH_S`` (a change made with ``ethtool -K`` meanwhile shows then),
        and at once after ``enable``."""
        now = time.monotonic()
        if self._enabled is None or now - self._enabled_at >= ENABLED_REFRESH_S:
            active = records_from_features(self.features(), active_only=True)
            selection = Selection(
                [r for r in active if isinstance(r, CapabilityRecord)] + self._queue_records()
            )
            if self._enabled is None or selection != self._enabled:
                self._enabled = selection
            self._enabled_at = now
        return self._enabled

    def fixed_selection(self) -> Selection:
        """What stays on whatever is asked: the features fixed on on this interface."""
        fixed = EthtoolFeatures(
            self.name, tuple(f for f in self.features().features if f.fixed and f.active)
        )
        records = records_from_features(fixed, active_only=True)
        return Selection(
            [r for r in records if isinstance(r, CapabilityRecord)] + self._queue_records()
        )

    def status(self) -> list[CapabilityStatus]:
        """Each offered task, what is on, and whether any of its features may change."""
        features = self.features()
        offered = records_from_features(features, active_only=False)
        active = {
            r.task: r
            for r in records_from_features(features, active_only=True)
            if isinstance(r, CapabilityRecord)
        }
        changeable: dict[Task, bool] = defaultdict(bool)
        for feature in features.features:
            mapping = FEATURE_TASKS.get(feature.name)
            if mapping is not None and not feature.fixed:
                changeable[mapping.task] = True
        return [
            CapabilityStatus(r, active.get(r.task), changeable[r.task])
            for r in offered
            if isinstance(r, CapabilityRecord)
        ]

    def enable(self, selection: Selection) -> Selection:
        """Turn the interface's features on or off to match ``selection``.

        A feature is wanted on when the selected record asks for any of the
        bits it covers (Linux features are coarser than records, so this may
        enable a little more than asked; ``enabled()`` reports the truth).
        TCP assembly is GRO only: LRO is turned off, never on.
        A fixed feature that would have to change is a ``SelectionError``.
        """
        features = self.features()
        selection.check_against(
            [*records_from_features(features, active_only=False), *self._queue_records()]
        )
        wanted: dict[str, bool] = {}
        for feature in features.features:
            mapping = FEATURE_TASKS.get(feature.name)
            if mapping is None:
                continue
            record = selection.get(mapping.task)
            on = record is not None and bool(int(getattr(record, mapping.field)) & mapping.bits)
            if mapping.bits == 0 and record is not None:
                on = True
            if not mapping.switched_on:
                if feature.fixed and feature.active and record is not None:
                    continue  # fixed on: the task is on anyway, and it cannot be helped
                on = False
            if feature.fixed:
                if feature.active and not on:
                    raise SelectionError(
                        f"{mapping.task.label}: {feature.name} is fixed on {self.name}"
                    )
                continue
            if on != feature.requested:
                wanted[feature.name] = on
        if wanted:
            set_features(self.name, wanted, self._link_sock)
        self._enabled = None
        return self.enabled()

    # -- rings -------------------------------------------------------------------
    def _open(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if self._closed:
            raise DeviceError(f"packet device {self.name!r} is closed")
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise DeviceError(
                f"cannot open AF_PACKET on {self.name!r}: not permitted (needs CAP_NET_RAW)"
            ) from None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            frame = self._frame_bytes
            block = -(-frame // _PAGE) * _PAGE
            per_block = block // frame
            blocks = -(-self._ring_frames // per_block)
            frames = blocks * per_block
            request = struct.pack("=IIII", block, blocks, frame, frames)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
            sock.setsockopt(SOL_PACKET, PACKET_TX_RING, request)
            ring_bytes = block * blocks
            self._map = mmap.mmap(
                sock.fileno(), 2 * ring_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            slots = [b * block + i * frame for b in range(blocks) for i in range(per_block)]
            self._rx_slots = slots
            self._tx_slots = [ring_bytes + s for s in slots]
            sock.bind((self.name, ETH_P_ALL))
            if self._fanout_group is not None:
                fanout = self._fanout_group | (PACKET_FANOUT_HASH << 16)
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, fanout)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            if self._map is not None:
                self._map.close()
                self._map = None
            raise DeviceError(
                f"cannot set up AF_PACKET rings on {self.name!r}: {os.strerror(exc.errno or 0)}"
            ) from None
        self._sock = sock
        return sock

    def _ring(self) -> mmap.mmap:
        self._open()
        assert self._map is not None
        return self._map

    # -- data path ---------------------------------------------------------------
    def send(self, batch: Sequence[Packet]) -> int:
        """Copy the batch into free TX slots and kick once; returns how many were taken.

        Each request's header is checked with the kernel's own rules first
        (``engine.validate``), so a packet the kernel would refuse is dropped
        with its reason here; should the kernel refuse one anyway, the frames
        queued behind it are moved up to where the kernel looks next
        (``_reclaim_wrong``), so one bad frame never stalls the ring.
        """
        sock = self._open()
        ring = self._ring()
        slots = self._tx_slots
        limit = self._frame_bytes - TX_DATA_OFFSET - VNET_SIZE
        stats = self._stats
        headers = self._tx_headers
        validate = self._validate
        # What is_skb_forwardable lets through a link without GSO: MTU, header, one tag.
        largest = self.mtu + 14 + 4
        queued = taken = 0
        for packet in batch:
            slot = slots[self._tx_next]
            if _STATUS.unpack_from(ring, slot)[0] != TP_STATUS_AVAILABLE:
                break  # ring full: the caller keeps the rest
            taken += 1
            try:
                head = packet.head
                data = packet.data
                size = len(head) + len(data)
                request = packet.tx
                hdr = headers.get(request)
                if hdr is None:
                    hdr = self._header(request)
            except Exception:  # not a buffer and a request: costs this packet only
                stats.drop(DropReason.BAD_REQUEST)
                continue
            if isinstance(hdr, DropReason):
                stats.drop(hdr)
                continue
            if size > limit:
                stats.drop(DropReason.TOO_LARGE)
                continue
            if size < MIN_FRAME:
                stats.drop(DropReason.MALFORMED_FRAME)
                continue
            if head:
                data = packet.frame()  # the headers are read: a gathered frame is joined
            if hdr.gso_type:
                plan = plan_vnet_hdr_or_reason(hdr, data)
                if isinstance(plan, DropReason):
                    stats.drop(plan)
                    continue
                single = not plan.gso
            else:
                single = True
                if hdr.flags:
                    reason = validate(hdr, memoryview(data))
                    if reason is not None:
                        stats.drop(reason)
                        continue
            if single and size > largest:
                # The interface drops a frame over its MTU, and the kernel then offers it
                # again on every kick (tpacket_snd treats NET_XMIT_DROP as congestion).
                stats.drop(DropReason.MTU_EXCEEDED)
                continue
            start = slot + TX_DATA_OFFSET
            ring[start : start + VNET_SIZE] = hdr.pack(VNET_SIZE)
            ring[start + VNET_SIZE : start + VNET_SIZE + size] = data
            _TX_HDR.pack_into(ring, slot, TP_STATUS_SEND_REQUEST, VNET_SIZE + size, 0)
            for task in request.tasks():
                stats.task_done(task)
            stats.tx_packets += 1
            stats.tx_bytes += size
            queued += 1
            self._tx_next = (self._tx_next + 1) % len(slots)
        if queued:
            self._kick(sock, ring)
        return taken

    def _header(self, request: TxRequest) -> VirtioNetHdr | DropReason:
        """The virtio header for ``request`` (cached), or why the kernel cannot do it."""
        if request.ipv4_header_checksum and request.segmentation is None:
            # AF_PACKET never fills an IPv4 header checksum; only segmentation writes one.
            return DropReason.OUTSIDE_CAPABILITY
        try:
            hdr: VirtioNetHdr | DropReason = VirtioNetHdr.from_tx_request(request)
        except VirtioHdrError:
            hdr = DropReason.OUTSIDE_CAPABILITY  # crypto, digest, launch time: no virtio form
        if len(self._tx_headers) >= 256:
            self._tx_headers.clear()
        self._tx_headers[request] = hdr
        return hdr

    def _kick(self, sock: socket.socket, ring: mmap.mmap) -> None:
        """Ask the kernel to send every SEND_REQUEST slot; count frames it refuses."""
        for _ in range(len(self._tx_slots)):
            try:
                sock.send(b"", socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                return
            except OSError:
                # A slot the kernel found malformed stops the walk (WRONG_FORMAT):
                # count it, move the rest up, and kick again.
                if not self._reclaim_wrong(ring):
                    return

    def _reclaim_wrong(self, ring: mmap.mmap) -> bool:
        """Drop the frame the kernel marked WRONG_FORMAT and close the gap it leaves.

        The kernel stops at that slot and does not advance its ring head past
        it (``tpacket_snd``), so every frame queued after it moves one slot
        back, to where the kernel will look next.
        """
        slots = self._tx_slots
        n = len(slots)
        bad = next(
            (
                k
                for k in range(n)
                if _STATUS.unpack_from(ring, slots[k])[0] & TP_STATUS_WRONG_FORMAT
            ),
            None,
        )
        if bad is None:
            return False
        self._stats.drop(DropReason.BAD_VNET_HDR)
        self._stats.tx_packets -= 1
        self._stats.tx_bytes -= _TX_HDR.unpack_from(ring, slots[bad])[1] - VNET_SIZE
        here = bad
        while True:
            after = (here + 1) % n
            if after == self._tx_next:
                break
            src = slots[after]
            if _STATUS.unpack_from(ring, src)[0] != TP_STATUS_SEND_REQUEST:
                break
            length = _TX_HDR.unpack_from(ring, src)[1]
            dst = slots[here]
            ring[dst + TX_DATA_OFFSET : dst + TX_DATA_OFFSET + length] = ring[
                src + TX_DATA_OFFSET : src + TX_DATA_OFFSET + length
            ]
            _TX_HDR.pack_into(ring, dst, TP_STATUS_SEND_REQUEST, length, 0)
            here = after
        _STATUS.pack_into(ring, slots[here], TP_STATUS_AVAILABLE)
        self._tx_next = here
        return True

    def tx_pending(self) -> int:
        """TX slots the kernel has not finished with yet."""
        if self._map is None:
            return 0
        ring = self._map
        return sum(1 for s in self._tx_slots if _STATUS.unpack_from(ring, s)[0] != 0)

    def recv(self, max_packets: int = 64) -> list[Packet]:
        """Up to ``max_packets`` frames from the RX ring; never blocks."""
        ring = self._ring()
        slots = self._rx_slots
        decode = self._rx.decode
        out: list[Packet] = []
        while len(out) < max_packets:
            slot = slots[self._rx_next]
            status, length, snaplen, mac, _ = _RX_HDR.unpack_from(ring, slot)
            if not status & TP_STATUS_USER:
                break
            if snaplen < length:
                self._stats.drop(DropReason.TOO_LARGE)
            elif mac < VNET_SIZE or slot + mac + snaplen > len(ring):
                self._stats.drop(DropReason.MALFORMED_FRAME)
            else:
                hdr = memoryview(ring[slot + mac - VNET_SIZE : slot + mac])
                frame = memoryview(ring[slot + mac : slot + mac + snaplen])
                packet = decode(hdr, frame)
                if packet is not None:
                    out.append(packet)
            _STATUS.pack_into(ring, slot, TP_STATUS_KERNEL)
            self._rx_next = (self._rx_next + 1) % len(slots)
        return out

    def fileno(self) -> int:
        return self._open().fileno()

    def stats(self) -> DeviceStats:
        """Our counters plus the kernel's ring drops (PACKET_STATISTICS, as ring_full)."""
        if self._sock is not None:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            _, drops = struct.unpack("=II", raw)
            if drops:
                self._stats.drop(DropReason.RING_FULL, drops)
        snapshot = DeviceStats()
        snapshot.merge(self._stats)
        return snapshot

    def set_promiscuous(self) -> None:
        """Receive every frame on the interface, not only those for its MAC (a switch's
        uplink). Held by this socket: it ends when the device is closed."""
        sock = self._open()
        index = interface_index(self.name, self._link_sock)
        mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
        try:
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except OSError as exc:
            raise DeviceError(f"{self.name}: promiscuous mode: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._link_sock.close()

    # -- link -------------------------------------------------------------------
    @property
    def mtu(self) -> int:
        """The interface's MTU."""
        return interface_mtu(self.name, self._link_sock)

    @property
    def mac(self) -> MacAddress:
        """The interface's own MAC: a stack on it sends from this address (no promiscuous
        mode needed)."""
        return interface_mac(self.name, self._link_sock)

    @property
    def link_up(self) -> bool:
        """Administratively up with carrier."""
        return not self._closed and interface_up(self.name, self._link_sock)
