"""Passive opens: a listening endpoint with Linux ``listen()`` backlog semantics.

The listener answers what arrives for its port with no connection yet: a SYN
makes a child ``TcpConnection`` in SYN-RECEIVED (returned for the stack to put
in its 4-tuple table, with its SYN,ACK pending); a stray ACK gets a RST; a RST
is dropped.

How a child reports back: it keeps a reference to its listener until it is
accepted. When the ACK of its SYN,ACK arrives it asks the listener to move it
from the SYN queue to the accept queue; if the accept queue is full the
listener says no, the child drops that ACK and stays in SYN-RECEIVED,
retransmitting its SYN,ACK (Linux with ``tcp_abort_on_overflow=0``). A child
that dies in the SYN queue (RST, timeout) tells the listener, which forgets
it. ``accept()`` hands out established children oldest first, including any
that have since been closed by the peer, as Linux does.

Backlog as Linux: the SYN queue holds ``backlog`` half-open children, the
accept queue ``backlog + 1`` (``sk_acceptq_is_full`` is ``>``); a SYN is
dropped while the accept queue is full. ``backlog`` is capped at 4096
(``somaxconn``) and taken as at least 1.

SYN cookies (Linux ``tcp_syncookies=1``, ``engine.syncookie``): a SYN that
finds the SYN queue full, or that the device marked ``SYN_COOKIE`` (over its
destination's SYN rate), is answered with a SYN,ACK whose sequence number is
the cookie, and the listener keeps nothing. An ACK that matches no
connection is then checked as a cookie's answer (for two cookie periods after
the last cookie went out); a good one makes the child at once, ESTABLISHED,
with the MSS the cookie carried and no window scaling, SACK or timestamps
(the cookie's SYN,ACK offered none). A bad one earns a RST, as before.
"""

from __future__ import annotations

import errno
import random
from collections import Counter, deque
from typing import Final

from netoffload.engine.syncookie import MAX_AGE, PERIOD_NS, SynCookies
from netoffload.stack.tcp.config import TcpConfig
from netoffload.stack.tcp.connection import TcpConnection
from netoffload.stack.tcp.errors import TcpError
from netoffload.stack.tcp.isn import IsnSource
from netoffload.stack.tcp.options import ParsedOptions, encode_syn, parse_segment_options
from netoffload.stack.tcp.reset import reset_for
from netoffload.stack.tcp.segment import (
    ACK,
    EMPTY_PAYLOAD,
    FIN,
    RST,
    SYN,
    TcpSegmentIn,
    TcpSegmentOut,
)
from netoffload.stack.tcp.state import TcpState, Trigger, next_state
from netoffload.stack.tcp.tcb import Endpoint, TcpControlBlock

SOMAXCONN: Final = 4096


