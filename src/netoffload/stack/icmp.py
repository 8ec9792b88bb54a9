"""ICMPv4 and ICMPv6 for a host: echo replies, error messages out and in, rate limits.

``Icmp.receive`` takes a whole IP packet addressed to us (reassembled) that
carries ICMP. An echo request is answered (RFC 792, RFC 4443 section 4.2:
the data echoed unchanged); the reply is taken with ``take_packets``. An
echo reply or an error comes back as an event for the upper layers: an
``IcmpErrorReceived`` names the flow of the quoted packet (protocol,
addresses, ports) so the stack can hand it to the right TCP connection or
UDP endpoint, and "fragmentation needed" / "packet too big" lower the
``PmtuCache``.

``Icmp.error`` builds an error about a packet we received, with as much of
it quoted as fits 576 bytes (IPv4, RFC 1812 section 4.3.2.3) or 1280 bytes
(IPv6, RFC 4443 section 2.4(c)). It refuses, as RFC 1122 section 3.2.2 and
RFC 4443 section 2.4(e) require, to answer an ICMP error, a non-first
fragment, a packet to a multicast or broadcast address or link-layer group,
or one whose source is not a single host; and it is rate limited like
Linux (``icmp_ratelimit`` per destination, ``icmp_msgs_per_sec`` overall;
path MTU messages are exempt).
"""

from __future__ import annotations

import errno
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Final

from netoffload.stack._netaddr import (
    LIMITED_BROADCAST,
    NS_PER_MS,
    NS_PER_S,
    IpAddress,
    is_single_host_source,
)
from netoffload.stack.pmtu import PmtuCache
from netoffload.wire.checksum import Buffer
from netoffload.wire.error import WireError
from netoffload.wire.icmpv4 import (
    Icmpv4DestUnreachableRepr,
    Icmpv4EchoRepr,
    Icmpv4OtherRepr,
    Icmpv4Repr,
    Icmpv4TimeExceededRepr,
    Icmpv4Type,
)
from netoffload.wire.icmpv6 import Icmpv6EchoRepr, Icmpv6OtherRepr, Icmpv6Repr, Icmpv6Type
from netoffload.wire.ipv4 import IpProtocol, Ipv4Packet, Ipv4Repr
from netoffload.wire.ipv6 import (
    HEADER_LEN as IPV6_HEADER_LEN,
)
from netoffload.wire.ipv6 import (
    Ipv6FragmentRepr,
    Ipv6Packet,
    Ipv6Repr,
    walk_extension_headers,
)

#: RFC 1812 4.3.2.3: an ICMPv4 error is at most 576 bytes; RFC 4443 2.4(c): 1280 for ICMPv6.
IPV4_ERROR_MAX: Final = 576
IPV6_ERROR_MAX: Final = 1280
ICMP_HEADER_LEN: Final = 8
#: Linux sends errors with precedence "internetwork control" (IPTOS_PREC_INTERNETCONTROL).
ERROR_DSCP: Final = 0xC0 >> 2
#: Bytes of the quoted transport header the stack may need (ports; TCP sequence number).
_PORT_PROTOCOLS: Final = frozenset({IpProtocol.TCP, IpProtocol.UDP, IpProtocol.UDPLITE, 132})
# RFC 792 informational types; anything else, and any type above 18, is never answered
# with an error (Linux icmp_pointers[].error and NR_ICMP_TYPES).
_ICMPV4_INFO: Final = frozenset({0, 8, 9, 10, 13, 14, 15, 16, 17, 18})


class IcmpErrorKind(StrEnum):
    """An error, whatever its version's type and code."""

    NO_ROUTE = "no_route"
    ADMIN_PROHIBITED = "admin_prohibited"
    HOST_UNREACHABLE = "host_unreachable"
    PROTOCOL_UNREACHABLE = "protocol_unreachable"
    PORT_UNREACHABLE = "port_unreachable"
    PACKET_TOO_BIG = "packet_too_big"
    TTL_EXCEEDED = "ttl_exceeded"
    REASSEMBLY_TIMEOUT = "reassembly_timeout"
    PARAMETER_PROBLEM = "parameter_problem"
    SOURCE_ROUTE_FAILED = "source_route_failed"
    OTHER_UNREACHABLE = "other_unreachable"


