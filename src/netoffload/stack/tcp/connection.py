"""``TcpConnection``: one TCP connection as a sans-I/O state machine (RFC 9293 and friends).

The stack feeds it segments (``on_segment``) and the time, asks it for
segments (``poll_transmit``, only when ``has_output()``), runs its timer
(``next_timer_ns`` / ``on_timer``) and reads its events (``next_event``). The
application side is a socket's: ``send``, ``recv``, ``shutdown_write``,
``close``, ``abort``. Nothing here does I/O, reads a clock or sleeps.

What the interface driving it does:

- After ``on_segment``, ``on_timer`` or an application call, poll the
  connection if ``has_output()``; hand each ``TcpSegmentOut`` to the device
  (cut at ``mss`` by TSO or in software, CWR on the first piece, FIN and PSH on
  the last, ECT(0) when ``ect``). ``max_payload_bytes`` is the largest payload
  one segment may carry: 64 KiB less the headers with TSO, else one segment.
- Keep the connection in the 4-tuple table until its ``Closed`` event, which
  comes after any RST it still had to send; TIME-WAIT stays in the table.
- A SYN that finds a connection in TIME-WAIT: if ``state`` is CLOSED after
  ``on_segment``, the SYN opened a new incarnation (RFC 6191): remove the old
  connection and give the same segment to the listener.
- Set ``TcpConfig.mss_bytes`` from the interface MTU (1460 for IPv4 on
  Ethernet, 1440 for IPv6); report ICMP "packet too big" with
  ``set_path_mtu(mtu, ip_header + 20)`` and other ICMP errors with
  ``on_icmp_error`` (with the quoted sequence number when there is one).
- ``payload`` of a received segment need only live during ``on_segment``; the
  payload of a sent one stays valid until the stack has handed it on (the send
  buffer reuses it only once acknowledged).

Passive opens come from a ``TcpListener`` (``listener.py``): a child starts in
SYN-RECEIVED and reports its establishment to the listener itself, which then
moves it from the SYN queue to the accept queue (see ``TcpListener``).
"""

from __future__ import annotations

import errno
import random

from netoffload.stack.tcp.buffers import SendBuffer, SendMemory
from netoffload.stack.tcp.config import TcpConfig
from netoffload.stack.tcp.errors import IcmpErrorKind, TcpError
from netoffload.stack.tcp.events import TcpEvent, Unreachable
from netoffload.stack.tcp.info import TcpInfo
from netoffload.stack.tcp.isn import IsnSource
from netoffload.stack.tcp.state import CAN_SEND, TcpState, Trigger
from netoffload.stack.tcp.tcb import LOSS, MIN_SND_MSS, OPEN, RECOVERY, Endpoint
from netoffload.stack.tcp.timers import TimerSide

_S = TcpState
_RECOVERY_NAMES = {OPEN: "open", RECOVERY: "recovery", LOSS: "loss"}


