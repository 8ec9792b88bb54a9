"""Path MTU per destination, learned from ICMP (RFC 1191, RFC 8201), as Linux keeps it.

A learned value is floored at ``min_pmtu`` (Linux ``net.ipv4.route.min_pmtu``,
552) for IPv4 and at the IPv6 minimum link MTU (1280, RFC 8200 section 5),
never raised by a message (RFC 1191 section 3: only a smaller value is
believed), and forgotten after ``expires_ns`` (``net.ipv4.route.mtu_expires``,
10 minutes) so a path that grew is found again. ``get`` never answers more
than the interface MTU it is given.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from netoffload.stack._netaddr import NS_PER_S, IpAddress

IPV4_MIN_PMTU: Final = 552
IPV6_MIN_MTU: Final = 1280


@dataclass(slots=True)
class _Entry:
    mtu: int
    expires_ns: int


class PmtuCache:
    """Learned path MTUs, bounded to ``max_entries`` destinations (the oldest goes first)."""

    def __init__(
        self,
        *,
        expires_ns: int = 600 * NS_PER_S,
        min_pmtu_v4: int = IPV4_MIN_PMTU,
        max_entries: int = 4096,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.expires_ns = expires_ns
        self.min_pmtu_v4 = min_pmtu_v4
        self.max_entries = max_entries
        # Every entry lives expires_ns from its last change, so insertion order is expiry order.
        self._entries: OrderedDict[IpAddress, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def floor(self, destination: IpAddress) -> int:
        """The smallest path MTU believed for ``destination``'s IP version."""
        return self.min_pmtu_v4 if destination.version == 4 else IPV6_MIN_MTU

    def get(self, destination: IpAddress, link_mtu: int, now_ns: int) -> int:
        """The path MTU to ``destination``: the learned one if still valid, at most ``link_mtu``."""
        entry = self._entries.get(destination)
        if entry is None or entry.expires_ns <= now_ns:
            return link_mtu
        return min(entry.mtu, link_mtu)

    def learned(self, destination: IpAddress, now_ns: int) -> int | None:
        """The learned path MTU, or ``None`` when none is valid."""
        entry = self._entries.get(destination)
        if entry is None or entry.expires_ns <= now_ns:
            return None
        return entry.mtu

    def learn(
        self, destination: IpAddress, mtu: int, now_ns: int, *, link_mtu: int | None = None
    ) -> int | None:
        """Take an MTU from a "fragmentation needed" or "packet too big" message.

        Returns the new path MTU when it went down, else ``None``. A value below
        the floor is raised to it (Linux clamps the same way); one at or above
        ``link_mtu`` or the current estimate teaches nothing, though an equal
        one restarts the expiry.
        """
        mtu = max(mtu, self.floor(destination))
        if link_mtu is not None and mtu >= link_mtu:
            return None
        current = self.learned(destination, now_ns)
        if current is not None and mtu > current:
            return None
        self._entries.pop(destination, None)
        self._entries[destination] = _Entry(mtu, now_ns + self.expires_ns)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return None if current == mtu else mtu

    def forget(self, destination: IpAddress) -> None:
        """Drop what was learned about ``destination``."""
        self._entries.pop(destination, None)

    def next_timer_ns(self) -> int | None:
        """When the oldest entry expires."""
        for entry in self._entries.values():
            return entry.expires_ns
        return None

    def on_timer(self, now_ns: int) -> list[IpAddress]:
        """Expire entries; returns their destinations (their path MTU is the link's again)."""
        expired: list[IpAddress] = []
        while self._entries:
            destination, entry = next(iter(self._entries.items()))
            if entry.expires_ns > now_ns:
                break
            del self._entries[destination]
            expired.append(destination)
        return expired
