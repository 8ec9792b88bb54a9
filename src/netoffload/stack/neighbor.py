"""One neighbour cache for ARP (IPv4) and neighbor discovery (IPv6).

Each entry runs the RFC 4861 section 7.3.2 reachability machine
(INCOMPLETE, REACHABLE, STALE, DELAY, PROBE; PERMANENT for static entries),
which Linux also runs for ARP. Updates from received messages follow Linux's
``neigh_update`` with the flags ``arp_process``, ``ndisc_recv_ns`` and
``ndisc_recv_na`` give it, which is RFC 4861 section 7.2.5 (and Appendix C)
exactly for neighbor discovery.

The cache is sans-I/O. ``resolve`` answers with a MAC address or queues the
packet (``unres_qlen`` per neighbour, oldest dropped) and starts resolution;
the frames to send (ARP requests and replies, solicitations, advertisements)
are taken with ``take_frames``; packets whose neighbour became known with
``take_resolved``; packets that will never be sent, with why, with
``take_failed`` (the caller answers ``RESOLUTION_FAILED`` with ICMP host /
address unreachable). ``next_timer_ns`` and ``on_timer`` drive
retransmissions, state timeouts and garbage collection. The table holds at
most ``gc_thresh3`` entries per IP version; past that, unused STALE entries
are evicted (Linux's forced GC) or the new entry is refused.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Final, Generic, TypeVar

from netoffload.stack._netaddr import (
    LIMITED_BROADCAST,
    NS_PER_S,
    IpAddress,
    IpInterface,
    common_prefix_len,
)
from netoffload.stack.neighbor_frames import (
    HopLimitError,
    arp_announcement,
    arp_reply,
    arp_request,
    multicast_mac,
    neighbor_advert,
    neighbor_solicit,
    parse_arp,
    parse_ndp,
    unsolicited_advert,
)
from netoffload.wire.arp import ArpOperation
from netoffload.wire.checksum import Buffer
from netoffload.wire.error import WireError
from netoffload.wire.ethernet import BROADCAST, MacAddress
from netoffload.wire.icmpv6 import Icmpv6NeighborSolicitRepr

T = TypeVar("T")

#: Linux recomputes the random reachable time every 300 s (neigh_periodic_work).
REACHABLE_RECOMPUTE_NS: Final = 300 * NS_PER_S


class NeighborState(Enum):
    """RFC 4861 section 7.3.2 states, plus PERMANENT for static entries (Linux NUD_PERMANENT)."""

    INCOMPLETE = "incomplete"
    REACHABLE = "reachable"
    STALE = "stale"
    DELAY = "delay"
    PROBE = "probe"
    PERMANENT = "permanent"


# Linux NUD_VALID (a link address is known) and NUD_CONNECTED (known to be reachable).
_VALID: Final = frozenset(
    {
        NeighborState.REACHABLE,
        NeighborState.STALE,
        NeighborState.DELAY,
        NeighborState.PROBE,
        NeighborState.PERMANENT,
    }
)
_CONNECTED: Final = frozenset({NeighborState.REACHABLE, NeighborState.PERMANENT})


class NeighborDrop(StrEnum):
    """Why a packet or a received frame was dropped. Values are stable names for the stats."""

    RESOLUTION_FAILED = "resolution_failed"
    QUEUE_OVERFLOW = "unresolved_queue_overflow"
    TABLE_FULL = "table_full"
    NO_SOURCE_ADDRESS = "no_source_address"
    FLUSHED = "flushed"
    MALFORMED = "malformed"
    BAD_HOP_LIMIT = "bad_hop_limit"
    BOGUS_SENDER = "bogus_sender"
    ADDRESS_CONFLICT = "address_conflict"


@dataclass(frozen=True, slots=True)
class NeighborConfig:
    """Tunables, named and defaulted as Linux's ``net.ipv{4,6}.neigh.*`` sysctls."""

    base_reachable_time_ns: int = 30 * NS_PER_S
    retrans_time_ns: int = 1 * NS_PER_S
    delay_first_probe_time_ns: int = 5 * NS_PER_S
    mcast_solicit: int = 3
    ucast_solicit: int = 3
    unres_qlen: int = 101
    #: ARP replies within this time of the last update do not change the address.
    locktime_ns: int = 1 * NS_PER_S
    gc_interval_ns: int = 30 * NS_PER_S
    gc_stale_time_ns: int = 60 * NS_PER_S
    gc_thresh1: int = 128
    gc_thresh2: int = 512
    gc_thresh3: int = 1024
    #: Set the Router flag in our advertisements.
    is_router: bool = False

    def __post_init__(self) -> None:
        if self.mcast_solicit < 1 or self.ucast_solicit < 1 or self.unres_qlen < 1:
            raise ValueError("solicitation counts and unres_qlen must be at least 1")
        if not 0 < self.gc_thresh2 <= self.gc_thresh3:
            raise ValueError("need 0 < gc_thresh2 <= gc_thresh3")
        if self.base_reachable_time_ns < 2 or self.retrans_time_ns < 1:
            raise ValueError("reachable and retransmission times must be positive")


