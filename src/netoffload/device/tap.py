"""TapDevice: a Linux TAP interface driven through /dev/net/tun with virtio_net_hdr.

For a TAP the "device" is the kernel itself, seen from user space:

* **transmit** (``send``) is a ``write`` of virtio_net_hdr + frame. With
  NEEDS_CSUM the kernel fills the L4 checksum; with a GSO type it takes a
  super-packet and segments it where it must (or passes it on whole to a
  device that can). The kernel accepts such writes whatever the TAP's
  offload flags say; we refuse (and count) packets asking for a task that
  is not enabled, so that ``enable`` means the same in both directions.
* **receive** (``recv``) is a ``read``. The TUNSETOFFLOAD flags tell the
  kernel what it may hand us: with TUN_F_CSUM, packets whose checksum is
  still to be filled (NEEDS_CSUM) or already verified (DATA_VALID); with
  TSO4/TSO6/USO, TCP/UDP super-packets instead of segments. Every header
  read is untrusted and checked with the kernel's own rules.

Capability records say what the kernel really does. It takes our GSO and
NEEDS_CSUM writes whatever TUNSETOFFLOAD says, so transmit checksum and
segmentation are fixed on. The TUNSETOFFLOAD flags only let the kernel hand
*us* work it has not done, so they are receive tasks (probed by trying each
flag on the running kernel)::

    (always)                 -> ChecksumCaps(tx=TCP/UDP over IPv4/IPv6), fixed
                                TcpSegmentationCaps(IPv4, IPv6, ECN), fixed
                                UdpSegmentationCaps(IPv4, IPv6), fixed
    TUN_F_CSUM               -> ChecksumCaps(rx=TCP/UDP over IPv4/IPv6): partial or verified
                                checksums handed to us
    TUN_F_TSO4 / TSO6 / ECN  -> TcpAssemblyCaps(versions IPV4 / IPV6 / ECN): TCP super-packets
    TUN_F_USO4 + USO6        -> UdpAssemblyCaps(IPV4|IPV6; the kernel takes both or none)

One flag is never reported as two tasks. The kernel only takes TSO/USO
together with CSUM; a selection asking for assembly without receive
checksums is a ``SelectionError``, and so is one turning off a fixed task.

Cost: one ``writev`` system call per packet (the header and the frame are
two iovecs, so the payload is never copied in Python) and one ``readv`` per
packet, into a shared arena buffer. That per-packet system call is the price of a TAP and the reason
super-packets pay: one call moves up to 64 KiB instead of 1.5 KiB.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import socket
import struct
import zlib
from collections.abc import Sequence

from netoffload.device.base import Device, DeviceError
from netoffload.device.link import (
    ifreq,
    interface_exists,
    interface_mac,
    interface_mtu,
    interface_up,
    set_link_up,
)
from netoffload.device.vnet import RxDecoder
from netoffload.offload import (
    NO_REQUEST,
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

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNGETFEATURES = 0x800454CF

IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

# A read must hold the largest super-packet (64 KiB of IP) plus L2 and header.
READ_SIZE = 65536 + 256
ARENA_BYTES = 1 << 21
_IFREQ = struct.Struct("16sH")
_IFREQ_SIZE = 40
_L4_ALL = (
    ChecksumFlags.TCP_IPV4
    | ChecksumFlags.UDP_IPV4
    | ChecksumFlags.TCP_IPV6
    | ChecksumFlags.UDP_IPV6
)
_TCP_FLAGS = {
    IpVersions.IPV4: TUN_F_TSO4,
    IpVersions.IPV6: TUN_F_TSO6,
    IpVersions.ECN: TUN_F_TSO_ECN,
}
_USO = TUN_F_USO4 | TUN_F_USO6


def _open_error(name: str, exc: OSError) -> DeviceError:
    shown = name or "(new)"
    if exc.errno == errno.EPERM:
        return DeviceError(f"cannot open TAP {shown!r}: not permitted (needs CAP_NET_ADMIN)")
    if exc.errno == errno.EBUSY:
        return DeviceError(f"TAP {shown!r} is busy (attached elsewhere or all queues taken)")
    if exc.errno == errno.EINVAL:
        return DeviceError(f"interface {shown!r} exists and is not a TAP with matching flags")
    if exc.errno == errno.ENOENT:
        return DeviceError("no /dev/net/tun (is the tun module loaded?)")
    return DeviceError(f"cannot open TAP {shown!r}: {os.strerror(exc.errno or 0)}")


class TapDevice(Device):
    """A TAP interface with virtio_net_hdr; one non-blocking fd per queue.

    ``TapDevice("tap0")`` creates the interface (or attaches to an existing
    TAP of that name) in the calling thread's network namespace; an empty
    name lets the kernel choose (``tap0``, ``tap1``...). A TAP created here
    disappears when the last fd is closed unless it was made persistent
    elsewhere. The fds keep working after the interface is moved to another
    namespace.
    """

    def __init__(
        self,
        name: str = "",
        *,
        queues: int = 1,
        create: bool = True,
        up: bool = True,
        mac: MacAddress | None = None,
    ) -> None:
        if queues < 1:
            raise DeviceError(f"a TAP needs at least one queue, not {queues}")
        if not create and (not name or not interface_exists(name)):
            raise DeviceError(f"no such interface {name!r}")
        flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if queues > 1 else 0)
        fds: list[int] = []
        try:
            for _ in range(queues):
                try:
                    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError as exc:
                    raise _open_error(name, exc) from None
                fds.append(fd)
                req = ifreq(name, flags, allow_empty=True)
                try:
                    fcntl.ioctl(fd, TUNSETIFF, req, True)
                    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VirtioNetHdr.SIZE))
                except OSError as exc:
                    raise _open_error(name, exc) from None
                name = _IFREQ.unpack_from(req)[0].rstrip(b"\0").decode()
            # Every later step can fail too (a probe the kernel refuses, a link that
            # will not come up): the descriptors must not outlive a failed constructor.
            self._setup(name, fds, _initial_flags(name), mac)
            self._offered = self._probe()
            if up:
                self.set_up(True)
        except BaseException:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._closed = True
            raise

    @classmethod
    def over_fds(cls, fds: Sequence[int], name: str = "test", offload_flags: int = 0) -> TapDevice:
        """A TapDevice over fds that already speak header + frame (tests feed pipes).

        No ioctl is issued: the offered flags are taken to be ``offload_flags``.
        """
        self = cls.__new__(cls)
        self._setup(name, list(fds), offload_flags, None)
        self._offered = offload_flags
        return self

    def _setup(self, name: str, fds: list[int], offload_flags: int, mac: MacAddress | None) -> None:
        self.name = name
        self._fds = fds
        self._flags = offload_flags
        self._enabled = Selection(
            r for r in _records(offload_flags, len(fds)) if isinstance(r, CapabilityRecord)
        )
        self._stats = DeviceStats()
        self._rx = RxDecoder(self._stats)
        self._tx_headers: dict[TxRequest, bytes] = {NO_REQUEST: _ZERO_HDR}
        self._arena = memoryview(bytearray(0))
        self._arena_used = 0
        #: Frames written per queue (a flow always goes to the same one).
        self.tx_queue_packets = [0] * len(fds)
        self._closed = False
        # The stack behind a TAP is the far end of the kernel's link: its own MAC, not the
        # TAP interface's (which is the kernel's side), locally administered and random.
        self._mac = mac if mac is not None else MacAddress(b"\x02" + secrets.token_bytes(5))
        # A socket of the namespace the TAP was made in: link facts stay readable after the
        # caller's thread moves elsewhere (the last values read are kept if the TAP moves).
        self._link_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._mtu = 1500
        self._kernel_mac: MacAddress | None = None
        with contextlib.suppress(DeviceError):
            self._mtu = interface_mtu(name, self._link_sock)
            self._kernel_mac = interface_mac(name, self._link_sock)

    # -- capabilities ----------------------------------------------------------
    def _try_offload(self, flags: int) -> bool:
        try:
            fcntl.ioctl(self._fds[0], TUNSETOFFLOAD, flags)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return False
            reason = os.strerror(exc.errno or 0)
            raise DeviceError(f"TUNSETOFFLOAD on {self.name!r}: {reason}") from None
        return True

    def _probe(self) -> int:
        """Which TUN_F_* flags the running kernel accepts; restores the current ones."""
        offered = 0
        if self._try_offload(TUN_F_CSUM):
            offered |= TUN_F_CSUM
            for flag in (TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN | TUN_F_TSO4, _USO):
                if self._try_offload(TUN_F_CSUM | flag):
                    offered |= flag
        self._set_offload(self._flags)
        return offered

    def _set_offload(self, flags: int) -> None:
        if not self._try_offload(flags):
            raise DeviceError(f"{self.name!r}: the kernel refused offload flags {flags:#x}")
        self._flags = flags
        self._enabled = Selection(
            r for r in _records(flags, len(self._fds)) if isinstance(r, CapabilityRecord)
        )
        # Cached transmit headers were checked against the old flags.
        self._tx_headers = {NO_REQUEST: _ZERO_HDR}

    def offload_flags(self) -> int:
        """The TUN_F_* flags set now."""
        return self._flags

    def capabilities(self) -> list[AnyRecord]:
        """What this kernel's TAP offers, from the flags it accepted when probed."""
        return _records(self._offered, len(self._fds))

    def enabled(self) -> Selection:
        return self._enabled

    def fixed_selection(self) -> Selection:
        """Transmit checksum and segmentation: the kernel does them for any write."""
        return Selection(r for r in _records(0, len(self._fds)) if isinstance(r, CapabilityRecord))

    def status(self) -> list[CapabilityStatus]:
        """Transmit segmentation is fixed on (the kernel always does it); the rest changes."""
        on = self.enabled()
        return [
            CapabilityStatus(r, on.get(r.task), r.task not in _NOT_CHANGEABLE)
            for r in self.capabilities()
            if isinstance(r, CapabilityRecord)
        ]

    def enable(self, selection: Selection) -> Selection:
        """Set the TUNSETOFFLOAD flags that give ``selection``'s receive tasks.

        The kernel does transmit checksums and segmentation whatever the flags
        say: a selection that leaves any of them out is refused, as `ethtool -K`
        refuses to change a fixed feature.
        """
        selection.check_against(self.capabilities())
        fixed = {r.task: r for r in _records(0, len(self._fds)) if isinstance(r, CapabilityRecord)}
        for task, record in fixed.items():
            chosen = selection.get(task)
            if chosen is None or (
                isinstance(chosen, ChecksumCaps)
                and isinstance(record, ChecksumCaps)
                and chosen.tx != record.tx
            ):
                raise SelectionError(
                    f"{task.label} on transmit is fixed on TAP {self.name!r}: the kernel does it "
                    "for any packet that asks"
                )
            if not isinstance(chosen, ChecksumCaps) and chosen != record:
                raise SelectionError(f"{task.label} is fixed on TAP {self.name!r}")
        flags = 0
        checksum = selection.get(Task.CHECKSUM)
        if isinstance(checksum, ChecksumCaps) and checksum.rx:
            flags |= TUN_F_CSUM
        tcp = selection.get(Task.TCP_ASSEMBLY)
        if isinstance(tcp, TcpAssemblyCaps):
            if not tcp.versions & (IpVersions.IPV4 | IpVersions.IPV6):
                raise SelectionError("tcp_assembly: ECN alone is meaningless; add ipv4/ipv6")
            for version, flag in _TCP_FLAGS.items():
                if version in tcp.versions:
                    flags |= flag
        udp = selection.get(Task.UDP_ASSEMBLY)
        if isinstance(udp, UdpAssemblyCaps):
            if udp.versions & _BOTH != _BOTH:
                raise SelectionError(
                    f"udp_assembly on TAP {self.name!r} is IPv4 and IPv6 together or not at all"
                )
            flags |= _USO
        if flags & ~TUN_F_CSUM and not flags & TUN_F_CSUM:
            raise SelectionError(
                f"assembly on TAP {self.name!r} needs receive checksums enabled too"
            )
        self._set_offload(flags)
        return self.enabled()

    # -- link -------------------------------------------------------------------
    @property
    def mtu(self) -> int:
        """The TAP interface's MTU (the last value read if it moved to another namespace)."""
        with contextlib.suppress(DeviceError, OSError):
            self._mtu = interface_mtu(self.name, self._link_sock)
        return self._mtu

    @property
    def mac(self) -> MacAddress:
        """The MAC of the user-space end of this link (not the kernel's TAP interface)."""
        return self._mac

    @property
    def kernel_mac(self) -> MacAddress | None:
        """The TAP interface's own MAC: the kernel's end of the link."""
        with contextlib.suppress(DeviceError, OSError):
            self._kernel_mac = interface_mac(self.name, self._link_sock)
        return self._kernel_mac

    @property
    def link_up(self) -> bool:
        """The TAP interface is up with carrier (carrier: a queue is attached)."""
        if self._closed:
            return False
        try:
            return interface_up(self.name, self._link_sock)
        except (DeviceError, OSError):
            return True  # moved to a namespace we cannot see from here; its fds still work

    # -- data path ---------------------------------------------------------------
    def send(self, batch: Sequence[Packet]) -> int:
        """Write each packet as header + frame; returns fewer when a queue fills up.

        With several queues (IFF_MULTI_QUEUE) each packet goes to the queue its flow
        (addresses and ports) hashes to, so a flow stays in order on one queue; on
        receive the kernel picks the queue, with its own flow hash.
        """
        fds = self._fds
        fd = fds[0]
        per_queue = self.tx_queue_packets
        stats = self._stats
        headers = self._tx_headers
        sent = 0
        for packet in batch:
            request = packet.tx
            header = headers.get(request)
            if header is None:
                made = self._tx_header(request)
                if isinstance(made, DropReason):
                    stats.drop(made)
                    sent += 1
                    continue
                header = made
            head = packet.head
            queue = _flow_queue(head or packet.data, len(fds)) if len(fds) > 1 else 0
            fd = fds[queue]
            try:
                # Header, the stack's headers and its payload view: gathered by the kernel.
                os.writev(fd, (header, head, packet.data) if head else (header, packet.data))
            except BlockingIOError:
                break
            except OSError as exc:
                # The kernel rejects what its own validation rejects: count, go on.
                bad = exc.errno == errno.EINVAL
                stats.drop(DropReason.BAD_VNET_HDR if bad else DropReason.MALFORMED_FRAME)
                sent += 1
                continue
            if request is not NO_REQUEST:
                for task in request.tasks():
                    stats.task_done(task)
            stats.tx_packets += 1
            stats.tx_bytes += len(packet)
            per_queue[queue] += 1
            sent += 1
        return sent

    def _tx_header(self, request: TxRequest) -> bytes | DropReason:
        """The header bytes for ``request`` (cached), or why it cannot be sent."""
        if request.ipv4_header_checksum and request.segmentation is None:
            # A TAP never fills in an IPv4 header checksum of a single packet.
            return DropReason.OUTSIDE_CAPABILITY
        if not request.tasks() <= _FIXED_TASKS:
            return DropReason.OUTSIDE_CAPABILITY
        try:
            header = VirtioNetHdr.from_tx_request(request).pack()
        except VirtioHdrError:
            return DropReason.BAD_VNET_HDR
        if len(self._tx_headers) >= 256:
            self._tx_headers.clear()
        self._tx_headers[request] = header
        return header

    def recv(self, max_packets: int = 64) -> list[Packet]:
        """Read up to ``max_packets`` frames across the queues; never blocks.

        Frames are read straight into a large arena buffer and handed out as
        memoryviews of it (no copy, and no 64 KiB allocation per read); an
        arena is released when the last packet viewing it is.
        """
        out: list[Packet] = []
        size = VirtioNetHdr.SIZE
        decode = self._rx.decode
        readv = os.readv
        arena, used = self._arena, self._arena_used
        for queue, fd in enumerate(self._fds):
            while len(out) < max_packets:
                if len(arena) - used < READ_SIZE:
                    arena = self._arena = memoryview(bytearray(ARENA_BYTES))
                    used = 0
                window = arena[used : used + READ_SIZE]
                try:
                    n = readv(fd, [window])
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EAGAIN:
                        break
                    self._arena_used = used
                    reason = os.strerror(exc.errno or 0)
                    raise DeviceError(f"read from TAP {self.name!r}: {reason}") from None
                if n == 0:
                    break
                used += (n + 63) & ~63  # the next read starts cache-aligned
                packet = decode(window[: min(size, n)], window[size:n], queue)
                if packet is not None:
                    out.append(packet)
        self._arena_used = used
        return out

    def fileno(self) -> int:
        """The first queue's fd (``filenos()`` gives all of them)."""
        return self._fds[0]

    def filenos(self) -> list[int]:
        """One fd per queue."""
        return list(self._fds)

    def stats(self) -> DeviceStats:
        snapshot = DeviceStats()
        snapshot.merge(self._stats)
        return snapshot

    def set_up(self, up: bool = True) -> None:
        """Set the interface administratively up (or down)."""
        set_link_up(self.name, up, self._link_sock)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        self._link_sock.close()


