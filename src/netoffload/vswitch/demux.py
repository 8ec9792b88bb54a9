"""The switch's demultiplexing state: ports and VLANs, the MAC table, and policy.

``Demux`` is what the switch knows and the NIC side does not: which guest
(pool) is on which VLANs (access or trunk, ``PortVlans``), the MAC table
(static entries, and entries learned from the source address of every frame
a guest sends, aged out after ``ageing_s``), whether unknown unicast is
flooded or dropped, and classification rules (ethtool ntuple text; ``action
N`` sends a frame to pool N). Whenever any of it changes, ``table()`` is a
new ``SteeringTable`` for the NIC side: the SoftNic firmware, or the switch's
own NIC side for a Linux uplink. The decisions themselves are the table's
(``device.vmdq.steer``), so a frame is demultiplexed the same way wherever it
is. ``lookup`` answers for one frame, as the NIC side would.

A guest may have at most ``max_macs`` learned addresses (its quota); a MAC
seen from another guest moves there, unless it is static. Time is passed in.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from netoffload.device.vmdq.steer import PortVlans, Steer, SteerError, SteeringTable
from netoffload.wire import MacAddress

DEFAULT_AGEING_S = 300.0


@dataclass(slots=True)
class _Entry:
    pool: int
    static: bool
    seen_ns: int


class Demux:
    """Ports, MAC table and policy of one switch; see the module docstring."""

    def __init__(
        self,
        *,
        flood_unknown: bool = False,
        ageing_s: float = DEFAULT_AGEING_S,
        rules: Sequence[str] = (),
    ) -> None:
        self.flood_unknown = flood_unknown
        self.ageing_ns = int(ageing_s * 1e9)
        self.rules: tuple[str, ...] = ()
        self._ports: dict[int, PortVlans] = {}
        self._macs: dict[int, int] = {}  # learned addresses per pool
        self._fdb: dict[tuple[int, bytes], _Entry] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self._table: SteeringTable | None = None
        self.version = 0
        self.set_rules(rules)

    # -- ports -------------------------------------------------------------------------
    def add_port(self, pool: int, vlans: PortVlans) -> None:
        self._ports[pool] = vlans
        self._macs.setdefault(pool, 0)
        self._changed()

    def remove_port(self, pool: int) -> int:
        """Forget ``pool`` and every MAC entry pointing at it; how many entries went."""
        self._ports.pop(pool, None)
        self._macs.pop(pool, None)
        gone = [key for key, entry in self._fdb.items() if entry.pool == pool]
        for key in gone:
            del self._fdb[key]
        self._changed()
        return len(gone)

    def port(self, pool: int) -> PortVlans | None:
        return self._ports.get(pool)

    # -- the MAC table ------------------------------------------------------------------
    def add_static(self, vlan: int, mac: MacAddress, pool: int) -> None:
        """A static entry: ``mac`` on ``vlan`` is behind ``pool`` (never aged, never moved)."""
        if pool not in self._ports:
            raise SteerError(f"no port {pool}")
        if mac.is_multicast:
            raise SteerError(f"{mac} is a group address")
        self._fdb[(vlan, mac.octets)] = _Entry(pool, True, 0)
        self._changed()

    def learn(self, vlan: int, mac: bytes, pool: int, now_ns: int, *, limit: int) -> bool:
        """A frame from ``pool`` came from ``mac`` on ``vlan``; True when the table changed.

        ``limit`` is the pool's quota of learned addresses.
        """
        if mac[0] & 0x01 or pool not in self._ports or mac == b"\x00" * 6:
            return False
        key = (vlan, mac)
        entry = self._fdb.get(key)
        if entry is not None:
            if entry.static or entry.pool == pool:
                entry.seen_ns = now_ns
                return False
            if self._macs.get(pool, 0) >= limit:
                self.counters["learn_over_quota"] += 1
                return False
            self._macs[entry.pool] = self._macs.get(entry.pool, 1) - 1
            entry.pool, entry.seen_ns = pool, now_ns
            self._macs[pool] = self._macs.get(pool, 0) + 1
            self.counters["moved"] += 1
            self._changed()
            return True
        if self._macs.get(pool, 0) >= limit:
            self.counters["learn_over_quota"] += 1
            return False
        self._fdb[key] = _Entry(pool, False, now_ns)
        self._macs[pool] = self._macs.get(pool, 0) + 1
        self.counters["learned"] += 1
        self._changed()
        return True

    def age(self, now_ns: int) -> int:
        """Drop learned entries not seen for ``ageing_s``; how many went."""
        old = [
            key
            for key, entry in self._fdb.items()
            if not entry.static and now_ns - entry.seen_ns > self.ageing_ns
        ]
        for key in old:
            pool = self._fdb.pop(key).pool
            self._macs[pool] = max(self._macs.get(pool, 1) - 1, 0)
        if old:
            self.counters["aged"] += len(old)
            self._changed()
        return len(old)

    def entries(self) -> list[dict[str, Any]]:
        """The MAC table, for the stats."""
        return [
            {"vlan": vlan, "mac": mac.hex(":"), "pool": e.pool, "static": e.static}
            for (vlan, mac), e in sorted(self._fdb.items())
        ]

    def pool_of(self, vlan: int, mac: MacAddress) -> int | None:
        entry = self._fdb.get((vlan, mac.octets))
        return None if entry is None else entry.pool

    # -- policy -------------------------------------------------------------------------
    def set_flooding(self, flood_unknown: bool) -> None:
        self.flood_unknown = flood_unknown
        self._changed()

    def set_rules(self, rules: Iterable[str]) -> None:
        """Classification rules (ntuple text); ``SteerError`` when one does not parse."""
        rules = tuple(rules)
        SteeringTable({}, rules=rules)  # parse them now: a bad rule is the caller's error
        self.rules = rules
        self._changed()

    # -- the table ------------------------------------------------------------------------
    def _changed(self) -> None:
        self._table = None
        self.version += 1

    def table(self) -> SteeringTable:
        """The steering table for the NIC side (the same object until something changes)."""
        table = self._table
        if table is None:
            table = self._table = SteeringTable(
                self._ports,
                {key: e.pool for key, e in self._fdb.items()},
                flood_unknown=self.flood_unknown,
                rules=self.rules,
            )
        return table

    def lookup(self, frame: bytes | memoryview, source: int | None = None) -> Steer:
        """Where ``frame`` goes, from the uplink (``source`` ``None``) or from pool ``source``."""
        table = self.table()
        if source is None:
            rules = table.classify([frame]) if table.rules else None
            return table.from_uplink(frame, None if rules is None else rules[0])
        return table.from_pool(source, frame)
