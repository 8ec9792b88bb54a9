"""``VSwitch``: guests' rings on one side, the NIC side's queues on the other.

The switch hands descriptors over and never payload. Per turn (``step``):

1. guests that died are reclaimed first (their pidfds, polled without
   waiting): the NIC side forgets the window, the MAC table the pool, the
   switch the rings; nothing more is delivered to it;
2. buffers the NIC side filled (its rx queue) are checked against the
   ownership table (``pool.BufferTable``) and put on their guest's rx ring;
3. transmit buffers the NIC side is done with (its done queue) go back to
   their guest's done ring, and the MAC table learns the source address of
   every frame sent;
4. what guests posted (receive buffers) and sent (frames) is checked, its
   generation bumped, and queued for the NIC side; what is refused goes back
   on the guest's done ring with the reason;
5. a changed MAC table or VLAN set is handed to the NIC side whole.

Nothing a guest writes in its rings is trusted: every index is bounded by its
ring, every descriptor checked against the table, and a guest whose rings
are nonsense is evicted. Quotas bound what one guest can take (buffers,
frames in flight, learned MACs); the switch refuses a guest whose quota does
not fit in what is left of the NIC side's queues.

Guests are separate processes, started by ``spawn_guest`` with one end of a
socket pair, watched through a pidfd. ``stats()`` is what ``netoffload vswitch
stats`` shows.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import hashlib
import mmap
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from netoffload.device.base import DeviceError, describe_exit, poll_fds
from netoffload.device.vmdq.queue import (
    DONE_LEARNED,
    DONE_POST,
    DONE_TX,
    Descs,
    Queue,
    Status,
    UnsafeMemory,
    descs,
    drain_eventfd,
    map_sealed,
    ring_eventfd,
)
from netoffload.device.vmdq.steer import PortVlans, mac_of_key
from netoffload.device.vmdq.window import GeometryError, WindowGeometry, guest_rings
from netoffload.vswitch.demux import Demux
from netoffload.vswitch.pool import BufferTable, Quota
from netoffload.vswitch.protocol import ENV_FD, ProtocolError, close_all, recv_message, send_message
from netoffload.vswitch.uplink import Uplink
from netoffload.wire import MacAddress

MAX_WAIT_S = 0.2
_BATCH = 512  # descriptors taken from one queue or ring per turn
_STOP_TIMEOUT_S = 5.0
_AGE_EVERY_NS = 1_000_000_000


class GuestState(enum.StrEnum):
    WAITING = "waiting"  # started, not attached yet
    ATTACHED = "attached"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class GuestConfig:
    """A guest's port: its name, the MAC it is given, its VLANs, its quota."""

    name: str
    mac: MacAddress | None = None
    vlans: PortVlans = field(default_factory=PortVlans)
    quota: Quota = field(default_factory=Quota)


@dataclass(frozen=True, slots=True)
class SwitchConfig:
    mtu: int = 1500
    flood_unknown: bool = False
    #: The MAC a guest is given is a static entry on each of its VLANs (else it is learned).
    static_guest_macs: bool = True
    #: Evict a guest that has held every receive buffer for this long (None: only report it).
    stall_timeout_s: float | None = None
    rules: tuple[str, ...] = ()
    ageing_s: float = 300.0


@dataclass(slots=True)
class GuestCounters:
    """What the switch itself did for one guest (the NIC side counts the rest)."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)


class Guest:
    """The switch's view of one guest."""

    def __init__(self, config: GuestConfig, mac: MacAddress, sock: socket.socket) -> None:
        self.config = config
        self.name = config.name
        self.mac = mac
        self.sock = sock
        self.state = GuestState.WAITING
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd: int | None = None
        self.pool: int | None = None
        self.geometry: WindowGeometry | None = None
        self.table: BufferTable | None = None
        self.rings: dict[str, Queue] = {}
        self.kick: int | None = None
        self.irq: int | None = None
        self._rings_map: mmap.mmap | None = None
        self._rings_fd: int | None = None
        self.counters = GuestCounters()
        self.report: dict[str, Any] | None = None
        self.gone_reason: str | None = None
        self.nic_final: dict[str, Any] | None = None
        self.final_buffers: dict[str, Any] | None = None
        self.stalled_since: float | None = None
        self.stopping = False
        #: The pool it gets when it attaches (numbered in the order guests were added).
        self.reserved_pool = 0
        #: Transmit buffers given back that did not fit in its done ring yet.
        self.pending_done: collections.deque[Descs] = collections.deque()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def attached(self) -> bool:
        return self.state is GuestState.ATTACHED

    def unmap(self) -> None:
        self.rings = {}
        self.pending_done.clear()
        if self._rings_map is not None:
            with contextlib.suppress(BufferError):
                self._rings_map.close()
            self._rings_map = None
        close_all([fd for fd in (self.kick, self.irq, self._rings_fd) if fd is not None])
        self.kick = self.irq = self._rings_fd = None