_ZERO_HDR = VirtioNetHdr().pack()


_BOTH = IpVersions.IPV4 | IpVersions.IPV6
# What the kernel does for any write that asks, whatever TUNSETOFFLOAD says.
_SEGMENTATION = frozenset({Task.TCP_SEGMENTATION, Task.UDP_SEGMENTATION})
_FIXED_TASKS = frozenset({Task.CHECKSUM, *_SEGMENTATION})
#: Always on (segmentation) or the kernel's own (which queue a frame takes).
_NOT_CHANGEABLE = frozenset({*_SEGMENTATION, Task.CLASSIFICATION})


def _flow_queue(frame: bytes | bytearray | memoryview, queues: int) -> int:
    """The transmit queue of a frame's flow: a hash of its IP addresses and ports."""
    kind = bytes(frame[12:14])
    if kind == b"\x08\x00":
        key = bytes(frame[26:38])
    elif kind == b"\x86\xdd":
        key = bytes(frame[22:58])
    else:
        return 0
    return zlib.crc32(key) % queues


def _records(flags: int, queues: int = 1) -> list[AnyRecord]:
    """The records for TUN_F_* ``flags``: the fixed transmit tasks, and what the flags let
    the kernel hand us; with several queues, a classification record that says how many
    and that the kernel picks a frame's queue (no hash types of ours, no rule slots)."""
    rx = _L4_ALL if flags & TUN_F_CSUM else ChecksumFlags.NONE
    out: list[AnyRecord] = [
        ChecksumCaps(tx=_L4_ALL, rx=rx),
        TcpSegmentationCaps(max_size_bytes=65536, versions=_BOTH | IpVersions.ECN),
        UdpSegmentationCaps(max_size_bytes=65536, versions=_BOTH),
    ]
    versions = IpVersions.NONE
    for version, flag in _TCP_FLAGS.items():
        if flags & flag:
            versions |= version
    if versions & _BOTH:
        out.append(TcpAssemblyCaps(max_size_bytes=65536, versions=versions))
    if flags & _USO == _USO:
        out.append(UdpAssemblyCaps(max_size_bytes=65536, versions=_BOTH))
    if queues > 1:
        out.append(ClassificationCaps(rule_slots=0, queues=queues, hash_types=RssHashTypes.NONE))
    return out


def _initial_flags(name: str) -> int:
    """The TUN_F_* flags an existing TAP already has, read back from its netdev features."""
    from netoffload.device.ethtool import read_features

    try:
        features = read_features(name)
    except DeviceError:
        return 0
    table = {
        "tx-checksum-ip-generic": TUN_F_CSUM,
        "tx-tcp-segmentation": TUN_F_TSO4,
        "tx-tcp6-segmentation": TUN_F_TSO6,
        "tx-tcp-ecn-segmentation": TUN_F_TSO_ECN,
        "tx-udp-segmentation": _USO,
    }
    flags = 0
    for feature, flag in table.items():
        found = features.get(feature)
        if found is not None and found.active:
            flags |= flag
    return flags if flags & TUN_F_CSUM else 0
