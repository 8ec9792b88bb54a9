"""UDP endpoints: binding, ephemeral ports, demultiplexing, bounded receive queues.

``UdpTable`` is the socket side of UDP for one stack, with Linux's rules:
``bind`` refuses an address and port another endpoint holds (``EADDRINUSE``)
unless both set ``reuse_addr`` (``SO_REUSEADDR``); port 0 picks an ephemeral
port at random in 32768-60999 (``ip_local_port_range``); ``deliver`` picks
the connected endpoint that matches exactly, else one bound to the
destination address, else a wildcard one (Linux's ``compute_score``,
newest first on a tie), and hands a multicast or broadcast datagram to every
matching endpoint. Each endpoint queues at most ``rcvbuf_bytes``
(``SO_RCVBUF``; like Linux, a datagram is refused once the queue holds more
than that), every datagram charged with ``DATAGRAM_OVERHEAD`` besides its
payload. Every datagram keeps its boundaries and comes with its source
address and port. IPv6 endpoints are ``IPV6_V6ONLY``.

The two UDP offloads the ``Interface`` uses: ``plan_udp_segments`` lays out a
burst of payloads to one destination as Linux ``UDP_SEGMENT`` super-datagrams
(one ``gso_size`` per run, the last segment possibly shorter, at most 64
segments), and ``split_gro`` (or ``deliver(..., gso_size=...)``) cuts a
``UDP_GRO`` super-datagram back into its datagrams.
"""

from __future__ import annotations

import errno
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from netoffload.stack._netaddr import IPV4_ANY, IPV6_ANY, IpAddress
from netoffload.wire.checksum import Buffer
from netoffload.wire.error import WireError
from netoffload.wire.udp import HEADER_LEN, UdpPacket

#: Charged per queued datagram besides its payload (the role of skb truesize), so a flood
#: of empty datagrams cannot queue without bound.
DATAGRAM_OVERHEAD: Final = 256
#: Linux UDP_MAX_SEGMENTS in the kernels that first had UDP_SEGMENT (newer ones allow 128).
UDP_MAX_SEGMENTS: Final = 64
MAX_IP_LENGTH: Final = 0xFFFF


class UdpError(OSError):
    """A socket call refused, with the errno Linux would give."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)


class Delivery(StrEnum):
    """What became of a received datagram."""

    DELIVERED = "delivered"
    NO_ENDPOINT = "no_endpoint"  # the caller answers ICMP port unreachable
    QUEUE_FULL = "queue_full"
    MALFORMED = "malformed"
    CHECKSUM = "checksum"


@dataclass(frozen=True, slots=True)
class UdpConfig:
    """Limits; the defaults are Linux's."""

    max_endpoints: int = 1024
    rcvbuf_bytes: int = 212_992  # net.core.rmem_default
    ephemeral_low: int = 32_768  # net.ipv4.ip_local_port_range
    ephemeral_high: int = 60_999

    def __post_init__(self) -> None:
        if not 1 <= self.ephemeral_low <= self.ephemeral_high <= 0xFFFF:
            raise ValueError("bad ephemeral port range")


@dataclass(frozen=True, slots=True)
class Datagram:
    """One received datagram: its payload (a view of the buffer handed in) and addresses."""

    src: IpAddress
    src_port: int
    dst: IpAddress
    dst_port: int
    payload: memoryview


@dataclass(frozen=True, slots=True)
class UdpFlow:
    """Where a datagram goes: ``local`` is ``None`` when the endpoint is bound to a wildcard
    (the route picks the source address)."""

    local: IpAddress | None
    local_port: int
    remote: IpAddress
    remote_port: int


