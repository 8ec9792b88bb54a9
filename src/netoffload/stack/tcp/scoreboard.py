"""What was sent and not yet cumulatively acknowledged, as ranges, and RACK loss detection.

One ``Burst`` stands for everything sent in one go (a 64 KiB super-packet, or
several sent at the same instant): a range, its send time and its state. A
SACK block splits a burst only where it must, at multiples of the MSS from the
burst's start (Linux's ``tcp_match_skb_to_sack`` does the same, which also
bounds how finely a hostile receiver can cut the scoreboard).

Counters in bytes give RFC 6675's ``pipe`` without a walk, in the form Linux
uses: ``pipe = flight - sacked - lost + retransmitted``.

Loss detection is RACK (RFC 8985 §6): a range is lost once a range sent after
it was delivered and more than ``RACK.rtt + reo_wnd`` has passed since it was
sent. The connection runs it only when something was SACKed or recovery is
under way; on the common path, ACKs trim the front and nothing else.
"""

from __future__ import annotations

from typing import Final

SACKED: Final = 1
#: Marked lost and not yet retransmitted (with RETRANS: retransmitted since).
LOST: Final = 2
#: The copy in flight is a retransmission.
RETRANS: Final = 4
#: Retransmitted at some point (Karn: no RTT sample from it without timestamps).
EVER_RETRANS: Final = 8
#: The range's last sequence number is our FIN.
FIN: Final = 16

_COUNTED: Final = SACKED | LOST | RETRANS


class Burst:
    """``[start, end)`` sent at ``xmit_ns`` (the latest transmission) with state ``flags``."""

    __slots__ = ("end", "flags", "start", "xmit_ns")

    def __init__(self, start: int, end: int, xmit_ns: int, flags: int) -> None:
        self.start = start
        self.end = end
        self.xmit_ns = xmit_ns
        self.flags = flags

    def __repr__(self) -> str:
        return f"Burst({self.start}, {self.end}, {self.xmit_ns}, {self.flags:#x})"


