"""An echo client for a ``ping`` command: requests, matched replies, RTTs, a summary.

``EchoClient`` sends an echo request every ``interval_ns`` from ``start_ns``
(``count`` of them, or until stopped), as whole IP packets taken with
``take_packets``. Replies and errors, handed in by the stack as the
``Icmp`` core reports them, are matched by identifier and sequence number;
events (``PingReply``, ``PingTimeout``, ``PingError``) are taken with
``take_events``. ``summary`` gives what iputils ``ping`` prints at the end.
The RTT is measured from the times passed in, never from the echoed data.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from netoffload.stack._netaddr import NS_PER_S, IpAddress
from netoffload.stack.icmp import EchoReplyReceived, IcmpErrorKind, IcmpErrorReceived
from netoffload.wire.icmpv4 import Icmpv4EchoRepr
from netoffload.wire.icmpv6 import Icmpv6EchoRepr
from netoffload.wire.ipv4 import IpProtocol, Ipv4Repr
from netoffload.wire.ipv6 import Ipv6Repr

#: Sequence numbers of answered requests remembered to spot duplicates.
ANSWERED_MEMORY: Final = 1024
_STAMP_LEN: Final = 8


@dataclass(frozen=True, slots=True)
class PingReply:
    """A reply to request ``seq``; ``corrupted`` when its data differs from what was sent."""

    seq: int
    rtt_ns: int
    ttl: int
    data_bytes: int
    duplicate: bool = False
    corrupted: bool = False


@dataclass(frozen=True, slots=True)
class PingTimeout:
    """No reply to request ``seq`` within the timeout."""

    seq: int


@dataclass(frozen=True, slots=True)
class PingError:
    """An ICMP error about request ``seq`` (e.g. host unreachable from a router)."""

    seq: int | None
    kind: IcmpErrorKind
    sender: IpAddress


PingEvent = PingReply | PingTimeout | PingError


@dataclass(frozen=True, slots=True)
class PingSummary:
    """The statistics ``ping`` prints; RTTs are ``None`` when nothing came back."""

    transmitted: int
    received: int
    duplicates: int
    corrupted: int
    errors: int
    loss_percent: float
    rtt_min_ns: int | None
    rtt_avg_ns: int | None
    rtt_max_ns: int | None
    rtt_mdev_ns: int | None


def echo_payload(sent_ns: int, size: int) -> bytes:
    """iputils' layout: the send time, then bytes counting up from the offset."""
    stamp = (sent_ns & (2**64 - 1)).to_bytes(_STAMP_LEN, "big")
    pattern = bytes(i & 0xFF for i in range(_STAMP_LEN, size))
    return (stamp + pattern)[:size]