class TcpConnection(TimerSide):
    """One connection. Make it with ``connect`` (active) or get it from a ``TcpListener``."""

    __slots__ = ()

    @classmethod
    def connect(
        cls,
        local: Endpoint,
        remote: Endpoint,
        *,
        config: TcpConfig,
        now_ns: int,
        isn_source: IsnSource,
        rng: random.Random,
    ) -> TcpConnection:
        """Active open: CLOSED -> SYN-SENT with the SYN pending output."""
        conn = cls(
            local,
            remote,
            config,
            iss=isn_source.isn(local, remote, now_ns),
            ts_offset=isn_source.ts_offset(local, remote),
            rng=rng,
            now_ns=now_ns,
        )
        conn._sndbuf = SendBuffer(config.send_buffer_bytes, conn._iss + 1)
        conn._transition(Trigger.ACTIVE_OPEN)
        conn._snd_nxt = conn._iss + 1
        conn._syn_pending = True
        return conn

    # -- identity and state --------------------------------------------------------------

    @property
    def state(self) -> TcpState:
        """The RFC 9293 state."""
        return self._state

    @property
    def local(self) -> Endpoint:
        """(address, port) of this end."""
        return self._local

    @property
    def remote(self) -> Endpoint:
        """(address, port) of the peer."""
        return self._remote

    @property
    def mss_bytes(self) -> int:
        """The effective send MSS now (peer's option, path MTU, our own limit)."""
        return self._mss

    @property
    def config(self) -> TcpConfig:
        """The settings the connection was made with."""
        return self._config

    def next_event(self) -> TcpEvent | None:
        """The oldest event not yet taken, or ``None``."""
        events = self._events
        return events.popleft() if events else None

    # -- options -------------------------------------------------------------------------

    @property
    def nodelay(self) -> bool:
        """``TCP_NODELAY``: Nagle's algorithm off."""
        return self._nodelay

    @nodelay.setter
    def nodelay(self, value: bool) -> None:
        self._nodelay = bool(value)

    def set_keepalive(
        self,
        enabled: bool,
        *,
        idle_ns: int | None = None,
        interval_ns: int | None = None,
        probes: int | None = None,
    ) -> None:
        """``SO_KEEPALIVE`` with ``TCP_KEEPIDLE``, ``TCP_KEEPINTVL`` and ``TCP_KEEPCNT``."""
        for value in (idle_ns, interval_ns, probes):
            if value is not None and value <= 0:
                raise TcpError(errno.EINVAL, "keep-alive settings must be positive")
        self._ka_on = bool(enabled)
        if idle_ns is not None:
            self._ka_idle_ns = idle_ns
        if interval_ns is not None:
            self._ka_interval_ns = interval_ns
        if probes is not None:
            self._ka_probes_max = probes

    # -- sending -------------------------------------------------------------------------

    def _write_error(self) -> TcpError:
        if self._error is not None:
            err, self._error = self._error, None
            return TcpError(err)
        return TcpError(errno.EPIPE)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Copy what fits of ``data`` into the send buffer; bytes taken (0 when full)."""
        if self._state not in CAN_SEND or self._fin_queued:
            raise self._write_error()
        buf = self._sndbuf
        if buf is None:
            raise TcpError(errno.ENOTCONN)
        n = buf.write(data)
        if n < len(data):
            self._want_write_event = True
        return n

    def use_send_memory(self, memory: SendMemory) -> bool:
        """Keep the send buffer in ``memory`` (a device's, which sends from it in place);
        False, and nothing changed, once something was written to the buffer."""
        buf = self._sndbuf
        start = self._iss + 1
        if buf is not None and (buf.tail != start or buf.memory is not None):
            return False
        self._sndbuf = SendBuffer(self._config.send_buffer_bytes, start, memory)
        return True

    def send_space(self) -> int:
        """Free bytes in the send buffer."""
        buf = self._sndbuf
        if buf is None or self._state not in CAN_SEND or self._fin_queued:
            return 0
        return buf.free()

    def shutdown_write(self) -> None:
        """Send FIN after the queued data (``shutdown(SHUT_WR)``)."""
        state = self._state
        if state is _S.CLOSED or state is _S.SYN_SENT or state is _S.LISTEN:
            raise TcpError(errno.ENOTCONN)
        if self._fin_queued or state not in CAN_SEND:
            return
        self._fin_queued = True
        self._transition(Trigger.CLOSE)

    # -- receiving -----------------------------------------------------------------------

    @property
    def unacknowledged_bytes(self) -> int:
        """Bytes received in order that no ACK sent so far covers."""
        return self._rcv_nxt - self._last_ack_sent

    def readable(self) -> int:
        """In-order bytes ready for ``recv``."""
        buf = self._rcvbuf
        return buf.nxt - buf.read if buf is not None else 0

    def _read_done(self, n: int) -> None:
        buf = self._rcvbuf
        assert buf is not None
        if buf.nxt == buf.read:
            self._want_read_event = True
        if self._window_opened_enough():
            self._ack_now = True  # a window update (RFC 9293 §3.8.6.2.2)

    def _nothing_to_read(self) -> None:
        """No data: EOF returns normally; anything else raises."""
        if self._app_closed:
            raise TcpError(errno.EBADF)
        if self._fin_received:
            return
        if self._error is not None:
            err, self._error = self._error, None
            raise TcpError(err)
        if self._state is _S.CLOSED:
            return
        raise TcpError(errno.EAGAIN)

    def recv(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` at end of stream; ``EAGAIN`` if none yet."""
        if max_bytes < 0:
            raise TcpError(errno.EINVAL)
        buf = self._rcvbuf
        if buf is not None and buf.nxt > buf.read and max_bytes:
            data = buf.read_bytes(max_bytes)
            self._read_done(len(data))
            return data
        if max_bytes == 0:
            return b""
        self._nothing_to_read()
        return b""

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Like ``recv`` into ``buffer``; 0 at end of stream."""
        target = memoryview(buffer)
        if target.readonly:
            raise TcpError(errno.EFAULT)
        if target.format != "B" or target.ndim != 1:
            target = target.cast("B")
        buf = self._rcvbuf
        if buf is not None and buf.nxt > buf.read and len(target):
            n = buf.read_into(target)
            self._read_done(n)
            return n
        if not len(target):
            return 0
        self._nothing_to_read()
        return 0

    # -- ending --------------------------------------------------------------------------

    def close(self) -> None:
        """Close both directions; a RST instead of FIN if received data is left unread
        (RFC 2525 §2.17, as Linux)."""
        state = self._state
        if state is _S.CLOSED or self._app_closed:
            self._app_closed = True
            return
        self._app_closed = True
        if state is _S.SYN_SENT:
            self._transition(Trigger.CLOSE)
            self._set_closed()
            return
        if self.readable() and state is not _S.TIME_WAIT:
            self._stats["resets_out"] += 1
            self._rst_pending = True
            self._set_closed()
            return
        if not self._fin_queued and state in CAN_SEND:
            self._fin_queued = True
            self._transition(Trigger.CLOSE)
        elif self._state is _S.FIN_WAIT_2:
            self._misc_at = self._last_rcv_ns + self._config.fin_wait2_timeout_ns

    def abort(self) -> None:
        """Reset the connection now (RFC 9293 ABORT)."""
        state = self._state
        if state is _S.CLOSED:
            return
        if state in (_S.SYN_RECEIVED, _S.ESTABLISHED, _S.FIN_WAIT_1, _S.FIN_WAIT_2, _S.CLOSE_WAIT):
            self._rst_pending = True
            self._stats["resets_out"] += 1
        self._app_closed = True
        self._set_closed()

    # -- the path ------------------------------------------------------------------------

    def set_path_mtu(self, mtu_bytes: int, header_bytes: int) -> None:
        """The path MTU is now ``mtu_bytes``; ``header_bytes`` is the IP header plus the
        20-byte TCP header. A smaller MSS retransmits what is in flight at once
        (Linux ``tcp_simple_retransmit``: no congestion response)."""
        pmtu_mss = max(mtu_bytes - header_bytes, MIN_SND_MSS)
        if pmtu_mss >= self._pmtu_mss:
            return
        old = self._mss
        self._pmtu_mss = pmtu_mss
        if self._state is _S.SYN_SENT or self._state is _S.CLOSED:
            return
        self._update_mss()
        if self._mss < old:
            self._cc.set_mss(self._mss)
            if self._snd_nxt > self._snd_una:
                self._sb.mark_all_lost()
                if self._recovery == OPEN:
                    self._recovery = LOSS
                    self._recover_seq = self._snd_nxt
            self._stats["pmtu_reductions"] += 1

    def on_icmp_error(self, kind: IcmpErrorKind, now_ns: int, *, seq: int | None = None) -> None:
        """An ICMP error for this connection. ``seq`` is the sequence number of the quoted
        segment if the stack has it: outside SND.UNA..SND.NXT it is ignored (RFC 5927 §4.1).
        During the handshake it aborts the connection; later it is kept as a soft
        error that a timeout reports (RFC 1122 §4.2.3.9, as Linux)."""
        if seq is not None:
            una = self._snd_una
            if not 0 <= (seq - una) & 0xFFFFFFFF <= self._snd_nxt - una:
                self._drop("ICMP for a sequence number not in flight")
                return
        state = self._state
        if state is _S.SYN_SENT or (state is _S.SYN_RECEIVED and not self._passive):
            self._error = kind.errno
            self._event(Unreachable(kind))
            self._set_closed()
        elif state is _S.SYN_RECEIVED:
            self._set_closed()
        elif state is not _S.CLOSED:
            self._soft_error = kind

    # -- metrics -------------------------------------------------------------------------

    def info(self) -> TcpInfo:
        """Counters, estimates and buffer use."""
        rtt = self._rtt
        cc = self._cc
        sb = self._sb
        stats = self._stats
        sndbuf = self._sndbuf
        rcvbuf = self._rcvbuf
        return TcpInfo(
            state=self._state,
            srtt_ns=rtt.srtt_ns,
            rttvar_ns=rtt.rttvar_ns,
            rto_ns=rtt.rto_ns(),
            min_rtt_ns=rtt.min_rtt_ns,
            latest_rtt_ns=rtt.latest_ns,
            rtt_samples=rtt.samples,
            backoff=rtt.backoff,
            congestion_control=cc.name,
            cwnd_bytes=cc.cwnd,
            ssthresh_bytes=cc.ssthresh,
            recovery=_RECOVERY_NAMES[self._recovery],
            in_flight_bytes=self._pipe(),
            sacked_bytes=sb.sacked_bytes,
            lost_bytes=sb.lost_bytes,
            scoreboard_entries=len(sb),
            reordering_seen=sb.reordering_seen,
            mss_bytes=self._mss,
            peer_mss_bytes=self._peer_mss,
            rcv_mss_bytes=self._rcv_mss,
            timestamps=self._ts_ok,
            sack=self._sack_ok,
            window_scaling=self._wscale_ok,
            snd_wscale=self._snd_wscale,
            rcv_wscale=self._rcv_wscale,
            ecn=self._ecn_ok,
            snd_wnd_bytes=self._snd_wnd,
            rcv_wnd_bytes=max(0, self._rcv_adv - self._rcv_nxt),
            send_buffer_bytes=self._config.send_buffer_bytes,
            send_buffer_used_bytes=sndbuf.used() if sndbuf is not None else 0,
            send_buffer_in_device=sndbuf is not None and sndbuf.memory is not None,
            send_buffer_held_bytes=sndbuf.held_bytes if sndbuf is not None else 0,
            unsent_bytes=max(0, sndbuf.tail - self._snd_nxt) if sndbuf is not None else 0,
            recv_buffer_bytes=self._config.recv_buffer_bytes,
            readable_bytes=self.readable(),
            ooo_bytes=rcvbuf.ooo_bytes if rcvbuf is not None else 0,
            ooo_ranges=len(rcvbuf.ooo) if rcvbuf is not None else 0,
            bytes_sent=self._bytes_sent,
            bytes_retransmitted=stats["bytes_retransmitted"],
            bytes_acked=self._bytes_acked,
            bytes_received=self._bytes_received,
            segs_in=self._segs_in,
            segs_out=self._segs_out,
            data_segs_out=self._data_segs_out,
            retransmitted_segs=stats["retransmitted_segs"],
            fast_recoveries=stats["fast_recoveries"],
            rtos=stats["rtos"],
            tlp_probes=stats["tlp_probes"],
            tlp_recoveries=stats["tlp_recoveries"],
            sack_blocks_in=stats["sack_blocks_in"],
            dsacks_in=stats["dsacks_in"],
            dupacks_in=stats["dupacks_in"],
            ooo_segs_in=stats["ooo_segs_in"],
            challenge_acks_sent=stats["challenge_acks_sent"],
            challenge_acks_suppressed=stats["challenge_acks_suppressed"],
            ecn_reductions=stats["ecn_reductions"],
            ce_in=stats["ce_in"],
            window_probes=stats["window_probes"],
            keepalive_probes=stats["keepalive_probes"],
            syn_retransmits=stats["syn_retransmits"],
            drops=dict(self._drops),
        )

    def __repr__(self) -> str:
        return f"<TcpConnection {self._local} -> {self._remote} {self._state.value}>"