class Scoreboard:
    """Bursts covering ``[snd.una, snd.nxt)`` in sequence order, and RACK's state."""

    __slots__ = (
        "dsack_round",
        "fack",
        "lost_bytes",
        "lost_unsent_bytes",
        "q",
        "rack_end",
        "rack_rtt_ns",
        "rack_xmit_ns",
        "reo_wnd_mult",
        "reo_wnd_persist",
        "reordering_seen",
        "retrans_bytes",
        "sacked_bytes",
    )

    def __init__(self, start: int) -> None:
        self.q: list[Burst] = []
        self.sacked_bytes = 0
        self.lost_bytes = 0
        self.lost_unsent_bytes = 0
        self.retrans_bytes = 0
        #: Highest end of anything delivered, cumulatively or selectively.
        self.fack = start
        #: RACK.xmit_ts, RACK.end_seq, RACK.rtt (RFC 8985 §6.1); -1 before any delivery.
        self.rack_xmit_ns = -1
        self.rack_end = start
        self.rack_rtt_ns = 0
        self.reordering_seen = False
        self.reo_wnd_mult = 1
        self.reo_wnd_persist = 0
        self.dsack_round: int | None = None

    # -- bookkeeping -------------------------------------------------------------------

    def _count(self, flags: int, n: int) -> None:
        if flags & SACKED:
            self.sacked_bytes += n
            return
        if flags & LOST:
            self.lost_bytes += n
            if not flags & RETRANS:
                self.lost_unsent_bytes += n
        if flags & RETRANS:
            self.retrans_bytes += n

    def _set(self, burst: Burst, flags: int) -> None:
        n = burst.end - burst.start
        if burst.flags & _COUNTED:
            self._count(burst.flags, -n)
        burst.flags = flags
        if flags & _COUNTED:
            self._count(flags, n)

    def _split(self, index: int, at: int) -> None:
        """Cut burst ``index`` at ``at``: two bursts with the same state (FIN goes right)."""
        burst = self.q[index]
        flags = burst.flags
        right = Burst(at, burst.end, burst.xmit_ns, flags)
        burst.end = at
        burst.flags = flags & ~FIN
        self.q.insert(index + 1, right)

    def append(self, start: int, end: int, now_ns: int, flags: int = 0) -> None:
        """Record a new transmission of ``[start, end)``: one burst per segment sent."""
        self.q.append(Burst(start, end, now_ns, flags))

    def split(self, at: int) -> None:
        """Cut the burst holding ``at`` there (a retransmission went out in two pieces)."""
        for i, burst in enumerate(self.q):
            if burst.start < at < burst.end:
                self._split(i, at)
                return

    # -- acknowledgments ---------------------------------------------------------------

    def ack(self, una: int, now_ns: int, echo_ms: int, min_rtt_ns: int) -> int:
        """Drop what ``una`` acknowledges; return an RTT sample in ns or -1 (Karn).

        The sample is the send time of the burst holding the newest acknowledged
        byte, if that burst was never retransmitted and not already SACKed.
        """
        q = self.q
        rtt = -1
        while q:
            burst = q[0]
            flags = burst.flags
            if burst.end <= una:
                del q[0]
                end = burst.end
                if flags & _COUNTED:
                    self._count(flags, burst.start - end)
            elif burst.start < una:
                end = una
                if flags & _COUNTED:
                    self._count(flags, burst.start - una)
                burst.start = una
            else:
                break
            if not flags & (SACKED | EVER_RETRANS):
                rtt = now_ns - burst.xmit_ns
            if not flags & SACKED:
                self._delivered(burst.xmit_ns, end, flags, now_ns, echo_ms, min_rtt_ns)
        return rtt

    def _delivered(  # noqa: PLR0917 - per delivered burst: positional on purpose
        self, xmit: int, end: int, flags: int, now_ns: int, echo_ms: int, min_rtt_ns: int
    ) -> None:
        # RFC 8985 §6.2 step 2 (RACK.xmit_ts, end_seq, rtt) and step 3 (reordering).
        if flags & EVER_RETRANS:
            if echo_ms >= 0 and echo_ms < xmit // 1_000_000:
                return  # the ACK is for the original transmission
            if now_ns - xmit < min_rtt_ns:
                return  # too soon to be for the retransmission
        elif end < self.fack:
            self.reordering_seen = True
        self.fack = max(self.fack, end)
        if xmit > self.rack_xmit_ns or (xmit == self.rack_xmit_ns and end > self.rack_end):
            self.rack_xmit_ns = xmit
            self.rack_end = end
            self.rack_rtt_ns = now_ns - xmit

    def sack(  # noqa: PLR0917 - per SACK block: positional on purpose
        self,
        left: int,
        right: int,
        mss: int,
        now_ns: int,
        echo_ms: int,
        min_rtt_ns: int,
    ) -> int:
        """Mark ``[left, right)`` SACKed (rounded inward to MSS multiples per burst).

        Returns the bytes newly SACKed. The caller has clipped the block to
        ``[snd.una, snd.nxt)``.
        """
        q = self.q
        newly = 0
        i = 0
        n = len(q)
        while i < n and q[i].end <= left:
            i += 1
        while i < n:
            burst = q[i]
            if burst.start >= right:
                break
            if burst.flags & SACKED:
                i += 1
                continue
            s = left if left > burst.start else burst.start
            t = right if right < burst.end else burst.end
            if s > burst.start:
                s = burst.start + -(-(s - burst.start) // mss) * mss
            if t < burst.end:
                t = burst.start + (t - burst.start) // mss * mss
            if s >= t:
                i += 1
                continue
            if s > burst.start:
                self._split(i, s)
                i += 1
                n += 1
                burst = q[i]
            if t < burst.end:
                self._split(i, t)
                n += 1
            self._delivered(burst.xmit_ns, burst.end, burst.flags, now_ns, echo_ms, min_rtt_ns)
            newly += burst.end - burst.start
            self._set(burst, (burst.flags & (EVER_RETRANS | FIN)) | SACKED)
            i += 1
        if newly:
            self._merge_sacked()
        return newly

    def _merge_sacked(self) -> None:
        q = self.q
        out: list[Burst] = []
        for burst in q:
            if out:
                prev = out[-1]
                if prev.flags & SACKED and burst.flags & SACKED and prev.end == burst.start:
                    prev.end = burst.end
                    prev.flags |= burst.flags
                    prev.xmit_ns = max(prev.xmit_ns, burst.xmit_ns)
                    continue
            out.append(burst)
        if len(out) != len(q):
            self.q = out

    def clear_sacks(self) -> None:
        """Forget all SACK state (the receiver reneged, RFC 2018 §8): count it all in flight."""
        for burst in self.q:
            if burst.flags & SACKED:
                self._set(burst, burst.flags & (EVER_RETRANS | FIN))

    # -- loss ---------------------------------------------------------------------------

    def reo_wnd(self, min_rtt_ns: int, srtt_ns: int, recovering: bool, dupthresh_bytes: int) -> int:
        """RACK's reordering window (RFC 8985 §6.2 step 4)."""
        if not self.reordering_seen and (recovering or self.sacked_bytes >= dupthresh_bytes):
            return 0
        wnd = (min_rtt_ns >> 2) * self.reo_wnd_mult
        return wnd if wnd < srtt_ns else srtt_ns

    def on_dsack(self, snd_una: int, snd_nxt: int) -> None:
        """A D-SACK arrived: widen the reordering window once per round trip (§6.2 step 4)."""
        if self.dsack_round is not None and snd_una >= self.dsack_round:
            self.dsack_round = None
        if self.dsack_round is None:
            self.dsack_round = snd_nxt
            self.reo_wnd_mult += 1
            self.reo_wnd_persist = 16

    def on_recovery_exit(self) -> None:
        """Recovery ended: after 16 of them without D-SACKs the window returns to 1x."""
        self.reo_wnd_persist -= 1
        if self.reo_wnd_persist <= 0:
            self.reo_wnd_mult = 1

    def detect_loss(self, now_ns: int, reo_wnd_ns: int) -> int:
        """RFC 8985 §6.2 step 5: mark lost what RACK can; return ns until the next may be, or 0."""
        rack_xmit = self.rack_xmit_ns
        if rack_xmit < 0:
            return 0
        rack_end = self.rack_end
        wait = self.rack_rtt_ns + reo_wnd_ns
        timeout = 0
        for burst in self.q:
            flags = burst.flags
            if flags & SACKED or flags & (LOST | RETRANS) == LOST:
                continue
            xmit = burst.xmit_ns
            if xmit < rack_xmit or (xmit == rack_xmit and burst.end <= rack_end):
                remaining = xmit + wait - now_ns
                if remaining <= 0:
                    self._set(burst, (flags | LOST) & ~RETRANS)
                elif remaining > timeout:
                    timeout = remaining
        return timeout

    def mark_all_lost(self) -> None:
        """The retransmission timer expired: everything not SACKed is lost (RFC 8985 §6.3)."""
        for burst in self.q:
            flags = burst.flags
            if not flags & SACKED and flags & (LOST | RETRANS) != LOST:
                self._set(burst, (flags | LOST) & ~RETRANS)

    def mark_head_lost(self, length: int) -> None:
        """Mark the first ``length`` bytes lost (NewReno's retransmission without SACK)."""
        q = self.q
        if not q:
            return
        head = q[0]
        if head.flags & SACKED:
            return
        if head.end - head.start > length:
            self._split(0, head.start + length)
        head = q[0]
        self._set(head, (head.flags | LOST) & ~RETRANS)

    def take_lost(self, limit: int, mss: int, now_ns: int) -> tuple[int, int, bool] | None:
        """The first lost range not yet retransmitted, at most ``limit`` bytes (RFC 6675 NextSeg
        rule 1); it is marked retransmitted now. Returns (start, end, carries FIN)."""
        if not self.lost_unsent_bytes:
            return None
        q = self.q
        for i, burst in enumerate(q):
            if burst.flags & (SACKED | LOST | RETRANS) != LOST:
                continue
            if burst.end - burst.start > limit:
                cut = burst.start + max(mss, limit // mss * mss)
                if cut < burst.end:
                    self._split(i, cut)
            burst.xmit_ns = now_ns
            self._set(burst, burst.flags | RETRANS | EVER_RETRANS)
            return burst.start, burst.end, bool(burst.flags & FIN)
        return None

    def retransmit_tail(self, mss: int, now_ns: int) -> tuple[int, int, bool] | None:
        """RFC 8985 §7.3: retransmit the last segment (at most one MSS) as a loss probe."""
        q = self.q
        if not q:
            return None
        i = len(q) - 1
        burst = q[i]
        if burst.flags & SACKED:
            return None
        fin = 1 if burst.flags & FIN else 0
        if burst.end - fin - burst.start > mss:
            self._split(i, burst.end - fin - mss)
            i += 1
            burst = q[i]
        burst.xmit_ns = now_ns
        self._set(burst, burst.flags | RETRANS | EVER_RETRANS)
        return burst.start, burst.end, bool(burst.flags & FIN)

    def __len__(self) -> int:
        return len(self.q)