class TcpListener:
    """A port in LISTEN, its SYN queue and its accept queue."""

    __slots__ = (
        "_accept_queue",
        "_backlog",
        "_config",
        "_cookie_until_ns",
        "_cookies",
        "_isn_source",
        "_local",
        "_rng",
        "_state",
        "_stats",
        "_syn_queue",
    )

    def __init__(
        self,
        local: Endpoint,
        *,
        backlog: int,
        config: TcpConfig,
        isn_source: IsnSource,
        rng: random.Random,
        cookies: SynCookies | None = None,
    ) -> None:
        self._local = local
        self._cookies = cookies if cookies is not None else SynCookies(rng.randbytes(32))
        self._cookie_until_ns: int | None = None
        self._backlog = min(max(backlog, 1), SOMAXCONN)
        self._config = config
        self._isn_source = isn_source
        self._rng = rng
        self._syn_queue: dict[int, TcpConnection] = {}
        self._accept_queue: deque[TcpConnection] = deque()
        self._stats: Counter[str] = Counter()
        self._state = next_state(TcpState.CLOSED, Trigger.PASSIVE_OPEN)

    @property
    def local(self) -> Endpoint:
        """The (address, port) listened on."""
        return self._local

    @property
    def state(self) -> TcpState:
        """LISTEN, or CLOSED after ``close()``."""
        return self._state

    @property
    def backlog(self) -> int:
        """The backlog in force (after Linux's clamping)."""
        return self._backlog

    def syn_queue_len(self) -> int:
        """Children in SYN-RECEIVED."""
        return len(self._syn_queue)

    def accept_queue_len(self) -> int:
        """Established children waiting for ``accept``."""
        return len(self._accept_queue)

    def stats(self) -> dict[str, int]:
        """Counters: ``syns``, ``syn_queue_overflows``, ``listen_overflows``, drops, resets sent."""
        return dict(self._stats)

    def on_segment(
        self, remote: Endpoint, seg: TcpSegmentIn, now_ns: int, *, cookie: bool = False
    ) -> TcpConnection | TcpSegmentOut | None:
        """A segment from ``remote`` that matched no connection (RFC 9293 §3.10.7.2).

        ``cookie``: the device found the SYN over its SYN rate; answer with a cookie.
        """
        flags = seg.flags
        if self._state is not TcpState.LISTEN:
            return reset_for(seg)
        if flags & RST:
            self._stats["rst_dropped"] += 1
            return None
        if flags & ACK:
            if not flags & (SYN | FIN) and self._cookie_until_ns is not None:
                child = self._from_cookie(remote, seg, now_ns)
                if child is not None:
                    return child
            self._stats["resets_sent"] += 1
            return reset_for(seg)
        if not flags & SYN:
            self._stats["dropped"] += 1
            return None
        opts = parse_segment_options(seg.options)
        if opts is None:
            self._stats["bad_options"] += 1
            return None
        if len(self._accept_queue) > self._backlog:
            self._stats["listen_overflows"] += 1
            return None
        if cookie or len(self._syn_queue) >= self._backlog:
            if not cookie:
                self._stats["syn_queue_overflows"] += 1
            return self._cookie_syn_ack(remote, seg, opts, now_ns)
        self._stats["syns"] += 1
        local = self._local
        source = self._isn_source
        child = self._child(remote, source.isn(local, remote, now_ns), now_ns)
        child.accept_syn(seg, opts, now_ns)
        return child

    def _child(self, remote: Endpoint, iss: int, now_ns: int) -> TcpConnection:
        """A new child in the SYN queue, reporting back to this listener."""
        local = self._local
        child = TcpConnection(
            local,
            remote,
            self._config,
            iss=iss,
            ts_offset=self._isn_source.ts_offset(local, remote),
            rng=self._rng,
            now_ns=now_ns,
        )
        child._listener = self
        self._syn_queue[id(child)] = child
        return child

    # -- SYN cookies -------------------------------------------------------------------------

    def _cookie_syn_ack(
        self, remote: Endpoint, seg: TcpSegmentIn, opts: ParsedOptions, now_ns: int
    ) -> TcpSegmentOut:
        """The stateless SYN,ACK: its sequence number is the cookie; only an MSS option."""
        local = self._local
        peer_mss = opts.mss if opts.mss is not None else 536
        iss = self._cookies.encode(
            remote[0], local[0], remote[1], local[1],
            client_isn=seg.seq, mss=peer_mss, now_ns=now_ns,
        )  # fmt: skip
        self._cookie_until_ns = now_ns + MAX_AGE * PERIOD_NS
        self._stats["syn_cookies_sent"] += 1
        window = min(self._config.recv_buffer_bytes, 0xFFFF)
        options = encode_syn(self._config.mss_bytes, None, False, None)
        ack = (seg.seq + 1) & 0xFFFFFFFF
        return TcpSegmentOut(iss, ack, SYN | ACK, window, options, EMPTY_PAYLOAD, 536, False, False)

    def _from_cookie(
        self, remote: Endpoint, seg: TcpSegmentIn, now_ns: int
    ) -> TcpConnection | None:
        """The child an ACK answering one of our cookies opens, ESTABLISHED; ``None`` when
        the ACK carries no good cookie (or the accept queue is full)."""
        until = self._cookie_until_ns
        if until is None or now_ns > until:
            self._cookie_until_ns = None
            return None
        local = self._local
        client_isn = (seg.seq - 1) & 0xFFFFFFFF
        iss = (seg.ack - 1) & 0xFFFFFFFF
        mss = self._cookies.decode(
            remote[0], local[0], remote[1], local[1],
            client_isn=client_isn, cookie=iss, now_ns=now_ns,
        )  # fmt: skip
        if mss is None:
            self._stats["syn_cookies_failed"] += 1
            return None
        if len(self._accept_queue) > self._backlog:
            self._stats["listen_overflows"] += 1
            return None
        child = self._child(remote, iss, now_ns)
        # The SYN the cookie stands for: its sequence number, the MSS the cookie carried,
        # no other option (the cookie's SYN,ACK offered none, so the peer uses none).
        opts = ParsedOptions()
        opts.mss = mss
        syn = TcpSegmentIn(client_isn, 0, SYN, seg.window, b"", EMPTY_PAYLOAD, 1, False)
        child.accept_syn(syn, opts, now_ns)
        child._syn_pending = False  # its SYN,ACK went out already, as the cookie
        child.on_segment(seg, now_ns)
        if child.state is not TcpState.ESTABLISHED and child.state is not TcpState.CLOSE_WAIT:
            self._syn_queue.pop(id(child), None)
            self._stats["syn_cookies_failed"] += 1
            return None
        self._stats["syn_cookies_accepted"] += 1
        return child

    def accept(self) -> TcpConnection | None:
        """The oldest established child, or ``None``."""
        if self._state is not TcpState.LISTEN:
            raise TcpError(errno.EINVAL, "the listener is closed")
        if not self._accept_queue:
            return None
        child = self._accept_queue.popleft()
        child._listener = None
        return child

    def close(self) -> None:
        """LISTEN -> CLOSED: reset children not yet accepted (Linux ``inet_csk_listen_stop``)."""
        if self._state is not TcpState.LISTEN:
            return
        self._state = next_state(self._state, Trigger.CLOSE)
        children = list(self._syn_queue.values()) + list(self._accept_queue)
        self._syn_queue.clear()
        self._accept_queue.clear()
        for child in children:
            child._listener = None
            child.abort()

    # -- called by children ----------------------------------------------------------------

    def _child_established(self, child: TcpControlBlock) -> bool:
        assert isinstance(child, TcpConnection)
        if self._state is not TcpState.LISTEN or len(self._accept_queue) > self._backlog:
            self._stats["listen_overflows"] += 1
            return False
        self._syn_queue.pop(id(child), None)
        self._accept_queue.append(child)
        return True

    def _child_gone(self, child: TcpControlBlock) -> None:
        self._syn_queue.pop(id(child), None)