@dataclass(slots=True)
class UdpStats:
    """Linux's ``/proc/net/snmp`` Udp counters, and drops by reason."""

    in_datagrams: int = 0
    no_ports: int = 0
    in_errors: int = 0
    in_csum_errors: int = 0
    rcvbuf_errors: int = 0
    out_datagrams: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready snapshot."""
        out: dict[str, object] = {
            name: getattr(self, name) for name in self.__slots__ if name != "drops"
        }
        out["drops"] = dict(sorted(self.drops.items()))
        return out


@dataclass(slots=True)
class _Endpoint:
    ident: int
    family: int
    reuse_addr: bool
    rcvbuf: int
    local: IpAddress | None = None  # None until bound; a wildcard when bound to "any"
    port: int = 0
    remote: IpAddress | None = None
    remote_port: int = 0
    local_from_connect: bool = False
    queue: deque[Datagram] = field(default_factory=deque)
    queued_bytes: int = 0

    @property
    def wildcard(self) -> bool:
        return self.local is None or self.local.is_unspecified


def _any(family: int) -> IpAddress:
    return IPV4_ANY if family == 4 else IPV6_ANY


class UdpTable:
    """The UDP endpoints of one stack (both IP versions), and their receive queues."""

    def __init__(self, rng: random.Random, config: UdpConfig | None = None) -> None:
        self.config = config or UdpConfig()
        self.stats = UdpStats()
        self._rng = rng
        self._endpoints: dict[int, _Endpoint] = {}
        self._by_port: dict[tuple[int, int], list[_Endpoint]] = {}
        self._ids = itertools.count(1)
        #: Called with an endpoint id after a datagram was queued for it (a socket layer's
        #: wake-up: it must not call back into the stack).
        self.on_queued: Callable[[int], None] | None = None

    def __len__(self) -> int:
        return len(self._endpoints)

    # --- the socket calls ------------------------------------------------------------

    def open(
        self, family: int, *, reuse_addr: bool = False, rcvbuf_bytes: int | None = None
    ) -> int:
        """A new unbound endpoint of IP version ``family``; returns its id."""
        if family not in (4, 6):
            raise UdpError(errno.EAFNOSUPPORT, f"IP version {family}")
        if len(self._endpoints) >= self.config.max_endpoints:
            raise UdpError(errno.EMFILE, "UDP endpoint table is full")
        ident = next(self._ids)
        rcvbuf = self.config.rcvbuf_bytes if rcvbuf_bytes is None else rcvbuf_bytes
        self._endpoints[ident] = _Endpoint(ident, family, reuse_addr, rcvbuf)
        return ident

    def bind(self, endpoint: int, address: IpAddress, port: int) -> int:
        """Bind to ``address`` (unspecified: every address) and ``port`` (0: ephemeral).

        Returns the port. The caller checks that ``address`` is one of ours.
        """
        ep = self._get(endpoint)
        if ep.local is not None:
            raise UdpError(errno.EINVAL, "endpoint is already bound")
        if address.version != ep.family:
            raise UdpError(errno.EAFNOSUPPORT, f"{address} is not IPv{ep.family}")
        if not 0 <= port <= 0xFFFF:
            raise UdpError(errno.EINVAL, f"port {port}")
        if port == 0:
            port = self._ephemeral(ep.family, address, ep.reuse_addr)
        elif not self._port_free(ep.family, address, port, ep.reuse_addr):
            raise UdpError(errno.EADDRINUSE, f"{address} port {port} is in use")
        self._attach(ep, address, port)
        return port

    def connect(
        self,
        endpoint: int,
        address: IpAddress,
        port: int,
        *,
        local_address: IpAddress | None = None,
    ) -> UdpFlow:
        """Fix the peer; an unbound endpoint is bound to an ephemeral port first.

        ``local_address`` is the source the route chose; an endpoint bound to
        a wildcard takes it, as Linux's ``ip4_datagram_connect`` does.
        """
        ep = self._get(endpoint)
        if address.version != ep.family:
            raise UdpError(errno.EAFNOSUPPORT, f"{address} is not IPv{ep.family}")
        if not 0 < port <= 0xFFFF:
            raise UdpError(errno.EINVAL, f"port {port}")
        if ep.local is None:
            self.bind(endpoint, _any(ep.family), 0)
        if local_address is not None and ep.wildcard:
            if local_address.version != ep.family:
                raise UdpError(errno.EAFNOSUPPORT, f"{local_address} is not IPv{ep.family}")
            ep.local = local_address
            ep.local_from_connect = True
        ep.remote, ep.remote_port = address, port
        return self._flow(ep, address, port)

    def disconnect(self, endpoint: int) -> None:
        """Forget the peer (``connect`` with ``AF_UNSPEC``); an address taken from it goes too."""
        ep = self._get(endpoint)
        ep.remote, ep.remote_port = None, 0
        if ep.local_from_connect:
            ep.local = _any(ep.family)
            ep.local_from_connect = False

    def close(self, endpoint: int) -> int:
        """Remove the endpoint; returns the number of datagrams that were still queued."""
        ep = self._get(endpoint)
        del self._endpoints[endpoint]
        if ep.local is not None:
            bucket = self._by_port[(ep.family, ep.port)]
            bucket.remove(ep)
            if not bucket:
                del self._by_port[(ep.family, ep.port)]
        return len(ep.queue)

    def local(self, endpoint: int) -> tuple[IpAddress, int] | None:
        """The bound address and port (``getsockname``), or ``None`` while unbound."""
        ep = self._get(endpoint)
        return None if ep.local is None else (ep.local, ep.port)

    def remote(self, endpoint: int) -> tuple[IpAddress, int] | None:
        """The connected peer (``getpeername``), or ``None``."""
        ep = self._get(endpoint)
        return None if ep.remote is None else (ep.remote, ep.remote_port)

    def send_to(
        self, endpoint: int, address: IpAddress | None = None, port: int | None = None
    ) -> UdpFlow:
        """The addresses for a datagram sent now (``sendto``); binds an unbound endpoint.

        Without ``address`` the endpoint must be connected (``EDESTADDRREQ``).
        """
        ep = self._get(endpoint)
        if address is None or port is None:
            if ep.remote is None:
                raise UdpError(errno.EDESTADDRREQ, "endpoint is not connected")
            address, port = ep.remote, ep.remote_port
        if address.version != ep.family:
            raise UdpError(errno.EAFNOSUPPORT, f"{address} is not IPv{ep.family}")
        if not 0 < port <= 0xFFFF:
            raise UdpError(errno.EINVAL, f"port {port}")
        if ep.local is None:
            self.bind(endpoint, _any(ep.family), 0)
        self.stats.out_datagrams += 1
        return self._flow(ep, address, port)

    def family(self, endpoint: int) -> int:
        """The endpoint's IP version (4 or 6)."""
        return self._get(endpoint).family

    def recv(self, endpoint: int) -> Datagram | None:
        """The oldest queued datagram, or ``None``."""
        ep = self._get(endpoint)
        if not ep.queue:
            return None
        datagram = ep.queue.popleft()
        ep.queued_bytes -= len(datagram.payload) + DATAGRAM_OVERHEAD
        return datagram

    def queued(self, endpoint: int) -> tuple[int, int]:
        """Datagrams and bytes (as charged against ``rcvbuf_bytes``) waiting."""
        ep = self._get(endpoint)
        return len(ep.queue), ep.queued_bytes

    # --- receiving ---------------------------------------------------------------------

    def deliver(
        self,
        src: IpAddress,
        dst: IpAddress,
        datagram: Buffer,
        *,
        verify_checksum: bool = True,
        gso_size: int = 0,
        broadcast: bool = False,
    ) -> Delivery:
        """Queue one received datagram (header and payload) for its endpoint(s).

        ``verify_checksum`` is false when the device already verified it (and
        must be for a ``UDP_GRO`` super-datagram, whose ``gso_size`` cuts it
        into the datagrams it was made of). ``broadcast`` says ``dst`` was a
        broadcast address; it and a multicast ``dst`` go to every matching
        endpoint. ``NO_ENDPOINT`` is the caller's cue for ICMP port unreachable.
        """
        try:
            packet = UdpPacket.checked(datagram)
        except WireError:
            return self._in_error(Delivery.MALFORMED)
        if verify_checksum and not packet.verify_checksum(src, dst):
            self.stats.in_csum_errors += 1
            return self._in_error(Delivery.CHECKSUM)
        sport, dport = packet.src_port, packet.dst_port
        payload = packet.payload
        pieces = split_gro(payload, gso_size) if gso_size else [payload]
        if broadcast or dst.is_multicast:
            targets = self._matches(src, sport, dst, dport)
        else:
            best = self._lookup(src, sport, dst, dport)
            targets = [best] if best is not None else []
        if not targets:
            self.stats.no_ports += len(pieces)
            self.stats.drops[Delivery.NO_ENDPOINT] += len(pieces)
            return Delivery.NO_ENDPOINT
        result = Delivery.QUEUE_FULL
        for ep in targets:
            for piece in pieces:
                if self._enqueue(ep, Datagram(src, sport, dst, dport, piece)):
                    result = Delivery.DELIVERED
        return result

    def lookup(self, src: IpAddress, src_port: int, dst: IpAddress, dst_port: int) -> int | None:
        """The endpoint a unicast datagram with these addresses would go to."""
        ep = self._lookup(src, src_port, dst, dst_port)
        return None if ep is None else ep.ident

    # --- internals -----------------------------------------------------------------------

    def _get(self, endpoint: int) -> _Endpoint:
        try:
            return self._endpoints[endpoint]
        except KeyError:
            raise UdpError(errno.EBADF, f"no UDP endpoint {endpoint}") from None

    def _flow(self, ep: _Endpoint, address: IpAddress, port: int) -> UdpFlow:
        local = None if ep.wildcard else ep.local
        return UdpFlow(local, ep.port, address, port)

    def _attach(self, ep: _Endpoint, address: IpAddress, port: int) -> None:
        ep.local, ep.port = address, port
        self._by_port.setdefault((ep.family, port), []).append(ep)

    def _port_free(self, family: int, address: IpAddress, port: int, reuse: bool) -> bool:
        # Linux udp_lib_lport_inuse: a conflict unless the addresses differ (neither a
        # wildcard) or both endpoints set SO_REUSEADDR.
        for other in self._by_port.get((family, port), ()):
            overlap = address.is_unspecified or other.wildcard or other.local == address
            if overlap and not (reuse and other.reuse_addr):
                return False
        return True

    def _ephemeral(self, family: int, address: IpAddress, reuse: bool) -> int:
        low, high = self.config.ephemeral_low, self.config.ephemeral_high
        span = high - low + 1
        start = self._rng.randrange(span)
        for step in range(span):
            port = low + (start + step) % span
            if not self._by_port.get((family, port)) and self._port_free(
                family, address, port, reuse
            ):
                return port
        raise UdpError(errno.EAGAIN, "no free ephemeral port")

    def _candidates(self, dst: IpAddress, dport: int) -> list[_Endpoint]:
        return self._by_port.get((dst.version, dport), [])

    def _accepts(self, ep: _Endpoint, src: IpAddress, sport: int, dst: IpAddress) -> bool:
        if not ep.wildcard and ep.local != dst:
            return False
        return ep.remote is None or (ep.remote == src and ep.remote_port == sport)

    def _lookup(self, src: IpAddress, sport: int, dst: IpAddress, dport: int) -> _Endpoint | None:
        best, best_score = None, -1
        # Newest first: on equal scores the most recently bound endpoint wins.
        for ep in reversed(self._candidates(dst, dport)):
            if not self._accepts(ep, src, sport, dst):
                continue
            score = (2 if ep.remote is not None else 0) + (0 if ep.wildcard else 1)
            if score > best_score:
                best, best_score = ep, score
        return best

    def _matches(self, src: IpAddress, sport: int, dst: IpAddress, dport: int) -> list[_Endpoint]:
        return [ep for ep in self._candidates(dst, dport) if self._accepts(ep, src, sport, dst)]

    def _enqueue(self, ep: _Endpoint, datagram: Datagram) -> bool:
        # Linux __udp_enqueue_schedule_skb: refused once the queue already holds more
        # than the receive buffer.
        if ep.queued_bytes > ep.rcvbuf:
            self.stats.rcvbuf_errors += 1
            self.stats.in_errors += 1
            self.stats.drops[Delivery.QUEUE_FULL] += 1
            return False
        ep.queue.append(datagram)
        ep.queued_bytes += len(datagram.payload) + DATAGRAM_OVERHEAD
        self.stats.in_datagrams += 1
        if self.on_queued is not None:
            self.on_queued(ep.ident)
        return True

    def _in_error(self, reason: Delivery) -> Delivery:
        self.stats.in_errors += 1
        self.stats.drops[reason] += 1
        return reason


