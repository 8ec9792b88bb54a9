"""``Interface``: one device bound to the stack, with its offloads and its neighbours.

Binding a device reads its MAC, MTU and capabilities and enables the tasks
the stack uses (checksums, TCP/UDP segmentation, TCP/UDP assembly), or, with
the policy ``never``, turns every offload off that can be. Frames go out
through ``HostOffload``: what the device may do for a packet (its enabled
records, and the policy's choice of the moment) it does, the rest the host
does with the same engine.

On the way out a packet arrives as its IP-level headers, a payload view (a
TCP send buffer, never copied here) and its ``TxRequest``; the interface puts
the Ethernet header in front once the next hop's MAC is known (ARP or
neighbour discovery, packets queued while it resolves) and hands the device
the two pieces to gather. Requests count offsets from the start of the
frame: the Ethernet header is ``ETH_HLEN`` bytes (untagged).
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

from netoffload.device.base import Device
from netoffload.host import HostOffload
from netoffload.offload import (
    CapabilityRecord,
    IpVersions,
    Packet,
    Selection,
    Task,
    TcpSegmentationCaps,
    TxRequest,
    UdpSegmentationCaps,
)
from netoffload.policy import Decision, OffloadPolicy, PolicyMode
from netoffload.stack._netaddr import IpAddress, IpInterface
from netoffload.stack.neighbor import NeighborCache, NeighborConfig, Unresolved
from netoffload.stack.tcp.buffers import SendMemory
from netoffload.wire import MacAddress

Buffer: TypeAlias = bytes | bytearray | memoryview

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
_ETHERTYPE = struct.Struct("!H")
#: The tasks the stack asks a device to do.
STACK_TASKS = frozenset(
    {
        Task.CHECKSUM,
        Task.TCP_SEGMENTATION,
        Task.UDP_SEGMENTATION,
        Task.TCP_ASSEMBLY,
        Task.UDP_ASSEMBLY,
        Task.ENCRYPT,
        Task.DECRYPT,
        # Steering and pacing: rules and DoS entries come at run time (``netoffload rules``);
        # the stack acts on the verdict (SYN cookies) and sends with launch times.
        Task.CLASSIFICATION,
        Task.DOS_FILTER,
        Task.TX_SCHEDULING,
    }
)
_NOTHING: frozenset[Task] = frozenset()


class Pending(NamedTuple):
    """A packet waiting for its next hop's MAC: what ``Interface.output`` was given."""

    ethertype: int
    head: Buffer
    payload: Buffer
    request: TxRequest
    source: IpAddress | None


@dataclass(frozen=True, slots=True)
class Segmentation:
    """What the device can cut for the stack, per transport and IP version (its records)."""

    tcp4: bool = False
    tcp6: bool = False
    tcp_ecn: bool = False
    udp4: bool = False
    udp6: bool = False
    tcp_max_bytes: int = 0
    tcp_max_segments: int = 0
    udp_max_segments: int = 0

    def tcp(self, version: int) -> bool:
        return self.tcp4 if version == 4 else self.tcp6

    def udp(self, version: int) -> bool:
        return self.udp4 if version == 4 else self.udp6


@dataclass(slots=True)
class InterfaceStats:
    """The interface's own counters (the device and host fallback keep theirs)."""

    rx_frames: int = 0
    tx_packets: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "rx_frames": self.rx_frames,
            "tx_packets": self.tx_packets,
            "drops": dict(sorted(self.drops.items())),
        }


