"""IPv4 and IPv6 fragmentation, and reassembly with limits.

``fragment_ipv4`` follows RFC 791 section 3.2 (offsets in 8-byte units, the
options without the copied flag only in the first fragment, DF refused with
``FragmentationNeeded``). ``fragment_ipv6`` follows RFC 8200 section 4.5:
the per-fragment headers are repeated, a Fragment header follows them, and
the first fragment holds the whole header chain (RFC 7112).

``Reassembler`` takes fragments of both versions and gives back whole
datagrams, keyed as Linux keys them (IPv4: source, destination, protocol,
identification; IPv6: source, destination, identification). Everything it
refuses is a counted drop in ``stats.drops``, never an exception: malformed,
zero-length and tiny fragments (RFC 1858), a non-last fragment that is not a
multiple of 8 bytes, a datagram past 65535 bytes or ``max_fragments``,
overlaps (RFC 5722 for IPv6, and Linux does the same for IPv4: the whole
datagram is discarded, and later fragments of it too until it times out),
inconsistent ends, ECN combinations RFC 3168 section 5.3 forbids, a first
IPv6 fragment without the whole header chain (RFC 7112), and anything past
the global memory limit (``high_thresh_bytes``, like Linux's
``ipfrag_high_thresh``: new fragments are refused until old ones expire).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field, replace
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Final, NamedTuple

from netoffload.stack._netaddr import NS_PER_S, IpAddress
from netoffload.wire.checksum import Buffer
from netoffload.wire.error import WireError
from netoffload.wire.ipv4 import IpProtocol, Ipv4Packet, Ipv4Repr
from netoffload.wire.ipv6 import (
    HEADER_LEN as IPV6_HEADER_LEN,
)
from netoffload.wire.ipv6 import (
    Ipv6ExtHeader,
    Ipv6FragmentRepr,
    Ipv6HopByHopRepr,
    Ipv6Packet,
    Ipv6RoutingRepr,
    walk_extension_headers,
)

IPV4_MIN_HEADER: Final = 20
FRAGMENT_HEADER_LEN: Final = 8
MAX_IP_LEN: Final = 0xFFFF
#: Charged against the memory limit per datagram held and per fragment, besides the data
#: (the role of skb truesize in Linux), so empty or tiny fragments cannot hold memory for free.
DATAGRAM_OVERHEAD: Final = 256
FRAGMENT_OVERHEAD: Final = 64
#: Bytes of a first fragment kept for an ICMP time-exceeded quote (the most an ICMPv6 error
#: carries, RFC 4443 2.4(c); an ICMPv4 one carries less).
QUOTE_BYTES: Final = 1232

# Upper-layer header sizes a first fragment must hold (Linux ipv6frag_thdr_truncated; RFC
# 1858 for IPv4 TCP).
_TRANSPORT_HEADER: Final[dict[int, int]] = {
    IpProtocol.TCP: 20,
    IpProtocol.UDP: 8,
    IpProtocol.ICMPV6: 8,
}
_IPV4_TRANSPORT_HEADER: Final[dict[int, int]] = {
    IpProtocol.TCP: 20,
    IpProtocol.UDP: 8,
    IpProtocol.ICMP: 8,
}

_OPTION_EOL: Final = 0
_OPTION_NOP: Final = 1
_OPTION_COPIED: Final = 0x80

# RFC 3168 section 5.3 as Linux's ip_frag_ecn_table: one bit per ECN codepoint seen (1 << ecn),
# mapped to the ECN bits to OR into the result, or _ECN_DROP.
_ECN_NOT_ECT, _ECN_ECT1, _ECN_ECT0, _ECN_CE = 1, 2, 4, 8
_ECN_DROP: Final = 0xFF
_ECN_TABLE: Final[dict[int, int]] = {
    _ECN_CE | _ECN_ECT0: 3,
    _ECN_CE | _ECN_ECT1: 3,
    _ECN_CE | _ECN_ECT0 | _ECN_ECT1: 3,
}


def _ecn_result(seen: int) -> int:
    if seen & _ECN_NOT_ECT and seen != _ECN_NOT_ECT:
        return _ECN_DROP
    return _ECN_TABLE.get(seen, 0)


class FragmentError(ValueError):
    """A packet that cannot be fragmented as asked."""


class FragmentationNeeded(FragmentError):
    """The packet is larger than ``mtu`` and must not be fragmented (IPv4 DF).

    The caller answers with ICMP "fragmentation needed" (type 3 code 4)
    carrying ``mtu``, or ``EMSGSIZE`` to a local sender.
    """

    def __init__(self, mtu: int) -> None:
        super().__init__(f"packet larger than MTU {mtu} with DF set")
        self.mtu = mtu


# --- fragmentation -------------------------------------------------------------


def _copied_options(options: bytes) -> bytes:
    """The options with the copied flag, padded to 32 bits (RFC 791 section 3.1)."""
    kept = bytearray()
    pos = 0
    while pos < len(options):
        kind = options[pos]
        if kind == _OPTION_EOL:
            break
        if kind == _OPTION_NOP:
            pos += 1
            continue
        if pos + 1 >= len(options) or options[pos + 1] < 2 or pos + options[pos + 1] > len(options):
            raise WireError(f"IPv4 option {kind} runs past the options", IPV4_MIN_HEADER + pos)
        end = pos + options[pos + 1]
        if kind & _OPTION_COPIED:
            kept += options[pos:end]
        pos = end
    kept += bytes(-len(kept) % 4)  # EOL padding
    return bytes(kept)


def fragment_ipv4(packet: Buffer, mtu: int) -> list[bytes]:
    """Cut an IPv4 packet into fragments of at most ``mtu`` bytes (RFC 791 section 3.2).

    A packet that fits is returned whole. Every fragment but the last carries a
    multiple of 8 data bytes; the identification is kept; options without the
    copied flag go in the first fragment only (Linux overwrites them with NOPs
    instead, which keeps every header the same length). A packet that is already
    a fragment is cut further, its offsets and last MF flag kept. Raises
    ``FragmentationNeeded`` for DF, ``FragmentError`` when ``mtu`` leaves no
    room for 8 data bytes, ``WireError`` for a malformed packet.
    """
    ip = Ipv4Packet.checked(packet)
    total = ip.total_len
    if total <= mtu:
        return [bytes(ip.buffer[:total])]
    if ip.dont_frag:
        raise FragmentationNeeded(mtu)
    header = Ipv4Repr.parse(packet, verify_checksum=False)
    later_options = _copied_options(header.options)
    payload = ip.payload
    base = ip.frag_offset * 8
    fragments = []
    pos = 0
    while pos < len(payload):
        options = header.options if pos == 0 else later_options
        room = (mtu - IPV4_MIN_HEADER - len(options)) & ~7
        if room < 8:
            raise FragmentError(f"MTU {mtu} leaves no room for fragment data")
        chunk = payload[pos : pos + room]
        last = pos + len(chunk) == len(payload)
        piece = replace(
            header,
            options=options,
            payload_len=len(chunk),
            more_frags=ip.more_frags if last else True,
            frag_offset=(base + pos) // 8,
        )
        fragments.append(piece.to_bytes(chunk))
        pos += len(chunk)
    return fragments


def _upper_header_len(protocol: int, data: memoryview) -> int:
    """Bytes of the upper-layer header at the start of ``data`` (0 when unknown)."""
    if protocol == IpProtocol.TCP and len(data) >= 13:
        return max(20, (data[12] >> 4) * 4)
    return _TRANSPORT_HEADER.get(protocol, 0)


def fragment_ipv6(packet: Buffer, mtu: int, ident: int) -> list[bytes]:
    """Cut an IPv6 packet into fragments of at most ``mtu`` bytes (RFC 8200 section 4.5).

    The per-fragment headers (the IPv6 header and the extension headers up to
    the last Routing header, else a Hop-by-Hop header) are repeated, followed
    by a Fragment header with identification ``ident``. A packet that fits is
    returned whole. Raises ``FragmentError`` when the packet already has a
    Fragment header, when ``mtu`` leaves no room for 8 bytes, or when the first
    fragment could not hold the whole header chain (RFC 7112); ``WireError``
    for a malformed packet.
    """
    if not 0 <= ident <= 0xFFFFFFFF:
        raise FragmentError(f"fragment identification {ident} does not fit in 32 bits")
    ip = Ipv6Packet.checked(packet)
    total = IPV6_HEADER_LEN + ip.payload_len
    if total <= mtu:
        return [bytes(ip.buffer[:total])]
    chain = walk_extension_headers(packet)
    per_fragment = IPV6_HEADER_LEN
    patch_at = None  # the next-header byte of the last per-fragment header (None: the fixed one)
    next_header = ip.next_header
    pos = IPV6_HEADER_LEN
    for index, ext in enumerate(chain.headers):
        if isinstance(ext, Ipv6FragmentRepr):
            raise FragmentError("the packet is already a fragment")
        if isinstance(ext, Ipv6RoutingRepr) or (index == 0 and isinstance(ext, Ipv6HopByHopRepr)):
            per_fragment = pos + ext.header_len
            patch_at = pos
            next_header = ext.next_header
        pos += ext.header_len
    # Destination options before a Routing header are per-fragment too (RFC 8200 4.5).
    buf = ip.buffer[:total]
    room = (mtu - per_fragment - FRAGMENT_HEADER_LEN) & ~7
    if room < 8:
        raise FragmentError(f"MTU {mtu} leaves no room for fragment data")
    chain_len = chain.upper_offset - per_fragment
    chain_len += _upper_header_len(chain.upper_protocol, buf[chain.upper_offset :])
    if chain_len > room:
        raise FragmentError(
            f"the header chain ({chain_len} bytes) does not fit the first fragment (RFC 7112)"
        )
    head = bytearray(buf[:per_fragment])
    if patch_at is None:
        Ipv6Packet(head).next_header = IpProtocol.IPV6_FRAG
    else:
        Ipv6ExtHeader(memoryview(head)[patch_at:]).next_header = IpProtocol.IPV6_FRAG
    fragmentable = buf[per_fragment:]
    fragments = []
    offset = 0
    while offset < len(fragmentable):
        chunk = fragmentable[offset : offset + room]
        last = offset + len(chunk) == len(fragmentable)
        out = bytearray(per_fragment + FRAGMENT_HEADER_LEN + len(chunk))
        out[:per_fragment] = head
        Ipv6Packet(out).payload_len = len(out) - IPV6_HEADER_LEN
        Ipv6FragmentRepr(next_header, offset // 8, not last, ident).emit(out, per_fragment)
        out[per_fragment + FRAGMENT_HEADER_LEN :] = chunk
        fragments.append(bytes(out))
        offset += len(chunk)
    return fragments


# --- reassembly ------------------------------------------------------------------


class ReassemblyDrop(StrEnum):
    """Why a fragment was refused. Values are stable names for the stats."""

    MALFORMED = "malformed"
    ZERO_LENGTH = "zero_length"
    TINY = "tiny_fragment"
    NOT_MULTIPLE_OF_8 = "not_multiple_of_8"
    TOO_BIG = "too_big"
    TOO_MANY_FRAGMENTS = "too_many_fragments"
    OVERLAP = "overlap"
    DUPLICATE = "duplicate"
    DISCARDED_DATAGRAM = "discarded_datagram"
    INCONSISTENT_END = "inconsistent_end"
    ECN_MISMATCH = "ecn_mismatch"
    INCOMPLETE_CHAIN = "incomplete_header_chain"
    MEMORY_LIMIT = "memory_limit"


@dataclass(frozen=True, slots=True)
class ReassemblyConfig:
    """Limits of a ``Reassembler``; the defaults are Linux's."""

    ipv4_timeout_ns: int = 30 * NS_PER_S  # net.ipv4.ipfrag_time
    ipv6_timeout_ns: int = 60 * NS_PER_S  # net.ipv6.ip6frag_time
    high_thresh_bytes: int = 4 * 1024 * 1024  # net.ipv4.ipfrag_high_thresh
    max_datagram_bytes: int = MAX_IP_LEN
    max_fragments: int = 128


