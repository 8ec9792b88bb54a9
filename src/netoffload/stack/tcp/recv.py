"""The receiving half: storing data, the advertised window, and when and what to acknowledge."""

from __future__ import annotations

from typing import Final

from netoffload.stack.tcp.buffers import ReceiveBuffer
from netoffload.stack.tcp.events import DataReceived, PeerClosed
from netoffload.stack.tcp.options import (
    MAX_SACK_BLOCKS,
    MAX_SACK_BLOCKS_WITH_TS,
    encode_sack,
    encode_timestamps,
)
from netoffload.stack.tcp.state import TcpState, Trigger
from netoffload.stack.tcp.tcb import MASK32, TcpControlBlock

_ESTABLISHED: Final = TcpState.ESTABLISHED
_FIN_WAIT_1: Final = TcpState.FIN_WAIT_1
_FIN_WAIT_2: Final = TcpState.FIN_WAIT_2
_TS_OPT_LEN: Final = 12


class ReceiveSide(TcpControlBlock):
    """Receive buffer, out-of-order ranges, window advertisement and ACK scheduling."""

    __slots__ = ()

    def _open_receive(self, irs: int) -> None:
        """The peer's SYN arrived: RCV.NXT = IRS + 1 and the receive buffer exists."""
        config = self._config
        self._irs = irs
        self._rcv_nxt = irs + 1
        # Slack of two scale units past the buffer: a window rounded up to keep its
        # right edge from moving left (RFC 7323 §2.4) still lands in the ring.
        ring = config.recv_buffer_bytes + (2 << self._rcv_wscale)
        self._rcvbuf = ReceiveBuffer(ring, irs + 1, config.max_ooo_ranges)
        # RFC 7323 §2.2: the window in a SYN is never scaled.
        self._rcv_adv = irs + 1 + min(config.recv_buffer_bytes, 0xFFFF)
        self._last_ack_sent = irs + 1

    # -- the advertised window -----------------------------------------------------------

    def _window_edge_target(self) -> int:
        """Where the right edge may go now: the buffer's end, moved in steps of at least
        min(buffer / 2, MSS) (receiver SWS avoidance, RFC 9293 §3.8.6.2.2)."""
        buf = self._rcvbuf
        assert buf is not None
        size = self._config.recv_buffer_bytes
        edge = buf.read + size
        adv = self._rcv_adv
        if edge > adv:
            step = self._config.mss_bytes
            step = min(step, size >> 1)
            if edge - adv >= step:
                return edge
        return adv

    def _window_field(self) -> int:
        """The 16-bit window to send; records the right edge it announces.

        The right edge never moves left (RFC 9293 §3.8.6.2.2, RFC 7323 §2.4):
        when scaling would round it below what was announced, the window is
        rounded up, within the ring's slack.
        """
        shift = self._rcv_wscale
        nxt = self._rcv_nxt
        adv = self._rcv_adv
        target = self._window_edge_target()
        field = (target - nxt) >> shift
        if nxt + (field << shift) < adv:
            field += 1
            buf = self._rcvbuf
            assert buf is not None
            if nxt + (field << shift) > buf.read + buf.size:
                field -= 1
        if field > 0xFFFF:
            field = 0xFFFF
        elif field < 0:
            field = 0
        edge = nxt + (field << shift)
        if edge > adv:
            self._rcv_adv = edge
        return field

    def _window_opened_enough(self) -> bool:
        """After a read: is the window worth announcing now (Linux ``tcp_cleanup_rbuf``)?"""
        if self._rcvbuf is None or self._state not in (_ESTABLISHED, _FIN_WAIT_1, _FIN_WAIT_2):
            return False
        target = self._window_edge_target()
        current = self._rcv_adv - self._rcv_nxt
        return target > self._rcv_adv and target - self._rcv_nxt >= 2 * current

    # -- acknowledgment contents -------------------------------------------------------

    def _ack_options(self, now_ns: int) -> bytes:
        """Timestamps (RFC 7323 §3) and SACK blocks (RFC 2018 §4, a D-SACK first, RFC 2883)."""
        opts = encode_timestamps(self._ts_now(now_ns), self._ts_recent) if self._ts_ok else b""
        if self._sack_ok:
            buf = self._rcvbuf
            if self._dsack is not None or (buf is not None and buf.ooo):
                limit = MAX_SACK_BLOCKS_WITH_TS if self._ts_ok else MAX_SACK_BLOCKS
                blocks: list[tuple[int, int]] = []
                if self._dsack is not None:
                    blocks.append(self._dsack)
                if buf is not None:
                    blocks.extend(buf.sack_blocks(limit - len(blocks)))
                opts += encode_sack([(left & MASK32, right & MASK32) for left, right in blocks])
        return opts

    def _acked_now(self) -> None:
        """An ACK of RCV.NXT is going out: nothing is owed any more."""
        self._last_ack_sent = self._rcv_nxt
        self._ack_now = False
        self._delack_at = None
        self._dsack = None
        if self._dupacks_out:
            self._dupacks_out -= 1

    def _schedule_ack(self, now_ns: int) -> None:
        """In-order data arrived: ACK now if more than one full segment is unacknowledged
        (RFC 9293 §3.8.6.3, RFC 5681 §4.2), else within the delayed-ACK time."""
        if self._rcv_nxt - self._last_ack_sent > self._rcv_mss:
            self._ack_now = True
        elif self._delack_at is None:
            self._delack_at = now_ns + self._config.delayed_ack_ns

    # -- data and FIN ------------------------------------------------------------------

    def _receive_data(self, seq: int, payload: memoryview, segments: int, now_ns: int) -> None:
        """Store the acceptable part of ``payload`` (at unwrapped ``seq``) and schedule the ACK."""
        buf = self._rcvbuf
        assert buf is not None
        nxt = self._rcv_nxt
        n = len(payload)
        end = seq + n
        if seq < nxt:
            # RFC 2883: report what arrived twice in a D-SACK block.
            self._dsack = (seq, min(end, nxt))
            self._stats["dup_data_segs_in"] += 1
            if end <= nxt:
                self._ack_now = True
                return
            payload = payload[nxt - seq :]
            seq = nxt
        limit = self._rcv_adv
        if self._rcv_fin_seq is not None and self._rcv_fin_seq < limit:
            limit = self._rcv_fin_seq
        if end > limit:
            self._drop("data beyond window")
            payload = payload[: max(0, limit - seq)]
        if not payload:
            self._ack_now = True
            return
        per_segment = len(payload) // segments if segments > 1 else len(payload)
        if per_segment > self._rcv_mss:
            self._rcv_mss = min(per_segment, self._config.mss_bytes)
        readable_before = buf.nxt - buf.read
        if seq == nxt:
            held = buf.ooo_bytes
            buf.append(payload)
            self._rcv_nxt = buf.nxt
            self._bytes_received += len(payload)
            if held:
                self._ack_now = True  # (part of) a hole was filled: ACK at once (RFC 5681 §4.2)
            else:
                self._schedule_ack(now_ns)
            if self._rcv_fin_seq is not None and self._rcv_nxt == self._rcv_fin_seq:
                self._take_fin(now_ns)
        else:
            verdict = buf.insert(seq, payload)
            if verdict is None:
                self._drop("out-of-order ranges full")
            elif verdict:
                self._dsack = (seq, seq + len(payload))
            else:
                self._stats["ooo_segs_in"] += 1
            # RFC 5681 §4.2: an out-of-order segment is acknowledged at once.
            self._ack_now = True
            self._dupacks_out += 1
        if readable_before == 0 and buf.nxt > buf.read and self._want_read_event:
            self._want_read_event = False
            self._event(DataReceived())

    def _receive_fin(self, fin_seq: int, now_ns: int) -> None:
        """A FIN at unwrapped ``fin_seq``: take it now if all data before it is here."""
        if self._fin_received:
            self._ack_now = True  # a retransmitted FIN
            return
        self._rcv_fin_seq = fin_seq
        if fin_seq == self._rcv_nxt:
            self._take_fin(now_ns)
        else:
            self._ack_now = True

    def _take_fin(self, now_ns: int) -> None:
        # RFC 9293 §3.10.7.4 eighth: advance RCV.NXT over the FIN, ACK it, report EOF.
        self._rcv_nxt += 1
        self._fin_received = True
        self._ack_now = True
        state = self._state
        if state is _FIN_WAIT_1 and self._fin_acked:
            self._transition(Trigger.RCV_FIN_ACK_OF_FIN)
        else:
            self._transition(Trigger.RCV_FIN)
        self._event(PeerClosed())
        if self._state is TcpState.TIME_WAIT:
            self._enter_time_wait(now_ns)
