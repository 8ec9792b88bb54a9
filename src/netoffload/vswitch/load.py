"""A mixed test load for a switch, and how a guest checks what it received.

``LoadPlan`` makes frames from the uplink's side for a set of guests: unicast
to each guest (by VLAN and MAC), broadcast and multicast on each VLAN,
unicast to nobody (unknown), frames on a VLAN no guest is in; sizes from 60
bytes to 64 KiB. Every frame carries a marker after its Ethernet header: what
it was sent as (VLAN, destination, payload length, kind) so that the guest
that gets it can tell whether it should have (``check_frame``), and the plan
knows how many frames each guest should get. Frames are built with the wire
layer's ``EthernetRepr``, once per template, and sent many times.
"""

from __future__ import annotations

import enum
import random
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from netoffload.device.vmdq.steer import NATIVE, PortVlans
from netoffload.wire import MacAddress
from netoffload.wire.ethernet import BROADCAST, EthernetRepr, VlanTag

#: A local experimental EtherType (IEEE 802 "local experimental 1"): no stack takes it.
ETHERTYPE_LOAD = 0x88B5
MAGIC = b"NSOVSW01"
MARKER = struct.Struct("!8sHB6sI")  # magic, vlan, kind, destination, payload bytes
SOURCE = MacAddress(b"\x02\x00\x5e\x10\x00\x01")
MULTICAST = MacAddress(b"\x01\x00\x5e\x00\x00\x42")
UNKNOWN = MacAddress(b"\x02\xee\xee\xee\xee\xee")
SIZES = (60, 1500, 9000, 65536)


class LoadKind(enum.IntEnum):
    UNICAST = 1
    BROADCAST = 2
    MULTICAST = 3
    UNKNOWN = 4  # to a MAC nobody has
    NO_VLAN = 5  # on a VLAN nobody is in


@dataclass(frozen=True, slots=True)
class Target:
    """A guest as the load sees it."""

    name: str
    mac: MacAddress
    vlans: PortVlans


@dataclass(frozen=True, slots=True)
class Marker:
    vlan: int
    kind: LoadKind
    dst: bytes
    payload_bytes: int


@dataclass(slots=True)
class Template:
    frame: bytes
    kind: LoadKind
    vlan: int
    receivers: tuple[str, ...]  # guests that must get it (flooding off)


@dataclass(slots=True)
class LoadPlan:
    """Frames for ``targets`` adding up to about ``total_bytes``; see the module doc."""

    targets: Sequence[Target]
    total_bytes: int
    seed: int = 11
    sizes: Sequence[int] = SIZES
    templates: list[Template] = field(default_factory=list)
    order: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        vlans = sorted({v for t in self.targets for v in t.vlans.members})
        for size in self.sizes:
            for target in self.targets:
                for vlan in sorted(target.vlans.members):
                    self._add(size, LoadKind.UNICAST, vlan, target.mac)
            for vlan in vlans:
                self._add(size, LoadKind.BROADCAST, vlan, BROADCAST)
                self._add(size, LoadKind.MULTICAST, vlan, MULTICAST)
                self._add(size, LoadKind.UNKNOWN, vlan, UNKNOWN)
            nobody = max(vlans, default=0) + 7
            self._add(size, LoadKind.NO_VLAN, nobody, self.targets[0].mac)
        # Mostly unicast (the path that must copy nothing), every other kind in the mix.
        weights = [8 if t.kind is LoadKind.UNICAST else 1 for t in self.templates]
        sent = 0
        while sent < self.total_bytes:
            index = rng.choices(range(len(self.templates)), weights)[0]
            self.order.append(index)
            sent += len(self.templates[index].frame)

    def _add(self, size: int, kind: LoadKind, vlan: int, dst: MacAddress) -> None:
        tags = () if vlan == NATIVE else (VlanTag(0, False, vlan),)
        header = EthernetRepr(dst, SOURCE, ETHERTYPE_LOAD, tags)
        payload_bytes = max(size - header.header_len, MARKER.size)
        marker = MARKER.pack(MAGIC, vlan, kind, dst.octets, payload_bytes)
        filler = bytes((i * 7 + vlan) & 0xFF for i in range(256))
        body = marker + (filler * (payload_bytes // 256 + 1))[: payload_bytes - MARKER.size]
        receivers: tuple[str, ...] = ()
        if kind is LoadKind.UNICAST:
            receivers = tuple(
                t.name for t in self.targets if t.mac == dst and vlan in t.vlans.members
            )
        elif kind in (LoadKind.BROADCAST, LoadKind.MULTICAST):
            receivers = tuple(t.name for t in self.targets if vlan in t.vlans.members)
        self.templates.append(Template(header.to_bytes(body), kind, vlan, receivers))

    def frames(self) -> Iterator[Template]:
        for index in self.order:
            yield self.templates[index]

    @property
    def bytes(self) -> int:
        return sum(len(self.templates[i].frame) for i in self.order)

    def expected(self, *, flood_unknown: bool = False) -> dict[str, Counter[str]]:
        """Per guest: frames and bytes it must receive, by kind (``frames``, ``bytes``,
        and a count per kind name)."""
        out: dict[str, Counter[str]] = {t.name: Counter() for t in self.targets}
        for template in self.frames():
            for name in self.receivers(template, flood_unknown=flood_unknown):
                out[name]["frames"] += 1
                out[name][template.kind.name.lower()] += 1
        return out

    def receivers(self, template: Template, *, flood_unknown: bool = False) -> tuple[str, ...]:
        if flood_unknown and template.kind is LoadKind.UNKNOWN:
            return tuple(t.name for t in self.targets if template.vlan in t.vlans.members)
        return template.receivers


def parse_marker(payload: bytes | bytearray | memoryview) -> Marker | None:
    """The load marker at the start of a frame's payload, or ``None``."""
    if len(payload) < MARKER.size:
        return None
    magic, vlan, kind, dst, size = MARKER.unpack_from(payload)
    if magic != MAGIC:
        return None
    try:
        return Marker(vlan, LoadKind(kind), bytes(dst), size)
    except ValueError:
        return None


def check_frame(
    frame: bytes | bytearray | memoryview, mac: MacAddress, vlans: PortVlans
) -> tuple[str, Marker | None]:
    """What a guest makes of a received load frame: ``"ok"``, or why it is wrong
    (``"not_load"``, ``"foreign_vlan"``, ``"foreign_mac"``, ``"truncated"``,
    ``"tag_mismatch"``), or ``"flooded"`` for an unknown unicast frame."""
    if len(frame) < 14:
        return "truncated", None
    tagged = frame[12] == 0x81 and frame[13] == 0x00
    header = 18 if tagged else 14
    marker = parse_marker(frame[header:])
    if marker is None:
        return "not_load", None
    if marker.vlan not in vlans.members:
        return "foreign_vlan", marker
    wants_tag = vlans.egress_tagged(marker.vlan)
    if wants_tag != tagged:
        return "tag_mismatch", marker
    if tagged and (frame[14] << 8 | frame[15]) & 0xFFF != marker.vlan:
        return "tag_mismatch", marker
    if marker.kind is LoadKind.UNICAST and marker.dst != mac.octets:
        return "foreign_mac", marker
    if len(frame) - header != marker.payload_bytes:
        return "truncated", marker
    if marker.kind is LoadKind.UNKNOWN:
        return "flooded", marker  # right only where the switch floods unknown unicast
    return "ok", marker
