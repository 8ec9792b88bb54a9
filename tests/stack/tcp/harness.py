"""Two TCP cores joined by a simulated path, with a clock that only moves when told.

``Host`` plays the part of the stack's ``Interface``: a 4-tuple table (here keyed by
the remote endpoint), an optional listener, RSTs for segments nobody owns, and the
removal of a connection after its ``Closed`` event. ``Path`` plays the wire and the
devices: it cuts each super-packet into MSS segments the way Linux GSO does (FIN and
PSH on the last piece, CWR on the first), copies the payload (the sender's buffer
is not the wire), applies seeded loss, duplication, reordering and CE marks, and
optionally merges what arrives together back into GRO super-packets.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from netoffload.stack.tcp import (
    Closed,
    IsnSource,
    TcpConfig,
    TcpConnection,
    TcpEvent,
    TcpListener,
    TcpSegmentIn,
    TcpSegmentOut,
    TcpState,
    reset_for,
)
from netoffload.wire.tcp import TcpFlags

MS = 1_000_000
S = 1_000_000_000
CLIENT = (IPv4Address("198.18.0.1"), 40000)
SERVER = (IPv4Address("198.18.0.2"), 80)
#: IPv4 + TCP headers without options, for set_path_mtu.
HEADERS = 40
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = (
    int(f)
    for f in (
        TcpFlags.FIN,
        TcpFlags.SYN,
        TcpFlags.RST,
        TcpFlags.PSH,
        TcpFlags.ACK,
        TcpFlags.URG,
        TcpFlags.ECE,
        TcpFlags.CWR,
    )
)


@dataclass
class Wire:
    """One segment on the wire (after GSO), as the receiving device sees it."""

    seq: int
    ack: int
    flags: int
    window: int
    options: bytes
    payload: bytes
    ect: bool
    ce: bool = False
    retransmission: bool = False

    def to_in(self, segments: int = 1) -> TcpSegmentIn:
        return TcpSegmentIn(
            self.seq,
            self.ack,
            self.flags,
            self.window,
            self.options,
            memoryview(self.payload),
            segments,
            self.ce,
        )


def cut(seg: TcpSegmentOut) -> list[Wire]:
    """Linux GSO on one super-packet: MSS pieces, FIN/PSH last, CWR first."""
    payload = bytes(seg.payload)
    assert len(seg.options) % 4 == 0 and len(seg.options) <= 40
    assert 0 <= seg.window <= 0xFFFF and 0 <= seg.seq <= 0xFFFFFFFF
    if len(payload) <= seg.mss:
        return [
            Wire(
                seg.seq,
                seg.ack,
                seg.flags,
                seg.window,
                seg.options,
                payload,
                seg.ect,
                retransmission=seg.retransmission,
            )
        ]
    pieces = []
    n = -(-len(payload) // seg.mss)
    for i in range(n):
        flags = seg.flags
        if i < n - 1:
            flags &= ~(FIN | PSH)
        if i > 0:
            flags &= ~CWR
        chunk = payload[i * seg.mss : (i + 1) * seg.mss]
        pieces.append(
            Wire(
                (seg.seq + i * seg.mss) & 0xFFFFFFFF,
                seg.ack,
                flags,
                seg.window,
                seg.options,
                chunk,
                seg.ect,
                retransmission=seg.retransmission,
            )
        )
    return pieces


def gro(pieces: list[Wire]) -> list[tuple[Wire, int]]:
    """Merge in-order pieces that arrive together, by Linux's rules (roughly)."""
    out: list[tuple[Wire, int]] = []
    for w in pieces:
        if out:
            head, count = out[-1]
            mergeable = (
                head.payload
                and w.payload
                and head.flags & (FIN | SYN | RST | URG | PSH) == 0
                and head.flags & ~PSH & ~FIN == w.flags & ~PSH & ~FIN
                and head.ack == w.ack
                and head.window == w.window
                and head.options == w.options
                and head.ce == w.ce
                and (head.seq + len(head.payload)) & 0xFFFFFFFF == w.seq
                and len(w.payload) <= len(head.payload) // count
            )
            if mergeable:
                merged = Wire(
                    head.seq,
                    head.ack,
                    head.flags | w.flags,
                    head.window,
                    head.options,
                    head.payload + w.payload,
                    head.ect,
                    head.ce,
                )
                out[-1] = (merged, count + 1)
                continue
        out.append((w, 1))
    return out


@dataclass
class Impairment:
    """Seeded per-segment faults of one direction."""

    loss: float = 0.0
    #: A corrupted segment fails its checksum at the receiving device: a drop there.
    corrupt: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    reorder_ns: int = 3 * MS
    ce: float = 0.0
    #: Largest IP packet the path carries; bigger ones are dropped (and answered by ICMP).
    mtu: int | None = None
    #: Drop pieces for which this returns True (scripted loss), before the random faults.
    drop: Callable[[Wire], bool] | None = None


