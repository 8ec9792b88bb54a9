"""``engine.dissect`` and the ``wire`` views read a frame the same way, whatever the frame.

The engine has its own fast dissector; the stack parses with the wire views. Here
the two are tied together: for any frame, valid or not, either both reject it or
both accept it with the same L3 offset (VLAN tags skipped), IP version, L4 offset
(IPv4 IHL; IPv6 extension headers), protocol, IP end (total length, payload
length), payload offset and L4 header length (TCP data offset, UDP 8), fragment
flag and IPv4-options flag.

The wire side is put together from the views as Linux's GSO reads a packet:
VLAN tags are skipped (``__vlan_get_protocol``), IPv6 hop-by-hop, routing and
destination options headers are walked and a fragment header ends the walk
(``ipv6_gso_pull_exthdrs``), a later IPv4 fragment has no L4 header.

**The one legitimate difference: length fields.** ``dissect`` reads every header
from the frame's bytes and reports where the IP length field says the packet ends
(``ip_end``), leaving the judgment to its callers (``engine.validate`` and the
kernel rules it follows: a GSO super-packet's length fields are rewritten, not
trusted; BIG TCP sends IPv6 payload length 0). The wire views bound each layer by
the length field before it and reject a field that does not fit. So when the IPv4
total length, the IPv6 payload length or the UDP length disagrees with the frame,
``dissect`` may accept what the views reject; ``classify`` asserts that setting
those fields to what the frame holds makes the views agree with ``dissect``
field for field, and that ``dissect``'s ``ip_end`` is the original field's.

**What the views read is the offload reading.** Where Linux's offload paths read
less than a receiving stack would, the wire layer offers that reading too, and
``dissect`` uses it or agrees with it:

* VLAN tags: at most 7, with TPID 0x8100 or 0x88A8 only, on both sides
  (``__vlan_get_protocol`` gives up at the ``VLAN_MAX_DEPTH``-th tag;
  ``eth_type_vlan``); 0x9100 is an EtherType, not a tag.
* IPv6 extension headers: hop-by-hop, routing and destination options are
  stepped over by length, and a fragment header ends the walk
  (``ipv6_gso_pull_exthdrs``); ``dissect`` calls the wire layer's
  ``gso_extension_walk`` for it. Option contents and header order are the
  receiving stack's to judge (``walk_extension_headers``), not an offload's.
* TCP: the data offset only (``tcp_gso_segment``): ``TcpPacket.checked(...,
  options=False)``.

``test_dissect_and_wire_agree`` asserts agreement on any frame up to the length
fields alone, and the pinned frames below are the ones that once disagreed.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from netoffload.engine.dissect import DissectError, Dissection, dissect
from netoffload.wire import (
    EthernetFrame,
    EthernetRepr,
    EtherType,
    IpProtocol,
    Ipv4Packet,
    Ipv4Repr,
    Ipv6DestOptionsRepr,
    Ipv6ExtHeader,
    Ipv6FragmentRepr,
    Ipv6HopByHopRepr,
    Ipv6Option,
    Ipv6Packet,
    Ipv6Repr,
    Ipv6RoutingRepr,
    MacAddress,
    TcpFlags,
    TcpMss,
    TcpNoOperation,
    TcpPacket,
    TcpRepr,
    TcpSack,
    TcpSackPermitted,
    TcpTimestamps,
    TcpWindowScale,
    UdpPacket,
    UdpRepr,
    VlanTag,
    WireError,
    walk_extension_headers,
)
from netoffload.wire.ipv6 import pad_options
from netoffload.wire.tcp import TcpOption

TCP, UDP = IpProtocol.TCP, IpProtocol.UDP
# What Linux's GSO walks over (INET6_PROTO_GSO_EXTHDR); a fragment header ends the walk.
GSO_WALKED = frozenset({IpProtocol.HOPOPT, IpProtocol.IPV6_ROUTE, IpProtocol.IPV6_OPTS})
DISSECT_TPIDS = frozenset({0x8100, 0x88A8})
DISSECT_MAX_TAGS = 7
NOP = 0x01
KNOWN = frozenset({"lengths"})
SETTINGS = settings(max_examples=2000, deadline=None)


class Fields(NamedTuple):
    """What both sides read, in ``Dissection``'s order."""

    l3: int
    version: int
    l4: int
    protocol: int
    ip_end: int
    payload: int
    l4_header_len: int
    fragment: bool
    ipv4_options: bool