_K = IcmpErrorKind
# (type, code) to send, per version.
_SEND_V4: Final = {
    _K.NO_ROUTE: (3, 0),
    _K.HOST_UNREACHABLE: (3, 1),
    _K.PROTOCOL_UNREACHABLE: (3, 2),
    _K.PORT_UNREACHABLE: (3, 3),
    _K.PACKET_TOO_BIG: (3, 4),
    _K.SOURCE_ROUTE_FAILED: (3, 5),
    _K.ADMIN_PROHIBITED: (3, 13),
    _K.TTL_EXCEEDED: (11, 0),
    _K.REASSEMBLY_TIMEOUT: (11, 1),
    _K.PARAMETER_PROBLEM: (12, 0),
}
_SEND_V6: Final = {
    _K.NO_ROUTE: (1, 0),
    _K.ADMIN_PROHIBITED: (1, 1),
    _K.HOST_UNREACHABLE: (1, 3),  # address unreachable
    _K.PORT_UNREACHABLE: (1, 4),
    _K.PACKET_TOO_BIG: (2, 0),
    _K.TTL_EXCEEDED: (3, 0),
    _K.REASSEMBLY_TIMEOUT: (3, 1),
    _K.PARAMETER_PROBLEM: (4, 0),
    _K.PROTOCOL_UNREACHABLE: (4, 1),  # unrecognized next header
}

# Received (type, code) -> kind, errno and whether the error is fatal to a connection:
# Linux's icmp_err_convert table and icmpv6_err_convert.
_RECV_V4_UNREACH: Final = [
    (_K.NO_ROUTE, errno.ENETUNREACH, False),
    (_K.HOST_UNREACHABLE, errno.EHOSTUNREACH, False),
    (_K.PROTOCOL_UNREACHABLE, errno.ENOPROTOOPT, True),
    (_K.PORT_UNREACHABLE, errno.ECONNREFUSED, True),
    (_K.PACKET_TOO_BIG, errno.EMSGSIZE, False),
    (_K.SOURCE_ROUTE_FAILED, errno.EOPNOTSUPP, False),
    (_K.NO_ROUTE, errno.ENETUNREACH, True),  # net unknown
    (_K.HOST_UNREACHABLE, errno.EHOSTDOWN, True),  # host unknown
    (_K.HOST_UNREACHABLE, errno.ENONET, True),  # host isolated
    (_K.ADMIN_PROHIBITED, errno.ENETUNREACH, True),
    (_K.ADMIN_PROHIBITED, errno.EHOSTUNREACH, True),
    (_K.NO_ROUTE, errno.ENETUNREACH, False),  # net unreachable for TOS
    (_K.HOST_UNREACHABLE, errno.EHOSTUNREACH, False),  # host unreachable for TOS
    (_K.ADMIN_PROHIBITED, errno.EHOSTUNREACH, True),  # packet filtered
    (_K.ADMIN_PROHIBITED, errno.EHOSTUNREACH, True),  # precedence violation
    (_K.ADMIN_PROHIBITED, errno.EHOSTUNREACH, True),  # precedence cut-off
]
_RECV_V6_UNREACH: Final = [
    (_K.NO_ROUTE, errno.ENETUNREACH, False),
    (_K.ADMIN_PROHIBITED, errno.EACCES, True),
    (_K.HOST_UNREACHABLE, errno.EHOSTUNREACH, False),  # beyond scope
    (_K.HOST_UNREACHABLE, errno.EHOSTUNREACH, False),
    (_K.PORT_UNREACHABLE, errno.ECONNREFUSED, True),
    (_K.ADMIN_PROHIBITED, errno.EACCES, True),  # source address failed policy
    (_K.ADMIN_PROHIBITED, errno.EACCES, True),  # reject route
]