@dataclass
class Host:
    """A stack's view: connections by remote endpoint, an optional listener."""

    name: str
    address: tuple[IPv4Address, int]
    conns: dict[tuple[IPv4Address, int], TcpConnection] = field(default_factory=dict)
    listener: TcpListener | None = None
    events: list[tuple[TcpConnection, TcpEvent]] = field(default_factory=list)
    received: dict[int, bytearray] = field(default_factory=dict)
    auto_read: bool = True
    accepted: list[TcpConnection] = field(default_factory=list)
    stateless: list[TcpSegmentOut] = field(default_factory=list)


class Net:
    """Two hosts, a path with a one-way delay, and the simulated clock."""

    def __init__(
        self,
        *,
        seed: int = 0,
        delay_ns: int = 5 * MS,
        forward: Impairment | None = None,
        backward: Impairment | None = None,
        gro: bool = False,
        max_payload: int = 65483,
        start_ns: int = 1_000 * S,
    ) -> None:
        self.rng = random.Random(seed)
        self.now = start_ns
        self.delay_ns = delay_ns
        self.imp = {"client": forward or Impairment(), "server": backward or Impairment()}
        self.gro = gro
        self.max_payload = max_payload
        self.client = Host("client", CLIENT)
        self.server = Host("server", SERVER)
        self._queue: list[tuple[int, int, str, Wire]] = []
        self._order = 0
        self.isn = IsnSource(random.Random(seed + 1))
        self.sent: list[tuple[str, Wire]] = []
        self.corrupted = 0
        self.delivered: list[tuple[str, TcpSegmentIn]] = []
        self.on_poll: list[Callable[[], None]] = []
        #: Called with (host, segment) for every segment a connection emits.
        self.on_transmit: list[Callable[[Host, TcpSegmentOut], None]] = []

    # -- set-up ------------------------------------------------------------------------

    def listen(self, config: TcpConfig, backlog: int = 16) -> TcpListener:
        self.server.listener = TcpListener(
            SERVER,
            backlog=backlog,
            config=config,
            isn_source=self.isn,
            rng=random.Random(7),
        )
        return self.server.listener

    def connect(self, config: TcpConfig) -> TcpConnection:
        conn = TcpConnection.connect(
            CLIENT,
            SERVER,
            config=config,
            now_ns=self.now,
            isn_source=self.isn,
            rng=random.Random(3),
        )
        self.client.conns[SERVER] = conn
        return conn

    def connect_from(self, host: Host, config: TcpConfig) -> TcpConnection:
        """An active open from either host (both at once make a simultaneous open)."""
        peer = self.other(host)
        conn = TcpConnection.connect(
            host.address,
            peer.address,
            config=config,
            now_ns=self.now,
            isn_source=self.isn,
            rng=random.Random(5),
        )
        host.conns[peer.address] = conn
        return conn

    def other(self, host: Host) -> Host:
        return self.server if host is self.client else self.client

    # -- moving segments ---------------------------------------------------------------

    def transmit(self, host: Host, seg: TcpSegmentOut) -> None:
        imp = self.imp[host.name]
        dest = self.other(host).name
        for w in cut(seg):
            self.sent.append((host.name, w))
            if imp.mtu is not None and len(w.payload) + len(w.options) + HEADERS > imp.mtu:
                conn = host.conns.get(self.other(host).address)
                if conn is not None:
                    conn.set_path_mtu(imp.mtu, HEADERS)
                continue
            if imp.drop is not None and imp.drop(w):
                continue
            if imp.loss and self.rng.random() < imp.loss:
                continue
            if imp.corrupt and self.rng.random() < imp.corrupt:
                self.corrupted += 1
                continue
            if imp.ce and w.ect and self.rng.random() < imp.ce:
                w.ce = True
            copies = 2 if imp.dup and self.rng.random() < imp.dup else 1
            for _ in range(copies):
                at = self.now + self.delay_ns
                if imp.reorder and self.rng.random() < imp.reorder:
                    at += self.rng.randrange(1, imp.reorder_ns)
                self._order += 1
                heapq.heappush(self._queue, (at, self._order, dest, w))

    def flush(self) -> None:
        for hook in self.on_poll:
            hook()
        for host in (self.client, self.server):
            for seg in host.stateless:
                self.transmit(host, seg)
            host.stateless.clear()
            for conn in list(host.conns.values()):
                self._drain_events(host, conn)
                if conn.has_output():
                    for seg in conn.poll_transmit(self.now, max_payload_bytes=self.max_payload):
                        for hook in self.on_transmit:
                            hook(host, seg)
                        self.transmit(host, seg)
                self._drain_events(host, conn)

    def _drain_events(self, host: Host, conn: TcpConnection) -> None:
        while (event := conn.next_event()) is not None:
            host.events.append((conn, event))
            if isinstance(event, Closed) and host.conns.get(conn.remote) is conn:
                del host.conns[conn.remote]
        if host.auto_read:
            sink = host.received.setdefault(id(conn), bytearray())
            while conn.readable():
                sink += conn.recv(1 << 20)
        if host.listener is not None and host.listener.state is TcpState.LISTEN:
            while (child := host.listener.accept()) is not None:
                host.accepted.append(child)

    def deliver(self, name: str, segs: list[TcpSegmentIn]) -> None:
        host = self.client if name == "client" else self.server
        remote = self.other(host).address
        for seg in segs:
            self.delivered.append((name, seg))
            conn = host.conns.get(remote)
            if conn is not None:
                conn.on_segment(seg, self.now)
                if conn.state is TcpState.CLOSED and seg.flags & SYN and not seg.flags & ACK:
                    # TIME-WAIT gave way to a new incarnation: the listener takes the SYN.
                    self._drain_events(host, conn)
                    conn = None
                else:
                    continue
            if host.listener is not None:
                result = host.listener.on_segment(remote, seg, self.now)
                if isinstance(result, TcpConnection):
                    host.conns[remote] = result
                elif result is not None:
                    host.stateless.append(result)
            else:
                reply = reset_for(seg)
                if reply is not None:
                    host.stateless.append(reply)

    def next_time(self) -> int | None:
        best = self._queue[0][0] if self._queue else None
        for host in (self.client, self.server):
            for conn in host.conns.values():
                t = conn.next_timer_ns()
                if t is not None and (best is None or t < best):
                    best = t
        return best

    def step(self) -> bool:
        """Advance to the next delivery or timer; False when nothing is left."""
        self.flush()
        t = self.next_time()
        if t is None:
            return False
        self.now = max(self.now, t)
        due: dict[str, list[Wire]] = {"client": [], "server": []}
        while self._queue and self._queue[0][0] <= self.now:
            _, _, dest, w = heapq.heappop(self._queue)
            due[dest].append(w)
        for name, wires in due.items():
            if not wires:
                continue
            if self.gro:
                self.deliver(name, [w.to_in(n) for w, n in gro(wires)])
            else:
                self.deliver(name, [w.to_in() for w in wires])
        for host in (self.client, self.server):
            for conn in list(host.conns.values()):
                t = conn.next_timer_ns()
                if t is not None and t <= self.now:
                    conn.on_timer(self.now)
        self.flush()
        return True

    def run(
        self,
        until: Callable[[], bool] | None = None,
        *,
        max_ns: int = 600 * S,
        max_steps: int = 10**7,
    ) -> bool:
        """Step until ``until()`` holds (True) or time/steps run out or nothing is left (False)."""
        deadline = self.now + max_ns
        for _ in range(max_steps):
            if until is not None and until():
                return True
            t = self.next_time()
            if t is None or t > deadline:
                self.flush()
                if until is not None and until():
                    return True
                if self.next_time() is None or (self.next_time() or 0) > deadline:
                    return False
            self.step()
        return until() if until is not None else False

    def events_of(self, host: Host, kind: type | None = None) -> list[TcpEvent]:
        return [e for _, e in host.events if kind is None or isinstance(e, kind)]

    def data(self, host: Host) -> bytes:
        return b"".join(bytes(v) for v in host.received.values())