# -- the two readers ------------------------------------------------------------------


def dissected(frame: bytes, l4: bool = True) -> Fields | None:
    """``dissect``'s reading, or None when it rejects the frame (only ``DissectError``)."""
    try:
        return Fields(*dissect(frame, l4=l4))
    except DissectError:
        return None


def _gso_walk(ip6: Ipv6Packet, strict: bool) -> tuple[int, int]:
    """(L4 offset from the IPv6 header, protocol) after the headers GSO walks.

    ``strict`` walks with ``walk_extension_headers``; otherwise header by header
    with ``Ipv6ExtHeader`` views, which check lengths only (what Linux checks).
    """
    offset, protocol = 40, ip6.next_header
    if strict:
        for header in walk_extension_headers(ip6.buffer).headers:
            if isinstance(header, Ipv6FragmentRepr):
                break
            offset += header.header_len
            protocol = header.next_header
        return offset, protocol
    packet = ip6.buffer[: 40 + ip6.payload_len]
    while protocol in GSO_WALKED:
        ext = Ipv6ExtHeader.checked(packet[offset:])
        offset += ext.header_len
        protocol = ext.next_header
    return offset, protocol


def wire_read(frame: bytes, l4: bool = True, *, strict_ipv6_walk: bool = False) -> Fields:
    """The wire views' reading of ``frame``; raises ``WireError`` where they reject it."""
    eth = EthernetFrame.checked(frame)
    l3 = eth.header_len
    if eth.ethertype == EtherType.IPV4:
        ip = Ipv4Packet.checked(eth.payload)
        version, l4_off, protocol = 4, l3 + ip.header_len, ip.protocol
        ip_end = l3 + ip.total_len
        fragment = ip.more_frags or ip.frag_offset != 0
        options = ip.header_len > 20
        upper = ip.payload
        parse_l4 = l4 and ip.frag_offset == 0  # a later fragment carries no L4 header
    elif eth.ethertype == EtherType.IPV6:
        ip6 = Ipv6Packet.checked(eth.payload)
        offset, protocol = _gso_walk(ip6, strict_ipv6_walk)
        version, l4_off, ip_end = 6, l3 + offset, l3 + 40 + ip6.payload_len
        fragment = protocol == IpProtocol.IPV6_FRAG
        options = False
        upper = ip6.buffer[offset : 40 + ip6.payload_len]
        parse_l4 = l4 and not fragment
    else:
        raise WireError(f"EtherType {eth.ethertype:#06x} is not IP")
    thlen = 0
    if parse_l4 and protocol == TCP:
        thlen = TcpPacket.checked(upper, options=False).header_len
    elif parse_l4 and protocol == UDP:
        UdpPacket.checked(upper)
        thlen = 8
    return Fields(l3, version, l4_off, protocol, ip_end, l4_off + thlen, thlen, fragment, options)


def wire_read_or_none(
    frame: bytes, l4: bool = True, *, strict_ipv6_walk: bool = False
) -> Fields | None:
    try:
        return wire_read(frame, l4, strict_ipv6_walk=strict_ipv6_walk)
    except WireError:
        return None


# -- comparing them -------------------------------------------------------------------


def _true_lengths(frame: bytes, d: Fields) -> bytes:
    """``frame`` with its IP (and UDP) length fields set to what the frame holds."""
    buf = bytearray(frame)
    view = memoryview(buf)
    n = len(buf)
    if d.version == 4:
        Ipv4Packet(view[d.l3 :]).total_len = n - d.l3
    else:
        Ipv6Packet(view[d.l3 :]).payload_len = n - d.l3 - 40
    if d.protocol == UDP and d.l4_header_len:
        UdpPacket(view[d.l4 :]).length = n - d.l4
    return bytes(buf)


