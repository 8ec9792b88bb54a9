"""Building what goes out: handshake, data and retransmissions as super-packets, ACKs, probes.

``poll_transmit`` runs per super-packet, never per MSS segment: a burst is
one ``TcpSegmentOut`` whose payload is a view into the send ring (cut at the
ring's wrap point), whole multiples of the MSS except at the tail, and one
scoreboard entry.
"""

from __future__ import annotations

from typing import Final

from netoffload.stack.tcp.ack import AckSide
from netoffload.stack.tcp.options import encode_syn
from netoffload.stack.tcp.scoreboard import FIN as SB_FIN
from netoffload.stack.tcp.segment import (
    ACK,
    CWR,
    ECE,
    EMPTY_PAYLOAD,
    FIN,
    PSH,
    RST,
    SYN,
    TcpSegmentOut,
)
from netoffload.stack.tcp.state import TcpState
from netoffload.stack.tcp.tcb import (
    MASK32,
    OPEN,
    PROBE_KEEPALIVE,
    PROBE_NONE,
    PROBE_TLP,
    PROBE_WINDOW,
)

#: States in which data, retransmissions and our FIN may go out.
_SENDING: Final = frozenset(
    {
        TcpState.ESTABLISHED,
        TcpState.CLOSE_WAIT,
        TcpState.FIN_WAIT_1,
        TcpState.CLOSING,
        TcpState.LAST_ACK,
    }
)
#: Most pure duplicate ACKs one poll sends (one per out-of-order arrival).
_MAX_DUPACKS_PER_POLL: Final = 8
_new = tuple.__new__