@dataclass(frozen=True, slots=True)
class Resolved(Generic[T]):
    """A queued packet whose neighbour is now known: send it to ``mac``."""

    address: IpAddress
    mac: MacAddress
    packet: T


@dataclass(frozen=True, slots=True)
class Unresolved(Generic[T]):
    """A queued packet that will not be sent, and why.

    On ``RESOLUTION_FAILED`` the sender gets ICMP destination unreachable
    (IPv4 host unreachable, IPv6 address unreachable; RFC 4861 section 7.2.2)
    or ``EHOSTUNREACH``.
    """

    address: IpAddress
    packet: T
    reason: NeighborDrop


@dataclass(frozen=True, slots=True)
class NeighborEntry:
    """A snapshot of one entry, as ``ip neigh show`` would print it."""

    address: IpAddress
    state: NeighborState
    mac: MacAddress | None
    queued: int
    probes: int
    timer_ns: int | None
    is_router: bool


@dataclass(slots=True)
class NeighborStats:
    """Counters (after Linux's ``/proc/net/stat/{arp,ndisc}_cache``) and drops by reason."""

    entries_created: int = 0
    resolved: int = 0
    failed: int = 0
    solicits_sent: int = 0
    probes_sent: int = 0
    replies_sent: int = 0
    announcements_sent: int = 0
    requests_received: int = 0
    forced_gc_runs: int = 0
    gc_evicted: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready snapshot."""
        out: dict[str, object] = {
            name: getattr(self, name) for name in self.__slots__ if name != "drops"
        }
        out["drops"] = dict(sorted(self.drops.items()))
        return out


@dataclass(slots=True)
class _Entry(Generic[T]):
    address: IpAddress
    state: NeighborState
    mac: MacAddress | None = None
    queue: deque[T] = field(default_factory=deque)
    probes: int = 0
    updated_ns: int = 0
    used_ns: int = 0
    confirmed_ns: int = 0
    timer_ns: int | None = None
    token: int = 0
    source: IpAddress | None = None
    is_router: bool = False


class NeighborCache(Generic[T]):
    """The neighbours of one Ethernet interface, IPv4 and IPv6, and their protocols.

    ``mac`` is the interface's own address; ``add_address`` tells the cache
    which IP addresses are ours (to answer for them and to source
    solicitations). ``T`` is whatever the caller queues per packet.
    """

    def __init__(
        self,
        mac: MacAddress,
        rng: random.Random,
        config: NeighborConfig | None = None,
    ) -> None:
        self.mac = mac
        self.config = config or NeighborConfig()
        self.stats = NeighborStats()
        self._rng = rng
        self._addresses: list[IpInterface] = []
        self._table: dict[IpAddress, _Entry[T]] = {}
        self._counts = {4: 0, 6: 0}
        self._timers: list[tuple[int, int, IpAddress]] = []
        self._tokens = itertools.count(1)
        self._gc_due_ns: int | None = None
        self._reachable_ns = 0
        self._reachable_set_ns: int | None = None
        self._frames: list[bytes] = []
        self._resolved: list[Resolved[T]] = []
        self._failed: list[Unresolved[T]] = []

    # --- our addresses -----------------------------------------------------

    def add_address(self, address: IpInterface) -> None:
        """Answer ARP / neighbor solicitations for ``address`` from now on."""
        if address not in self._addresses:
            self._addresses.append(address)

    def remove_address(self, address: IpInterface) -> None:
        """Stop answering for ``address``."""
        if address in self._addresses:
            self._addresses.remove(address)

    @property
    def addresses(self) -> tuple[IpInterface, ...]:
        """Our addresses, in the order they were added."""
        return tuple(self._addresses)

    def _is_ours(self, address: IpAddress) -> bool:
        return any(a.ip == address for a in self._addresses)

    # --- the cache -----------------------------------------------------------

    def resolve(
        self, address: IpAddress, packet: T, now_ns: int, *, source: IpAddress | None = None
    ) -> MacAddress | None:
        """The MAC to send ``packet`` to ``address`` with, or ``None`` when it was queued.

        Multicast and broadcast addresses map straight to their group MAC.
        ``source`` (the packet's source address) is used for the solicitation
        when it is ours (RFC 4861 7.2.2, Linux's ``arp_solicit``). A packet
        that cannot even be queued comes back through ``take_failed``.
        """
        # The table first: a group address never has an entry, and this is per packet.
        entry = self._table.get(address)
        if entry is None:
            direct = self._group_mac(address)
            if direct is not None:
                return direct
            if self._solicit_source(address, source) is None:
                self._fail(address, packet, NeighborDrop.NO_SOURCE_ADDRESS)
                return None
            entry = self._create(address, now_ns)
            if entry is None:
                self._fail(address, packet, NeighborDrop.TABLE_FULL)
                return None
            entry.source = source
            entry.used_ns = now_ns
            entry.queue.append(packet)
            self._solicit(entry, now_ns)
            return None
        entry.used_ns = now_ns
        if entry.state is NeighborState.INCOMPLETE:
            if source is not None:
                entry.source = source
            entry.queue.append(packet)
            if len(entry.queue) > self.config.unres_qlen:
                # RFC 4861 7.2.2: when the queue overflows, the oldest packets go.
                self._fail(address, entry.queue.popleft(), NeighborDrop.QUEUE_OVERFLOW)
            return None
        if entry.state is NeighborState.STALE:
            # RFC 4861 7.3.3: sending a packet to a STALE neighbour starts the DELAY timer.
            entry.source = source or entry.source
            self._enter(entry, NeighborState.DELAY, now_ns)
        return entry.mac

    def lookup(self, address: IpAddress) -> MacAddress | None:
        """The cached MAC of ``address`` when one is known; changes nothing."""
        entry = self._table.get(address)
        if entry is not None:
            return entry.mac if entry.state in _VALID else None
        return self._group_mac(address)

    def entry(self, address: IpAddress) -> NeighborEntry | None:
        """A snapshot of the entry for ``address``."""
        entry = self._table.get(address)
        return None if entry is None else self._snapshot(entry)

    def entries(self) -> list[NeighborEntry]:
        """Snapshots of every entry."""
        return [self._snapshot(e) for e in self._table.values()]

    def __len__(self) -> int:
        return len(self._table)

    def confirm(self, address: IpAddress, now_ns: int) -> None:
        """Upper-layer proof that ``address`` is reachable (e.g. TCP ACK progress).

        RFC 4861 7.3.1 / Appendix C: a known neighbour becomes REACHABLE. Linux's
        ``neigh_confirm`` only stamps the time; the REACHABLE timer here also
        reads the stamp, so confirming a REACHABLE entry costs no timer.
        """
        entry = self._table.get(address)
        if entry is None or entry.state not in _VALID or entry.state is NeighborState.PERMANENT:
            return
        entry.confirmed_ns = now_ns
        if entry.state is not NeighborState.REACHABLE:
            self._enter(entry, NeighborState.REACHABLE, now_ns)

    def add_static(self, address: IpAddress, mac: MacAddress, now_ns: int) -> None:
        """A PERMANENT entry (``ip neigh add ... nud permanent``); queued packets go out."""
        entry = self._table.get(address)
        if entry is None:
            entry = _Entry(address, NeighborState.PERMANENT)
            self._table[address] = entry
            self._counts[address.version] += 1
            self._start_gc(now_ns)
        entry.mac = mac
        entry.updated_ns = now_ns
        self._enter(entry, NeighborState.PERMANENT, now_ns)
        self._release(entry, now_ns)

    def forget(self, address: IpAddress) -> None:
        """Delete the entry for ``address``; its queued packets fail as ``FLUSHED``."""
        entry = self._table.get(address)
        if entry is not None:
            self._delete(entry, NeighborDrop.FLUSHED)

    # --- receiving -------------------------------------------------------------

    def receive_arp(self, frame: Buffer, now_ns: int) -> None:
        """Handle one received Ethernet frame carrying ARP (Linux ``arp_process``)."""
        try:
            received = parse_arp(frame)
        except WireError:
            self.stats.drops[NeighborDrop.MALFORMED] += 1
            return
        arp = received.arp
        sip, tip, sha = arp.sender_proto, arp.target_proto, arp.sender_hw
        if tip.is_multicast or tip.is_loopback:
            return
        if sha.is_multicast:
            # RFC 1812 3.3.2: never believe a multicast link address for a unicast IP.
            self.stats.drops[NeighborDrop.BOGUS_SENDER] += 1
            return
        if sha == self.mac:
            return  # our own frame, looped back
        tip_ours = self._is_ours(tip)
        if sip.is_unspecified:
            # RFC 5227 probe: answer it for our address so the prober sees the conflict.
            if arp.operation == ArpOperation.REQUEST and tip_ours:
                self._send_reply(arp_reply(self.mac, tip, sha, sip))
            return
        if sip.is_multicast or sip == LIMITED_BROADCAST or sip.is_loopback:
            self.stats.drops[NeighborDrop.BOGUS_SENDER] += 1
            return
        if self._is_ours(sip):
            self.stats.drops[NeighborDrop.ADDRESS_CONFLICT] += 1
            return
        if arp.operation == ArpOperation.REQUEST and tip_ours:
            self.stats.requests_received += 1
            self._learn(sip, sha, now_ns)
            self._send_reply(arp_reply(self.mac, tip, sha, sip))
            return
        entry = self._table.get(sip)
        if entry is None:
            return  # arp_accept = 0: replies and gratuitous ARP only update what exists
        garp = sip == tip
        # Broadcast replies and requests do not prove reachability; the first of several
        # replies within locktime wins (proxies), unless it is gratuitous.
        state = NeighborState.STALE
        if arp.operation == ArpOperation.REPLY and received.eth_dst == self.mac:
            state = NeighborState.REACHABLE
        override = garp or now_ns >= entry.updated_ns + self.config.locktime_ns
        self._update(entry, sha, state, now_ns, override=override)

    def receive_ndp(self, frame: Buffer, now_ns: int) -> None:
        """Handle one received Ethernet frame with a Neighbor Solicitation or Advertisement."""
        try:
            received = parse_ndp(frame)
        except HopLimitError:
            self.stats.drops[NeighborDrop.BAD_HOP_LIMIT] += 1
            return
        except WireError:
            self.stats.drops[NeighborDrop.MALFORMED] += 1
            return
        message, link = received.message, received.link_address
        if link is not None and link.is_multicast:
            self.stats.drops[NeighborDrop.BOGUS_SENDER] += 1
            return
        target = message.target
        if isinstance(message, Icmpv6NeighborSolicitRepr):
            if not self._is_ours(target):
                return  # no proxy ND
            if self._is_ours(received.src):
                if received.eth_src != self.mac:  # not our own, looped back
                    self.stats.drops[NeighborDrop.ADDRESS_CONFLICT] += 1
                return
            self.stats.requests_received += 1
            router = self.config.is_router
            if received.src.is_unspecified:
                # RFC 4861 7.2.4: answer a duplicate address detection probe to all-nodes.
                self._send_reply(unsolicited_advert(self.mac, target, router=router))
                return
            if link is not None:
                self._learn(received.src, link, now_ns, weak=True)
            # Without a source link-layer option the solicitation was unicast by a neighbour
            # that knows us; answer the frame's sender rather than resolving it first.
            reply_mac = link or received.eth_src
            self._send_reply(
                neighbor_advert(
                    self.mac, target, received.src, reply_mac, solicited=True, router=router
                )
            )
            return
        if self._is_ours(target):
            self.stats.drops[NeighborDrop.ADDRESS_CONFLICT] += 1
            return
        entry = self._table.get(target)
        if entry is None:
            return  # RFC 4861 7.2.5: no entry, silently discard
        self._update(
            entry,
            link,
            NeighborState.REACHABLE if message.solicited else NeighborState.STALE,
            now_ns,
            override=message.override,
            weak=True,
            is_router=message.router,
        )

    def announce(self, address: IpAddress, now_ns: int) -> None:
        """Queue a gratuitous ARP or unsolicited advertisement for our ``address``."""
        if not self._is_ours(address):
            raise ValueError(f"{address} is not one of our addresses")
        if isinstance(address, IPv4Address):
            frame = arp_announcement(self.mac, address)
        else:
            frame = unsolicited_advert(self.mac, address, router=self.config.is_router)
        self._frames.append(frame)
        self.stats.announcements_sent += 1

    # --- output and timers -------------------------------------------------------

    def take_frames(self) -> list[bytes]:
        """The Ethernet frames to transmit, oldest first; the list is handed over."""
        frames, self._frames = self._frames, []
        return frames

    def take_resolved(self) -> list[Resolved[T]]:
        """Queued packets that can now be sent, in the order they were queued."""
        out, self._resolved = self._resolved, []
        return out

    def take_failed(self) -> list[Unresolved[T]]:
        """Packets that will not be sent, with the reason."""
        out, self._failed = self._failed, []
        return out

    def next_timer_ns(self) -> int | None:
        """When ``on_timer`` next has work, or ``None``."""
        timers = self._timers
        while timers and not self._live(timers[0]):
            heapq.heappop(timers)
        candidates = [
            t for t in (timers[0][0] if timers else None, self._gc_due_ns) if t is not None
        ]
        return min(candidates) if candidates else None

    def on_timer(self, now_ns: int) -> None:
        """Run every timer due at ``now_ns``: retransmissions, state changes, GC."""
        timers = self._timers
        while timers and timers[0][0] <= now_ns:
            _, token, address = heapq.heappop(timers)
            entry = self._table.get(address)
            if entry is not None and entry.token == token:
                self._expire(entry, now_ns)
        if self._gc_due_ns is not None and self._gc_due_ns <= now_ns:
            self._periodic_gc(now_ns)
        if len(timers) > 4 * len(self._table) + 64:
            self._timers = [t for t in timers if self._live(t)]
            heapq.heapify(self._timers)

    # --- internals ---------------------------------------------------------------

    def _live(self, timer: tuple[int, int, IpAddress]) -> bool:
        entry = self._table.get(timer[2])
        return entry is not None and entry.token == timer[1]

    def _group_mac(self, address: IpAddress) -> MacAddress | None:
        if address.is_multicast:
            return multicast_mac(address)
        if isinstance(address, IPv4Address) and (
            address == LIMITED_BROADCAST
            or any(
                a.version == 4
                and a.network.prefixlen < 31
                and a.network.broadcast_address == address
                for a in self._addresses
            )
        ):
            return BROADCAST
        return None

    def _snapshot(self, entry: _Entry[T]) -> NeighborEntry:
        return NeighborEntry(
            entry.address,
            entry.state,
            entry.mac,
            len(entry.queue),
            entry.probes,
            entry.timer_ns,
            entry.is_router,
        )

    def _reachable_time(self, now_ns: int) -> int:
        # RFC 4861 6.3.2: uniformly in [0.5, 1.5) x BaseReachableTime, redrawn now and then.
        if self._reachable_set_ns is None or now_ns - self._reachable_set_ns >= (
            REACHABLE_RECOMPUTE_NS
        ):
            base = self.config.base_reachable_time_ns
            self._reachable_ns = base // 2 + self._rng.randrange(base)
            self._reachable_set_ns = now_ns
        return self._reachable_ns

    def _schedule(self, entry: _Entry[T], deadline: int | None) -> None:
        entry.timer_ns = deadline
        entry.token = next(self._tokens)
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, entry.token, entry.address))

    def _enter(self, entry: _Entry[T], state: NeighborState, now_ns: int) -> None:
        """Move ``entry`` to ``state`` and arm the state's timer."""
        entry.state = state
        entry.probes = 0
        if state is NeighborState.REACHABLE:
            entry.confirmed_ns = now_ns
            self._schedule(entry, now_ns + self._reachable_time(now_ns))
        elif state is NeighborState.DELAY:
            self._schedule(entry, now_ns + self.config.delay_first_probe_time_ns)
        else:
            self._schedule(entry, None)

    def _expire(self, entry: _Entry[T], now_ns: int) -> None:
        state = entry.state
        if state is NeighborState.INCOMPLETE:
            if entry.probes < self.config.mcast_solicit:
                self._solicit(entry, now_ns)
            else:
                self.stats.failed += 1
                self._delete(entry, NeighborDrop.RESOLUTION_FAILED)
        elif state is NeighborState.REACHABLE:
            deadline = entry.confirmed_ns + self._reachable_time(now_ns)
            if deadline > now_ns:
                self._schedule(entry, deadline)  # confirmed since the timer was armed
            else:
                self._enter(entry, NeighborState.STALE, now_ns)
        elif state is NeighborState.DELAY:
            entry.state = NeighborState.PROBE
            entry.probes = 0
            self._solicit(entry, now_ns)
        elif state is NeighborState.PROBE:
            if entry.probes < self.config.ucast_solicit:
                self._solicit(entry, now_ns)
            else:
                # RFC 4861 7.3.3: after MAX_UNICAST_SOLICIT unanswered probes, delete it.
                self.stats.failed += 1
                self._delete(entry, NeighborDrop.RESOLUTION_FAILED)

    def _solicit_source(self, target: IpAddress, hint: IpAddress | None) -> IpAddress | None:
        """The source address of a solicitation for ``target`` (RFC 4861 7.2.2)."""
        if hint is not None and hint.version == target.version and self._is_ours(hint):
            return hint
        mine = [a for a in self._addresses if a.version == target.version]
        if not mine:
            return None
        if isinstance(target, IPv4Address):
            on_subnet = [a for a in mine if target in a.network]
            return (on_subnet or mine)[0].ip
        return max(mine, key=lambda a: common_prefix_len(a.ip, target)).ip

    def _solicit(self, entry: _Entry[T], now_ns: int) -> None:
        """Send the next solicitation for ``entry``: multicast while INCOMPLETE, else unicast."""
        address = entry.address
        source = self._solicit_source(address, entry.source)
        if source is None:
            self._delete(entry, NeighborDrop.NO_SOURCE_ADDRESS)
            return
        unicast = entry.state is not NeighborState.INCOMPLETE and entry.mac is not None
        dst_mac = entry.mac if unicast else None
        if isinstance(address, IPv4Address):
            assert isinstance(source, IPv4Address)
            frame = arp_request(self.mac, source, address, dst_mac=dst_mac or BROADCAST)
        else:
            assert isinstance(source, IPv6Address)
            frame = neighbor_solicit(self.mac, source, address, dst_mac=dst_mac)
        self._frames.append(frame)
        if unicast:
            self.stats.probes_sent += 1
        else:
            self.stats.solicits_sent += 1
        entry.probes += 1
        self._schedule(entry, now_ns + self.config.retrans_time_ns)

    def _send_reply(self, frame: bytes) -> None:
        self._frames.append(frame)
        self.stats.replies_sent += 1

    def _learn(
        self, address: IpAddress, mac: MacAddress, now_ns: int, *, weak: bool = False
    ) -> None:
        """A request from ``address`` told us its MAC: create or update it as STALE."""
        entry = self._table.get(address)
        if entry is None:
            entry = self._create(address, now_ns)
            if entry is None:
                self.stats.drops[NeighborDrop.TABLE_FULL] += 1
                return
        self._update(entry, mac, NeighborState.STALE, now_ns, override=True, weak=weak)

    def _update(
        self,
        entry: _Entry[T],
        mac: MacAddress | None,
        state: NeighborState,
        now_ns: int,
        *,
        override: bool,
        weak: bool = False,
        is_router: bool | None = None,
    ) -> None:
        """Linux ``neigh_update``: apply a received link address and reachability claim.

        ``override`` lets a different address replace the cached one; without
        it, ``weak`` demotes a REACHABLE entry to STALE (RFC 4861 7.2.5, an
        advertisement without the Override flag) and anything else is ignored.
        """
        old = entry.state
        if old is NeighborState.PERMANENT:
            return
        if mac is None:
            if old not in _VALID:
                return  # nothing known and nothing supplied: discard
            mac = entry.mac
        if old in _VALID:
            if mac != entry.mac and not override:
                if not (weak and old in _CONNECTED):
                    return
                mac = entry.mac
                state = NeighborState.STALE
            elif mac == entry.mac and state is NeighborState.STALE:
                state = old  # a valid entry with the same address keeps its state
        if is_router is not None:
            entry.is_router = is_router
        if mac != entry.mac or state is not old:
            entry.updated_ns = now_ns
        entry.mac = mac
        if state is NeighborState.REACHABLE:
            entry.confirmed_ns = now_ns
        if state is not old:
            self._enter(entry, state, now_ns)
        if old not in _VALID and state in _VALID:
            self._release(entry, now_ns)

    def _release(self, entry: _Entry[T], now_ns: int) -> None:
        """Hand ``entry``'s queued packets over as resolved."""
        if not entry.queue or entry.mac is None:
            return
        self.stats.resolved += 1
        mac = entry.mac
        self._resolved.extend(Resolved(entry.address, mac, p) for p in entry.queue)
        entry.queue.clear()
        if entry.state is NeighborState.STALE:
            # Sending to a STALE neighbour starts DELAY (RFC 4861 7.3.3), as Linux's
            # neigh_update does when it sends the queue through neigh_resolve_output.
            entry.used_ns = now_ns
            self._enter(entry, NeighborState.DELAY, now_ns)

    def _fail(self, address: IpAddress, packet: T, reason: NeighborDrop) -> None:
        self.stats.drops[reason] += 1
        self._failed.append(Unresolved(address, packet, reason))

    def _create(self, address: IpAddress, now_ns: int) -> _Entry[T] | None:
        version = address.version
        if self._counts[version] >= self.config.gc_thresh3:
            self._forced_gc(version)
            if self._counts[version] >= self.config.gc_thresh3:
                return None
        entry: _Entry[T] = _Entry(address, NeighborState.INCOMPLETE, updated_ns=now_ns)
        entry.used_ns = now_ns
        self._table[address] = entry
        self._counts[version] += 1
        self.stats.entries_created += 1
        self._start_gc(now_ns)
        return entry

    def _delete(self, entry: _Entry[T], reason: NeighborDrop) -> None:
        del self._table[entry.address]
        self._counts[entry.address.version] -= 1
        entry.token = 0
        for packet in entry.queue:
            self._fail(entry.address, packet, reason)
        entry.queue.clear()
        if not self._table:
            self._gc_due_ns = None

    def _start_gc(self, now_ns: int) -> None:
        if self._gc_due_ns is None:
            self._gc_due_ns = now_ns + self.config.gc_interval_ns

    def _forced_gc(self, version: int) -> None:
        # Linux neigh_forced_gc: entries nobody holds (here: STALE, not in a timer) go,
        # least recently used first, down to gc_thresh2.
        self.stats.forced_gc_runs += 1
        stale = sorted(
            (
                e
                for e in self._table.values()
                if e.address.version == version and e.state is NeighborState.STALE
            ),
            key=lambda e: e.used_ns,
        )
        for entry in stale:
            if self._counts[version] <= self.config.gc_thresh2:
                break
            self.stats.gc_evicted += 1
            self._delete(entry, NeighborDrop.FLUSHED)

    def _periodic_gc(self, now_ns: int) -> None:
        # Linux neigh_periodic_work: above gc_thresh1, STALE entries unused for
        # gc_stale_time go.
        for version in (4, 6):
            if self._counts[version] <= self.config.gc_thresh1:
                continue
            for entry in list(self._table.values()):
                if (
                    entry.address.version == version
                    and entry.state is NeighborState.STALE
                    and entry.used_ns + self.config.gc_stale_time_ns <= now_ns
                ):
                    self.stats.gc_evicted += 1
                    self._delete(entry, NeighborDrop.FLUSHED)
        self._gc_due_ns = now_ns + self.config.gc_interval_ns if self._table else None


__all__ = [
    "NeighborCache",
    "NeighborConfig",
    "NeighborDrop",
    "NeighborEntry",
    "NeighborState",
    "NeighborStats",
    "Resolved",
    "Unresolved",
]