class IcmpDrop(StrEnum):
    """Why a received message was dropped or an error not sent. Stable names for the stats."""

    MALFORMED = "malformed"
    TRUNCATED_QUOTE = "truncated_quote"
    ECHO_IGNORED = "echo_ignored"
    UNHANDLED_TYPE = "unhandled_type"
    ABOUT_ICMP_ERROR = "about_icmp_error"
    ABOUT_FRAGMENT = "about_non_first_fragment"
    ABOUT_GROUP = "about_multicast_or_broadcast"
    ABOUT_BAD_SOURCE = "about_bad_source"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True, slots=True)
class IcmpConfig:
    """Behaviour switches and limits, named after Linux's ``net.ipv4.icmp_*`` sysctls."""

    ratelimit_ns: int = 1000 * NS_PER_MS  # icmp_ratelimit, per destination
    msgs_per_sec: int = 1000  # icmp_msgs_per_sec, overall
    msgs_burst: int = 50  # icmp_msgs_burst
    max_peers: int = 4096
    echo_ignore_all: bool = False
    echo_ignore_broadcasts: bool = True
    echo_ignore_multicast_v6: bool = False
    ttl: int = 64


@dataclass(frozen=True, slots=True)
class QuotedFlow:
    """The flow of the packet an error quotes, as far as the quote shows it.

    Ports are ``None`` when the quote does not reach them (or the quoted packet
    was a non-first fragment); ``echo_ident`` is set when it was an echo request.
    """

    version: int
    protocol: int
    src: IpAddress
    dst: IpAddress
    src_port: int | None = None
    dst_port: int | None = None
    echo_ident: int | None = None
    echo_seq: int | None = None


@dataclass(frozen=True, slots=True)
class IcmpErrorReceived:
    """An ICMP error about a packet we sent.

    ``errno`` and ``fatal`` are what Linux reports to the socket (a fatal error
    aborts a connection attempt); ``mtu`` is the new path MTU when the error
    lowered it. ``transport`` holds the quoted transport header bytes (TCP
    checks the sequence number there, RFC 5927).
    """

    version: int
    kind: IcmpErrorKind
    icmp_type: int
    icmp_code: int
    sender: IpAddress
    flow: QuotedFlow
    errno: int
    fatal: bool
    mtu: int | None
    transport: bytes


@dataclass(frozen=True, slots=True)
class EchoReplyReceived:
    """An echo reply, for whoever sent the request (a ``ping``)."""

    version: int
    src: IpAddress
    dst: IpAddress
    ident: int
    seq: int
    data: bytes
    ttl: int


IcmpEvent = IcmpErrorReceived | EchoReplyReceived