def _nop_options(frame: bytes, d: Fields) -> bytes:
    """``frame`` with its TCP option bytes all NOPs (the data offset kept)."""
    return frame[: d.l4 + 20] + bytes([NOP]) * (d.payload - d.l4 - 20) + frame[d.payload :]


def _raw_ip_end(frame: bytes, d: Fields) -> int:
    if d.version == 4:
        return d.l3 + Ipv4Packet(frame[d.l3 :]).total_len
    return d.l3 + 40 + Ipv6Packet(frame[d.l3 :]).payload_len


def classify(frame: bytes, l4: bool = True) -> frozenset[str]:
    """The kinds of difference between ``dissect`` and the views on ``frame`` (none: agree).

    Raises ``AssertionError`` when they differ in a way no known kind accounts for,
    and checks the shape of each kind it names (see the module docstring).
    """
    d = dissected(frame, l4)
    w = wire_read_or_none(frame, l4)
    if d == w:
        return frozenset()
    assert d is not None, f"dissect rejects what the views read as {w}: {frame.hex()}"
    assert w is None, f"dissect reads {d}, the views {w}: {frame.hex()}"
    again = wire_read_or_none(_true_lengths(frame, d), l4)
    assert again is not None, f"dissect reads {d}; the views reject it: {frame.hex()}"
    # dissect reports the field's end; the views, given true lengths, the frame's.
    assert d.ip_end == _raw_ip_end(frame, d)
    assert again.ip_end == len(frame)
    assert again._replace(ip_end=d.ip_end) == d, f"dissect {d}, the views {again}: {frame.hex()}"
    return frozenset({"lengths"})


def _check(frame: bytes, l4: bool) -> frozenset[str]:
    kinds = classify(frame, l4)
    if kinds:
        event(f"difference: {', '.join(sorted(kinds))}")
    else:
        event(f"agree: both {'reject' if dissected(frame, l4) is None else 'accept'}")
    return kinds


# -- frames built with the Reprs --------------------------------------------------------

