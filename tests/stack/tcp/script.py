"""A hand-driven peer: build exactly the segments a test needs and read what comes back."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from netoffload.stack.tcp import (
    IsnSource,
    TcpConfig,
    TcpConnection,
    TcpEvent,
    TcpListener,
    TcpSegmentIn,
    TcpSegmentOut,
    TcpState,
)
from netoffload.wire.tcp import (
    TcpMss,
    TcpNoOperation,
    TcpSackPermitted,
    TcpTimestamps,
    TcpWindowScale,
    options_bytes,
    parse_options,
)

from .harness import ACK, CLIENT, MS, SERVER, SYN

M32 = 0xFFFFFFFF


def ts_option(tsval: int, tsecr: int) -> bytes:
    """NOP, NOP, timestamps, built with the wire layer."""
    return options_bytes((TcpNoOperation(), TcpNoOperation(), TcpTimestamps(tsval, tsecr)))


def timestamps_of(seg: TcpSegmentOut) -> TcpTimestamps | None:
    for opt in parse_options(seg.options):
        if isinstance(opt, TcpTimestamps):
            return opt
    return None


def sack_of(seg: TcpSegmentOut) -> tuple[tuple[int, int], ...]:
    from netoffload.wire.tcp import TcpSack

    for opt in parse_options(seg.options):
        if isinstance(opt, TcpSack):
            return opt.blocks
    return ()


@dataclass
class Peer:
    """The far end, one segment at a time. Sequence numbers here are 32-bit wire values."""

    conn: TcpConnection | None = None
    now: int = 1_000_000 * MS
    iss: int = 0xFFFFF000  # close to the wrap, on purpose
    timestamps: bool = True
    sack: bool = True
    wscale: int | None = 7
    mss: int = 1460
    window: int = 0xFFFF
    tsval: int = 5000
    seq: int = 0
    rcv_nxt: int = 0
    ts_recent: int = 0
    sent_out: list[TcpSegmentOut] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seq = self.iss

    def tick(self, ns: int) -> None:
        self.now += ns
        self.tsval = (self.tsval + max(1, ns // MS)) & M32

    def syn_options(self) -> bytes:
        opts: list[object] = [TcpMss(self.mss)]
        if self.sack:
            opts.append(TcpSackPermitted())
        if self.timestamps:
            opts += [TcpTimestamps(self.tsval, self.ts_recent)]
        if self.wscale is not None:
            opts += [TcpNoOperation(), TcpWindowScale(self.wscale)]
        return options_bytes(tuple(opts))  # type: ignore[arg-type]

    def options(self) -> bytes:
        return ts_option(self.tsval, self.ts_recent) if self.timestamps else b""

    def segment(
        self,
        flags: int,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
        window: int | None = None,
        options: bytes | None = None,
        segments: int = 1,
        ce: bool = False,
    ) -> TcpSegmentIn:
        return TcpSegmentIn(
            (self.seq if seq is None else seq) & M32,
            (self.rcv_nxt if ack is None else ack) & M32,
            flags,
            self.window if window is None else window,
            self.options() if options is None else options,
            memoryview(payload),
            segments,
            ce,
        )

    def send(self, seg: TcpSegmentIn, *, advance: bool = True) -> None:
        assert self.conn is not None
        self.conn.on_segment(seg, self.now)
        if advance:
            length = len(seg.payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & 1 else 0)
            if ((seg.seq + length - self.seq) & M32) < 0x80000000:
                self.seq = (seg.seq + length) & M32

    def take(self, max_payload: int = 65483) -> list[TcpSegmentOut]:
        """What the connection sends now; remembers its TSval and what it acknowledged."""
        assert self.conn is not None
        out = self.conn.poll_transmit(self.now, max_payload_bytes=max_payload)
        for seg in out:
            ts = timestamps_of(seg)
            if ts is not None:
                self.ts_recent = ts.tsval
            end = (seg.seq + len(seg.payload) + (1 if seg.flags & (SYN | 1) else 0)) & M32
            if seg.flags & SYN or ((end - self.rcv_nxt) & M32) < 0x80000000:
                self.rcv_nxt = end
        self.sent_out.extend(out)
        return out

    def fire_timers(self) -> None:
        assert self.conn is not None
        t = self.conn.next_timer_ns()
        assert t is not None
        if t > self.now:
            self.tick(t - self.now)
        self.conn.on_timer(self.now)


def client_config(**kw: object) -> TcpConfig:
    return TcpConfig(**kw)  # type: ignore[arg-type]


def open_active(peer: Peer, config: TcpConfig | None = None) -> TcpConnection:
    """Our connection in SYN-SENT, its SYN taken."""
    conn = TcpConnection.connect(
        CLIENT,
        SERVER,
        config=config or TcpConfig(),
        now_ns=peer.now,
        isn_source=IsnSource(random.Random(11)),
        rng=random.Random(12),
    )
    peer.conn = conn
    (syn,) = peer.take()
    assert syn.flags & SYN and not syn.flags & ACK
    peer.rcv_nxt = (syn.seq + 1) & M32
    return conn


def establish_active(peer: Peer, config: TcpConfig | None = None) -> TcpConnection:
    """Our connection ESTABLISHED by an active open against the scripted peer."""
    conn = open_active(peer, config)
    peer.tick(MS)
    peer.send(peer.segment(SYN | ACK, options=peer.syn_options()))
    out = peer.take()
    assert out and out[-1].flags == ACK, out
    assert conn.state is TcpState.ESTABLISHED
    return conn


def new_listener(backlog: int = 8, config: TcpConfig | None = None) -> TcpListener:
    """A listener on SERVER with seeded randomness."""
    return TcpListener(
        SERVER,
        backlog=backlog,
        config=config or TcpConfig(),
        isn_source=IsnSource(random.Random(13)),
        rng=random.Random(14),
    )


def drain(conn: TcpConnection) -> list[TcpEvent]:
    """Every event the connection has queued, oldest first."""
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def establish_passive(
    peer: Peer, config: TcpConfig | None = None, backlog: int = 8
) -> tuple[TcpListener, TcpConnection]:
    """A listener, our SYN to it, its SYN,ACK, our ACK: the child ESTABLISHED and accepted."""
    listener = new_listener(backlog, config)
    child = listener.on_segment(CLIENT, peer.segment(SYN, options=peer.syn_options()), peer.now)
    assert isinstance(child, TcpConnection)
    peer.conn = child
    peer.seq = (peer.seq + 1) & M32
    (synack,) = peer.take()
    assert synack.flags == SYN | ACK
    peer.tick(MS)
    peer.send(peer.segment(ACK))
    assert child.state is TcpState.ESTABLISHED
    assert listener.accept() is child
    return listener, child


def unpack_ts(options: bytes) -> tuple[int, int]:
    return struct.unpack_from("!II", options, 4)