@dataclass(slots=True)
class IcmpStats:
    """Counters by message, as ``/proc/net/snmp`` keeps them, and drops by reason."""

    received: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    drops: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready snapshot."""
        return {
            "received": dict(sorted(self.received.items())),
            "sent": dict(sorted(self.sent.items())),
            "drops": dict(sorted(self.drops.items())),
        }


@dataclass(slots=True)
class _Bucket:
    tokens: int
    last_ns: int


class IcmpRateLimiter:
    """Linux's two ICMP limits: a global token bucket and one per destination.

    Global (``icmp_global_allow``): ``msgs_per_sec`` credits a second, at most
    ``msgs_burst``. Per destination (``inet_peer_xrlim_allow``): time credit
    up to 6 x ``ratelimit_ns``, one ``ratelimit_ns`` per message; a new
    destination starts full. The peer table is bounded (least recently used
    goes).
    """

    BURST_FACTOR: Final = 6  # XRLIM_BURST_FACTOR

    def __init__(self, config: IcmpConfig) -> None:
        self.config = config
        self._credit = config.msgs_burst
        self._credit_ns: int | None = None
        self._peers: OrderedDict[IpAddress, _Bucket] = OrderedDict()

    def allow(self, destination: IpAddress, now_ns: int) -> bool:
        """Take one message to ``destination`` from both buckets, or refuse."""
        return self._global(now_ns) and self._peer(destination, now_ns)

    def _global(self, now_ns: int) -> bool:
        config = self.config
        if self._credit_ns is not None:
            elapsed = max(0, now_ns - self._credit_ns)
            earned = elapsed * config.msgs_per_sec // NS_PER_S
            if earned:
                self._credit = min(config.msgs_burst, self._credit + earned)
                self._credit_ns = now_ns
        else:
            self._credit_ns = now_ns
        if self._credit <= 0:
            return False
        self._credit -= 1
        return True

    def _peer(self, destination: IpAddress, now_ns: int) -> bool:
        timeout = self.config.ratelimit_ns
        if timeout <= 0:
            return True
        cap = self.BURST_FACTOR * timeout
        bucket = self._peers.pop(destination, None)
        if bucket is None:
            bucket = _Bucket(cap, now_ns)
        bucket.tokens = min(cap, bucket.tokens + max(0, now_ns - bucket.last_ns))
        bucket.last_ns = now_ns
        self._peers[destination] = bucket
        while len(self._peers) > self.config.max_peers:
            self._peers.popitem(last=False)
        if bucket.tokens < timeout:
            return False
        bucket.tokens -= timeout
        return True


def parse_quoted(version: int, quoted: Buffer) -> QuotedFlow | None:
    """The flow of the (usually truncated) packet an error quotes; ``None`` if unreadable."""
    view = memoryview(quoted)
    try:
        if version == 4:
            return _quoted_v4(view)
        return _quoted_v6(view)
    except WireError:
        return None


def _transport_fields(
    version: int, protocol: int, src: IpAddress, dst: IpAddress, l4: memoryview
) -> QuotedFlow:
    if protocol in _PORT_PROTOCOLS and len(l4) >= 4:
        src_port = int.from_bytes(l4[0:2], "big")
        dst_port = int.from_bytes(l4[2:4], "big")
        return QuotedFlow(version, protocol, src, dst, src_port, dst_port)
    echo = Icmpv4Type.ECHO_REQUEST if version == 4 else Icmpv6Type.ECHO_REQUEST
    icmp = IpProtocol.ICMP if version == 4 else IpProtocol.ICMPV6
    if protocol == icmp and len(l4) >= ICMP_HEADER_LEN and l4[0] == echo:
        ident = int.from_bytes(l4[4:6], "big")
        seq = int.from_bytes(l4[6:8], "big")
        return QuotedFlow(version, protocol, src, dst, echo_ident=ident, echo_seq=seq)
    return QuotedFlow(version, protocol, src, dst)


def _quoted_v4(view: memoryview) -> QuotedFlow:
    if len(view) < 20 or view[0] >> 4 != 4:
        raise WireError("quoted packet is not IPv4")
    # The quote is cut short, so the total length field overruns it: check only the header.
    ip = Ipv4Packet(view)
    if ip.ihl < 5 or ip.header_len > len(view):
        raise WireError("quoted IPv4 header is cut")
    l4 = view[ip.header_len :] if ip.frag_offset == 0 else view[:0]
    return _transport_fields(4, ip.protocol, ip.src, ip.dst, l4)


def _quoted_v6(view: memoryview) -> QuotedFlow:
    if len(view) < IPV6_HEADER_LEN or view[0] >> 4 != 6:
        raise WireError("quoted packet is not IPv6")
    # Walk the chain as far as the quote goes: pretend the payload ends with the quote.
    copy = bytearray(view[: IPV6_HEADER_LEN + 0xFFFF])
    Ipv6Packet(copy).payload_len = len(copy) - IPV6_HEADER_LEN
    ip = Ipv6Packet(copy)
    try:
        chain = walk_extension_headers(copy)
    except WireError:
        return QuotedFlow(6, ip.next_header, ip.src, ip.dst)
    later_fragment = any(isinstance(h, Ipv6FragmentRepr) and h.frag_offset for h in chain.headers)
    l4 = memoryview(copy)[chain.upper_offset :] if not later_fragment else memoryview(b"")
    return _transport_fields(6, chain.upper_protocol, ip.src, ip.dst, l4)


class Icmp:
    """ICMPv4 and ICMPv6 of one host: echo replies, errors out (rate limited) and in, PMTU."""

    def __init__(self, config: IcmpConfig | None = None, pmtu: PmtuCache | None = None) -> None:
        self.config = config or IcmpConfig()
        self.pmtu = pmtu if pmtu is not None else PmtuCache()
        self.limiter = IcmpRateLimiter(self.config)
        self.stats = IcmpStats()
        self._packets: list[bytes] = []

    def take_packets(self) -> list[bytes]:
        """IP packets to route and send (echo replies), oldest first."""
        out, self._packets = self._packets, []
        return out

    # --- receiving -----------------------------------------------------------------

    def receive(
        self,
        packet: Buffer,
        now_ns: int,
        *,
        to_broadcast: bool = False,
        reply_source: IpAddress | None = None,
    ) -> IcmpEvent | None:
        """Handle one IP packet carrying ICMP that was addressed to us.

        ``to_broadcast`` says the IPv4 destination was a broadcast address (the
        caller knows its subnets); ``reply_source`` is the unicast address to
        answer an echo request to a multicast group from (RFC 4443 4.2).
        """
        version = memoryview(packet)[0] >> 4 if len(packet) else 0
        try:
            if version == 4:
                return self._receive_v4(packet, now_ns, to_broadcast)
            if version == 6:
                return self._receive_v6(packet, now_ns, reply_source)
        except WireError:
            pass
        self.stats.drops[IcmpDrop.MALFORMED] += 1
        return None

    def _receive_v4(self, packet: Buffer, now_ns: int, to_broadcast: bool) -> IcmpEvent | None:
        ip = Ipv4Packet.checked(packet)
        if ip.protocol != IpProtocol.ICMP or ip.frag_offset or ip.more_frags:
            raise WireError("not a whole ICMPv4 packet")
        message = Icmpv4Repr.parse(ip.payload)
        self.stats.received[f"v4_type_{message.icmp_type}"] += 1
        if isinstance(message, Icmpv4EchoRepr):
            if message.reply:
                return EchoReplyReceived(
                    4, ip.src, ip.dst, message.ident, message.seq, message.data, ip.ttl
                )
            group = ip.dst.is_multicast or ip.dst == LIMITED_BROADCAST or to_broadcast
            if (
                self.config.echo_ignore_all
                or (group and self.config.echo_ignore_broadcasts)
                or not is_single_host_source(ip.src)
            ):
                self.stats.drops[IcmpDrop.ECHO_IGNORED] += 1
                return None
            if group:
                return None  # no unicast source to answer from
            reply = Icmpv4EchoRepr(message.ident, message.seq, message.data, reply=True)
            body = reply.to_bytes()
            header = Ipv4Repr(
                ip.dst, ip.src, IpProtocol.ICMP, len(body), ttl=self.config.ttl, dscp=ip.dscp
            )
            self._packets.append(header.to_bytes(body))
            self.stats.sent["v4_type_0"] += 1
            return None
        if isinstance(message, Icmpv4DestUnreachableRepr):
            kind, err, fatal = (
                _RECV_V4_UNREACH[message.code]
                if message.code < len(_RECV_V4_UNREACH)
                else (_K.OTHER_UNREACHABLE, errno.EHOSTUNREACH, False)
            )
            mtu = message.next_hop_mtu if kind is _K.PACKET_TOO_BIG else None
            return self._error_in(
                4,
                ip.src,
                message.quoted,
                now_ns,
                icmp_type=message.icmp_type,
                code=message.code,
                verdict=(kind, err, fatal),
                mtu=mtu,
            )
        if isinstance(message, Icmpv4TimeExceededRepr):
            kind = _K.TTL_EXCEEDED if message.code == 0 else _K.REASSEMBLY_TIMEOUT
            return self._error_in(
                4,
                ip.src,
                message.quoted,
                now_ns,
                icmp_type=message.icmp_type,
                code=message.code,
                verdict=(kind, errno.EHOSTUNREACH, False),
            )
        if isinstance(message, Icmpv4OtherRepr) and message.kind in (
            Icmpv4Type.DEST_UNREACHABLE,
            Icmpv4Type.TIME_EXCEEDED,
            Icmpv4Type.PARAMETER_PROBLEM,
        ):
            if message.kind == Icmpv4Type.PARAMETER_PROBLEM:
                kind, err, fatal = _K.PARAMETER_PROBLEM, errno.EPROTO, True
            else:
                kind, err, fatal = _K.OTHER_UNREACHABLE, errno.EHOSTUNREACH, False
            return self._error_in(
                4,
                ip.src,
                message.data,
                now_ns,
                icmp_type=message.kind,
                code=message.code,
                verdict=(kind, err, fatal),
            )
        self.stats.drops[IcmpDrop.UNHANDLED_TYPE] += 1
        return None

    def _receive_v6(
        self, packet: Buffer, now_ns: int, reply_source: IpAddress | None
    ) -> IcmpEvent | None:
        ip = Ipv6Packet.checked(packet)
        chain = walk_extension_headers(packet)
        if chain.upper_protocol != IpProtocol.ICMPV6 or any(
            isinstance(h, Ipv6FragmentRepr) for h in chain.headers
        ):
            raise WireError("not a whole ICMPv6 packet")
        body = ip.buffer[chain.upper_offset : IPV6_HEADER_LEN + ip.payload_len]
        message = Icmpv6Repr.parse(body, ip.src, ip.dst)
        self.stats.received[f"v6_type_{message.icmp_type}"] += 1
        if isinstance(message, Icmpv6EchoRepr):
            if message.reply:
                return EchoReplyReceived(
                    6, ip.src, ip.dst, message.ident, message.seq, message.data, ip.hop_limit
                )
            source: IpAddress | None = ip.dst
            if ip.dst.is_multicast:
                source = None if self.config.echo_ignore_multicast_v6 else reply_source
            if self.config.echo_ignore_all or source is None or not is_single_host_source(ip.src):
                self.stats.drops[IcmpDrop.ECHO_IGNORED] += 1
                return None
            assert isinstance(source, IPv6Address)
            reply_body = Icmpv6EchoRepr(
                message.ident, message.seq, message.data, reply=True
            ).to_bytes(source, ip.src)
            header = Ipv6Repr(
                source,
                ip.src,
                IpProtocol.ICMPV6,
                len(reply_body),
                hop_limit=self.config.ttl,
                traffic_class=ip.traffic_class,
            )
            self._packets.append(header.to_bytes(reply_body))
            self.stats.sent["v6_type_129"] += 1
            return None
        if isinstance(message, Icmpv6OtherRepr) and message.kind < 128:
            kind, err, fatal, mtu = self._classify_v6(message)
            return self._error_in(
                6,
                ip.src,
                message.data,
                now_ns,
                icmp_type=message.kind,
                code=message.code,
                verdict=(kind, err, fatal),
                mtu=mtu,
            )
        self.stats.drops[IcmpDrop.UNHANDLED_TYPE] += 1
        return None

    @staticmethod
    def _classify_v6(message: Icmpv6OtherRepr) -> tuple[IcmpErrorKind, int, bool, int | None]:
        kind_type, code = message.kind, message.code
        if kind_type == Icmpv6Type.DEST_UNREACHABLE:
            if code < len(_RECV_V6_UNREACH):
                kind, err, fatal = _RECV_V6_UNREACH[code]
                return kind, err, fatal, None
            return _K.OTHER_UNREACHABLE, errno.EHOSTUNREACH, False, None
        if kind_type == Icmpv6Type.PACKET_TOO_BIG:
            return _K.PACKET_TOO_BIG, errno.EMSGSIZE, False, message.rest_word
        if kind_type == Icmpv6Type.TIME_EXCEEDED:
            kind = _K.TTL_EXCEEDED if code == 0 else _K.REASSEMBLY_TIMEOUT
            return kind, errno.EHOSTUNREACH, False, None
        if kind_type == Icmpv6Type.PARAMETER_PROBLEM:
            return _K.PARAMETER_PROBLEM, errno.EPROTO, True, None
        return _K.OTHER_UNREACHABLE, errno.EHOSTUNREACH, False, None

    def _error_in(
        self,
        version: int,
        sender: IpAddress,
        quoted: bytes,
        now_ns: int,
        *,
        icmp_type: int,
        code: int,
        verdict: tuple[IcmpErrorKind, int, bool],
        mtu: int | None = None,
    ) -> IcmpErrorReceived | None:
        kind, err, fatal = verdict
        flow = parse_quoted(version, quoted)
        if flow is None:
            self.stats.drops[IcmpDrop.MALFORMED] += 1
            return None
        header_len = _quoted_header_len(version, quoted)
        # RFC 792 / RFC 1122 3.2.2: the quote holds the IP header and at least 8 bytes.
        if len(quoted) < header_len + 8:
            self.stats.drops[IcmpDrop.TRUNCATED_QUOTE] += 1
            return None
        new_mtu = None
        if mtu is not None:
            new_mtu = self.pmtu.learn(flow.dst, mtu, now_ns)
        return IcmpErrorReceived(
            version,
            kind,
            icmp_type,
            code,
            sender,
            flow,
            err,
            fatal,
            new_mtu,
            bytes(quoted[header_len:]),
        )

    # --- sending errors ---------------------------------------------------------------

    def error(
        self,
        kind: IcmpErrorKind,
        offending: Buffer,
        source: IpAddress,
        now_ns: int,
        *,
        mtu: int = 0,
        pointer: int | None = None,
        link_multicast: bool = False,
        to_broadcast: bool = False,
    ) -> bytes | None:
        """The IP packet of an ICMP error about ``offending``, or ``None`` when it must not go.

        ``offending`` is the IP packet as received; ``source`` our address to
        send from; ``mtu`` the next-hop MTU of ``PACKET_TOO_BIG``; ``pointer``
        the offset of the faulty byte for ``PARAMETER_PROBLEM`` (computed for an
        IPv6 ``PROTOCOL_UNREACHABLE``). ``link_multicast`` says the frame was sent
        to an Ethernet group or broadcast address; ``to_broadcast`` that the IPv4
        destination was one of our directed broadcast addresses.
        """
        try:
            if isinstance(source, IPv4Address):
                group = link_multicast or to_broadcast
                return self._error_v4(
                    kind, offending, source, now_ns, mtu=mtu, pointer=pointer, group=group
                )
            return self._error_v6(
                kind, offending, source, now_ns, mtu=mtu, pointer=pointer, group=link_multicast
            )
        except WireError:
            self.stats.drops[IcmpDrop.MALFORMED] += 1
            return None

    def _refuse(self, reason: IcmpDrop) -> None:
        self.stats.drops[reason] += 1

    def _error_v4(
        self,
        kind: IcmpErrorKind,
        offending: Buffer,
        source: IPv4Address,
        now_ns: int,
        *,
        mtu: int,
        pointer: int | None,
        group: bool,
    ) -> bytes | None:
        ip = Ipv4Packet.checked(offending)
        if ip.frag_offset:
            self._refuse(IcmpDrop.ABOUT_FRAGMENT)
            return None
        if ip.protocol == IpProtocol.ICMP:
            data = ip.payload
            if not data or data[0] not in _ICMPV4_INFO:
                self._refuse(IcmpDrop.ABOUT_ICMP_ERROR)
                return None
        if group or ip.dst.is_multicast or ip.dst == LIMITED_BROADCAST:
            self._refuse(IcmpDrop.ABOUT_GROUP)
            return None
        if not is_single_host_source(ip.src):
            self._refuse(IcmpDrop.ABOUT_BAD_SOURCE)
            return None
        icmp_type, code = _SEND_V4[kind]
        # Linux exempts "fragmentation needed" from the limits: path MTU discovery needs it.
        if kind is not _K.PACKET_TOO_BIG and not self.limiter.allow(ip.src, now_ns):
            self._refuse(IcmpDrop.RATE_LIMITED)
            return None
        room = IPV4_ERROR_MAX - 20 - ICMP_HEADER_LEN
        quoted = bytes(ip.buffer[: min(ip.total_len, room)])
        message: Icmpv4Repr
        if icmp_type == Icmpv4Type.DEST_UNREACHABLE:
            message = Icmpv4DestUnreachableRepr(
                code, quoted, mtu if kind is _K.PACKET_TOO_BIG else 0
            )
        elif icmp_type == Icmpv4Type.TIME_EXCEEDED:
            message = Icmpv4TimeExceededRepr(code, quoted)
        else:
            message = Icmpv4OtherRepr(icmp_type, code, (pointer or 0) << 24, quoted)
        body = message.to_bytes()
        header = Ipv4Repr(
            source, ip.src, IpProtocol.ICMP, len(body), ttl=self.config.ttl, dscp=ERROR_DSCP
        )
        self.stats.sent[f"v4_type_{icmp_type}"] += 1
        return header.to_bytes(body)

    def _error_v6(
        self,
        kind: IcmpErrorKind,
        offending: Buffer,
        source: IPv6Address,
        now_ns: int,
        *,
        mtu: int,
        pointer: int | None,
        group: bool,
    ) -> bytes | None:
        ip = Ipv6Packet.checked(offending)
        chain = walk_extension_headers(offending)
        if any(isinstance(h, Ipv6FragmentRepr) and h.frag_offset for h in chain.headers):
            self._refuse(IcmpDrop.ABOUT_FRAGMENT)
            return None
        end = IPV6_HEADER_LEN + ip.payload_len
        if chain.upper_protocol == IpProtocol.ICMPV6:
            first = ip.buffer[chain.upper_offset : end]
            # RFC 4443 2.4(e.1) and (e.2): no error about an error or a redirect.
            if not first or first[0] < 128 or first[0] == Icmpv6Type.REDIRECT:
                self._refuse(IcmpDrop.ABOUT_ICMP_ERROR)
                return None
        icmp_type, code = _SEND_V6[kind]
        if pointer is None and kind is _K.PROTOCOL_UNREACHABLE:
            # The next-header field that named the unknown protocol (RFC 4443 3.4).
            pointer = 6 if not chain.headers else chain.upper_offset - chain.headers[-1].header_len
        # RFC 4443 2.4(e.3)/(e.4): Packet Too Big and Parameter Problem code 2 may answer a
        # multicast; nothing else may.
        exempt = kind is _K.PACKET_TOO_BIG or (
            icmp_type == Icmpv6Type.PARAMETER_PROBLEM and code == 2
        )
        if (ip.dst.is_multicast or group) and not exempt:
            self._refuse(IcmpDrop.ABOUT_GROUP)
            return None
        if not is_single_host_source(ip.src):
            self._refuse(IcmpDrop.ABOUT_BAD_SOURCE)
            return None
        # Linux's icmpv6 ratemask leaves Packet Too Big out.
        if kind is not _K.PACKET_TOO_BIG and not self.limiter.allow(ip.src, now_ns):
            self._refuse(IcmpDrop.RATE_LIMITED)
            return None
        room = IPV6_ERROR_MAX - IPV6_HEADER_LEN - ICMP_HEADER_LEN
        quoted = bytes(ip.buffer[: min(end, room)])
        rest = mtu if kind is _K.PACKET_TOO_BIG else (pointer or 0)
        body = Icmpv6OtherRepr(icmp_type, code, rest, quoted).to_bytes(source, ip.src)
        header = Ipv6Repr(source, ip.src, IpProtocol.ICMPV6, len(body), hop_limit=self.config.ttl)
        self.stats.sent[f"v6_type_{icmp_type}"] += 1
        return header.to_bytes(body)


def _quoted_header_len(version: int, quoted: Buffer) -> int:
    if version == 4:
        return (memoryview(quoted)[0] & 0x0F) * 4
    return IPV6_HEADER_LEN