class Interface:
    """A device bound to the stack: addresses, neighbours, offloads; see the module doc."""

    def __init__(
        self,
        index: int,
        device: Device,
        *,
        rng: random.Random,
        policy: OffloadPolicy,
        name: str | None = None,
        neighbor_config: NeighborConfig | None = None,
    ) -> None:
        self.index = index
        self.device = device
        self.name = name or device.name
        self.mac: MacAddress = device.mac
        self.mtu = device.mtu
        self.policy = policy
        self.stats = InterfaceStats()
        self.neighbors: NeighborCache[Pending] = NeighborCache(self.mac, rng, neighbor_config)
        self._enable_offloads()
        self.host = HostOffload(
            device,
            allow=None if policy.current is Decision.DEVICE else _NOTHING,
            rx_tasks={Task.CHECKSUM},
        )
        self.segmentation = self._segmentation()
        self._tx: list[Packet] = []
        self._offloadable = 0  # packets this batch that ask for offloadable work
        self._eth: dict[tuple[MacAddress, int], bytes] = {}
        self._mac_bytes = self.mac.octets
        self._multicast: set[bytes] = set()

    # -- offloads -------------------------------------------------------------------
    def _enable_offloads(self) -> None:
        """What the stack uses, within what the device offers; everything off for ``never``."""
        device = self.device
        if self.policy.mode is PolicyMode.NEVER:
            device.enable(device.fixed_selection())
            return
        offered = [r for r in device.capabilities() if isinstance(r, CapabilityRecord)]
        device.enable(Selection(r for r in offered if r.task in STACK_TASKS))

    def _segmentation(self) -> Segmentation:
        """TCP/UDP segmentation the device does, as the stack may count on it now."""
        if self.policy.current is not Decision.DEVICE:
            return Segmentation()
        enabled = self.device.enabled()
        tcp = enabled.get(Task.TCP_SEGMENTATION)
        udp = enabled.get(Task.UDP_SEGMENTATION)
        checksum = Task.CHECKSUM in enabled
        tcp_v = tcp.versions if isinstance(tcp, TcpSegmentationCaps) and checksum else 0
        udp_v = udp.versions if isinstance(udp, UdpSegmentationCaps) and checksum else 0
        tcp_caps = tcp if isinstance(tcp, TcpSegmentationCaps) else None
        udp_caps = udp if isinstance(udp, UdpSegmentationCaps) else None
        return Segmentation(
            tcp4=bool(tcp_v & IpVersions.IPV4),
            tcp6=bool(tcp_v & IpVersions.IPV6),
            tcp_ecn=bool(tcp_v & IpVersions.ECN),
            udp4=bool(udp_v & IpVersions.IPV4),
            udp6=bool(udp_v & IpVersions.IPV6),
            tcp_max_bytes=0 if tcp_caps is None else tcp_caps.max_size_bytes,
            tcp_max_segments=0 if tcp_caps is None else tcp_caps.max_segments,
            udp_max_segments=0 if udp_caps is None else udp_caps.max_segments,
        )

    def apply_policy(self) -> bool:
        """Follow the policy's current choice; True when it changed what the device does."""
        allow = None if self.policy.current is Decision.DEVICE else _NOTHING
        if allow == self.host.allow:
            return False
        self.host.allow = allow
        self.segmentation = self._segmentation()
        return True

    def queue_fill(self) -> float:
        """How full the way to the device is (0..1): the host's backlog against a batch."""
        return min(1.0, self.host.backlog / 256)

    # -- addresses ----------------------------------------------------------------
    def add_address(self, address: IpInterface) -> None:
        self.neighbors.add_address(address)
        if address.version == 6:
            # Neighbour solicitations for it come to its solicited-node group (RFC 4291).
            low = address.ip.packed[-3:]
            self._multicast.add(b"\x33\x33\xff" + low)
            self._multicast.add(b"\x33\x33\x00\x00\x00\x01")  # all-nodes

    def accepts(self, dst: Buffer) -> bool:
        """Whether a frame to destination MAC ``dst`` is for this interface."""
        d = bytes(dst)
        if d in (self._mac_bytes, b"\xff\xff\xff\xff\xff\xff"):
            return True
        return d in self._multicast

    # -- transmit -----------------------------------------------------------------
    def _ethernet(self, mac: MacAddress, ethertype: int) -> bytes:
        key = (mac, ethertype)
        header = self._eth.get(key)
        if header is None:
            header = mac.octets + self._mac_bytes + _ETHERTYPE.pack(ethertype)
            if len(self._eth) > 4096:
                self._eth.clear()
            self._eth[key] = header
        return header

    def output(
        self,
        next_hop: IpAddress,
        ethertype: int,
        head: Buffer,
        payload: Buffer,
        *,
        request: TxRequest,
        now_ns: int,
        source: IpAddress | None = None,
    ) -> None:
        """Queue one IP packet (``head`` then ``payload``) for ``next_hop``; sent by ``flush``."""
        mac = self.neighbors.lookup(next_hop)
        if mac is None:
            pending = Pending(ethertype, head, payload, request, source)
            mac = self.neighbors.resolve(next_hop, pending, now_ns, source=source)
            if mac is None:
                return  # queued until the neighbour answers (or it fails)
        self._queue(mac, ethertype, head, payload, request)

    def _queue(
        self, mac: MacAddress, ethertype: int, head: Buffer, payload: Buffer, request: TxRequest
    ) -> None:
        frame_head = self._ethernet(mac, ethertype) + bytes(head)
        if request.tasks():
            self._offloadable += 1
        if payload:
            self._tx.append(Packet(payload, request, head=frame_head))
        else:
            self._tx.append(Packet(frame_head, request))

    def lend_send_memory(self, nbytes: int) -> SendMemory | None:
        """``nbytes`` of the device's memory for a send buffer it sends from in place
        (``XdpDevice.lend_send_memory``), or None: another device, or no room."""
        lend = getattr(self.device, "lend_send_memory", None)
        if lend is None:
            return None
        memory: SendMemory | None = lend(nbytes)
        return memory

    def output_frame(self, frame: bytes) -> None:
        """Queue a frame that is complete already (ARP, neighbour discovery)."""
        self._tx.append(Packet(frame))

    def take_failed(self) -> list[Unresolved[Pending]]:
        return self.neighbors.take_failed()

    def flush(self) -> int:
        """Hand everything queued to the device (the host doing its share); how many went."""
        for frame in self.neighbors.take_frames():
            self.output_frame(frame)
        for done in self.neighbors.take_resolved():
            p = done.packet
            self._queue(done.mac, p.ethertype, p.head, p.payload, p.request)
        if not self._tx:
            return self.host.push()
        batch, self._tx = self._tx, []
        self.policy.decide(self._offloadable)
        self._offloadable = 0
        self.stats.tx_packets += len(batch)
        return self.host.send(batch)

    @property
    def backlog(self) -> int:
        return self.host.backlog

    # -- receive ------------------------------------------------------------------
    def recv(self, max_packets: int = 256) -> list[Packet]:
        packets = self.host.recv(max_packets)
        self.stats.rx_frames += len(packets)
        return packets

    def release(self, packets: Iterable[Packet]) -> None:
        self.host.release(packets)

    def filenos(self) -> Sequence[int]:
        return self.device.filenos()

    def as_dict(self) -> dict[str, object]:
        device = self.device.stats().as_dict()
        return {
            "name": self.name,
            "mac": str(self.mac),
            "mtu": self.mtu,
            "enabled": [t.label for t in self.device.enabled()],
            "segmentation": {
                "tcp4": self.segmentation.tcp4,
                "tcp6": self.segmentation.tcp6,
                "udp4": self.segmentation.udp4,
                "udp6": self.segmentation.udp6,
            },
            "interface": self.stats.as_dict(),
            "host": self.host.stats.as_dict(),
            "device": device,
            "neighbors": self.neighbors.stats.as_dict(),
        }