class EchoClient:
    """Echo requests to ``destination`` from ``source``, and their bookkeeping."""

    def __init__(
        self,
        destination: IpAddress,
        source: IpAddress,
        rng: random.Random,
        *,
        start_ns: int,
        ident: int | None = None,
        count: int | None = None,
        interval_ns: int = NS_PER_S,
        timeout_ns: int = 10 * NS_PER_S,
        payload_bytes: int = 56,
        ttl: int = 64,
    ) -> None:
        if destination.version != source.version:
            raise ValueError("source and destination must be of one IP version")
        if interval_ns <= 0 or timeout_ns <= 0 or payload_bytes < 0:
            raise ValueError("interval and timeout must be positive, the payload not negative")
        self.destination = destination
        self.source = source
        self.ident = rng.getrandbits(16) if ident is None else ident
        self.count = count
        self.interval_ns = interval_ns
        self.timeout_ns = timeout_ns
        self.payload_bytes = payload_bytes
        self.ttl = ttl
        self._rng = rng
        self._next_send_ns: int | None = start_ns
        self._transmitted = 0
        self._outstanding: OrderedDict[int, int] = OrderedDict()  # seq -> sent_ns, send order
        self._answered: OrderedDict[int, int] = OrderedDict()  # seq -> sent_ns, recent
        self._rtts: list[int] = []
        self._duplicates = 0
        self._corrupted = 0
        self._errors = 0
        self._packets: list[bytes] = []
        self._events: list[PingEvent] = []

    @property
    def done(self) -> bool:
        """True when every request was sent and each is answered or timed out."""
        return self._next_send_ns is None and not self._outstanding

    def stop(self) -> None:
        """Send no more requests (Ctrl-C); outstanding ones still time out."""
        self._next_send_ns = None

    def take_packets(self) -> list[bytes]:
        """Echo requests (whole IP packets) to send."""
        out, self._packets = self._packets, []
        return out

    def take_events(self) -> list[PingEvent]:
        """Replies, timeouts and errors, in the order they happened."""
        out, self._events = self._events, []
        return out

    def next_timer_ns(self) -> int | None:
        """The next request or timeout."""
        times = [t for t in (self._next_send_ns,) if t is not None]
        for sent_ns in self._outstanding.values():
            times.append(sent_ns + self.timeout_ns)
            break  # sent in order: the first times out first
        return min(times) if times else None

    def on_timer(self, now_ns: int) -> None:
        """Time out old requests and send the ones that are due."""
        while self._outstanding:
            seq, sent_ns = next(iter(self._outstanding.items()))
            if sent_ns + self.timeout_ns > now_ns:
                break
            del self._outstanding[seq]
            self._events.append(PingTimeout(seq))
        while self._next_send_ns is not None and self._next_send_ns <= now_ns:
            self._send(now_ns)
            self._next_send_ns += self.interval_ns
            if self.count is not None and self._transmitted >= self.count:
                self._next_send_ns = None

    def _send(self, now_ns: int) -> None:
        self._transmitted += 1
        seq = self._transmitted & 0xFFFF  # iputils counts from 1
        self._outstanding.pop(seq, None)
        self._outstanding[seq] = now_ns
        data = echo_payload(now_ns, self.payload_bytes)
        if isinstance(self.destination, IPv4Address):
            assert isinstance(self.source, IPv4Address)
            body = Icmpv4EchoRepr(self.ident, seq, data).to_bytes()
            header4 = Ipv4Repr(
                self.source,
                self.destination,
                IpProtocol.ICMP,
                len(body),
                ttl=self.ttl,
                ident=self._rng.getrandbits(16),
            )
            self._packets.append(header4.to_bytes(body))
        else:
            assert isinstance(self.source, IPv6Address)
            body = Icmpv6EchoRepr(self.ident, seq, data).to_bytes(self.source, self.destination)
            header6 = Ipv6Repr(
                self.source, self.destination, IpProtocol.ICMPV6, len(body), hop_limit=self.ttl
            )
            self._packets.append(header6.to_bytes(body))

    def receive(self, reply: EchoReplyReceived, now_ns: int) -> bool:
        """Take an echo reply; ``False`` when it is not ours (another ident or peer)."""
        if (
            reply.ident != self.ident
            or reply.version != self.destination.version
            or (not self.destination.is_multicast and reply.src != self.destination)
        ):
            return False
        seq = reply.seq
        sent_ns = self._outstanding.pop(seq, None)
        duplicate = sent_ns is None
        if duplicate:
            sent_ns = self._answered.get(seq)
            if sent_ns is None:
                return True  # ours, but timed out or never sent: nothing to count
            self._duplicates += 1
        else:
            assert sent_ns is not None
            self._answered[seq] = sent_ns
            while len(self._answered) > ANSWERED_MEMORY:
                self._answered.popitem(last=False)
        corrupted = reply.data != echo_payload(sent_ns, self.payload_bytes)
        if corrupted:
            self._corrupted += 1
        rtt = now_ns - sent_ns
        if not duplicate:
            self._rtts.append(rtt)
        self._events.append(
            PingReply(
                seq, rtt, reply.ttl, len(reply.data), duplicate=duplicate, corrupted=corrupted
            )
        )
        return True

    def receive_error(self, error: IcmpErrorReceived) -> bool:
        """Take an ICMP error; ``False`` when it does not quote one of our requests."""
        flow = error.flow
        if flow.echo_ident != self.ident or flow.dst != self.destination:
            return False
        seq = flow.echo_seq
        if seq is not None:
            self._outstanding.pop(seq, None)
        self._errors += 1
        self._events.append(PingError(seq, error.kind, error.sender))
        return True

    def summary(self) -> PingSummary:
        """The statistics so far; requests still outstanding count as lost."""
        sent, got = self._transmitted, len(self._rtts)
        loss = 100.0 * (sent - got) / sent if sent else 0.0
        if not self._rtts:
            return PingSummary(
                sent, got, self._duplicates, self._corrupted, self._errors, loss, *(None,) * 4
            )
        mean = sum(self._rtts) / got
        # iputils: mdev = sqrt(mean of squares - square of mean).
        mdev = math.sqrt(max(0.0, sum(r * r for r in self._rtts) / got - mean * mean))
        return PingSummary(
            sent,
            got,
            self._duplicates,
            self._corrupted,
            self._errors,
            loss,
            min(self._rtts),
            round(mean),
            max(self._rtts),
            round(mdev),
        )
