"""Steering: which pools (guests) a frame goes to, by VLAN and destination MAC.

This is the table a NIC with virtual machine queues is programmed with
(Intel VMDq's MAC/VLAN filters, SR-IOV's embedded bridge): the switch owns it
(``vswitch.demux`` learns and configures) and hands it to the NIC side, which
looks every frame up in it before writing the frame into a buffer. The same
code decides in the SoftNic firmware and in the switch (for a Linux uplink),
so the two cannot disagree.

**VLANs.** Every port (each pool, and the uplink) says which VLANs it is in
and how their frames look on it (``PortVlans``): the VLAN of its untagged
frames (``native``; an access port has only that) and the VLANs it carries
tagged (a trunk). On the uplink, VLAN 0 is untagged and every other VLAN is
tagged. A frame arriving on a port belongs to the VLAN of its tag (a tag with
VLAN id 0 only carries a priority: the frame is untagged), or to the port's
native VLAN; a port not in that VLAN drops it. On the way out the tag is
taken off or put on as the destination port wants (``Egress``).

**Decisions.** From the uplink: a rule's decision when classification rules
exist and one matches; a broadcast or multicast to every pool in the VLAN; a
known unicast destination to its pool; an unknown one flooded to the VLAN's
pools or dropped (``flood_unknown``). From a pool: to the pool that has the
destination, or to the uplink when none does (with ``flood_unknown`` also to
the VLAN's other pools); group frames to the uplink and every other pool in
the VLAN; never back to the sender.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from netoffload.wire import MacAddress, WireError
from netoffload.wire.ethernet import ETHERTYPE, HEADER_LEN, VLAN_TAG_LEN, VLAN_TPIDS, EtherType

Buffer: TypeAlias = bytes | bytearray | memoryview

#: The VLAN of untagged frames on the uplink.
NATIVE = 0
MAX_VLAN = 4094
_TPID = struct.Struct("!H")
_TAG = struct.Struct("!HH")


class SteerError(ValueError):
    """A VLAN spec or table that cannot be taken (the message is one line)."""


@dataclass(frozen=True, slots=True)
class PortVlans:
    """The VLANs of one port: ``native`` for its untagged frames (``None``: it takes none),
    ``tagged`` carried with their tag."""

    native: int | None = NATIVE
    tagged: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        for vid in [*self.tagged, *([] if self.native is None else [self.native])]:
            if isinstance(vid, bool) or not isinstance(vid, int) or not 0 <= vid <= MAX_VLAN:
                raise SteerError(f"VLAN {vid!r} not in 0..{MAX_VLAN}")
        if NATIVE in self.tagged:
            raise SteerError("VLAN 0 is the untagged VLAN: it cannot be carried tagged")
        if self.native is not None and self.native in self.tagged:
            raise SteerError(f"VLAN {self.native} cannot be both untagged and tagged")
        if self.native is None and not self.tagged:
            raise SteerError("a port must be in at least one VLAN")

    @classmethod
    def access(cls, vlan: int = NATIVE) -> PortVlans:
        """An access port: its frames are untagged and belong to ``vlan``."""
        return cls(native=vlan)

    @classmethod
    def trunk(cls, vlans: Iterable[int], native: int | None = None) -> PortVlans:
        """A trunk: ``vlans`` tagged, and untagged frames in ``native`` (none by default)."""
        return cls(native=native, tagged=frozenset(vlans))

    @property
    def members(self) -> frozenset[int]:
        return self.tagged | ({self.native} if self.native is not None else set())

    def ingress(self, tag: int | None) -> int | None:
        """The VLAN of a frame arriving with VLAN id ``tag`` (``None``: untagged), or
        ``None`` when this port does not take it."""
        if tag is None or tag == NATIVE:
            return self.native
        return tag if tag in self.tagged else None

    def egress_tagged(self, vlan: int) -> bool | None:
        """Whether a frame of ``vlan`` leaves this port tagged; ``None`` when not a member."""
        if vlan == self.native:
            return False
        if vlan in self.tagged:
            return True
        return None

    # -- text: "10" / "access:10", "trunk:10,20", "trunk:10,20+0" (native 0) ------------
    @classmethod
    def parse(cls, text: str) -> PortVlans:
        """``untagged``, ``VID``, ``access:VID``, ``trunk:VID,VID...[+NATIVE]``."""
        word = text.strip()
        try:
            if word in ("", "untagged"):
                return cls.access(NATIVE)
            kind, sep, rest = word.partition(":")
            if not sep:
                return cls.access(int(kind))
            if kind == "access":
                return cls.access(int(rest))
            if kind == "trunk":
                vlans, plus, native = rest.partition("+")
                tagged = [int(v) for v in vlans.split(",") if v.strip()]
                return cls.trunk(tagged, int(native) if plus else None)
        except ValueError as exc:
            if isinstance(exc, SteerError):
                raise
            raise SteerError(f"bad VLAN spec {text!r}: numbers are VLAN ids") from None
        raise SteerError(f"bad VLAN spec {text!r}: use VID, access:VID or trunk:VID,VID[+NATIVE]")

    def __str__(self) -> str:
        if not self.tagged:
            return "untagged" if self.native == NATIVE else f"access:{self.native}"
        text = "trunk:" + ",".join(str(v) for v in sorted(self.tagged))
        return text if self.native is None else f"{text}+{self.native}"

    def as_dict(self) -> dict[str, Any]:
        return {"native": self.native, "tagged": sorted(self.tagged)}

    @classmethod
    def from_dict(cls, data: Any) -> PortVlans:
        if not isinstance(data, dict) or not isinstance(data.get("tagged"), list):
            raise SteerError("port VLANs are {native, tagged}")
        return cls(data.get("native"), frozenset(data["tagged"]))


class Kind(enum.IntEnum):
    """What the table decided for a frame (drops are ``DROP_*``)."""

    UNICAST = 1  # a known destination
    GROUP = 2  # broadcast or multicast: every port in the VLAN
    FLOOD = 3  # unknown unicast, flooded
    RULE = 4  # a classification rule chose the pool
    UPLINK = 5  # from a pool, to a destination not behind any pool
    DROP_UNKNOWN = 16  # unknown unicast from the uplink, flooding off
    DROP_VLAN = 17  # a VLAN the port is not in, or nobody is in
    DROP_RULE = 18  # a classification rule dropped it
    DROP_RUNT = 19  # not even an Ethernet header
    DROP_HAIRPIN = 20  # to the port it came from


@dataclass(frozen=True, slots=True)
class Egress:
    """How a frame leaves toward one port: drop its tag, put one on, or neither."""

    strip: bool
    insert: int | None  # the VLAN id of a tag to put on

    @property
    def delta(self) -> int:
        """How many bytes longer the frame gets (offsets in it move by as much)."""
        return (VLAN_TAG_LEN if self.insert is not None else 0) - (
            VLAN_TAG_LEN if self.strip else 0
        )


AS_IS = Egress(False, None)


@dataclass(frozen=True, slots=True)
class Steer:
    """One frame's decision: its VLAN, the pools it goes to, whether it leaves by the uplink."""

    kind: Kind
    vlan: int
    pools: tuple[int, ...] = ()
    uplink: bool = False

    @property
    def dropped(self) -> bool:
        return self.kind >= Kind.DROP_UNKNOWN