def transfer(
    net: Net,
    client: TcpConnection,
    server: TcpConnection,
    up: bytes,
    down: bytes = b"",
    *,
    shutdown: bool = True,
    max_ns: int = 3600 * S,
) -> None:
    """Send ``up`` from client to server and ``down`` back, as fast as the buffers take it,
    then shut both write sides; run until everything arrived and assert it byte for byte."""
    pos = {"up": 0, "down": 0}
    up_view, down_view = memoryview(up), memoryview(down)

    def pump() -> None:
        for key, conn, view in (("up", client, up_view), ("down", server, down_view)):
            if pos[key] < len(view) and conn.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
                pos[key] += conn.send(view[pos[key] : pos[key] + (1 << 20)])
                if pos[key] == len(view) and shutdown:
                    conn.shutdown_write()

    net.on_poll.insert(0, pump)
    try:
        done = net.run(
            lambda: len(net.data(net.server)) >= len(up) and len(net.data(net.client)) >= len(down),
            max_ns=max_ns,
        )
    finally:
        net.on_poll.remove(pump)
    assert done, (client.info(), server.info())
    assert net.data(net.server) == up
    assert net.data(net.client) == down


def established_pair(
    config: TcpConfig | None = None,
    server_config: TcpConfig | None = None,
    **net_kwargs: object,
) -> tuple[Net, TcpConnection, TcpConnection]:
    """A listener, a connect, the handshake run: (net, client, server child)."""
    config = config or TcpConfig()
    net = Net(**net_kwargs)  # type: ignore[arg-type]
    net.listen(server_config or config)
    client = net.connect(config)
    assert net.run(lambda: client.state is TcpState.ESTABLISHED and bool(net.server.accepted))
    server = net.server.accepted[0]
    net.run(lambda: server.state is TcpState.ESTABLISHED)
    return net, client, server