# --- UDP_SEGMENT and UDP_GRO ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentRun:
    """Datagrams ``start`` .. ``start + count - 1`` of a burst sent as one super-datagram.

    ``gso_size`` is the size of every segment but the last (which may be
    shorter); 0 means a plain datagram (``count`` is then 1).
    """

    start: int
    count: int
    gso_size: int
    payload_bytes: int


def plan_udp_segments(
    sizes: Sequence[int],
    *,
    mtu: int,
    ip_header_len: int,
    ipv6: bool = False,
    max_segments: int = UDP_MAX_SEGMENTS,
) -> list[SegmentRun]:
    """Lay out a burst of payloads to one destination as ``UDP_SEGMENT`` super-datagrams.

    Order is kept. Consecutive payloads of one size form a run (``gso_size`` =
    that size) that may end with one shorter, non-empty payload, up to
    ``max_segments`` segments and a super-datagram the IP length field can
    carry. Each segment must fit ``mtu`` unfragmented (Linux refuses
    ``gso_size`` + headers > MTU with ``EINVAL``); an empty payload, one too big
    for the MTU (it will be fragmented) and a run of one go as plain datagrams.
    ``ip_header_len`` counts IPv4 options or IPv6 extension headers.
    """
    if max_segments < 1:
        raise ValueError("max_segments must be at least 1")
    max_segment = mtu - ip_header_len - HEADER_LEN
    # The IP length field: IPv4 counts its header, IPv6 its extension headers only.
    length_overhead = ip_header_len - 40 if ipv6 else ip_header_len
    max_total = MAX_IP_LENGTH - length_overhead - HEADER_LEN
    runs: list[SegmentRun] = []
    i, n = 0, len(sizes)
    while i < n:
        size = sizes[i]
        if size <= 0 or size > max_segment:
            runs.append(SegmentRun(i, 1, 0, size))
            i += 1
            continue
        count, total = 1, size
        while (
            i + count < n
            and count < max_segments
            and sizes[i + count] == size
            and total + size <= max_total
        ):
            count += 1
            total += size
        if i + count < n and count < max_segments:
            last = sizes[i + count]
            if 0 < last < size and total + last <= max_total:
                count += 1
                total += last
        runs.append(SegmentRun(i, count, size if count > 1 else 0, total))
        i += count
    return runs


def split_gro(payload: Buffer, gso_size: int) -> list[memoryview]:
    """Cut a ``UDP_GRO`` super-datagram's payload into its datagrams (views, no copy).

    Every piece is ``gso_size`` bytes but the last, which may be shorter.
    """
    if gso_size <= 0:
        raise ValueError(f"gso_size {gso_size} must be positive")
    view = memoryview(payload).cast("B") if not isinstance(payload, memoryview) else payload
    if not view:
        return [view]
    return [view[pos : pos + gso_size] for pos in range(0, len(view), gso_size)]
