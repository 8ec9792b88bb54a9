"""Segment arrival (RFC 9293 §3.10.7): header prediction first, then the full rules per state."""

from __future__ import annotations

import errno
import struct
from typing import Final

from netoffload.stack.tcp.buffers import SendBuffer
from netoffload.stack.tcp.congestion import make_congestion_control
from netoffload.stack.tcp.events import DataReceived, Established, Refused, Reset
from netoffload.stack.tcp.options import TS_PREFIX, ParsedOptions, parse_segment_options
from netoffload.stack.tcp.output import OutputSide
from netoffload.stack.tcp.reset import reset_for
from netoffload.stack.tcp.segment import ACK, CWR, ECE, FIN, RST, SYN, URG, TcpSegmentIn
from netoffload.stack.tcp.state import TcpState, Trigger
from netoffload.stack.tcp.tcb import (
    DEFAULT_MSS,
    HALF32,
    MASK32,
    MIN_SND_MSS,
    OOW_RATELIMIT_NS,
    PAWS_IDLE_NS,
    RTO_AFTER_SYN_RETRY_NS,
)

#: Header prediction needs exactly ACK (PSH and AE may ride along).
_PREDICTED: Final = SYN | FIN | RST | URG | ACK | ECE | CWR
_unpack_ts12 = struct.Struct("!III").unpack_from
_ESTABLISHED: Final = TcpState.ESTABLISHED
_S = TcpState
_NS_PER_S: Final = 1_000_000_000
#: Stateless RSTs held for the next poll, at most.
_MAX_REPLIES: Final = 8
#: RFC 8200 §5: the IPv6 minimum MTU less 60 bytes of headers.
_DEFAULT_MSS_V6: Final = 1220