class OutputSide(AckSide):
    """``poll_transmit`` and ``has_output``."""

    __slots__ = ()

    # -- decisions ---------------------------------------------------------------------

    def _new_data_len(self, max_payload: int) -> int:
        """How many new bytes to send now: window, cwnd, SWS avoidance and Nagle decide."""
        buf = self._sndbuf
        if buf is None:
            return 0
        nxt = self._snd_nxt
        avail = buf.tail - nxt
        if avail <= 0:
            return 0
        una = self._snd_una
        cc = self._cc
        if len(self._sb.q) >= (cc.cwnd // self._mss) * 2 + 16:
            # Tiny segments: a byte-counted cwnd would let thousands be in flight.
            # Like Linux's packet-counted cwnd, cap them (and the scoreboard with them).
            return 0
        room = una + self._snd_wnd - nxt
        cwnd_room = cc.cwnd - self._pipe()
        room = min(room, cwnd_room)
        if room <= 0:
            return 0
        mss = self._mss
        mss = min(mss, max_payload)  # an interface without TSO may allow less than our MSS
        n = avail
        n = min(n, room)
        n = min(n, max_payload)
        if n < avail:
            if n >= mss:
                return n - n % mss
            # RFC 9293 §3.8.6.2.1 sender SWS avoidance: a partial segment only if
            # it is at least half the largest window the peer ever offered.
            if n >= self._max_snd_wnd >> 1 and n == una + self._snd_wnd - nxt:
                return n
            return 0
        tail = n % mss
        if tail and not self._nodelay and not self._fin_queued and self._small_unacked > una:
            # RFC 9293 §3.7.4 Nagle, as Minshall's refinement (and Linux): hold a
            # small segment while another small one is unacknowledged; a burst goes
            # without its sub-MSS tail (Linux tcp_mss_split_point).
            return n - tail
        return n

    def has_output(self) -> bool:
        """Whether ``poll_transmit`` would produce something now (cheap; poll only if true)."""
        if (
            self._rst_pending
            or self._replies
            or self._syn_pending
            or self._ack_now
            or self._dupacks_out
            or self._probe_pending
        ):
            return True
        if self._state not in _SENDING or self._snd_una == self._iss:
            return False
        sb = self._sb
        if sb.lost_unsent_bytes and (
            self._force_retransmit or self._cc.cwnd - self._pipe() >= self._mss
        ):
            return True
        if self._new_data_len(1 << 30):
            return True
        nxt = self._snd_nxt
        tail = self._tail()
        if tail > nxt and nxt == self._snd_una and self._persist_at is None:
            return True  # held back by the window with nothing in flight: arm the persist timer
        return self._fin_queued and not self._fin_sent and nxt == tail

    def _tail(self) -> int:
        buf = self._sndbuf
        return buf.tail if buf is not None else self._snd_nxt

    # -- segments ------------------------------------------------------------------------

    def _flags_ack(self) -> int:
        return ACK | ECE if self._ece_pending else ACK

    def poll_transmit(self, now_ns: int, *, max_payload_bytes: int) -> list[TcpSegmentOut]:
        """Everything to send now: super-packets of at most ``max_payload_bytes`` payload."""
        # Stateless replies first (a RST for a bad ACK during a handshake).
        out = self._replies
        if out:
            self._replies = []
            self._segs_out += len(out)
        else:
            out = []
        replies = len(out)
        if self._rst_pending:
            self._rst_pending = False
            out.append(self._control(RST | ACK, self._snd_nxt, b"", 0))
            self._segs_out += 1
            self._maybe_emit_closed()
            return out
        state = self._state
        if self._syn_pending:
            self._syn_pending = False
            out.append(self._syn_segment(now_ns))
            if state is not TcpState.SYN_SENT:
                self._acked_now()  # a SYN,ACK carries the ACK
            self._segs_out += 1
            self._last_send_ns = now_ns
            if self._rto_at is None:
                self._rto_at = now_ns + self._rtt.rto_ns()
            return out
        if state is TcpState.CLOSED or state is TcpState.SYN_SENT or state is TcpState.LISTEN:
            return out
        ack = self._rcv_nxt & MASK32
        window = self._window_field()
        options = self._ack_options(now_ns)
        # Data segments carry the timestamps only: every one of them is then exactly
        # MSS-sized on the wire, which is the grid the scoreboard and the device's
        # segmentation share. SACK blocks, when due, ride a pure ACK of their own.
        data_options = options[:12] if self._ts_ok else b""
        sack_separate = len(options) > len(data_options)
        if state in _SENDING and self._snd_una != self._iss:
            self._send_data(out, now_ns, max_payload_bytes, ack, window, data_options)
        probe = self._probe_pending
        if probe:
            self._probe_pending = PROBE_NONE
            if probe != PROBE_WINDOW or not self._window_probe_data(
                out, now_ns, ack, window, data_options
            ):
                if probe == PROBE_TLP:
                    self._send_tlp(out, now_ns, ack, window, data_options)
                else:
                    # Linux's probe: an old sequence number, so the peer answers with an ACK.
                    out.append(
                        self._seg(self._snd_una - 1, ack, self._flags_ack(), window, options)
                    )
                    self._stats[
                        "keepalive_probes" if probe == PROBE_KEEPALIVE else "window_probes"
                    ] += 1
        if len(out) > replies:
            if sack_separate and any(seg.options is data_options for seg in out[replies:]):
                out.append(self._seg(self._snd_nxt, ack, self._flags_ack(), window, options))
            self._acked_now()
        elif self._ack_now or self._dupacks_out:
            out.append(self._seg(self._snd_nxt, ack, self._flags_ack(), window, options))
            self._acked_now()
        extra = self._dupacks_out
        if extra:
            extra = min(extra, _MAX_DUPACKS_PER_POLL)
            dup = self._seg(self._snd_nxt, ack, self._flags_ack(), window, options)
            out.extend([dup] * extra)
            self._dupacks_out = 0
        self._segs_out += len(out) - replies
        if self._state is TcpState.CLOSED:
            self._maybe_emit_closed()
        return out

    def _seg(self, seq: int, ack: int, flags: int, window: int, options: bytes) -> TcpSegmentOut:
        return _new(
            TcpSegmentOut,
            (seq & MASK32, ack, flags, window, options, EMPTY_PAYLOAD, self._mss, False, False),
        )

    def _control(self, flags: int, seq: int, options: bytes, window: int) -> TcpSegmentOut:
        ack = self._rcv_nxt & MASK32 if flags & ACK else 0
        return _new(
            TcpSegmentOut,
            (seq & MASK32, ack, flags, window, options, EMPTY_PAYLOAD, self._mss, False, False),
        )

    def _syn_segment(self, now_ns: int) -> TcpSegmentOut:
        """SYN (SYN-SENT) or SYN-ACK (SYN-RECEIVED), options renegotiated each time (RFC 7323)."""
        config = self._config
        active = self._state is TcpState.SYN_SENT
        ts = None
        if config.timestamps and (active or self._ts_ok):
            ts = (self._ts_now(now_ns), 0 if active else self._ts_recent)
        wscale = None
        if config.window_scaling and (active or self._wscale_ok):
            wscale = self._rcv_wscale
        sack = config.sack and (active or self._sack_ok)
        options = encode_syn(config.mss_bytes, wscale, sack, ts)
        options += bytes(-len(options) % 4)
        window = min(config.recv_buffer_bytes, 0xFFFF)
        if active:
            flags = SYN | ECE | CWR if config.ecn_request else SYN
            return self._control(flags, self._iss, options, window)
        flags = SYN | ACK | ECE if self._ecn_ok else SYN | ACK
        return self._control(flags, self._iss, options, window)

    def _emit(  # noqa: PLR0917 - the per-burst hot path: positional on purpose
        self,
        out: list[TcpSegmentOut],
        seq: int,
        length: int,
        fin: bool,
        flags: int,
        ack: int,
        window: int,
        options: bytes,
        ect: bool,
        retransmission: bool,
        now_ns: int,
    ) -> None:
        """Append ``[seq, seq + length)`` from the ring, FIN on the last piece.

        A burst that crosses the ring's wrap point goes out as two segments and
        is two scoreboard entries, so that each entry's MSS grid is the one the
        device cuts it at (and SACK edges fall on it). New data is recorded in the
        scoreboard here; a retransmitted range is already there and is only split.
        """
        buf = self._sndbuf
        assert buf is not None
        mss = self._mss
        sb = self._sb
        while True:
            view = buf.view(seq, length)
            n = len(view)
            last = n >= length
            f = flags | FIN if (last and fin) else flags
            out.append(
                _new(
                    TcpSegmentOut,
                    (seq & MASK32, ack, f, window, options, view, mss, ect, retransmission),
                )
            )
            if retransmission:
                if not last:
                    sb.split(seq + n)
            elif last and fin:
                sb.append(seq, seq + n + 1, now_ns, SB_FIN)
            else:
                sb.append(seq, seq + n, now_ns, 0)
            if last:
                return
            seq += n
            length -= n
            flags &= ~CWR  # CWR goes on the first piece only

    def _send_data(  # noqa: PLR0917 - per poll: positional on purpose
        self,
        out: list[TcpSegmentOut],
        now_ns: int,
        max_payload: int,
        ack: int,
        window: int,
        options: bytes,
    ) -> None:
        sb = self._sb
        cc = self._cc
        mss = self._mss
        seg_mss = mss if mss <= max_payload else max_payload
        flags = self._flags_ack()
        # Retransmissions first (RFC 6675 NextSeg rule 1).
        if sb.lost_unsent_bytes:
            if self._force_retransmit:
                self._force_retransmit = False
                self._retransmit_lost(out, seg_mss, seg_mss, now_ns, flags, ack, window, options)
            while sb.lost_unsent_bytes:
                room = cc.cwnd - self._pipe()
                if room < seg_mss:
                    break
                room = min(room, max_payload)
                if not self._retransmit_lost(
                    out, room, seg_mss, now_ns, flags, ack, window, options
                ):
                    break
        # New data (NextSeg rule 2).
        buf = self._sndbuf
        assert buf is not None
        while True:
            n = self._new_data_len(max_payload)
            if n <= 0:
                break
            nxt = self._snd_nxt
            if (
                nxt == self._snd_una
                and self._recovery == OPEN
                and now_ns - self._last_send_ns > self._rtt.rto_ns()
            ):
                cc.on_idle_restart(now_ns)  # RFC 5681 §4.1
                n = self._new_data_len(max_payload)
                if n <= 0:
                    break
            end = nxt + n
            tail = buf.tail
            f = flags | PSH if end == tail else flags
            fin = False
            if end == tail and self._fin_queued and not self._fin_sent:
                fin = True
            if self._cwr_pending:
                f |= CWR
                self._cwr_pending = False
            self._emit(out, nxt, n, fin, f, ack, window, options, self._ecn_ok, False, now_ns)
            if n < mss:
                self._small_unacked = end
            if fin:
                self._fin_sent = True
                end += 1
            self._snd_nxt = end
            self._bytes_sent += n
            self._data_segs_out += -(-n // mss)
            self._sent_new(now_ns)
        buf_tail = buf.tail
        if self._fin_queued and not self._fin_sent and self._snd_nxt == buf_tail:
            # A bare FIN: needs no window (Linux sends it too), only sequence space.
            out.append(self._seg(buf_tail, ack, flags | FIN, window, options))
            self._fin_sent = True
            sb.append(buf_tail, buf_tail + 1, now_ns, SB_FIN)
            self._snd_nxt = buf_tail + 1
            self._sent_new(now_ns)
        self._note_limits(now_ns)

    def _sent_new(self, now_ns: int) -> None:
        self._last_send_ns = now_ns
        if self._rto_at is None:
            self._rto_at = now_ns + self._rtt.rto_ns()  # RFC 6298 §5.1
        if self._tlp_end is None and self._recovery == OPEN:
            self._arm_tlp(now_ns)  # RFC 8985 §7.2: restart the PTO on new data

    def _note_limits(self, now_ns: int) -> None:
        """After sending: remember whether cwnd limited us, and run the persist timer."""
        buf = self._sndbuf
        assert buf is not None
        avail = buf.tail - self._snd_nxt
        if avail <= 0:
            self._cwnd_limited = False
            return
        wnd_room = self._snd_una + self._snd_wnd - self._snd_nxt
        cwnd_room = self._cc.cwnd - self._pipe()
        self._cwnd_limited = cwnd_room < self._mss and cwnd_room <= wnd_room
        if (
            self._snd_nxt == self._snd_una
            and self._persist_at is None
            and wnd_room < min(avail, self._mss)
        ):
            # RFC 9293 §3.8.6.1: probe a zero (or too small) window; backed off.
            self._persist_at = now_ns + min(
                self._rtt.rto_ns() << self._persist_probes, self._config.rto_max_ns
            )

    def _retransmit_lost(  # noqa: PLR0917 - per burst: positional on purpose
        self,
        out: list[TcpSegmentOut],
        limit: int,
        seg_mss: int,
        now_ns: int,
        flags: int,
        ack: int,
        window: int,
        options: bytes,
    ) -> bool:
        mss = self._mss
        taken = self._sb.take_lost(limit, seg_mss, now_ns)
        if taken is None:
            return False
        start, end, fin = taken
        length = end - start - (1 if fin else 0)
        if length > 0:
            self._emit(out, start, length, fin, flags, ack, window, options, False, True, now_ns)
        else:
            out.append(self._seg(start, ack, flags | FIN, window, options))
            out[-1] = out[-1]._replace(retransmission=True)
        self._stats["retransmitted_segs"] += max(1, -(-length // mss))
        self._stats["bytes_retransmitted"] += length
        self._last_send_ns = now_ns
        if self._rto_at is None:
            self._rto_at = now_ns + self._rtt.rto_ns()
        return True

    def _window_probe_data(
        self, out: list[TcpSegmentOut], now_ns: int, ack: int, window: int, options: bytes
    ) -> bool:
        """Persist timer with a window that opened a little: send what fits (Linux
        ``tcp_write_wakeup``), whatever SWS avoidance and Nagle would say."""
        buf = self._sndbuf
        if buf is None:
            return False
        nxt = self._snd_nxt
        room = self._snd_una + self._snd_wnd - nxt
        n = min(buf.tail - nxt, room, self._mss)
        if n <= 0:
            return False
        end = nxt + n
        flags = self._flags_ack() | PSH
        self._emit(out, nxt, n, False, flags, ack, window, options, self._ecn_ok, False, now_ns)
        self._snd_nxt = end
        self._bytes_sent += n
        self._data_segs_out += 1
        self._sent_new(now_ns)
        return True

    def _send_tlp(
        self, out: list[TcpSegmentOut], now_ns: int, ack: int, window: int, options: bytes
    ) -> None:
        """RFC 8985 §7.3: one MSS of new data if allowed, else the last segment again."""
        mss = self._mss
        buf = self._sndbuf
        assert buf is not None
        nxt = self._snd_nxt
        n = min(buf.tail - nxt, self._snd_una + self._snd_wnd - nxt, mss)
        flags = self._flags_ack()
        if n > 0:
            end = nxt + n
            fin = end == buf.tail and self._fin_queued and not self._fin_sent
            f = flags | PSH
            self._emit(out, nxt, n, fin, f, ack, window, options, self._ecn_ok, False, now_ns)
            if fin:
                self._fin_sent = True
                end += 1
            self._snd_nxt = end
            self._bytes_sent += n
            self._data_segs_out += 1
            self._tlp_retrans = False
        else:
            taken = self._sb.retransmit_tail(mss, now_ns)
            if taken is None:
                return
            start, end, fin = taken
            length = end - start - (1 if fin else 0)
            if length > 0:
                self._emit(
                    out, start, length, fin, flags, ack, window, options, False, True, now_ns
                )
            else:
                out.append(
                    self._seg(start, ack, flags | FIN, window, options)._replace(
                        retransmission=True
                    )
                )
            self._stats["retransmitted_segs"] += 1
            self._stats["bytes_retransmitted"] += length
            self._tlp_retrans = True
        self._tlp_end = self._snd_nxt
        self._stats["tlp_probes"] += 1
        self._last_send_ns = now_ns
        # §7.3: after a probe, the RTO is armed again, not the PTO.
        self._rto_at = now_ns + self._rtt.rto_ns()
        self._tlp_at = None
