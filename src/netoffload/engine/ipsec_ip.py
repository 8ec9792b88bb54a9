"""The IP side of ESP and AH: where the header goes, the tunnel header, AH's mutable fields.

Transport mode puts ESP or AH after the IP header and the IPv6 extension
headers a router reads (hop-by-hop, routing, destination options before a
routing header), as Linux's ``xfrm6_find_1stfragopt`` and scapy's
``split_for_transport`` do. Tunnel mode wraps the whole packet in a new
outer header built once per SA from a Repr and patched per packet (length,
identification, DSCP/ECN as RFC 6040's normal mode says, DF).

Parsing goes through the wire views (``Ipv4Packet``, ``Ipv6Packet``,
``Ipv6ExtHeader``), so a malformed packet is a ``WireError`` here.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address
from typing import Final, NamedTuple

from netoffload.wire.checksum import internet_checksum
from netoffload.wire.error import WireError
from netoffload.wire.ipv4 import FLAG_DF, FLAG_MF, FRAG_OFFSET_MASK, Ipv4Packet, Ipv4Repr
from netoffload.wire.ipv6 import MAX_EXT_HEADERS, Ipv6ExtHeader, Ipv6Packet, Ipv6Repr

IPPROTO_HOPOPTS: Final = 0
IPPROTO_IPIP: Final = 4
IPPROTO_UDP: Final = 17
IPPROTO_IPV6: Final = 41
IPPROTO_ROUTING: Final = 43
IPPROTO_FRAGMENT: Final = 44
IPPROTO_ESP: Final = 50
IPPROTO_AH: Final = 51
IPPROTO_NONE: Final = 59
IPPROTO_DSTOPTS: Final = 60

IPV4_HEADER_LEN: Final = 20
IPV6_HEADER_LEN: Final = 40
IP_MAX_LEN: Final = 0xFFFF
TUNNEL_TTL: Final = 64
ECN_MASK: Final = 0x03
ECN_ECT0: Final = 0x02
ECN_CE: Final = 0x03

#: IPv4 options that are immutable in transit (RFC 4302 Appendix A1): end of list,
#: no operation, security, extended security, commercial security, router alert, SDMD.
IMMUTABLE_IPV4_OPTIONS: Final = frozenset({0, 1, 130, 133, 134, 148, 149})
#: In an IPv6 option type, this bit says the data may change en route (RFC 8200 4.2).
IPV6_OPTION_MUTABLE: Final = 0x20

_U16 = struct.Struct("!H")
_IPV4_LEN_ID_FRAG = struct.Struct("!HHH")
_V4_LEN_FRAG = struct.Struct("!H2xH")
_IPV4_WORDS = struct.Struct("!10H")


class UnsupportedHeaderError(Exception):
    """A header this engine cannot protect (not malformed, just not handled)."""


class IpLayout(NamedTuple):
    """Where the IPsec header goes (outbound) or is (inbound) in an IP packet.

    ``offset`` is the first byte after the IP header and the extension
    headers that stay in front; ``protocol`` is the protocol found there and
    ``protocol_at`` the offset of the byte naming it (the IPv4 protocol field,
    the IPv6 next header field, or an extension header's next header field).
    ``end`` is the packet's length as its header says (bytes past it are not
    part of it).
    """

    version: int
    offset: int
    protocol: int
    protocol_at: int
    end: int
    fragment: bool


def _ipv4_layout(view: memoryview) -> IpLayout:
    ip = Ipv4Packet.checked(view)
    flags = _U16.unpack_from(view, 6)[0]
    return IpLayout(
        4,
        ip.header_len,
        view[9],
        9,
        ip.total_len,
        bool(flags & (FLAG_MF | FRAG_OFFSET_MASK)),
    )


def _ipv6_walk(view: memoryview, *, outbound: bool) -> IpLayout:
    end = IPV6_HEADER_LEN + Ipv6Packet.checked(view).payload_len  # a jumbogram is malformed here
    offset = IPV6_HEADER_LEN
    protocol = view[6]
    protocol_at = 6
    seen_routing = False
    for _ in range(MAX_EXT_HEADERS):
        if protocol not in (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS):
            break
        # Destination options after a routing header are for the final destination:
        # they go behind ESP/AH, with the upper layer (RFC 4303 3.1.1).
        if outbound and protocol == IPPROTO_DSTOPTS and seen_routing:
            break
        seen_routing = seen_routing or protocol == IPPROTO_ROUTING
        ext = Ipv6ExtHeader.checked(view[offset:end])
        protocol_at = offset
        protocol = view[offset]
        offset += ext.header_len
    else:
        raise WireError(f"more than {MAX_EXT_HEADERS} IPv6 extension headers", offset)
    return IpLayout(6, offset, protocol, protocol_at, end, protocol == IPPROTO_FRAGMENT)


_SIMPLE_V6_NEXT = frozenset(range(256)) - {
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
    IPPROTO_FRAGMENT,
    IPPROTO_DSTOPTS,
}


def quick_layout(view: memoryview) -> IpLayout | None:
    """The layout of the common packet without a walk: IPv4 without options and not a
    fragment, or IPv6 without extension headers, exactly as long as its header says.
    ``None`` for anything else. Where it answers, ``outbound_layout`` and
    ``inbound_layout`` give the same answer (a test holds them together)."""
    n = len(view)
    if n < IPV4_HEADER_LEN:
        return None
    first = view[0]
    if first == 0x45:
        total, frag = _V4_LEN_FRAG.unpack_from(view, 2)
        if total != n or frag & (FLAG_MF | FRAG_OFFSET_MASK):
            return None
        return IpLayout(4, IPV4_HEADER_LEN, view[9], 9, n, False)
    if first >> 4 == 6 and n >= IPV6_HEADER_LEN:
        protocol = view[6]
        if _U16.unpack_from(view, 4)[0] != n - IPV6_HEADER_LEN or protocol not in _SIMPLE_V6_NEXT:
            return None
        return IpLayout(6, IPV6_HEADER_LEN, protocol, 6, n, False)
    return None


def outbound_layout(view: memoryview) -> IpLayout:
    """Where transport-mode ESP/AH goes in the IPv4 or IPv6 packet ``view``."""
    if not view:
        raise WireError("an empty packet", 0)
    version = view[0] >> 4
    if version == 4:
        return _ipv4_layout(view)
    if version == 6:
        return _ipv6_walk(view, outbound=True)
    raise WireError(f"IP version {version}", 0)


def inbound_layout(view: memoryview) -> IpLayout:
    """Where the first header past the IP header and all routing-relevant IPv6
    extension headers is (the ESP/AH header, or the UDP header of ESP in UDP)."""
    if not view:
        raise WireError("an empty packet", 0)
    version = view[0] >> 4
    if version == 4:
        return _ipv4_layout(view)
    if version == 6:
        return _ipv6_walk(view, outbound=False)
    raise WireError(f"IP version {version}", 0)


def truncated(view: memoryview) -> bool:
    """True when the IP header says the packet is longer than the bytes that came."""
    n = len(view)
    if n == 0:
        return True
    version = view[0] >> 4
    if version == 4:
        return n < IPV4_HEADER_LEN or _U16.unpack_from(view, 2)[0] > n
    if version == 6:
        return n < IPV6_HEADER_LEN or IPV6_HEADER_LEN + _U16.unpack_from(view, 4)[0] > n
    return False


def set_transport_header(
    out: memoryview | bytearray, layout: IpLayout, total: int, protocol: int
) -> None:
    """Patch the IP header at the start of ``out`` for a packet of ``total`` bytes whose
    protocol at ``layout.offset`` is now ``protocol`` (IPv4 header checksum included)."""
    out[layout.protocol_at] = protocol
    if layout.version == 4:
        _U16.pack_into(out, 2, total)
        _U16.pack_into(out, 10, 0)
        header_len = (out[0] & 0x0F) * 4
        if header_len == IPV4_HEADER_LEN:
            words = sum(_IPV4_WORDS.unpack_from(out))
            words = (words & 0xFFFF) + (words >> 16)
            check = ~((words & 0xFFFF) + (words >> 16)) & 0xFFFF
        else:
            check = internet_checksum(memoryview(out)[:header_len])
        _U16.pack_into(out, 10, check)
    else:
        _U16.pack_into(out, 4, total - IPV6_HEADER_LEN)


def inner_tos(inner: memoryview) -> tuple[int, bool]:
    """(DSCP and ECN byte, don't-fragment) of the inner packet, for the outer header."""
    first = inner[0]
    if first >> 4 == 4 and len(inner) >= IPV4_HEADER_LEN:
        return inner[1], bool(inner[6] & 0x40)
    if first >> 4 == 6 and len(inner) >= 2:
        return ((first & 0x0F) << 4) | (inner[1] >> 4), True
    return 0, True


def tunnel_protocol(inner: memoryview) -> int:
    """The next header that names the inner packet: 4 (IPv4) or 41 (IPv6)."""
    version = inner[0] >> 4 if inner else 0
    if version == 4:
        return IPPROTO_IPIP
    if version == 6:
        return IPPROTO_IPV6
    raise WireError(f"IP version {version}", 0)


class OuterHeader:
    """The tunnel-mode outer IPv4 or IPv6 header of one SA, built once from a Repr.

    Per packet ``write`` fills in the length, the protocol, the IPv4
    identification and DF (copied from an inner IPv4 packet; set for an inner
    IPv6 one, as Linux does), and DSCP/ECN copied from the inner packet with
    CE sent as ECT(0) (RFC 6040 normal mode).
    """

    __slots__ = ("header_len", "template", "version")

    def __init__(self, src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address) -> None:
        if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
            self.version = 4
            self.template = Ipv4Repr(
                src=src, dst=dst, protocol=IPPROTO_ESP, payload_len=0, ttl=TUNNEL_TTL
            ).to_bytes(checksum=0)
        elif isinstance(src, IPv6Address) and isinstance(dst, IPv6Address):
            self.version = 6
            self.template = Ipv6Repr(
                src=src, dst=dst, next_header=IPPROTO_ESP, payload_len=0, hop_limit=TUNNEL_TTL
            ).to_bytes()
        else:
            raise ValueError("tunnel endpoints must be two IPv4 or two IPv6 addresses")
        self.header_len = len(self.template)

    def write(
        self,
        out: memoryview,
        total: int,
        protocol: int,
        *,
        tos: int,
        dont_frag: bool,
        ident: int,
    ) -> None:
        """Write the header at the start of ``out`` for a packet of ``total`` bytes."""
        out[: self.header_len] = self.template
        if tos & ECN_MASK == ECN_CE:
            tos = (tos & ~ECN_MASK) | ECN_ECT0
        if self.version == 4:
            out[1] = tos
            _IPV4_LEN_ID_FRAG.pack_into(out, 2, total, ident & 0xFFFF, FLAG_DF if dont_frag else 0)
            out[9] = protocol
            _U16.pack_into(out, 10, internet_checksum(out[:IPV4_HEADER_LEN]))
        else:
            out[0] = 0x60 | (tos >> 4)
            out[1] = (tos & 0x0F) << 4
            _U16.pack_into(out, 4, total - IPV6_HEADER_LEN)
            out[6] = protocol


def ecn_decapsulate(outer: memoryview, inner: bytearray | memoryview) -> None:
    """Carry a congestion mark from the outer header into the inner packet (RFC 6040):
    outer CE over an ECN-capable inner packet marks it CE."""
    outer_ecn = outer[1] if outer[0] >> 4 == 4 else outer[1] >> 4
    if outer_ecn & ECN_MASK != ECN_CE:
        return
    if inner[0] >> 4 == 4:
        if inner[1] & ECN_MASK in (1, 2):
            inner[1] |= ECN_CE
            header_len = (inner[0] & 0x0F) * 4
            _U16.pack_into(inner, 10, 0)
            _U16.pack_into(inner, 10, internet_checksum(memoryview(inner)[:header_len]))
    elif (inner[1] >> 4) & ECN_MASK in (1, 2):
        inner[1] |= ECN_CE << 4


def inner_packet_len(inner: memoryview) -> int:
    """The length the inner packet's own header gives (it may be followed by TFC padding)."""
    version = inner[0] >> 4 if inner else 0
    if version == 4:
        return Ipv4Packet.checked(inner).total_len
    if version == 6:
        return IPV6_HEADER_LEN + Ipv6Packet.checked(inner).payload_len
    raise WireError(f"inner IP version {version}", 0)


# --- AH: the fields that change in transit are zero in the ICV (RFC 4302 3.3.3.1) ---


def _zero_ipv4_options(buf: bytearray, header_len: int) -> None:
    i = IPV4_HEADER_LEN
    while i < header_len:
        kind = buf[i]
        if kind == 0:  # end of option list: the rest is padding, kept as it is
            return
        if kind == 1:
            i += 1
            continue
        if i + 1 >= header_len:
            raise WireError("IPv4 option without its length byte", i)
        length = buf[i + 1]
        if length < 2 or i + length > header_len:
            raise WireError(f"IPv4 option length {length} does not fit", i + 1)
        if kind not in IMMUTABLE_IPV4_OPTIONS:
            # The whole option, type and length included, is zeroed (RFC 4302 3.3.3.1.1.2).
            buf[i : i + length] = bytes(length)
        i += length


def _zero_ipv6_options(buf: bytearray, start: int, end: int) -> None:
    i = start + 2
    while i < end:
        kind = buf[i]
        if kind == 0:  # Pad1
            i += 1
            continue
        if i + 1 >= end:
            raise WireError("IPv6 option without its length byte", i)
        length = buf[i + 1]
        if i + 2 + length > end:
            raise WireError(f"IPv6 option length {length} overruns its header", i + 1)
        if kind & IPV6_OPTION_MUTABLE:
            buf[i + 2 : i + 2 + length] = bytes(length)
        i += 2 + length


def zero_mutable_fields(buf: bytearray, layout: IpLayout) -> None:
    """Zero, in the copy ``buf`` of a packet, the IP fields AH's ICV leaves out.

    IPv4: DSCP/ECN, flags and fragment offset, TTL, header checksum, and the
    mutable options whole. IPv6: traffic class, flow label, hop limit, and
    the data of options marked as changing en route in the extension headers
    before ``layout.offset`` (the AH header). A routing header with segments
    left would have to be reordered as the receiver will see it; that is
    ``UnsupportedHeaderError``.
    """
    if layout.version == 4:
        buf[1] = 0
        buf[6:9] = b"\x00\x00\x00"
        buf[10:12] = b"\x00\x00"
        _zero_ipv4_options(buf, (buf[0] & 0x0F) * 4)
        return
    buf[0] = 0x60
    buf[1:4] = b"\x00\x00\x00"
    buf[7] = 0
    protocol = buf[6]
    offset = IPV6_HEADER_LEN
    while offset < layout.offset:
        length = (buf[offset + 1] + 1) * 8
        if protocol in (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS):
            _zero_ipv6_options(buf, offset, offset + length)
        elif protocol == IPPROTO_ROUTING:
            if buf[offset + 3]:
                raise UnsupportedHeaderError(
                    "AH over an IPv6 routing header with segments left is not supported"
                )
        else:
            raise UnsupportedHeaderError(f"IPv6 extension header {protocol} before AH")
        protocol = buf[offset]
        offset += length
