"""The sending half's reaction to ACKs: RTT, congestion control, SACK, RACK-TLP and recovery.

Loss detection is RACK-TLP (RFC 8985) when the peer does SACK, as in Linux;
what to send during recovery follows RFC 6675 (pipe, NextSeg rule 1), with
the first retransmission sent at once (§5 step 4.3). Without SACK it is
NewReno (RFC 6582): three duplicate ACKs, window inflation, partial ACKs.
"""

from __future__ import annotations

from netoffload.stack.tcp.events import SendSpaceFreed
from netoffload.stack.tcp.recv import ReceiveSide
from netoffload.stack.tcp.tcb import (
    DUPTHRESH,
    HALF32,
    LOSS,
    MASK32,
    MS,
    OPEN,
    RECOVERY,
    WCDELACK_NS,
)


class AckSide(ReceiveSide):
    """What an acceptable ACK does to the send state."""

    __slots__ = ()

    def _echo_ms(self, tsecr: int | None, now_ns: int) -> int:
        """When (in ms of ``now_ns``'s clock) the echoed TSval was sent; -1 if unknown."""
        if tsecr is None or not self._ts_ok:
            return -1
        age = (self._ts_now(now_ns) - tsecr) & MASK32
        if age >= HALF32:
            return -1
        return now_ns // MS - age

    def _update_window(self, seq: int, ack: int, window: int) -> None:
        """RFC 9293 §3.10.7.4 fifth: take SEG.WND if this segment is newer (SND.WL1, SND.WL2)."""
        wl1 = self._snd_wl1
        if wl1 < seq or (wl1 == seq and self._snd_wl2 <= ack):
            wnd = window << self._snd_wscale
            self._snd_wnd = wnd
            self._snd_wl1 = seq
            self._snd_wl2 = ack
            self._max_snd_wnd = max(self._max_snd_wnd, wnd)
            if wnd and self._persist_at is not None:
                self._persist_at = None
            if wnd:
                self._persist_probes = 0

    def _on_ack(  # noqa: PLR0917 - called per segment: positional on purpose
        self,
        ack: int,
        seq: int,
        window: int,
        tsecr: int | None,
        sack: tuple[tuple[int, int], ...] | None,
        ece: bool,
        pure: bool,
        now_ns: int,
    ) -> None:
        """An acceptable ACK (SND.UNA - MAX.SND.WND <= ``ack`` <= SND.NXT, all unwrapped)."""
        una = self._snd_una
        old_wnd = self._snd_wnd
        self._persist_unanswered = 0
        self._update_window(seq, ack, window)
        echo_ms = self._echo_ms(tsecr, now_ns)
        if ack > una:
            self._ack_advanced(ack, echo_ms, now_ns)
        elif ack == una and pure and self._snd_nxt > una and self._snd_wnd == old_wnd:
            self._duplicate_ack(now_ns)
        dsack = False
        if sack is not None and self._sack_ok:
            dsack = self._on_sack(sack, echo_ms, now_ns)
        if self._tlp_end is not None:
            self._tlp_on_ack(ack, dsack, pure and ack == una, now_ns)
        if ece and self._ecn_ok:
            self._on_ece(now_ns)
        if self._sack_ok and (self._sb.sacked_bytes or self._recovery != OPEN):
            self._detect_loss(now_ns)

    def _ack_advanced(self, ack: int, echo_ms: int, now_ns: int) -> None:
        una = self._snd_una
        acked = ack - una
        rtt = self._rtt
        sample = self._sb.ack(ack, now_ns, echo_ms, rtt.min_rtt_ns)
        if sample >= 0:
            rtt.sample(sample, now_ns)
        elif echo_ms >= 0:
            # RFC 7323 §4.1: TSecr of an ACK for new data measures even a
            # retransmitted segment's RTT (Karn's ambiguity does not arise).
            rtt.sample((now_ns // MS - echo_ms) * MS, now_ns)
        self._snd_una = ack
        buf = self._sndbuf
        assert buf is not None
        buf.release(ack)
        if self._fin_sent and ack > buf.tail:
            self._fin_acked = True
            acked -= 1
        self._bytes_acked += acked
        self._retries = 0
        self._dupacks = 0
        recovery = self._recovery
        if recovery == OPEN:
            # No growth while the window that met an ECN reduction is still in flight
            # (RFC 3168 §6.1.2; Linux's CWR state).
            if self._cwnd_limited and ack >= self._ecn_high:
                self._cc.on_ack(acked, now_ns, rtt.srtt_ns)
        elif ack >= self._recover_seq:
            self._exit_recovery()
        elif recovery == RECOVERY:
            if not self._sack_ok:
                # RFC 6582 step 5: partial ACK: retransmit the next hole, deflate
                # by what was acked, add back one MSS if at least that much was.
                cc = self._cc
                mss = cc.mss
                cwnd = cc.cwnd - acked + (mss if acked >= mss else 0)
                cc.cwnd = cwnd if cwnd > mss else mss
                self._sb.mark_head_lost(mss)
                self._force_retransmit = True
        elif self._cwnd_limited:
            self._cc.on_ack(acked, now_ns, rtt.srtt_ns)  # slow start after an RTO
        # RFC 6298 §5.2 and §5.3: stop the timer when all is acked, else restart it.
        if ack >= self._snd_nxt:
            self._rto_at = None
            self._tlp_at = None
            self._reo_at = None
        else:
            self._rto_at = now_ns + rtt.rto_ns()
            self._arm_tlp(now_ns)
        if self._want_write_event:
            self._want_write_event = False
            self._event(SendSpaceFreed())

    def _arm_tlp(self, now_ns: int) -> None:
        """RFC 8985 §7.2: PTO = 2·SRTT (+ a delayed ACK for a lone segment), before the RTO."""
        if (
            self._tlp_end is not None
            or self._recovery != OPEN
            or not self._sack_ok
            or not self._config.tail_loss_probe
            or self._sb.sacked_bytes
            or self._rto_at is None
        ):
            self._tlp_at = None
            return
        srtt = self._rtt.srtt_ns
        if not srtt:
            self._tlp_at = None
            return
        pto = 2 * srtt
        if self._snd_nxt - self._snd_una <= self._mss:
            pto += WCDELACK_NS
        at = now_ns + pto
        self._tlp_at = at if at < self._rto_at else None

    def _duplicate_ack(self, now_ns: int) -> None:
        """RFC 5681 §2 duplicate ACK; without SACK it drives NewReno (RFC 6582 steps 2 and 3)."""
        self._dupacks += 1
        self._stats["dupacks_in"] += 1
        if self._sack_ok:
            return
        cc = self._cc
        if self._recovery == RECOVERY:
            cc.cwnd += cc.mss
        elif (
            self._dupacks == DUPTHRESH
            and self._recovery == OPEN
            and self._snd_una > self._recover_seq
        ):
            self._enter_recovery(now_ns)
            cc.cwnd = cc.ssthresh + DUPTHRESH * cc.mss
            self._sb.mark_head_lost(cc.mss)

    def _enter_recovery(self, now_ns: int) -> None:
        """Fast retransmit: back off once, remember the recovery point, resend the first loss."""
        self._cc.on_congestion(now_ns, self._flight())
        self._recovery = RECOVERY
        self._recover_seq = self._snd_nxt
        self._force_retransmit = True
        self._tlp_at = None
        self._stats["fast_recoveries"] += 1

    def _exit_recovery(self) -> None:
        cc = self._cc
        if self._recovery == RECOVERY:
            if not self._sack_ok:
                # RFC 6582 step 4, first option.
                flight = self._flight()
                cc.cwnd = min(cc.ssthresh, max(flight, cc.mss) + cc.mss)
            elif cc.cwnd > cc.ssthresh:
                cc.cwnd = cc.ssthresh
            self._sb.on_recovery_exit()
        self._recovery = OPEN
        self._force_retransmit = False

    def _on_sack(self, blocks: tuple[tuple[int, int], ...], echo_ms: int, now_ns: int) -> bool:
        """Apply SACK blocks (RFC 2018); returns whether the first was a D-SACK (RFC 2883 §4)."""
        sb = self._sb
        una = self._snd_una
        nxt = self._snd_nxt
        mss = self._mss
        min_rtt = self._rtt.min_rtt_ns
        stats = self._stats
        stats["sack_blocks_in"] += len(blocks)
        dsack = False
        for i, (left32, right32) in enumerate(blocks):
            left = self._unwrap_ack(left32)
            right = self._unwrap_ack(right32)
            if i == 0 and left < right:
                second = blocks[1] if len(blocks) > 1 else None
                inside = False
                if second is not None:
                    second_left = self._unwrap_ack(second[0])
                    second_right = self._unwrap_ack(second[1])
                    inside = second_left <= left and right <= second_right
                if right <= una or inside:
                    dsack = True
                    stats["dsacks_in"] += 1
                    sb.on_dsack(una, nxt)
                    continue
            if right > nxt or left >= right:
                stats["sack_blocks_invalid"] += 1
                continue
            left = max(left, una)
            if left < right:
                sb.sack(left, right, mss, now_ns, echo_ms, min_rtt)
        return dsack

    def _detect_loss(self, now_ns: int) -> None:
        """RFC 8985 §6.2 step 5, and entry into recovery when it finds a loss."""
        sb = self._sb
        rtt = self._rtt
        reo = sb.reo_wnd(rtt.min_rtt_ns, rtt.srtt_ns, self._recovery != OPEN, DUPTHRESH * self._mss)
        timeout = sb.detect_loss(now_ns, reo)
        self._reo_at = now_ns + timeout if timeout else None
        if sb.lost_bytes and self._recovery == OPEN:
            self._enter_recovery(now_ns)

    def _tlp_on_ack(self, ack: int, dsack: bool, pure_dup: bool, now_ns: int) -> None:
        """RFC 8985 §7.4.2: did the probe repair a loss, or was it redundant?"""
        end = self._tlp_end
        assert end is not None
        if ack < end:
            return
        self._tlp_end = None
        if not self._tlp_retrans or dsack:
            return
        if ack > end or pure_dup:
            self._cc.on_congestion(now_ns, self._flight())
            self._stats["tlp_recoveries"] += 1

    def _on_ece(self, now_ns: int) -> None:
        """RFC 3168 §6.1.2: halve (per the controller) at most once per window, then send CWR."""
        self._stats["ece_in"] += 1
        if self._recovery != OPEN or self._snd_una < self._ecn_high:
            return
        self._cc.on_congestion(now_ns, self._flight(), ecn=True)
        self._ecn_high = self._snd_nxt
        self._cwr_pending = True
        self._stats["ecn_reductions"] += 1

    def _after_rto(self, now_ns: int) -> None:
        """RFC 6298 §5.4-5.6, RFC 8985 §6.3: back off, mark all lost, restart from one segment."""
        sb = self._sb
        if sb.q and sb.q[0].flags & 1:
            sb.clear_sacks()  # the head was SACKed yet not acked: the receiver reneged
        self._rtt.back_off()
        if self._recovery != LOSS:
            self._cc.on_timeout(now_ns, self._flight())
        else:
            self._cc.cwnd = self._cc.mss
        self._recovery = LOSS
        self._recover_seq = self._snd_nxt
        self._dupacks = 0
        self._tlp_end = None
        self._tlp_at = None
        self._reo_at = None
        sb.mark_all_lost()
        self._stats["rtos"] += 1