def default_mac(switch: str, guest: str) -> MacAddress:
    """A locally administered unicast MAC, the same for the same switch and guest names."""
    digest = hashlib.blake2b(f"{switch}/{guest}".encode(), digest_size=5).digest()
    return MacAddress(b"\x02" + digest)


class VSwitch:
    """A virtual switch over ``uplink``; see the module docstring."""

    def __init__(
        self,
        uplink: Uplink,
        *,
        name: str = "vswitch",
        config: SwitchConfig | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.name = name
        self.uplink = uplink
        self.config = config or SwitchConfig()
        self.clock = clock
        self.demux = Demux(
            flood_unknown=self.config.flood_unknown,
            ageing_s=self.config.ageing_s,
            rules=self.config.rules,
        )
        self.guests: dict[str, Guest] = {}
        self._by_pool: dict[int, Guest] = {}
        self._next_pool = 1
        q = uplink.queues
        self._fill, self._rx, self._tx, self._done = q["fill"], q["rx"], q["tx"], q["done"]
        self._pushed = -1
        self._aged_ns = 0
        self._nic_work = False
        self._extra: dict[int, Callable[[], object]] = {}
        self.counters: collections.Counter[str] = collections.Counter()
        self._closed = False
        self._push_table()

    # -- guests ---------------------------------------------------------------------
    def spawn_guest(
        self,
        config: GuestConfig,
        argv: Sequence[str] | None = None,
        *,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> Guest:
        """Start a guest process (default: ``python -m netoffload.vswitch.guest``) with
        one end of a socket pair, its descriptor in ``$NETOFFLOAD_VSWITCH_FD``."""
        if config.name in self.guests:
            raise ValueError(f"a guest named {config.name!r} exists")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = list(argv or [sys.executable, "-m", "netoffload.vswitch.guest"])
        env = dict(os.environ, **{ENV_FD: str(theirs.fileno())})
        try:
            proc = subprocess.Popen(
                command,
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        guest = self._add(config, ours)
        guest.proc = proc
        guest.pidfd = os.pidfd_open(proc.pid)
        return guest

    def add_guest(self, config: GuestConfig, sock: socket.socket) -> Guest:
        """A guest that reaches the switch over ``sock`` (made elsewhere; no process watched)."""
        if config.name in self.guests:
            raise ValueError(f"a guest named {config.name!r} exists")
        return self._add(config, sock)

    def _add(self, config: GuestConfig, sock: socket.socket) -> Guest:
        sock.setblocking(False)
        mac = config.mac or default_mac(self.name, config.name)
        guest = Guest(config, mac, sock)
        guest.reserved_pool = self._next_pool
        self._next_pool += 1
        self.guests[config.name] = guest
        return guest

    def _on_message(self, guest: Guest) -> None:
        for _ in range(8):
            try:
                got = recv_message(guest.sock)
            except BlockingIOError:
                return
            except (OSError, ProtocolError) as exc:
                self._reclaim(guest, f"bad message: {exc}")
                return
            if got is None:
                self._reclaim(guest, "closed its connection")
                return
            message, fds = got
            op = message.get("op")
            if op == "attach" and guest.state is GuestState.WAITING:
                self._attach(guest, message, fds)
                continue
            close_all(fds)
            if op == "report" and isinstance(message.get("data"), dict):
                guest.report = message["data"]
            elif op == "bye":
                self._reclaim(guest, "left")
                return
            else:
                guest.counters.refused["bad_message"] += 1

    def _attach(self, guest: Guest, message: dict[str, Any], fds: list[int]) -> None:
        try:
            reply = self._admit(guest, message, fds)
        except (GeometryError, UnsafeMemory, ValueError, DeviceError) as exc:
            guest.unmap()
            with contextlib.suppress(OSError):
                send_message(guest.sock, {"ok": False, "error": str(exc)})
            self.counters["attach_refused"] += 1
            guest.gone_reason = f"refused: {exc}"
            guest.state = GuestState.GONE
            return
        finally:
            close_all(fds)  # the window was handed on (or mapped) by now
        with contextlib.suppress(OSError):
            send_message(guest.sock, reply)

    def _admit(self, guest: Guest, message: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        if len(fds) != 4:
            raise ValueError("attach needs a window, rings, a kick and an interrupt descriptor")
        window_fd, rings_fd, kick, irq = fds
        geometry = WindowGeometry.from_dict(message.get("geometry"))
        quota = guest.config.quota
        entries = message.get("ring_entries")
        if not isinstance(entries, int) or entries < 8 or entries & (entries - 1):
            raise ValueError("ring_entries must be a power of two, at least 8")
        if entries > quota.ring_entries:
            raise ValueError(
                f"rings of {entries} entries are over the quota of {quota.ring_entries}"
            )
        posted = sum(g.config.quota.rx_buffers for g in self._by_pool.values())
        flying = sum(g.config.quota.tx_in_flight for g in self._by_pool.values())
        capacity = self.uplink.capacity
        if posted + quota.rx_buffers > capacity or flying + quota.tx_in_flight > capacity:
            raise ValueError("the switch is full: its queues cannot take this guest's quota")
        layout = guest_rings(entries)
        guest._rings_map = map_sealed(rings_fd, layout.total_bytes)
        guest._rings_fd = os.dup(rings_fd)
        guest.kick, guest.irq = os.dup(kick), os.dup(irq)
        guest.rings = layout.queues(memoryview(guest._rings_map))
        pool = guest.reserved_pool
        # The NIC side gets the window; this process maps it only when it is the NIC side.
        self.uplink.attach(pool, window_fd, geometry, guest.config.vlans)
        guest.pool = pool
        guest.geometry = geometry
        guest.table = BufferTable(geometry.rx_buffers, geometry.tx_buffers, quota)
        guest.state = GuestState.ATTACHED
        self._by_pool[pool] = guest
        self.demux.add_port(pool, guest.config.vlans)
        if self.config.static_guest_macs:
            for vlan in guest.config.vlans.members:
                self.demux.add_static(vlan, guest.mac, pool)
        self._push_table()
        self.counters["attached"] += 1
        return {
            "ok": True,
            "pool": pool,
            "mac": str(guest.mac),
            "mtu": self.config.mtu,
            "vlans": str(guest.config.vlans),
            "quota": quota.as_dict(),
        }

    def _reclaim(self, guest: Guest, reason: str) -> None:
        """Take everything back from ``guest``: NIC side, MAC table, rings, process."""
        if guest.state is GuestState.GONE:
            return
        pool = guest.pool
        if pool is not None and guest.state is GuestState.ATTACHED:
            with contextlib.suppress(DeviceError):
                guest.nic_final = self.uplink.detach(pool)
            self._by_pool.pop(pool, None)
            self.demux.remove_port(pool)
            if guest.table is not None:
                guest.final_buffers = guest.table.counts()
            self._push_table()
        guest.state = GuestState.GONE
        guest.gone_reason = reason
        guest.unmap()
        self._last_words(guest)
        guest.sock.close()
        if guest.pidfd is not None:
            os.close(guest.pidfd)
            guest.pidfd = None
        proc = guest.proc
        if proc is not None and proc.poll() is None and reason != "left":
            proc.kill()
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_STOP_TIMEOUT_S)
        self.counters["reclaimed"] += 1

    def _last_words(self, guest: Guest) -> None:
        """Reports a guest sent before it went (its socket may still hold them)."""
        for _ in range(64):
            try:
                got = recv_message(guest.sock)
            except (OSError, ProtocolError):
                return
            if got is None:
                return
            message, fds = got
            close_all(fds)
            if message.get("op") == "report" and isinstance(message.get("data"), dict):
                guest.report = message["data"]

    def _reap(self) -> None:
        """Reclaim every guest whose process has exited (one poll of their pidfds)."""
        fds = {g.pidfd: g for g in self.guests.values() if g.pidfd is not None}
        if not fds:
            return
        for fd in poll_fds(list(fds), 0.0):
            guest = fds[fd]
            code = guest.proc.poll() if guest.proc is not None else None
            self._reclaim(guest, "exited" if code is None else f"exited with {describe_exit(code)}")

    def guest(self, name: str) -> Guest:
        return self.guests[name]

    def stop_guests(self, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        """Ask every guest process to stop (SIGTERM), keep switching until each has left
        (its last report in), then kill what is left."""
        for guest in self.guests.values():
            if guest.proc is not None and guest.proc.poll() is None:
                guest.stopping = True
                guest.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while any(g.state is not GuestState.GONE for g in self.guests.values()):
            if time.monotonic() > deadline:
                break
            self.step(0.05)
        for guest in self.guests.values():
            self._reclaim(guest, "stopped")

    # -- the loop ---------------------------------------------------------------------
    def watch(self, fd: int, on_ready: Callable[[], object]) -> None:
        """Call ``on_ready`` when ``fd`` is readable (a control socket)."""
        self._extra[fd] = on_ready

    def step(self, max_wait_s: float = MAX_WAIT_S) -> bool:
        """One turn, then the guests' sockets and watched descriptors; waits (at most
        ``max_wait_s``) only when the turn had nothing to do."""
        if self._closed:
            raise DeviceError(f"{self.name} is closed")
        moved = self._turn()
        self._wait(0.0 if moved else max_wait_s)
        return moved

    def run_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Step until ``done()``; False when ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() >= deadline:
                return False
            self.step(min(MAX_WAIT_S, max(deadline - time.monotonic(), 0.0)))
        return True

    def _turn(self) -> bool:
        self._reap()
        moved = self.uplink.service()
        moved |= self._deliver()
        moved |= self._complete()
        moved |= self._from_guests()
        self._push_table()
        if self._nic_work:
            self._nic_work = False
            self.uplink.kick()
            moved |= self.uplink.service()
        self._watch_stalls()
        return moved

    def _wait(self, timeout_s: float) -> None:
        """Sleep in poll(2) until the NIC side, a guest or a watched descriptor has work."""
        fds: list[int] = list(self.uplink.filenos())
        sockets: dict[int, Guest] = {}
        kicks: set[int] = set()
        for guest in self.guests.values():
            if guest.state is GuestState.GONE:
                continue
            sockets[guest.sock.fileno()] = guest
            if guest.kick is not None:
                kicks.add(guest.kick)
            if guest.pidfd is not None:
                fds.append(guest.pidfd)  # _reap, next turn
        for fd in poll_fds([*fds, *kicks, *sockets, *self._extra], timeout_s):
            if fd in kicks:
                drain_eventfd(fd)
            elif fd in sockets:
                self._on_message(sockets[fd])
            elif fd in self._extra:
                self._extra[fd]()

    # -- NIC side -> guests -----------------------------------------------------------
    def _deliver(self) -> bool:
        rows = self._rx.take(_BATCH)
        if not len(rows):
            return False
        self._reap()  # a guest that died is reclaimed before anything more reaches it
        for pool, idx in _by_pool(rows):
            guest = self._by_pool.get(pool)
            part = rows[idx]
            if guest is None or guest.table is None:
                self.counters["drop_guest_gone"] += len(part)
                continue
            ok = guest.table.fill(part["buffer"].astype(np.int64), part["gen"].astype(np.int64))
            if not ok.all():
                self.counters["nic_stale"] += int((~ok).sum())  # never from a sound NIC side
                part = part[ok]
            self._to_guest_rx(guest, part)
        return True

    def _to_guest_rx(self, guest: Guest, part: Descs) -> None:
        ring = guest.rings.get("rx")
        table = guest.table
        assert table is not None
        room = 0 if ring is None else ring.space()
        if room < len(part):
            # The guest's ring is full (it reads too slowly): the frames are lost, the
            # buffers go straight back to the NIC side.
            lost = part[room:]
            part = part[:room]
            guest.counters.drops["ring_full"] += len(lost)
            gens = table.unfill(lost["buffer"].astype(np.int64))
            refill = descs(len(lost))
            refill["pool"] = lost["pool"]
            refill["buffer"] = lost["buffer"]
            refill["gen"] = gens
            self._fill.put(refill)
            self._nic_work = True
        if not len(part) or ring is None:
            return
        out = part.copy()
        out["pool"] = 0
        ring.put(out)
        guest.counters.rx_packets += len(part)
        guest.counters.rx_bytes += int(part["length"].sum())
        if guest.irq is not None:
            ring_eventfd(guest.irq)

    def _complete(self) -> bool:
        rows = self._done.take(_BATCH)
        if not len(rows):
            return False
        self._reap()
        now = self.clock()
        for pool, idx in _by_pool(rows):
            guest = self._by_pool.get(pool)
            if guest is None or guest.table is None:
                continue
            part = rows[idx]
            learned = part[(part["flags"] & DONE_LEARNED) != 0]
            limit = guest.config.quota.macs
            for vlan, key in zip(learned["vlan"].tolist(), learned["mac"].tolist(), strict=True):
                self.demux.learn(vlan, mac_of_key(key), pool, now, limit=limit)
            ok = guest.table.complete(part["buffer"].astype(np.int64), part["gen"].astype(np.int64))
            part = part[ok]
            sent = part[part["status"] == Status.OK]
            guest.counters.tx_packets += len(sent)
            guest.counters.tx_bytes += int(sent["length"].sum())
            dropped = len(part) - len(sent)
            if dropped:
                guest.counters.drops["tx_dropped"] += dropped
            out = part.copy()
            out["flags"] = DONE_TX
            self._to_guest_done(guest, out)
        return True

    def _to_guest_done(self, guest: Guest, rows: Descs, *, refusals: bool = False) -> None:
        """Put ``rows`` on the guest's done ring. Buffers given back wait for room (there
        are no more of them than the guest has buffers); refusals that find no room are
        only counted (a guest that floods bad descriptors is not owed an answer to each)."""
        ring = guest.rings.get("done")
        if ring is None or not len(rows):
            return
        if refusals:
            room = ring.space() if not guest.pending_done else 0
            if room < len(rows):
                guest.counters.drops["refusals_unreported"] += len(rows) - room
                rows = rows[:room]
            if len(rows):
                ring.put(rows)
        else:
            guest.pending_done.append(rows)
            self._flush_done(guest)
            return
        if guest.irq is not None:
            ring_eventfd(guest.irq)

    def _flush_done(self, guest: Guest) -> None:
        ring = guest.rings.get("done")
        pending = guest.pending_done
        if ring is None or not pending:
            return
        moved = False
        while pending:
            room = ring.space()
            if not room:
                break
            rows = pending[0]
            ring.put(rows[:room])
            moved = True
            if room >= len(rows):
                pending.popleft()
            else:
                pending[0] = rows[room:]
        if moved and guest.irq is not None:
            ring_eventfd(guest.irq)

    # -- guests -> NIC side -----------------------------------------------------------
    def _from_guests(self) -> bool:
        moved = False
        for guest in list(self._by_pool.values()):
            self._flush_done(guest)
            moved |= self._take_posts(guest)
            moved |= self._take_sends(guest)
            if any(q.broken for q in guest.rings.values()):
                self._reclaim(guest, "broke its rings")
        return moved

    def _take_posts(self, guest: Guest) -> bool:
        ring, table = guest.rings["post"], guest.table
        assert table is not None and guest.pool is not None
        rows = ring.take(min(_BATCH, self._fill.space()))
        if not len(rows):
            return False
        checked = table.post(rows["buffer"].astype(np.int64), rows["gen"].astype(np.int64))
        good = rows[checked.ok]
        if len(good):
            out = descs(len(good))
            out["pool"] = guest.pool
            out["buffer"] = good["buffer"]
            out["gen"] = checked.gens[checked.ok]
            self._fill.put(out)
            self._nic_work = True
        if not checked.ok.all():
            self._refuse(guest, rows, checked.ok, checked.status, flag=DONE_POST, table=table)
        return True

    def _take_sends(self, guest: Guest) -> bool:
        ring, table, geometry = guest.rings["tx"], guest.table, guest.geometry
        assert table is not None and geometry is not None and guest.pool is not None
        rows = ring.take(min(_BATCH, self._tx.space()))
        if not len(rows):
            return False
        offsets = rows["offset"].astype(np.int64)
        lengths = rows["length"].astype(np.int64)
        framed = (lengths >= 14) & (offsets + lengths <= geometry.buffer_bytes)
        checked = table.transmit(
            np.where(framed, rows["buffer"].astype(np.int64), -1), rows["gen"].astype(np.int64)
        )
        status = checked.status
        status[~framed] = Status.OUT_OF_RANGE
        good = rows[checked.ok]
        if len(good):
            out = good.copy()
            out["pool"] = guest.pool
            out["gen"] = checked.gens[checked.ok]
            out["status"] = 0
            out["flags"] = 0
            self._tx.put(out)
            self._nic_work = True
        if not checked.ok.all():
            self._refuse(guest, rows, checked.ok, status, flag=DONE_TX, table=table)
        return True

    def _refuse(
        self, guest: Guest, rows: Descs, ok: Any, status: Any, *, flag: int, table: BufferTable
    ) -> None:
        bad = rows[~ok].copy()
        reasons = status[~ok]
        bad["status"] = reasons
        bad["flags"] = flag
        inside = bad["buffer"] < table.buffers
        # Where the buffer exists, say its generation now: a confused guest can resync.
        bad["gen"][inside] = table.gen[bad["buffer"][inside].astype(np.int64)]
        for reason in reasons.tolist():
            guest.counters.refused[Status(reason).name.lower()] += 1
        self._to_guest_done(guest, bad, refusals=True)

    # -- the MAC table --------------------------------------------------------------------
    def _push_table(self) -> None:
        now = self.clock()
        if now - self._aged_ns >= _AGE_EVERY_NS:
            self._aged_ns = now
            self.demux.age(now)
        if self.demux.version != self._pushed:
            self.uplink.set_table(self.demux.table())
            self._pushed = self.demux.version

    def _watch_stalls(self) -> None:
        now = time.monotonic()
        timeout = self.config.stall_timeout_s
        for guest in list(self._by_pool.values()):
            table = guest.table
            if table is None:
                continue
            if table.posted == 0 and table.held > 0:
                if guest.stalled_since is None:
                    guest.stalled_since = now
                    self.counters["stalls"] += 1
                elif timeout is not None and now - guest.stalled_since > timeout:
                    self._reclaim(guest, "stalled: held every buffer")
            else:
                guest.stalled_since = None

    # -- counters -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Everything ``netoffload vswitch stats`` shows (JSON)."""
        uplink = self.uplink.stats()
        nic = uplink.get("nic", {})
        pools = nic.get("pools", {})
        guests = [self._guest_stats(g, pools) for g in self.guests.values()]
        copied = int(nic.get("unicast_rx_copied_bytes", 0))
        return {
            "name": self.name,
            "uplink": {
                "name": self.uplink.name,
                "kind": self.uplink.kind,
                "maps_guest_windows": self.uplink.maps_windows,
                **uplink,
            },
            "guests": guests,
            "switch": dict(sorted(self.counters.items())),
            "switching": nic.get("switching", {}),
            "mac_table": self.demux.entries(),
            "learning": dict(sorted(self.demux.counters.items())),
            "flood_unknown": self.demux.flood_unknown,
            "payload_bytes_copied_unicast_rx": copied,
        }

    def _guest_stats(self, guest: Guest, pools: dict[str, Any]) -> dict[str, Any]:
        c = guest.counters
        nic = guest.nic_final if guest.pool is None or str(guest.pool) not in pools else None
        if nic is None and guest.pool is not None:
            nic = pools.get(str(guest.pool))
        nic = nic or {}
        drops = collections.Counter(c.drops)
        drops.update(nic.get("drops", {}))
        buffers = guest.table.counts() if guest.table is not None else guest.final_buffers
        if guest.state is GuestState.GONE and guest.final_buffers is not None:
            buffers = guest.final_buffers
        return {
            "name": guest.name,
            "pid": guest.pid,
            "pool": guest.pool,
            "state": guest.state.value,
            "gone": guest.gone_reason,
            "stalled": guest.stalled_since is not None,
            "mac": str(guest.mac),
            "vlans": str(guest.config.vlans),
            "rx_packets": c.rx_packets,
            "rx_bytes": c.rx_bytes,
            "tx_packets": c.tx_packets,
            "tx_bytes": c.tx_bytes,
            "buffers": buffers or {},
            "copies": nic.get("copies", {}),
            "copied_bytes": nic.get("copied_bytes", {}),
            "drops": dict(sorted(drops.items())),
            "refused": dict(sorted(c.refused.items())),
            "report": guest.report,
        }

    # -- lifetime -----------------------------------------------------------------------
    def close(self) -> None:
        """Stop every guest, then the uplink. Idempotent."""
        if self._closed:
            return
        try:
            self.stop_guests(timeout_s=1.0)
        finally:
            self._closed = True
            self.uplink.close()

    def __enter__(self) -> VSwitch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _by_pool(rows: Descs) -> list[tuple[int, Any]]:
    """Row indices grouped by pool, in first-seen order of pools and row order within."""
    pools = rows["pool"]
    if len(pools) and (pools == pools[0]).all():
        return [(int(pools[0]), slice(None))]
    out: dict[int, list[int]] = {}
    for i, pool in enumerate(pools.tolist()):
        out.setdefault(pool, []).append(i)
    return [(pool, np.array(idx)) for pool, idx in out.items()]
