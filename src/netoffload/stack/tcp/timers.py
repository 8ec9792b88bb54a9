"""Timers: one deadline out (``next_timer_ns``), every expiry handled in ``on_timer``."""

from __future__ import annotations

import errno
from typing import Final

from netoffload.stack.tcp.events import TimedOut
from netoffload.stack.tcp.input import InputSide
from netoffload.stack.tcp.state import TcpState, Trigger
from netoffload.stack.tcp.tcb import PROBE_KEEPALIVE, PROBE_TLP, PROBE_WINDOW

_S = TcpState
#: States in which keep-alive probes may run (Linux: all but CLOSE, SYN-SENT, LISTEN).
_KEEPALIVE_STATES: Final = frozenset({_S.ESTABLISHED, _S.CLOSE_WAIT, _S.FIN_WAIT_2})


class TimerSide(InputSide):
    """The retransmission, probe, reordering, persist, delayed-ACK, keep-alive and
    TIME-WAIT timers."""

    __slots__ = ()

    def _keepalive_at(self) -> int | None:
        if not self._ka_on or self._state not in _KEEPALIVE_STATES:
            return None
        if self._snd_una != self._snd_nxt or (
            self._sndbuf is not None and self._sndbuf.tail != self._snd_nxt
        ):
            return None
        return self._last_rcv_ns + self._ka_idle_ns + self._ka_probes * self._ka_interval_ns

    def next_timer_ns(self) -> int | None:
        """The earliest deadline at which ``on_timer`` has work, or ``None``."""
        best = self._rto_at
        for at in (self._tlp_at, self._reo_at, self._persist_at, self._delack_at, self._misc_at):
            if at is not None and (best is None or at < best):
                best = at
        if self._ka_on:
            at = self._keepalive_at()
            if at is not None and (best is None or at < best):
                best = at
        return best

    def on_timer(self, now_ns: int) -> None:
        """Run every timer due at ``now_ns`` (early calls are harmless)."""
        at = self._delack_at
        if at is not None and now_ns >= at:
            self._delack_at = None
            if self._rcv_nxt != self._last_ack_sent:
                self._ack_now = True
        at = self._reo_at
        if at is not None and now_ns >= at:
            self._reo_at = None
            self._detect_loss(now_ns)
        at = self._tlp_at
        if at is not None and now_ns >= at:
            self._tlp_at = None
            if self._snd_nxt != self._snd_una:
                self._probe_pending = PROBE_TLP
        at = self._rto_at
        if at is not None and now_ns >= at:
            self._rto_at = None
            self._on_rto(now_ns)
        at = self._persist_at
        if at is not None and now_ns >= at:
            self._persist_at = None
            self._on_persist()
        at = self._misc_at
        if at is not None and now_ns >= at:
            self._misc_at = None
            self._on_misc()
        if self._ka_on:
            at = self._keepalive_at()
            if at is not None and now_ns >= at:
                self._on_keepalive()
        self._maybe_emit_closed()

    def _give_up(self, reason: str, *, reset: bool) -> None:
        self._error = self._soft_error.errno if self._soft_error is not None else errno.ETIMEDOUT
        self._event(TimedOut(reason, self._soft_error))
        if reset:
            self._rst_pending = True
        self._set_closed()

    def _on_rto(self, now_ns: int) -> None:
        config = self._config
        if self._snd_una == self._iss:
            # The SYN (SYN-SENT) or SYN,ACK (SYN-RECEIVED) went unanswered.
            limit = config.syn_retries if self._state is _S.SYN_SENT else config.synack_retries
            if self._retries >= limit:
                self._give_up("handshake", reset=False)
                return
            self._retries += 1
            self._rtt.back_off()
            self._syn_retransmitted = True
            self._syn_pending = True
            self._stats["syn_retransmits"] += 1
            return
        if self._snd_una == self._snd_nxt:
            return
        if self._retries >= config.retries:
            self._give_up("retransmissions", reset=False)
            return
        self._retries += 1
        self._after_rto(now_ns)

    def _on_persist(self) -> None:
        buf = self._sndbuf
        if buf is None or self._snd_una != self._snd_nxt or buf.tail == self._snd_nxt:
            return
        if self._persist_unanswered >= self._config.retries:
            self._give_up("window probes", reset=False)
            return
        self._persist_probes += 1
        self._persist_unanswered += 1
        self._probe_pending = PROBE_WINDOW

    def _on_keepalive(self) -> None:
        if self._ka_probes >= self._ka_probes_max:
            self._give_up("keep-alive", reset=True)
            return
        self._ka_probes += 1
        self._probe_pending = PROBE_KEEPALIVE

    def _on_misc(self) -> None:
        state = self._state
        if state is _S.TIME_WAIT:
            self._transition(Trigger.TIMEOUT_2MSL)
            self._set_closed()
        elif state is _S.FIN_WAIT_2 and self._app_closed:
            self._stats["fin_wait2_timeouts"] += 1
            self._set_closed()
