"""The transmission control block: every field of a connection, and the helpers all parts share.

A connection is one object whose methods are spread over modules by
responsibility (``recv``, ``ack``, ``output``, ``input``, ``timers`` and the
public ``connection``), each a class that extends the one before it. This
one holds the state.

Sequence numbers are kept unwrapped: ``_snd_una`` starts at the ISS and keeps
counting past 2³², so comparisons are plain integer comparisons. They are cut
to 32 bits only on the way out, and incoming ones are unwrapped next to the
value they must be close to (``rcv.nxt`` for a sequence number, ``snd.una``
for an acknowledgment).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Final

from netoffload.stack.tcp.buffers import ReceiveBuffer, SendBuffer
from netoffload.stack.tcp.config import TcpConfig
from netoffload.stack.tcp.congestion import CongestionControl, make_congestion_control
from netoffload.stack.tcp.errors import IcmpErrorKind
from netoffload.stack.tcp.events import Closed, TcpEvent
from netoffload.stack.tcp.rtt import RttEstimator
from netoffload.stack.tcp.scoreboard import Scoreboard
from netoffload.stack.tcp.segment import TcpSegmentOut
from netoffload.stack.tcp.state import TcpState, Trigger, next_state

if TYPE_CHECKING:
    from netoffload.stack.tcp.listener import TcpListener

Endpoint = tuple[IPv4Address | IPv6Address, int]

MASK32: Final = 0xFFFFFFFF
HALF32: Final = 0x80000000
MS: Final = 1_000_000

# Loss recovery states (Linux's Open, Recovery and Loss).
OPEN: Final = 0
RECOVERY: Final = 1
LOSS: Final = 2

# What the next poll owes besides data: a probe of one kind or another.
PROBE_NONE: Final = 0
#: A persist-timer probe: new data if the window allows, else SEG.SEQ = SND.UNA - 1.
PROBE_WINDOW: Final = 1
#: A keep-alive probe: SEG.SEQ = SND.UNA - 1, no data (RFC 9293 §3.8.4).
PROBE_KEEPALIVE: Final = 2
#: A tail loss probe (RFC 8985 §7.3).
PROBE_TLP: Final = 3

#: Duplicate ACKs (or SACKed segments) that mean a loss (RFC 5681 §3.2).
DUPTHRESH: Final = 3
#: RFC 8985 §7.2: worst-case delayed ACK a probe timeout allows for.
WCDELACK_NS: Final = 200 * MS
#: Linux's limit on out-of-window duplicate ACKs (``tcp_invalid_ratelimit``).
OOW_RATELIMIT_NS: Final = 500 * MS
#: RFC 7323 §5.5: TS.Recent older than 24 days is no longer trusted.
PAWS_IDLE_NS: Final = 24 * 86400 * 1_000_000_000
#: RFC 6298 §5.7: the RTO to start data with after a retransmitted SYN.
RTO_AFTER_SYN_RETRY_NS: Final = 3_000_000_000
#: Linux's ``tcp_min_snd_mss``: no smaller MSS, whatever the peer or ICMP say.
MIN_SND_MSS: Final = 48
#: RFC 9293 §3.7.1: the MSS to assume when the peer sent none.
DEFAULT_MSS: Final = 536


class TcpControlBlock:
    """All of a connection's state; behaviour lives in the subclasses."""

    __slots__ = (
        "_ack_now",
        "_app_closed",
        "_bytes_acked",
        "_bytes_received",
        "_bytes_sent",
        "_cc",
        "_challenge_budget",
        "_challenge_window_ns",
        "_closed_emitted",
        "_config",
        "_cwnd_limited",
        "_cwr_pending",
        "_data_segs_out",
        "_delack_at",
        "_drops",
        "_dsack",
        "_dupacks",
        "_dupacks_out",
        "_ece_pending",
        "_ecn_high",
        "_ecn_ok",
        "_error",
        "_events",
        "_fin_acked",
        "_fin_queued",
        "_fin_received",
        "_fin_sent",
        "_force_retransmit",
        "_irs",
        "_iss",
        "_ka_idle_ns",
        "_ka_interval_ns",
        "_ka_on",
        "_ka_probes",
        "_ka_probes_max",
        "_last_ack_sent",
        "_last_rcv_ns",
        "_last_send_ns",
        "_listener",
        "_local",
        "_max_snd_wnd",
        "_misc_at",
        "_mss",
        "_nodelay",
        "_oow_last_ns",
        "_passive",
        "_peer_mss",
        "_persist_at",
        "_persist_probes",
        "_persist_unanswered",
        "_pmtu_mss",
        "_probe_pending",
        "_rcv_adv",
        "_rcv_fin_seq",
        "_rcv_mss",
        "_rcv_nxt",
        "_rcv_wscale",
        "_rcvbuf",
        "_recover_seq",
        "_recovery",
        "_remote",
        "_reo_at",
        "_replies",
        "_retries",
        "_rng",
        "_rst_pending",
        "_rto_at",
        "_rtt",
        "_sack_ok",
        "_sb",
        "_segs_in",
        "_segs_out",
        "_small_unacked",
        "_snd_nxt",
        "_snd_una",
        "_snd_wl1",
        "_snd_wl2",
        "_snd_wnd",
        "_snd_wscale",
        "_sndbuf",
        "_soft_error",
        "_state",
        "_stats",
        "_syn_pending",
        "_syn_retransmitted",
        "_tlp_at",
        "_tlp_end",
        "_tlp_retrans",
        "_ts_offset",
        "_ts_ok",
        "_ts_recent",
        "_ts_recent_ns",
        "_want_read_event",
        "_want_write_event",
        "_wscale_ok",
    )

    def __init__(
        self,
        local: Endpoint,
        remote: Endpoint,
        config: TcpConfig,
        *,
        iss: int,
        ts_offset: int,
        rng: random.Random,
        now_ns: int,
    ) -> None:
        self._local = local
        self._remote = remote
        self._config = config
        self._rng = rng
        self._listener: TcpListener | None = None
        self._passive = False
        self._state = TcpState.CLOSED
        self._events: deque[TcpEvent] = deque()
        self._closed_emitted = False
        self._error: int | None = None
        self._soft_error: IcmpErrorKind | None = None

        # Send side (RFC 9293 §3.3.1): SND.UNA, SND.NXT, SND.WND, SND.WL1/2.
        self._iss = iss
        self._snd_una = iss
        self._snd_nxt = iss
        self._snd_wnd = 0
        self._snd_wl1 = 0
        self._snd_wl2 = iss
        self._max_snd_wnd = 0
        self._snd_wscale = 0
        self._sndbuf: SendBuffer | None = None
        self._sb = Scoreboard(iss + 1)
        self._fin_queued = False
        self._fin_sent = False
        self._fin_acked = False
        self._syn_pending = False
        self._syn_retransmitted = False
        self._rst_pending = False
        self._probe_pending = PROBE_NONE
        self._small_unacked = iss
        #: Stateless replies (a RST for an unacceptable ACK in a handshake).
        self._replies: list[TcpSegmentOut] = []

        # Receive side: RCV.NXT, RCV.WND (as the right edge advertised), IRS.
        self._irs = 0
        self._rcv_nxt = 0
        self._rcv_adv = 0
        self._rcv_wscale = config.recv_window_shift
        self._rcvbuf: ReceiveBuffer | None = None
        self._rcv_fin_seq: int | None = None
        self._fin_received = False
        self._rcv_mss = DEFAULT_MSS
        self._last_ack_sent = 0

        # Negotiated options.
        self._ts_ok = False
        self._ts_recent = 0
        self._ts_recent_ns = now_ns
        self._ts_offset = ts_offset
        self._sack_ok = False
        self._wscale_ok = False
        self._ecn_ok = False
        self._peer_mss = DEFAULT_MSS
        self._pmtu_mss = 0xFFFF
        self._mss = DEFAULT_MSS

        # ECN (RFC 3168 §6.1).
        self._ece_pending = False
        self._cwr_pending = False
        self._ecn_high = iss

        # ACK generation.
        self._ack_now = False
        self._dupacks_out = 0
        self._delack_at: int | None = None
        self._dsack: tuple[int, int] | None = None

        # Timers.
        self._rtt = RttEstimator(config.rto_initial_ns, config.rto_min_ns, config.rto_max_ns)
        #: RFC 6298 retransmission (or SYN) timer, RFC 8985 probe and reordering timers,
        #: the persist timer, and TIME-WAIT / FIN-WAIT-2 / keep-alive.
        self._rto_at: int | None = None
        self._tlp_at: int | None = None
        self._reo_at: int | None = None
        self._persist_at: int | None = None
        self._misc_at: int | None = None
        self._retries = 0
        self._persist_probes = 0
        self._persist_unanswered = 0
        self._last_rcv_ns = now_ns
        self._last_send_ns = now_ns

        # Congestion control and loss recovery.
        self._cc: CongestionControl = make_congestion_control(
            config.congestion_control, DEFAULT_MSS, config.initial_window_segments
        )
        self._recovery = OPEN
        self._recover_seq = iss
        self._dupacks = 0
        self._tlp_end: int | None = None
        self._tlp_retrans = False
        self._cwnd_limited = False
        self._force_retransmit = False

        # Application options.
        self._nodelay = config.nodelay
        self._ka_on = config.keepalive
        self._ka_idle_ns = config.keepalive_idle_ns
        self._ka_interval_ns = config.keepalive_interval_ns
        self._ka_probes_max = config.keepalive_probes
        self._ka_probes = 0
        self._app_closed = False
        self._want_read_event = True
        self._want_write_event = False

        # RFC 5961 §7 challenge ACK budget and Linux's out-of-window ACK limit.
        self._challenge_window_ns = now_ns
        self._challenge_budget = config.challenge_ack_limit_per_s
        self._oow_last_ns = now_ns - OOW_RATELIMIT_NS

        # The counters every segment touches are plain ints; the rest are a Counter.
        self._bytes_acked = 0
        self._bytes_received = 0
        self._bytes_sent = 0
        self._segs_in = 0
        self._segs_out = 0
        self._data_segs_out = 0
        self._stats: Counter[str] = Counter()
        self._drops: Counter[str] = Counter()

    # -- helpers shared by every part ---------------------------------------------------

    def _transition(self, trigger: Trigger) -> None:
        self._state = next_state(self._state, trigger)

    def _event(self, event: TcpEvent) -> None:
        self._events.append(event)

    def _drop(self, reason: str) -> None:
        self._drops[reason] += 1

    def _ts_now(self, now_ns: int) -> int:
        """This connection's TSval clock: milliseconds plus its offset (RFC 7323 §5.4)."""
        return (now_ns // MS + self._ts_offset) & MASK32

    def _unwrap_seq(self, seq: int) -> int:
        nxt = self._rcv_nxt
        return nxt + ((seq - nxt + HALF32) & MASK32) - HALF32

    def _unwrap_ack(self, ack: int) -> int:
        una = self._snd_una
        return una + ((ack - una + HALF32) & MASK32) - HALF32

    def _flight(self) -> int:
        """RFC 5681 FlightSize: sent and not cumulatively acknowledged (a FIN counts one)."""
        return self._snd_nxt - self._snd_una

    def _pipe(self) -> int:
        """RFC 6675 pipe: what is believed to be in the network."""
        sb = self._sb
        return self._snd_nxt - self._snd_una - sb.sacked_bytes - sb.lost_bytes + sb.retrans_bytes

    def _stop_retransmit_timers(self) -> None:
        self._rto_at = None
        self._tlp_at = None
        self._reo_at = None
        self._persist_at = None
        self._tlp_end = None

    def _enter_time_wait(self, now_ns: int) -> None:
        """TIME-WAIT: only the 2·MSL timer runs (RFC 9293 §3.10.7.4)."""
        self._stop_retransmit_timers()
        self._misc_at = now_ns + self._config.time_wait_ns

    def _set_closed(self) -> None:
        """Delete the TCB: no timers, nothing more to send but a pending RST."""
        if self._state is not TcpState.CLOSED:
            self._transition(Trigger.DELETE)
        self._stop_retransmit_timers()
        self._delack_at = None
        self._misc_at = None
        self._ack_now = False
        self._dupacks_out = 0
        self._syn_pending = False
        self._probe_pending = PROBE_NONE
        if self._listener is not None:
            listener, self._listener = self._listener, None
            listener._child_gone(self)
        self._maybe_emit_closed()

    def _maybe_emit_closed(self) -> None:
        if (
            self._state is TcpState.CLOSED
            and not self._rst_pending
            and not self._replies
            and not self._closed_emitted
        ):
            self._closed_emitted = True
            self._events.append(Closed())