class InputSide(OutputSide):
    """``on_segment``."""

    __slots__ = ()

    def on_segment(self, seg: TcpSegmentIn, now_ns: int) -> None:
        """Process one received segment (or GRO super-packet). Never raises for bad input."""
        self._segs_in += seg.segments if seg.segments > 1 else 1
        if self._state is _ESTABLISHED and (seg.flags & _PREDICTED) == ACK:
            nxt = self._rcv_nxt
            if seg.seq == nxt & MASK32 and self._predicted(seg, nxt, now_ns):
                return
        self._slow_path(seg, now_ns)

    def _predicted(self, seg: TcpSegmentIn, nxt: int, now_ns: int) -> bool:
        """Van Jacobson's header prediction: the next in-order segment with only timestamps."""
        opts = seg.options
        tsecr: int | None = None
        if self._ts_ok:
            if len(opts) != 12:
                return False
            head, tsval, tsecr = _unpack_ts12(opts)
            if head != TS_PREFIX or (tsval - self._ts_recent) & MASK32 >= HALF32:
                return False
        elif opts:
            return False
        payload = seg.payload
        n = len(payload)
        if n > self._rcv_adv - nxt or seg.ce:
            return False
        una = self._snd_una
        delta = (seg.ack - una) & MASK32
        if delta > self._snd_nxt - una:
            return False
        if tsecr is not None and nxt == self._last_ack_sent:
            self._ts_recent = tsval  # RFC 7323 §4.3: SEG.SEQ <= Last.ACK.sent
            self._ts_recent_ns = now_ns
        self._last_rcv_ns = now_ns
        self._ka_probes = 0
        if delta or seg.window << self._snd_wscale != self._snd_wnd:
            self._on_ack(una + delta, nxt, seg.window, tsecr, None, False, not n, now_ns)
        elif not n:
            # Neither new data nor a new ACK nor a window change: a duplicate ACK.
            self._on_ack(una, nxt, seg.window, tsecr, None, False, True, now_ns)
        if n:
            buf = self._rcvbuf
            assert buf is not None
            if buf.ooo or self._rcv_fin_seq is not None:
                self._receive_data(nxt, payload, seg.segments, now_ns)
            else:
                was_empty = buf.nxt == buf.read
                buf.append(payload)
                self._rcv_nxt = nxt + n
                self._bytes_received += n
                segments = seg.segments
                per_segment = n // segments if segments > 1 else n
                if per_segment > self._rcv_mss:
                    self._rcv_mss = min(per_segment, self._config.mss_bytes)
                if nxt + n - self._last_ack_sent > self._rcv_mss:
                    self._ack_now = True
                elif self._delack_at is None:
                    self._delack_at = now_ns + self._config.delayed_ack_ns
                if was_empty and self._want_read_event:
                    self._want_read_event = False
                    self._event(DataReceived())
        return True

    # -- the general path ----------------------------------------------------------------

    def _slow_path(self, seg: TcpSegmentIn, now_ns: int) -> None:
        state = self._state
        if state is _S.CLOSED or state is _S.LISTEN:
            self._drop("no connection")
            return
        opts = parse_segment_options(seg.options)
        if opts is None:
            self._drop("bad options")
            return
        if state is _S.SYN_SENT:
            self._in_syn_sent(seg, opts, now_ns)
        elif state is _S.TIME_WAIT:
            self._in_time_wait(seg, opts, now_ns)
        else:
            self._in_synchronized(seg, opts, now_ns)
        self._maybe_emit_closed()

    def _negotiate(self, opts: ParsedOptions, flags: int) -> None:
        """Options of the peer's SYN (RFC 9293 §3.7.1, RFC 7323 §2-3, RFC 2018 §2, RFC 3168)."""
        config = self._config
        if opts.mss is not None:
            self._peer_mss = max(opts.mss, MIN_SND_MSS)
        else:
            v6 = self._remote[0].version == 6
            self._peer_mss = _DEFAULT_MSS_V6 if v6 else DEFAULT_MSS
        self._ts_ok = config.timestamps and opts.tsval is not None
        self._sack_ok = config.sack and opts.sack_permitted
        if config.window_scaling and opts.wscale is not None:
            self._wscale_ok = True
            self._snd_wscale = min(opts.wscale, 14)  # RFC 7323 §2.3
        else:
            self._wscale_ok = False
            self._snd_wscale = 0
            self._rcv_wscale = 0
        if self._state is _S.SYN_SENT:
            self._ecn_ok = config.ecn_request and flags & (ACK | ECE | CWR) == ACK | ECE
        else:
            self._ecn_ok = config.ecn_accept and flags & (ECE | CWR) == ECE | CWR
        self._update_mss()

    def _update_mss(self) -> None:
        """Eff.snd.MSS (RFC 9293 §3.7.1): the smaller of the peer's MSS and the path's,
        less the options every segment carries."""
        mss = min(self._peer_mss, self._pmtu_mss) - (12 if self._ts_ok else 0)
        self._mss = max(mss, MIN_SND_MSS)

    def _start_established(self, now_ns: int) -> None:
        config = self._config
        self._update_mss()
        self._cc = make_congestion_control(
            config.congestion_control, self._mss, config.initial_window_segments
        )
        self._rcv_mss = min(config.mss_bytes - (12 if self._ts_ok else 0), DEFAULT_MSS)
        if self._sndbuf is None:
            self._sndbuf = SendBuffer(config.send_buffer_bytes, self._iss + 1)
        self._small_unacked = self._iss + 1
        self._ecn_high = self._iss + 1
        self._retries = 0
        self._last_send_ns = now_ns
        self._last_rcv_ns = now_ns
        if self._syn_retransmitted:
            self._rtt.reset_for_data(RTO_AFTER_SYN_RETRY_NS)  # RFC 6298 §5.7
        self._rto_at = None
        self._event(Established())

    def _handshake_rtt(self, tsecr: int | None, now_ns: int) -> None:
        if not self._syn_retransmitted:
            self._rtt.sample(now_ns - self._last_send_ns, now_ns)
        else:
            echo = self._echo_ms(tsecr, now_ns)
            if echo >= 0:
                self._rtt.sample((now_ns // 1_000_000 - echo) * 1_000_000, now_ns)

    def _in_syn_sent(self, seg: TcpSegmentIn, opts: ParsedOptions, now_ns: int) -> None:
        """RFC 9293 §3.10.7.3."""
        flags = seg.flags
        ack = 0
        if flags & ACK:
            ack = self._unwrap_ack(seg.ack)
            if ack <= self._iss or ack > self._snd_nxt:
                if not flags & RST:
                    self._reply_reset(seg)
                self._drop("unacceptable ACK in SYN-SENT")
                return
        if flags & RST:
            if flags & ACK:
                self._error = errno.ECONNREFUSED
                self._event(Refused())
                self._set_closed()
            else:
                self._drop("RST without ACK in SYN-SENT")
            return
        if not flags & SYN:
            self._drop("no SYN in SYN-SENT")
            return
        self._negotiate(opts, flags)
        self._open_receive(seg.seq)
        if self._ts_ok and opts.tsval is not None:
            self._ts_recent = opts.tsval
            self._ts_recent_ns = now_ns
        self._snd_wnd = seg.window  # RFC 7323 §2.2: a SYN's window is never scaled
        self._max_snd_wnd = seg.window
        self._snd_wl1 = self._irs
        self._ack_now = True
        if flags & ACK:
            self._snd_una = ack
            self._snd_wl2 = ack
            self._handshake_rtt(opts.tsecr, now_ns)
            self._transition(Trigger.RCV_SYN_ACK)
            self._start_established(now_ns)
        else:
            # Simultaneous open: SYN,ACK with our ISS again.
            self._transition(Trigger.RCV_SYN)
            self._syn_pending = True
            self._rto_at = None

    def accept_syn(self, seg: TcpSegmentIn, opts: ParsedOptions, now_ns: int) -> None:
        """A listener's SYN: LISTEN -> SYN-RECEIVED, a SYN,ACK pending (RFC 9293 §3.10.7.2)."""
        self._state = TcpState.LISTEN
        self._passive = True
        self._negotiate(opts, seg.flags)
        self._open_receive(seg.seq)
        if self._ts_ok and opts.tsval is not None:
            self._ts_recent = opts.tsval
            self._ts_recent_ns = now_ns
        self._snd_wnd = seg.window
        self._max_snd_wnd = seg.window
        self._snd_wl1 = self._irs
        self._snd_nxt = self._iss + 1
        self._transition(Trigger.RCV_SYN)
        self._syn_pending = True

    def _in_time_wait(self, seg: TcpSegmentIn, opts: ParsedOptions, now_ns: int) -> None:
        flags = seg.flags
        if flags & RST:
            self._drop("RST in TIME-WAIT")  # RFC 1337 TIME-WAIT assassination fix 1
            return
        seq = self._unwrap_seq(seg.seq)
        if flags & SYN and not flags & ACK:
            # RFC 6191 (timestamps) or RFC 1122 §4.2.2.13: a SYN of a new incarnation
            # ends TIME-WAIT; the stack hands it to the listener.
            if self._ts_ok and opts.tsval is not None:
                newer = 0 < ((opts.tsval - self._ts_recent) & MASK32) < HALF32
            else:
                newer = seq > self._rcv_nxt
            if newer:
                self._stats["time_wait_reused"] += 1
                self._set_closed()
                return
            self._oow_ack(now_ns, False)
            return
        if flags & FIN and seq + len(seg.payload) + 1 == self._rcv_nxt:
            # A retransmitted FIN: ACK it and restart the 2·MSL timer (RFC 9293).
            self._ack_now = True
            self._misc_at = now_ns + self._config.time_wait_ns
            return
        self._oow_ack(now_ns, bool(seg.payload))
        self._drop("segment in TIME-WAIT")

    def _reply_reset(self, seg: TcpSegmentIn) -> None:
        """Queue the RST a bad ACK in a handshake earns (a few at most until polled)."""
        reply = reset_for(seg)
        if reply is not None and len(self._replies) < _MAX_REPLIES:
            self._replies.append(reply)

    def _oow_ack(self, now_ns: int, has_data: bool) -> None:
        """ACK an unacceptable segment; without data, at most once per 500 ms (Linux)."""
        if not has_data:
            if now_ns - self._oow_last_ns < OOW_RATELIMIT_NS:
                self._stats["oow_acks_suppressed"] += 1
                return
            self._oow_last_ns = now_ns
        self._ack_now = True

    def _challenge_ack(self, now_ns: int) -> None:
        """RFC 5961 §3.2, §4.2, §5.2, throttled per §7 (a per-second budget, as Linux)."""
        if now_ns - self._challenge_window_ns >= _NS_PER_S:
            self._challenge_window_ns = now_ns
            limit = self._config.challenge_ack_limit_per_s
            half = (limit + 1) >> 1
            self._challenge_budget = half + self._rng.randrange(limit - half + 1)
        if self._challenge_budget > 0:
            self._challenge_budget -= 1
            self._ack_now = True
            self._stats["challenge_acks_sent"] += 1
        else:
            self._stats["challenge_acks_suppressed"] += 1

    def _in_synchronized(self, seg: TcpSegmentIn, opts: ParsedOptions, now_ns: int) -> None:
        """RFC 9293 §3.10.7.4 for SYN-RECEIVED and the synchronized states but TIME-WAIT."""
        flags = seg.flags
        state = self._state
        seq = self._unwrap_seq(seg.seq)
        payload = seg.payload
        n = len(payload)
        seg_len = n + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        tsval = opts.tsval
        # RFC 7323 §5.3 PAWS, before the sequence number check.
        if (
            self._ts_ok
            and tsval is not None
            and not flags & RST
            and (tsval - self._ts_recent) & MASK32 >= HALF32
            and now_ns - self._ts_recent_ns <= PAWS_IDLE_NS
        ):
            self._drop("PAWS")
            self._oow_ack(now_ns, n > 0)
            return
        syn_unacked = self._snd_una == self._iss
        if flags & SYN and syn_unacked and self._passive and seq == self._irs and not flags & ACK:
            # The peer's SYN again: our SYN,ACK was lost. Send it again (Linux
            # tcp_check_req), at most once per 500 ms.
            if now_ns - self._oow_last_ns >= OOW_RATELIMIT_NS:
                self._oow_last_ns = now_ns
                self._syn_pending = True
            return
        # First: is the segment acceptable (the four cases)?
        nxt = self._rcv_nxt
        wnd = self._rcv_adv - nxt
        wnd = max(wnd, 0)
        if seg_len == 0:
            acceptable = seq == nxt if wnd == 0 else nxt <= seq < nxt + wnd
        else:
            acceptable = wnd > 0 and (
                nxt <= seq < nxt + wnd or nxt <= seq + seg_len - 1 < nxt + wnd
            )
        ack_only = False
        if not acceptable:
            if flags & RST:
                self._drop("RST out of window")
                return
            if wnd == 0 and seq == nxt and flags & ACK and not flags & SYN:
                # "special allowance should be made to accept valid ACKs": take the
                # ACK of a segment a zero window cannot hold, drop its text.
                ack_only = True
                self._ack_now = True
            else:
                if n and seq + n <= nxt and self._sack_ok:
                    self._dsack = (seq, seq + n)
                # Linux rate-limits these ACKs only for segments without data or FIN.
                self._oow_ack(now_ns, seg_len > 0 and not flags & SYN)
                self._drop("out of window")
                return
        # Second: RST (RFC 5961 §3.2).
        if flags & RST:
            if seq == nxt:
                self._on_reset()
            else:
                self._challenge_ack(now_ns)
            return
        # Fourth: SYN (RFC 5961 §4.2).
        if flags & SYN:
            self._challenge_ack(now_ns)
            return
        # Fifth: ACK.
        if not flags & ACK:
            self._drop("no ACK")
            return
        ack = self._unwrap_ack(seg.ack)
        if syn_unacked:
            # SYN-RECEIVED (or FIN-WAIT-1 after a close there): the ACK of our SYN.
            if not self._snd_una < ack <= self._snd_nxt:
                self._reply_reset(seg)
                self._drop("unacceptable ACK in SYN-RECEIVED")
                return
            if not self._establish(ack, seq, seg.window, opts.tsecr, now_ns):
                return
            state = self._state
        elif ack > self._snd_nxt or ack < self._snd_una - self._max_snd_wnd:
            # RFC 5961 §5.2 (and RFC 9293: an ACK of something not yet sent).
            self._drop("unacceptable ACK")
            self._challenge_ack(now_ns)
            return
        if (
            tsval is not None
            and self._ts_ok
            and seq <= self._last_ack_sent
            and (tsval - self._ts_recent) & MASK32 < HALF32
        ):
            self._ts_recent = tsval  # RFC 7323 §4.3
            self._ts_recent_ns = now_ns
        self._last_rcv_ns = now_ns
        self._ka_probes = 0
        if self._ecn_ok:
            # RFC 3168 §6.1.3: echo ECE from a CE mark until a CWR arrives.
            if flags & CWR:
                self._ece_pending = False
            if seg.ce and n:
                self._ece_pending = True
                self._ack_now = True
                self._stats["ce_in"] += 1
        self._on_ack(
            ack, seq, seg.window, opts.tsecr, opts.sack, bool(flags & ECE), seg_len == 0, now_ns
        )
        if self._fin_sent and self._fin_acked:
            if state is _S.CLOSING:
                self._transition(Trigger.RCV_ACK_OF_FIN)
                self._enter_time_wait(now_ns)
                return
            if state is _S.LAST_ACK:
                self._transition(Trigger.RCV_ACK_OF_FIN)
                self._set_closed()
                return
        # Sixth (URG) is ignored: urgent data is delivered in line. Seventh: text.
        if n and not ack_only:
            if state is _ESTABLISHED or state is _S.FIN_WAIT_1 or state is _S.FIN_WAIT_2:
                if self._app_closed:
                    # Linux: data for a closed socket resets the connection.
                    self._stats["data_after_close"] += 1
                    self._send_reset_and_close()
                    return
                self._receive_data(seq, payload, seg.segments, now_ns)
            else:
                self._drop("data after FIN")
        # Eighth: FIN.
        if flags & FIN and not ack_only and not self._fin_received:
            fin_seq = seq + n
            if fin_seq >= self._rcv_nxt and fin_seq <= self._rcv_adv:
                self._receive_fin(fin_seq, now_ns)
        if self._state is _S.FIN_WAIT_1 and self._fin_acked:
            self._transition(Trigger.RCV_ACK_OF_FIN)
            if self._app_closed:
                self._misc_at = now_ns + self._config.fin_wait2_timeout_ns

    def _establish(self, ack: int, seq: int, window: int, tsecr: int | None, now_ns: int) -> bool:
        """SYN-RECEIVED -> ESTABLISHED on the ACK of our SYN."""
        listener = self._listener
        if listener is not None and not listener._child_established(self):
            self._drop("accept queue full")
            return False
        self._snd_una = ack
        self._snd_wnd = window << self._snd_wscale
        self._max_snd_wnd = self._snd_wnd
        self._snd_wl1 = seq
        self._snd_wl2 = ack
        self._handshake_rtt(tsecr, now_ns)
        if self._state is _S.SYN_RECEIVED:
            self._transition(Trigger.RCV_ACK_OF_SYN)
        self._start_established(now_ns)
        return True

    def _on_reset(self) -> None:
        """An acceptable RST (RFC 9293 §3.10.7.4 second)."""
        state = self._state
        self._stats["resets_in"] += 1
        if state is _S.SYN_RECEIVED:
            if not self._passive:
                self._error = errno.ECONNREFUSED
                self._event(Refused())
            # A passive child goes back to LISTEN: it simply disappears.
        elif state in (_S.ESTABLISHED, _S.FIN_WAIT_1, _S.FIN_WAIT_2, _S.CLOSE_WAIT):
            self._error = errno.ECONNRESET
            self._event(Reset())
        self._set_closed()

    def _send_reset_and_close(self) -> None:
        self._rst_pending = True
        self._stats["resets_out"] += 1
        self._set_closed()