def frame_vlan(frame: Buffer) -> tuple[int | None, int]:
    """(VLAN id of the outer tag or ``None`` when untagged, header bytes before the EtherType)."""
    if len(frame) >= HEADER_LEN + VLAN_TAG_LEN and (
        _TPID.unpack_from(frame, ETHERTYPE)[0] in VLAN_TPIDS
    ):
        return _TAG.unpack_from(frame, ETHERTYPE)[1] & 0xFFF, ETHERTYPE + VLAN_TAG_LEN
    return None, ETHERTYPE


def mac_key(octets: bytes | memoryview) -> int:
    """A MAC address as the 48-bit integer queues carry."""
    return int.from_bytes(octets, "big")


def source_mac_key(frame: Buffer) -> int:
    """The source MAC of ``frame`` as the 48-bit integer queues carry."""
    return int.from_bytes(frame[6:12], "big")


def mac_of_key(key: int) -> bytes:
    """The six octets of a MAC address carried as an integer."""
    return (key & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")


class SteeringTable:
    """Ports, known unicast destinations and policy; see the module docstring.

    Immutable once made: the switch makes a new one when anything changes and
    hands it over whole.
    """

    __slots__ = ("_classifier", "_members", "flood_unknown", "ports", "rules", "unicast")

    def __init__(
        self,
        ports: Mapping[int, PortVlans],
        unicast: Mapping[tuple[int, bytes], int] | None = None,
        *,
        flood_unknown: bool = False,
        rules: Sequence[str] = (),
    ) -> None:
        self.ports = dict(ports)
        self.unicast = dict(unicast or {})
        for (vlan, mac), pool in self.unicast.items():
            if len(mac) != 6 or pool not in self.ports:
                raise SteerError(f"unicast entry ({vlan}, {mac.hex(':')}) -> {pool} is not usable")
        self.flood_unknown = flood_unknown
        self.rules = tuple(rules)
        members: dict[int, list[int]] = {}
        for pool in sorted(self.ports):
            for vlan in self.ports[pool].members:
                members.setdefault(vlan, []).append(pool)
        self._members = {vlan: tuple(pools) for vlan, pools in members.items()}
        self._classifier = _compile_rules(self.rules)

    def members(self, vlan: int) -> tuple[int, ...]:
        """The pools in ``vlan``, in order."""
        return self._members.get(vlan, ())

    # -- decisions ------------------------------------------------------------------
    def from_uplink(self, frame: Buffer, rule_pool: int | None = None) -> Steer:
        """Where a frame that came in on the uplink goes (``rule_pool``: what a rule chose,
        ``-1`` when a rule dropped it)."""
        if len(frame) < HEADER_LEN:
            return Steer(Kind.DROP_RUNT, NATIVE)
        tag, _ = frame_vlan(frame)
        vlan = NATIVE if tag is None else tag
        members = self._members.get(vlan)
        if not members:
            return Steer(Kind.DROP_VLAN, vlan)
        if rule_pool is not None:
            if rule_pool < 0:
                return Steer(Kind.DROP_RULE, vlan)
            if rule_pool in members:
                return Steer(Kind.RULE, vlan, (rule_pool,))
            return Steer(Kind.DROP_VLAN, vlan)
        if frame[0] & 0x01:
            return Steer(Kind.GROUP, vlan, members)
        pool = self.unicast.get((vlan, bytes(frame[0:6])))
        if pool is not None:
            return Steer(Kind.UNICAST, vlan, (pool,))
        if self.flood_unknown:
            return Steer(Kind.FLOOD, vlan, members)
        return Steer(Kind.DROP_UNKNOWN, vlan)

    def from_pool(self, source: int, frame: Buffer) -> Steer:
        """Where a frame pool ``source`` sent goes."""
        if len(frame) < HEADER_LEN:
            return Steer(Kind.DROP_RUNT, NATIVE)
        port = self.ports.get(source)
        tag, _ = frame_vlan(frame)
        vlan = None if port is None else port.ingress(tag)
        if vlan is None:
            return Steer(Kind.DROP_VLAN, NATIVE if tag is None else tag)
        others = tuple(p for p in self._members.get(vlan, ()) if p != source)
        if frame[0] & 0x01:
            return Steer(Kind.GROUP, vlan, others, uplink=True)
        pool = self.unicast.get((vlan, bytes(frame[0:6])))
        if pool == source:
            return Steer(Kind.DROP_HAIRPIN, vlan)
        if pool is not None:
            return Steer(Kind.UNICAST, vlan, (pool,))
        if self.flood_unknown:
            return Steer(Kind.FLOOD, vlan, others, uplink=True)
        return Steer(Kind.UPLINK, vlan, (), uplink=True)

    def egress(self, frame: Buffer, vlan: int, pool: int | None) -> Egress:
        """How ``frame`` (of ``vlan``) leaves toward ``pool`` (``None``: the uplink)."""
        tag, _ = frame_vlan(frame)
        if pool is None:
            want: bool | None = vlan != NATIVE
        else:
            port = self.ports.get(pool)
            want = None if port is None else port.egress_tagged(vlan)
        has_tag = tag is not None
        if not want:  # untagged there (or not a member, which the decision never sends to)
            return Egress(True, None) if has_tag else AS_IS
        if has_tag and tag == vlan:
            return AS_IS
        return Egress(has_tag, vlan)  # a priority-only tag is replaced

    def classify(self, frames: Sequence[Buffer]) -> list[int | None] | None:
        """What the rules chose for each frame (pool, ``-1`` to drop, ``None``: no rule
        matched); ``None`` when there are no rules."""
        classifier = self._classifier
        if classifier is None or not frames:
            return None
        from netoffload.engine.fields import FrameBatch

        result = classifier.classify_batch(FrameBatch.from_frames(frames))
        queues = result.queue.tolist()
        rules = result.rule.tolist()
        return [
            (-1 if drop else q) if r >= 0 else None
            for q, r, drop in zip(queues, rules, result.drop.tolist(), strict=True)
        ]

    # -- handing over ---------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {
            "ports": {str(p): v.as_dict() for p, v in sorted(self.ports.items())},
            "unicast": [
                [vlan, mac.hex(":"), pool] for (vlan, mac), pool in sorted(self.unicast.items())
            ],
            "flood_unknown": self.flood_unknown,
            "rules": list(self.rules),
        }

    @classmethod
    def from_dict(cls, data: Any) -> SteeringTable:
        """The table another process sent; ``SteerError`` when it is not one."""
        try:
            ports = {int(p): PortVlans.from_dict(v) for p, v in data["ports"].items()}
            unicast = {
                (int(vlan), MacAddress.parse(mac).octets): int(pool)
                for vlan, mac, pool in data["unicast"]
            }
            return cls(
                ports,
                unicast,
                flood_unknown=bool(data["flood_unknown"]),
                rules=[str(r) for r in data["rules"]],
            )
        except (KeyError, TypeError, ValueError, WireError) as exc:
            if isinstance(exc, SteerError):
                raise
            raise SteerError(f"not a steering table: {exc}") from None


def _compile_rules(rules: Sequence[str]) -> Any:
    if not rules:
        return None
    from netoffload.engine.classify import Classifier
    from netoffload.engine.ntuple import parse_rule

    try:
        return Classifier([parse_rule(text) for text in rules])
    except ValueError as exc:
        raise SteerError(f"bad classification rule: {exc}") from None


def insert_tag(vlan: int) -> bytes:
    """An 802.1Q tag for ``vlan`` (priority 0)."""
    return _TAG.pack(EtherType.VLAN, vlan)