MAC_A, MAC_B = MacAddress(bytes.fromhex("020000000001")), MacAddress(bytes.fromhex("020000000002"))
V4 = (IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"))
V6 = (IPv6Address("fd00::1"), IPv6Address("fd00::2"))
OTHER_PROTOCOLS = (1, 2, 47, 50, 51, 58, 59, 132)


def _tags(tpids: st.SearchStrategy[int], max_size: int) -> st.SearchStrategy[tuple[VlanTag, ...]]:
    tag = st.builds(VlanTag, st.integers(0, 7), st.booleans(), st.integers(0, 0xFFF), tpids)
    return st.lists(tag, max_size=max_size).map(tuple)


_TCP_OPTION: st.SearchStrategy[TcpOption] = st.one_of(
    st.just(TcpNoOperation()),
    st.builds(TcpMss, st.integers(0, 0xFFFF)),
    st.builds(TcpWindowScale, st.integers(0, 14)),
    st.just(TcpSackPermitted()),
    st.builds(TcpTimestamps, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    st.builds(
        TcpSack,
        st.lists(
            st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), min_size=1, max_size=3
        ).map(tuple),
    ),
)


@st.composite
def _tcp_options(draw: st.DrawFn) -> tuple[TcpOption, ...]:
    """Options that fit the 40 bytes a TCP header has for them."""
    options: list[TcpOption] = []
    for option in draw(st.lists(_TCP_OPTION, max_size=6)):
        if sum(len(o.to_bytes()) for o in (*options, option)) <= 40:
            options.append(option)
    return tuple(options)


@st.composite
def _l4(draw: st.DrawFn) -> tuple[int, bytes, int]:
    """(protocol, segment bytes with payload, L4 header length as dissect reports it)."""
    payload = draw(st.binary(max_size=48))
    kind = draw(st.sampled_from(["tcp", "udp", "other"]))
    if kind == "tcp":
        tcp = TcpRepr(
            draw(st.integers(0, 0xFFFF)),
            draw(st.integers(0, 0xFFFF)),
            draw(st.integers(0, 2**32 - 1)),
            flags=TcpFlags(draw(st.integers(0, 0x1FF))),
            options=draw(_tcp_options()),
        )
        return TCP, tcp.to_bytes(payload, checksum=0), tcp.header_len
    if kind == "udp":
        return UDP, UdpRepr(draw(st.integers(0, 0xFFFF)), 9).to_bytes(payload, checksum=0), 8
    return draw(st.sampled_from(OTHER_PROTOCOLS)), payload, 0


_IPV6_OPTION = st.builds(Ipv6Option, st.integers(2, 0xFF), st.binary(max_size=10))
_FRAG = IpProtocol.IPV6_FRAG


@st.composite
def _ipv6_ext_chain(draw: st.DrawFn, upper: int) -> tuple[int, list[tuple[int, bytes]]]:
    """(first next header, extension headers as (type, bytes)) ending in ``upper``.

    Any order and repetition RFC 8200 allows: hop-by-hop only first.
    """
    kinds = draw(st.lists(st.sampled_from(["dst", "rt", "frag"]), max_size=4))
    if draw(st.booleans()):
        kinds.insert(0, "hbh")
    chain: list[tuple[int, bytes]] = []
    following = upper
    for kind in reversed(kinds):
        header: Ipv6HopByHopRepr | Ipv6DestOptionsRepr | Ipv6RoutingRepr | Ipv6FragmentRepr
        if kind in ("hbh", "dst"):
            options = pad_options(tuple(draw(st.lists(_IPV6_OPTION, max_size=3))))
            cls = Ipv6HopByHopRepr if kind == "hbh" else Ipv6DestOptionsRepr
            header = cls(following, options)
        elif kind == "rt":
            data = draw(st.binary(min_size=4, max_size=4)) + bytes(8 * draw(st.integers(0, 2)))
            header = Ipv6RoutingRepr(following, draw(st.integers(0, 255)), 0, data)
        else:
            offset = draw(st.sampled_from([0, 0, 1, 0x1FFF]))
            header = Ipv6FragmentRepr(following, offset, draw(st.booleans()), 7)
        chain.insert(0, (header.PROTOCOL, header.to_bytes()))
        following = header.PROTOCOL
    return following, chain


class Built(NamedTuple):
    """A frame made with the Reprs, the fields it was made with, and where its headers are."""

    frame: bytes
    fields: Fields
    ext_offsets: tuple[int, ...]  # IPv6 extension headers, from the frame start


@st.composite
def built_frames(draw: st.DrawFn, tpids: tuple[int, ...] = (0x8100, 0x88A8)) -> Built:
    """A well-formed frame: VLAN tags (at most 2), IPv4 (options, fragments) or IPv6
    (extension headers), TCP (options), UDP or another protocol, maybe Ethernet padding."""
    tags = draw(_tags(st.sampled_from(tpids), DISSECT_MAX_TAGS))
    l3 = 14 + 4 * len(tags)
    protocol, segment, thlen = draw(_l4())
    padding = bytes(draw(st.integers(0, 12)))
    ext_offsets: list[int] = []
    if draw(st.booleans()):
        frag_offset = draw(st.sampled_from([0, 0, 0, 1, 185]))
        ip4 = Ipv4Repr(
            *V4,
            protocol,
            len(segment),
            ident=draw(st.integers(0, 0xFFFF)),
            dont_frag=draw(st.booleans()),
            more_frags=draw(st.booleans()),
            frag_offset=frag_offset,
            options=draw(st.binary(max_size=40).map(lambda b: b[: len(b) - len(b) % 4])),
        )
        packet = ip4.to_bytes(segment)
        l4 = l3 + ip4.header_len
        thlen = 0 if frag_offset else thlen  # a later fragment has no L4 header
        fragment = ip4.more_frags or frag_offset != 0
        fields = Fields(
            l3, 4, l4, protocol, l3 + len(packet), l4 + thlen, thlen, fragment, bool(ip4.options)
        )
        ethertype = EtherType.IPV4
    else:
        first, chain = draw(_ipv6_ext_chain(protocol))
        body = b"".join(header for _, header in chain) + segment
        packet = Ipv6Repr(*V6, first, len(body)).to_bytes(body)
        position = l3 + 40
        for _, header in chain:
            ext_offsets.append(position)
            position += len(header)
        walked, seen = l3 + 40, protocol
        for code, header in chain:
            if code == _FRAG:
                seen = _FRAG
                break
            walked += len(header)
        thlen = 0 if seen == _FRAG else thlen
        fields = Fields(
            l3, 6, walked, seen, l3 + len(packet), walked + thlen, thlen, seen == _FRAG, False
        )
        ethertype = EtherType.IPV6
    frame = EthernetRepr(MAC_B, MAC_A, ethertype, tags).to_bytes(packet + padding)
    return Built(frame, fields, tuple(ext_offsets))


# -- frames from scratch and mutated ------------------------------------------------------

TPIDS = (0x8100, 0x88A8, 0x9100)
ETHERTYPES = (0x0800, 0x86DD, 0x0806, 0x05DC, 0x8100, 0x88A8, 0x9100)
NEXT_HEADERS = (0, 6, 17, 43, 44, 50, 51, 58, 59, 60, 255)


def _random_tags(draw: st.DrawFn, tpids: tuple[int, ...], counts: list[int]) -> bytes:
    return b"".join(
        draw(st.sampled_from(tpids)).to_bytes(2, "big") + draw(st.binary(min_size=2, max_size=2))
        for _ in range(draw(st.sampled_from(counts)))
    )


@st.composite
def random_frames(draw: st.DrawFn) -> bytes:
    """Random bytes: alone, behind random VLAN tags and EtherType, or behind 0-2 tags, an IP
    EtherType and the matching version nibble (so that random headers get read)."""
    kind = draw(st.sampled_from(["bytes", "tags", "ip"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    macs = draw(st.binary(min_size=12, max_size=12))
    body = bytearray(draw(st.binary(max_size=180) | st.binary(min_size=40, max_size=180)))
    if kind == "tags":
        tags = _random_tags(draw, TPIDS, list(range(10)))
        ethertype = draw(st.sampled_from(ETHERTYPES) | st.integers(0, 0xFFFF))
        return macs + tags + ethertype.to_bytes(2, "big") + bytes(body)
    tags = _random_tags(draw, (0x8100, 0x88A8), [0, 0, 1, 2])
    version = draw(st.sampled_from([4, 6]))
    if body:
        body[0] = (version << 4) | (body[0] & 0x0F)
    if len(body) >= 40 and draw(st.booleans()):  # a length field that fits the bytes
        if version == 4:
            body[2:4] = len(body).to_bytes(2, "big")
        else:
            body[4:6] = (len(body) - 40).to_bytes(2, "big")
    ethertype = 0x0800 if version == 4 else 0x86DD
    return macs + tags + ethertype.to_bytes(2, "big") + bytes(body)


def _set(buf: bytearray, offset: int, value: int, size: int) -> None:
    """Write ``value`` as ``size`` big-endian bytes at ``offset``, as far as the buffer goes."""
    raw = value.to_bytes(size, "big")
    for i, byte in enumerate(raw):
        if offset + i < len(buf):
            buf[offset + i] = byte


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A frame built with the Reprs, then 1-3 of: truncation, a length / IHL / data offset /
    next header / EtherType / version rewritten or bit-flipped, VLAN tags stacked in front,
    an extension header (well-formed or not) put first in the IPv6 chain, a random byte."""
    built = draw(built_frames())
    buf = bytearray(built.frame)
    f = built.fields
    ext = list(built.ext_offsets)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(
            st.sampled_from(
                [
                    "truncate", "ip-length", "ihl", "l4-length", "next-header", "ext-length",
                    "ethertype", "version", "vlan", "ext-insert", "options-byte", "byte",
                ]
            )
        )  # fmt: skip
        value16 = draw(st.integers(0, 0xFFFF) | st.sampled_from([0, 1, 7, 8, 19, 20, 40, 41]))
        flip = draw(st.booleans())
        if how == "truncate":
            del buf[draw(st.integers(0, len(buf))) :]
        elif how == "ip-length":
            at = f.l3 + (2 if f.version == 4 else 4)
            old = int.from_bytes(buf[at : at + 2], "big") if at + 2 <= len(buf) else 0
            _set(buf, at, old ^ (1 << draw(st.integers(0, 15))) if flip else value16, 2)
        elif how == "ihl" and f.l3 < len(buf):
            buf[f.l3] = (buf[f.l3] & 0xF0) | draw(st.integers(0, 15))
        elif how == "l4-length" and f.protocol == TCP:
            if f.l4 + 12 < len(buf):
                buf[f.l4 + 12] = (draw(st.integers(0, 15)) << 4) | (buf[f.l4 + 12] & 0x0F)
        elif how == "l4-length" and f.protocol == UDP:
            _set(buf, f.l4 + 4, value16, 2)
        elif how == "next-header":
            at = draw(st.sampled_from([f.l3 + (9 if f.version == 4 else 6), *ext]))
            _set(buf, at, draw(st.sampled_from(NEXT_HEADERS) | st.integers(0, 255)), 1)
        elif how == "ext-length" and ext:
            _set(buf, draw(st.sampled_from(ext)) + 1, draw(st.integers(0, 255)), 1)
        elif how == "ethertype":
            _set(buf, f.l3 - 2, draw(st.sampled_from(ETHERTYPES) | st.integers(0, 0xFFFF)), 2)
        elif how == "version" and f.l3 < len(buf):
            buf[f.l3] = (draw(st.integers(0, 15)) << 4) | (buf[f.l3] & 0x0F)
        elif how == "vlan" and len(buf) >= 12:
            count = draw(st.integers(1, 8))
            tags = b"".join(
                draw(st.sampled_from(TPIDS)).to_bytes(2, "big") + bytes(2) for _ in range(count)
            )
            buf[12:12] = tags
            shift = len(tags)
            f = f._replace(l3=f.l3 + shift, l4=f.l4 + shift, payload=f.payload + shift)
            ext = [e + shift for e in ext]
        elif how == "ext-insert" and f.version == 6 and f.l3 + 40 <= len(buf):
            kind = draw(st.sampled_from([0, 43, 44, 60]))
            if draw(st.booleans()):  # well-formed
                length = 8 if kind == 44 else 8 * draw(st.integers(1, 3))
                body = bytes([buf[f.l3 + 6], length // 8 - 1 if kind != 44 else 0])
                body += bytes([1, length - 4]) if kind in (0, 60) else bytes(2)
                header = body + bytes(length - 4)
            else:
                header = bytes([buf[f.l3 + 6], draw(st.integers(0, 255))]) + draw(
                    st.binary(min_size=0, max_size=30)
                )
            buf[f.l3 + 6] = kind
            at = f.l3 + 40
            buf[at:at] = header
            if draw(st.booleans()):
                old = int.from_bytes(buf[f.l3 + 4 : f.l3 + 6], "big")
                _set(buf, f.l3 + 4, min(old + len(header), 0xFFFF), 2)
            f = f._replace(l4=f.l4 + len(header), payload=f.payload + len(header))
            ext = [at] + [e + len(header) for e in ext]
        elif how == "options-byte" and f.payload > f.l4 + 20 and f.protocol == TCP:
            _set(buf, draw(st.integers(f.l4 + 20, f.payload - 1)), draw(st.integers(0, 255)), 1)
        elif how == "byte" and buf:
            at = draw(st.integers(0, len(buf) - 1))
            buf[at] = (
                buf[at] ^ (1 << draw(st.integers(0, 7))) if flip else draw(st.integers(0, 255))
            )
    return bytes(buf)


# -- the properties ---------------------------------------------------------------------


def test_fields_are_dissections_fields() -> None:
    assert Fields._fields == Dissection._fields


@SETTINGS
@given(built_frames(), st.booleans())
def test_frames_built_with_the_reprs_read_as_built(built: Built, l4: bool) -> None:
    """Both sides read a well-formed frame, and read what it was built with."""
    expected = built.fields
    if not l4:
        expected = expected._replace(payload=expected.l4, l4_header_len=0)
    assert dissected(built.frame, l4) == expected
    assert wire_read(built.frame, l4) == expected


@SETTINGS
@given(random_frames(), st.booleans())
def test_random_frames_differ_only_as_documented(frame: bytes, l4: bool) -> None:
    assert _check(frame, l4) <= KNOWN


@SETTINGS
@given(mutated_frames(), st.booleans())
def test_mutated_frames_differ_only_as_documented(frame: bytes, l4: bool) -> None:
    assert _check(frame, l4) <= KNOWN


# -- the differences, pinned by minimal frames ---------------------------------------------


def _eth(ethertype: int, tags: tuple[VlanTag, ...] = ()) -> EthernetRepr:
    return EthernetRepr(MAC_B, MAC_A, ethertype, tags)


def _ipv4(segment: bytes, protocol: int = TCP, **fields: int) -> bytes:
    packet = bytearray(Ipv4Repr(*V4, protocol, len(segment)).to_bytes(segment))
    view = Ipv4Packet(packet)
    for name, value in fields.items():
        setattr(view, name, value)
    return bytes(packet)


def _ipv6(body: bytes, next_header: int = TCP, **fields: int) -> bytes:
    packet = bytearray(Ipv6Repr(*V6, next_header, len(body)).to_bytes(body))
    view = Ipv6Packet(packet)
    for name, value in fields.items():
        setattr(view, name, value)
    return bytes(packet)


TCP_SEGMENT = TcpRepr(40000, 5001, 1).to_bytes(b"data", checksum=0)
NO_NEXT = IpProtocol.IPV6_NONXT
# Three and seven 802.1Q tags: walked by Linux and both readers; eight: refused by all.
THREE_TAGS = _eth(EtherType.IPV4, (VlanTag(0, False, 1),) * 3).to_bytes(_ipv4(TCP_SEGMENT))
SEVEN_TAGS = _eth(EtherType.IPV4, (VlanTag(0, False, 1),) * 7).to_bytes(_ipv4(TCP_SEGMENT))
EIGHT_TAGS = SEVEN_TAGS[:12] + bytes.fromhex("81000001") + SEVEN_TAGS[12:]
# A tag behind the pre-standard 0x9100 TPID: to Linux (and both readers) an EtherType.
TPID_9100 = (
    _eth(EtherType.IPV4).to_bytes(_ipv4(TCP_SEGMENT))[:12]
    + bytes.fromhex("91000001")
    + _eth(EtherType.IPV4).to_bytes(_ipv4(TCP_SEGMENT))[12:]
)
# Hop-by-hop option 5 claims 10 data bytes where the header has 4 (8-byte header, no next).
BAD_TLV = _eth(EtherType.IPV6).to_bytes(
    _ipv6(bytes([NO_NEXT, 0, 5, 10, 0, 0, 0, 0]), IpProtocol.HOPOPT)
)
# Destination options, then a hop-by-hop header: not first, which the views refuse.
HBH_NOT_FIRST = _eth(EtherType.IPV6).to_bytes(
    _ipv6(
        Ipv6DestOptionsRepr(IpProtocol.HOPOPT, pad_options(())).to_bytes()
        + Ipv6HopByHopRepr(NO_NEXT, pad_options(())).to_bytes(),
        IpProtocol.IPV6_OPTS,
    )
)
# Seventeen empty destination options headers: the views stop at 16.
SEVENTEEN_HEADERS = _eth(EtherType.IPV6).to_bytes(
    _ipv6(
        b"".join(
            Ipv6DestOptionsRepr(
                IpProtocol.IPV6_OPTS if i < 16 else NO_NEXT, pad_options(())
            ).to_bytes()
            for i in range(17)
        ),
        IpProtocol.IPV6_OPTS,
    )
)
# A first fragment (offset 0) followed by a truncated destination options header: GSO and
# dissect stop at the fragment header, the views walk on and find it overrunning.
AFTER_FRAGMENT = _eth(EtherType.IPV6).to_bytes(
    _ipv6(
        Ipv6FragmentRepr(IpProtocol.IPV6_OPTS, 0, True, 7).to_bytes() + bytes([NO_NEXT, 1]),
        IpProtocol.IPV6_FRAG,
    )
)
# TCP data offset 6 with option bytes 02 01 00 00: an MSS option of length 1.
BAD_TCP_OPTION = _eth(EtherType.IPV4).to_bytes(
    _ipv4(TCP_SEGMENT[:12] + bytes([0x60]) + TCP_SEGMENT[13:20] + bytes([2, 1, 0, 0]) + b"data")
)
# The legitimate difference: an IPv4 total length past the frame (a super-packet's length
# the kernel rewrites), IPv6 payload length 0 (BIG TCP), a UDP length below 8.
IPV4_LONG = _eth(EtherType.IPV4).to_bytes(_ipv4(TCP_SEGMENT, total_len=0xFFFF))
IPV6_ZERO = _eth(EtherType.IPV6).to_bytes(_ipv6(TCP_SEGMENT, payload_len=0))
UDP_SHORT = _eth(EtherType.IPV4).to_bytes(
    _ipv4(bytes(UdpRepr(40000, 9).to_bytes(b"data", checksum=0))[:4] + bytes(4) + b"data", UDP)
)
# Ethernet padding after the IP packet is no difference at all.
PADDED = _eth(EtherType.IPV4).to_bytes(_ipv4(TCP_SEGMENT) + bytes(10))

PINNED = {
    # name: (frame, kinds of difference, accepted by both)
    "three-tags": (THREE_TAGS, set(), True),
    "seven-tags": (SEVEN_TAGS, set(), True),
    "eight-tags": (EIGHT_TAGS, set(), False),
    "tpid-9100": (TPID_9100, set(), False),
    "bad-tlv": (BAD_TLV, set(), True),
    "hbh-not-first": (HBH_NOT_FIRST, set(), True),
    "seventeen-headers": (SEVENTEEN_HEADERS, set(), True),
    "after-fragment": (AFTER_FRAGMENT, set(), True),
    "bad-tcp-option": (BAD_TCP_OPTION, set(), True),
    "ipv4-long": (IPV4_LONG, {"lengths"}, None),
    "ipv6-zero": (IPV6_ZERO, {"lengths"}, None),
    "udp-short": (UDP_SHORT, {"lengths"}, None),
    "padded": (PADDED, set(), True),
}


@pytest.mark.parametrize("name", list(PINNED))
def test_pinned_frames(name: str) -> None:
    frame, kinds, both = PINNED[name]
    assert classify(frame) == kinds
    accepted = (dissected(frame) is not None, wire_read_or_none(frame) is not None)
    if kinds:
        assert accepted == (True, False)  # dissect leaves judging lengths to its callers
    else:
        assert accepted == (both, both)


def test_a_receiving_stack_still_judges_what_offloads_step_over() -> None:
    """The strict readings stay strict: option contents and order are the stack's to judge."""
    for frame in (BAD_TLV, HBH_NOT_FIRST, SEVENTEEN_HEADERS, AFTER_FRAGMENT):
        assert wire_read_or_none(frame, strict_ipv6_walk=True) is None
    segment = EthernetFrame.checked(BAD_TCP_OPTION).payload[20:]
    with pytest.raises(WireError):
        TcpPacket.checked(segment)


def test_lengths_dissect_reports_the_fields_end() -> None:
    d = dissected(IPV4_LONG)
    assert d is not None and d.ip_end == 14 + 0xFFFF and d.payload == 14 + 20 + 20
    d = dissected(IPV6_ZERO)
    assert d is not None and d.ip_end == 14 + 40 and d.l4_header_len == 20


@SETTINGS
@given(st.one_of(random_frames(), mutated_frames()), st.booleans())
@example(THREE_TAGS, True)
@example(EIGHT_TAGS, True)
@example(TPID_9100, True)
@example(BAD_TLV, True)
@example(HBH_NOT_FIRST, True)
@example(SEVENTEEN_HEADERS, True)
@example(AFTER_FRAGMENT, True)
@example(BAD_TCP_OPTION, True)
def test_dissect_and_wire_agree(frame: bytes, l4: bool) -> None:
    """Agreement on every frame, up to the one legitimate difference (length fields)."""
    assert classify(frame, l4) <= {"lengths"}