@dataclass(slots=True)
class ReassemblyStats:
    """Counters, as ``/proc/net/snmp``'s ReasmReqds / ReasmOKs / ReasmTimeout, and drops."""

    fragments: int = 0
    reassembled: int = 0
    timeouts: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready snapshot."""
        return {
            "fragments": self.fragments,
            "reassembled": self.reassembled,
            "timeouts": self.timeouts,
            "drops": dict(sorted(self.drops.items())),
        }


@dataclass(frozen=True, slots=True)
class ReassemblyTimeout:
    """A datagram that did not complete in time.

    ``first_fragment`` is the offset-0 fragment as received, or ``None`` when
    it never arrived: only then may ICMP time exceeded (code 1, "fragment
    reassembly time exceeded") be sent, quoting it (RFC 792, RFC 8200 4.5).
    """

    version: int
    src: IpAddress
    dst: IpAddress
    first_fragment: bytes | None


class _Fragment(NamedTuple):
    """One fragment as ``_add`` needs it; ``head`` and ``first`` only at offset 0."""

    version: int
    src: bytes
    dst: bytes
    ecn: int
    start: int
    data: memoryview
    more: bool
    head: bytes | None
    patch_at: int | None
    next_header: int
    first: bytes | None


@dataclass(slots=True)
class _Datagram:
    version: int
    src: bytes
    dst: bytes
    deadline_ns: int
    charged: int = DATAGRAM_OVERHEAD
    starts: list[int] = field(default_factory=list)
    pieces: list[tuple[int, int, bytes]] = field(default_factory=list)  # (start, end, data)
    received: int = 0
    total: int | None = None
    # The offset-0 fragment: its header part (IPv4 header / IPv6 per-fragment headers), the
    # next header of its Fragment header (IPv6), and its bytes for a time-exceeded quote.
    head: bytes | None = None
    head_next_header: int = 0
    head_patch_at: int | None = None
    first: bytes | None = None
    ecn_seen: int = 0
    dead: bool = False


class Reassembler:
    """Bounded IPv4 and IPv6 reassembly; ``feed`` returns whole datagrams."""

    def __init__(self, config: ReassemblyConfig | None = None) -> None:
        self.config = config or ReassemblyConfig()
        self.stats = ReassemblyStats()
        # Insertion order is deadline order within a version (one timeout per version).
        self._queues: dict[int, dict[tuple[object, ...], _Datagram]] = {4: {}, 6: {}}
        self._held = 0

    @property
    def bytes_held(self) -> int:
        """Bytes charged against ``high_thresh_bytes`` now."""
        return self._held

    @property
    def datagrams(self) -> int:
        """Datagrams in progress (discarded ones still waiting for their timeout included)."""
        return len(self._queues[4]) + len(self._queues[6])

    def feed(self, packet: Buffer, now_ns: int) -> bytes | None:
        """Take one IPv4 or IPv6 fragment; return the whole datagram once complete.

        A packet that is not a fragment comes straight back (an IPv6 atomic
        fragment without its Fragment header, RFC 6946).
        """
        if len(packet) and memoryview(packet)[0] >> 4 == 6:
            return self.feed_ipv6(packet, now_ns)
        return self.feed_ipv4(packet, now_ns)

    def feed_ipv4(self, packet: Buffer, now_ns: int) -> bytes | None:
        """Take one IPv4 fragment (its header checksum already verified)."""
        try:
            ip = Ipv4Packet.checked(packet)
        except WireError:
            self._drop(ReassemblyDrop.MALFORMED)
            return None
        if not ip.more_frags and ip.frag_offset == 0:
            return bytes(ip.buffer[: ip.total_len])
        self.stats.fragments += 1
        data = ip.payload
        start = ip.frag_offset * 8
        protocol = ip.protocol
        if not data:
            self._drop(ReassemblyDrop.ZERO_LENGTH)
            return None
        if ip.more_frags and len(data) % 8:
            self._drop(ReassemblyDrop.NOT_MULTIPLE_OF_8)
            return None
        # RFC 1858 section 3: a TCP fragment at offset 8 can only be an attack on the flags,
        # and a first fragment must hold the whole transport header.
        if protocol == IpProtocol.TCP and ip.frag_offset == 1:
            self._drop(ReassemblyDrop.TINY)
            return None
        if start == 0 and ip.more_frags and len(data) < _IPV4_TRANSPORT_HEADER.get(protocol, 0):
            self._drop(ReassemblyDrop.TINY)
            return None
        if start + len(data) + IPV4_MIN_HEADER > self.config.max_datagram_bytes:
            self._drop(ReassemblyDrop.TOO_BIG)
            return None
        src, dst = bytes(ip.src_bytes), bytes(ip.dst_bytes)
        head = bytes(ip.buffer[: ip.header_len]) if start == 0 else None
        first = bytes(ip.buffer[: min(ip.total_len, QUOTE_BYTES)]) if start == 0 else None
        fragment = _Fragment(4, src, dst, ip.ecn, start, data, ip.more_frags, head, None, 0, first)
        return self._add((4, src, dst, protocol, ip.ident), fragment, now_ns)

    def feed_ipv6(self, packet: Buffer, now_ns: int) -> bytes | None:
        """Take one IPv6 packet with a Fragment header."""
        try:
            ip = Ipv6Packet.checked(packet)
            found = _find_fragment_header(ip)
        except WireError:
            self._drop(ReassemblyDrop.MALFORMED)
            return None
        if found is None:
            return bytes(ip.buffer[: IPV6_HEADER_LEN + ip.payload_len])
        at, patch_at, frag = found
        end_of_packet = IPV6_HEADER_LEN + ip.payload_len
        buf = ip.buffer[:end_of_packet]
        data = buf[at + FRAGMENT_HEADER_LEN :]
        start = frag.frag_offset * 8
        self.stats.fragments += 1
        if start == 0:
            try:
                chain = walk_extension_headers(buf)
            except WireError:
                self._drop(ReassemblyDrop.INCOMPLETE_CHAIN)
                return None
            needed = _TRANSPORT_HEADER.get(chain.upper_protocol, 0)
            if end_of_packet - chain.upper_offset < needed:
                self._drop(ReassemblyDrop.INCOMPLETE_CHAIN)
                return None
        if start == 0 and not frag.more_frags:
            # RFC 6946: an atomic fragment is processed in isolation.
            self.stats.reassembled += 1
            return _join_ipv6(bytes(buf[:at]), patch_at, frag.next_header, data, ip.traffic_class)
        if not data:
            self._drop(ReassemblyDrop.ZERO_LENGTH)
            return None
        if frag.more_frags and len(data) % 8:
            self._drop(ReassemblyDrop.NOT_MULTIPLE_OF_8)
            return None
        if at - IPV6_HEADER_LEN + start + len(data) > self.config.max_datagram_bytes:
            self._drop(ReassemblyDrop.TOO_BIG)
            return None
        src, dst = bytes(ip.src_bytes), bytes(ip.dst_bytes)
        head = bytes(buf[:at]) if start == 0 else None
        first = bytes(buf[:QUOTE_BYTES]) if start == 0 else None
        fragment = _Fragment(
            6,
            src,
            dst,
            ip.traffic_class & 3,
            start,
            data,
            frag.more_frags,
            head,
            patch_at,
            frag.next_header,
            first,
        )
        return self._add((6, src, dst, frag.ident), fragment, now_ns)

    def next_timer_ns(self) -> int | None:
        """When the oldest datagram times out, or ``None`` with nothing held."""
        deadlines = [next(iter(q.values())).deadline_ns for q in self._queues.values() if q]
        return min(deadlines) if deadlines else None

    def on_timer(self, now_ns: int) -> list[ReassemblyTimeout]:
        """Drop every datagram whose time is up; report those that were not discarded."""
        expired: list[ReassemblyTimeout] = []
        for queue in self._queues.values():
            while queue:
                key, datagram = next(iter(queue.items()))
                if datagram.deadline_ns > now_ns:
                    break
                del queue[key]
                self._held -= datagram.charged
                if datagram.dead:
                    continue
                self.stats.timeouts += 1
                make = IPv4Address if datagram.version == 4 else IPv6Address
                expired.append(
                    ReassemblyTimeout(
                        datagram.version, make(datagram.src), make(datagram.dst), datagram.first
                    )
                )
        return expired

    # --- internals -----------------------------------------------------------------

    def _drop(self, reason: ReassemblyDrop) -> None:
        self.stats.drops[reason.value] += 1

    def _kill(self, datagram: _Datagram, reason: ReassemblyDrop) -> None:
        """Discard a datagram's data; it stays, empty, to refuse its later fragments."""
        self._drop(reason)
        datagram.dead = True
        self._held -= datagram.charged - DATAGRAM_OVERHEAD
        datagram.charged = DATAGRAM_OVERHEAD
        datagram.pieces.clear()
        datagram.starts.clear()
        datagram.head = datagram.first = None

    def _add(self, key: tuple[object, ...], frag: _Fragment, now_ns: int) -> bytes | None:
        version = frag.version
        queue = self._queues[version]
        datagram = queue.get(key)
        if datagram is not None and datagram.dead:
            self._drop(ReassemblyDrop.DISCARDED_DATAGRAM)
            return None
        start, data = frag.start, frag.data
        first = frag.first
        charge = len(data) + FRAGMENT_OVERHEAD + (len(first) if first is not None else 0)
        if datagram is None:
            charge += DATAGRAM_OVERHEAD
        if self._held + charge > self.config.high_thresh_bytes:
            self._drop(ReassemblyDrop.MEMORY_LIMIT)
            return None
        if datagram is None:
            timeout = self.config.ipv4_timeout_ns if version == 4 else self.config.ipv6_timeout_ns
            datagram = _Datagram(version, frag.src, frag.dst, now_ns + timeout)
            queue[key] = datagram
            self._held += DATAGRAM_OVERHEAD
            charge -= DATAGRAM_OVERHEAD
        end = start + len(data)
        more = frag.more
        if not more:
            if (datagram.total is not None and datagram.total != end) or (
                datagram.pieces and datagram.pieces[-1][1] > end
            ):
                self._kill(datagram, ReassemblyDrop.INCONSISTENT_END)
                return None
        elif datagram.total is not None and end > datagram.total:
            self._kill(datagram, ReassemblyDrop.INCONSISTENT_END)
            return None
        index = bisect.bisect_left(datagram.starts, start)
        before = datagram.pieces[index - 1] if index else None
        after = datagram.pieces[index] if index < len(datagram.pieces) else None
        if after is not None and after[0] == start and after[1] == end:
            # RFC 5722 errata 3089 / RFC 8200 4.5: an exact duplicate is dropped alone.
            self._drop(ReassemblyDrop.DUPLICATE)
            return None
        if (before is not None and before[1] > start) or (after is not None and after[0] < end):
            self._kill(datagram, ReassemblyDrop.OVERLAP)
            return None
        if len(datagram.pieces) >= self.config.max_fragments:
            self._kill(datagram, ReassemblyDrop.TOO_MANY_FRAGMENTS)
            return None
        datagram.starts.insert(index, start)
        datagram.pieces.insert(index, (start, end, bytes(data)))
        datagram.received += len(data)
        datagram.charged += charge
        self._held += charge
        datagram.ecn_seen |= 1 << frag.ecn
        if not more:
            datagram.total = end
        if frag.head is not None:
            datagram.head, datagram.first = frag.head, first
            datagram.head_patch_at, datagram.head_next_header = frag.patch_at, frag.next_header
        if datagram.total is None or datagram.received != datagram.total or datagram.head is None:
            return None
        return self._complete(key, datagram)

    def _complete(self, key: tuple[object, ...], datagram: _Datagram) -> bytes | None:
        del self._queues[datagram.version][key]
        self._held -= datagram.charged
        head = datagram.head
        assert head is not None and datagram.total is not None
        ecn = _ecn_result(datagram.ecn_seen)
        if ecn == _ECN_DROP:
            self._drop(ReassemblyDrop.ECN_MISMATCH)
            return None
        fixed = 0 if datagram.version == 4 else IPV6_HEADER_LEN  # the length field's reach
        if len(head) - fixed + datagram.total > self.config.max_datagram_bytes:
            self._drop(ReassemblyDrop.TOO_BIG)
            return None
        data = b"".join(piece[2] for piece in datagram.pieces)
        self.stats.reassembled += 1
        if datagram.version == 4:
            header = _ipv4_header(head)
            header = replace(
                header,
                payload_len=len(data),
                more_frags=False,
                frag_offset=0,
                ecn=header.ecn | ecn,
            )
            return header.to_bytes(data)
        traffic_class = Ipv6Packet(head).traffic_class | ecn
        return _join_ipv6(
            head, datagram.head_patch_at, datagram.head_next_header, data, traffic_class
        )


def _ipv4_header(head: bytes) -> Ipv4Repr:
    """The IPv4 header held in ``head`` alone (its total length still counts the data)."""
    buf = bytearray(head)
    Ipv4Packet(buf).total_len = len(buf)
    return Ipv4Repr.parse(buf, verify_checksum=False)


def _find_fragment_header(ip: Ipv6Packet) -> tuple[int, int | None, Ipv6FragmentRepr] | None:
    """Where the Fragment header is, which next-header byte points at it, and the header.

    Walks the Hop-by-Hop, Routing and Destination Options headers before it
    with the checked views; ``None`` when there is no Fragment header there.
    """
    end = IPV6_HEADER_LEN + ip.payload_len
    buf = ip.buffer[:end]
    next_header = ip.next_header
    offset = IPV6_HEADER_LEN
    patch_at: int | None = None
    walked = 0
    while True:
        if next_header == IpProtocol.IPV6_FRAG:
            return offset, patch_at, Ipv6FragmentRepr.parse(buf[offset:])
        if next_header not in (IpProtocol.HOPOPT, IpProtocol.IPV6_ROUTE, IpProtocol.IPV6_OPTS):
            return None
        if next_header == IpProtocol.HOPOPT and walked:
            raise WireError("IPv6 hop-by-hop header not first", offset)
        header = Ipv6ExtHeader.checked(buf[offset:])
        patch_at = offset
        next_header = header.next_header
        offset += header.header_len
        walked += 1


def _join_ipv6(
    head: bytes, patch_at: int | None, next_header: int, data: Buffer, traffic_class: int
) -> bytes:
    """The per-fragment headers with the Fragment header taken out, then ``data``."""
    out = bytearray(len(head) + len(data))
    out[: len(head)] = head
    out[len(head) :] = data
    ip = Ipv6Packet(out)
    ip.payload_len = len(out) - IPV6_HEADER_LEN
    ip.traffic_class = traffic_class
    if patch_at is None:
        ip.next_header = next_header
    else:
        Ipv6ExtHeader(memoryview(out)[patch_at:]).next_header = next_header
    return bytes(out)
