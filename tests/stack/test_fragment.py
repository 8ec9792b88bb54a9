"""IPv4/IPv6 fragmentation and reassembly, with scapy as the independent oracle."""

from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, defragment, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, defragment6, fragment6

from netoffload.stack._netaddr import NS_PER_S
from netoffload.stack.fragment import (
    FragmentationNeeded,
    FragmentError,
    Reassembler,
    ReassemblyConfig,
    ReassemblyDrop,
    fragment_ipv4,
    fragment_ipv6,
)
from netoffload.wire import (
    Ipv4Packet,
    Ipv4Repr,
    Ipv6DestOptionsRepr,
    Ipv6FragmentRepr,
    Ipv6HopByHopRepr,
    Ipv6Option,
    Ipv6Packet,
    Ipv6Repr,
    Ipv6RoutingRepr,
    UdpRepr,
    walk_extension_headers,
)
from netoffload.wire.ipv4 import IpProtocol
from netoffload.wire.ipv6 import pad_options

SRC4, DST4 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
SRC6, DST6 = IPv6Address("fd00::1"), IPv6Address("fd00::2")

# Options by copied flag: router alert (0x94, copied), record route (0x07, not copied),
# security-like (0x82, copied), timestamp (0x44, not copied).
ROUTER_ALERT = bytes((0x94, 4, 0, 0))
RECORD_ROUTE = bytes((0x07, 7, 4)) + bytes(4)
SECURITY = bytes((0x82, 4, 0xAB, 0xCD))
TIMESTAMP = bytes((0x44, 8, 5, 0)) + bytes(4)
option_menu = st.sampled_from([ROUTER_ALERT, RECORD_ROUTE, SECURITY, TIMESTAMP, b"\x01"])


@st.composite
def ipv4_options(draw: st.DrawFn) -> bytes:
    out = b""
    for option in draw(st.lists(option_menu, max_size=4)):
        if len(out) + len(option) <= 36:
            out += option
    return out + bytes(-len(out) % 4)


@st.composite
def ipv4_packets(draw: st.DrawFn, min_size: int = 0) -> bytes:
    protocol = draw(st.sampled_from([IpProtocol.UDP, IpProtocol.TCP, 253]))
    payload = draw(st.binary(min_size=min_size, max_size=4000))
    header = Ipv4Repr(
        src=SRC4,
        dst=DST4,
        protocol=protocol,
        payload_len=len(payload),
        ttl=draw(st.integers(1, 255)),
        dscp=draw(st.integers(0, 63)),
        ecn=draw(st.integers(0, 3)),
        ident=draw(st.integers(0, 0xFFFF)),
        options=draw(ipv4_options()),
    )
    return header.to_bytes(payload)


def udp6(payload: bytes, src: IPv6Address = SRC6, dst: IPv6Address = DST6) -> bytes:
    return UdpRepr(4000, 5000).to_bytes(payload, src=src, dst=dst)


@st.composite
def ipv6_packets(draw: st.DrawFn, min_size: int = 0) -> bytes:
    """IPv6 packets with a random chain of extension headers before a UDP datagram."""
    payload = draw(st.binary(min_size=min_size, max_size=5000))
    upper = udp6(payload)
    kinds = []
    if draw(st.booleans()):
        kinds.append("hbh")
    kinds += draw(st.lists(st.sampled_from(["dst", "rt"]), max_size=3))
    next_header = IpProtocol.UDP
    chain = b""
    for kind in reversed(kinds):
        if kind == "hbh":
            header = Ipv6HopByHopRepr(next_header, pad_options(()))
        elif kind == "dst":
            data = draw(st.binary(min_size=0, max_size=12))
            header = Ipv6DestOptionsRepr(next_header, pad_options((Ipv6Option(0x1E, data),)))
        else:
            header = Ipv6RoutingRepr(next_header, routing_type=253, segments_left=0)
        next_header = header.PROTOCOL
        chain = header.to_bytes() + chain
    body = chain + upper
    fixed = Ipv6Repr(
        SRC6,
        DST6,
        next_header,
        len(body),
        hop_limit=draw(st.integers(1, 255)),
        traffic_class=draw(st.integers(0, 255)),
        flow_label=draw(st.integers(0, 0xFFFFF)),
    )
    return fixed.to_bytes(body)


def feed_all(reassembler: Reassembler, fragments: list[bytes]) -> list[bytes]:
    out = []
    for frag in fragments:
        whole = reassembler.feed(frag, 0)
        if whole is not None:
            out.append(whole)
    return out


def big_config() -> ReassemblyConfig:
    return ReassemblyConfig(max_fragments=4096)


# --- fragmentation -------------------------------------------------------------------


def test_fits_is_returned_whole() -> None:
    packet = Ipv4Repr(SRC4, DST4, IpProtocol.UDP, 100).to_bytes(bytes(100))
    assert fragment_ipv4(packet, 1500) == [packet]
    # Ethernet padding after total length is not part of the packet.
    assert fragment_ipv4(packet + bytes(6), 1500) == [packet]


def test_dont_fragment_is_refused_with_the_mtu() -> None:
    packet = Ipv4Repr(SRC4, DST4, IpProtocol.UDP, 2000, dont_frag=True).to_bytes(bytes(2000))
    with pytest.raises(FragmentationNeeded) as err:
        fragment_ipv4(packet, 1500)
    assert err.value.mtu == 1500


def test_ipv4_offsets_lengths_and_copied_options() -> None:
    options = ROUTER_ALERT + RECORD_ROUTE + b"\x00"  # 4 + 7 + EOL = 12 bytes
    payload = bytes(range(256)) * 12
    packet = Ipv4Repr(
        SRC4, DST4, IpProtocol.UDP, len(payload), ident=0x1234, options=options
    ).to_bytes(payload)
    frags = fragment_ipv4(packet, 576)
    views = [Ipv4Packet.checked(f) for f in frags]
    assert all(len(f) <= 576 for f in frags)
    assert all(v.verify_checksum() for v in views)
    assert all(v.ident == 0x1234 for v in views)
    assert [v.more_frags for v in views] == [True] * (len(views) - 1) + [False]
    # First fragment: every option; later ones: only the copied router alert.
    assert bytes(views[0].options) == options
    assert all(bytes(v.options) == ROUTER_ALERT for v in views[1:])
    offset = 0
    for v in views:
        assert v.frag_offset * 8 == offset
        if v.more_frags:
            assert len(v.payload) % 8 == 0
        offset += len(v.payload)
    assert b"".join(bytes(v.payload) for v in views) == payload
    # RFC 791: (576 - 32) rounded down to 8 in the first; (576 - 24) in the rest.
    assert len(views[0].payload) == 544 and len(views[1].payload) == 552


def test_refragmenting_a_fragment_keeps_offsets_and_mf() -> None:
    payload = bytes(3000)
    packet = Ipv4Repr(SRC4, DST4, IpProtocol.UDP, len(payload)).to_bytes(payload)
    frags = fragment_ipv4(packet, 1500)
    smaller = [g for f in frags for g in fragment_ipv4(f, 600)]
    assert feed_all(Reassembler(), smaller) == [packet]
    assert Ipv4Packet(smaller[len(fragment_ipv4(frags[0], 600)) - 1]).more_frags


def test_mtu_too_small() -> None:
    packet = Ipv4Repr(SRC4, DST4, IpProtocol.UDP, 200, options=bytes(40)).to_bytes(bytes(200))
    with pytest.raises(FragmentError):
        fragment_ipv4(packet, 66)


def test_ipv6_fragment_header_goes_after_routing_header() -> None:
    upper = udp6(bytes(3000))
    dst_after = Ipv6DestOptionsRepr(IpProtocol.UDP, pad_options(()))
    routing = Ipv6RoutingRepr(dst_after.PROTOCOL, routing_type=253, segments_left=0)
    dst_before = Ipv6DestOptionsRepr(routing.PROTOCOL, pad_options(()))
    hbh = Ipv6HopByHopRepr(dst_before.PROTOCOL, pad_options(()))
    body = hbh.to_bytes() + dst_before.to_bytes() + routing.to_bytes() + dst_after.to_bytes()
    body += upper
    packet = Ipv6Repr(SRC6, DST6, hbh.PROTOCOL, len(body)).to_bytes(body)
    frags = fragment_ipv6(packet, 1280, ident=0xDEADBEEF)
    assert all(len(f) <= 1280 for f in frags)
    for index, frag in enumerate(frags):
        chain = walk_extension_headers(frag)
        kinds = [type(h) for h in chain.headers]
        # HBH, destination options, routing are per-fragment; then the Fragment header.
        per_fragment = [Ipv6HopByHopRepr, Ipv6DestOptionsRepr, Ipv6RoutingRepr]
        assert kinds[:4] == [*per_fragment, Ipv6FragmentRepr]
        frag_header = chain.headers[3]
        assert isinstance(frag_header, Ipv6FragmentRepr)
        assert frag_header.ident == 0xDEADBEEF
        assert frag_header.next_header == IpProtocol.IPV6_OPTS
        assert frag_header.more_frags == (index < len(frags) - 1)
        if frag_header.more_frags:
            assert (len(frag) - 40 - 8 * 3 - 8) % 8 == 0
    assert feed_all(Reassembler(), frags) == [packet]


def test_ipv6_refuses_a_fragment_and_a_chain_past_the_first_fragment() -> None:
    packet = Ipv6Repr(SRC6, DST6, IpProtocol.UDP, 3008).to_bytes(udp6(bytes(3000)))
    frags = fragment_ipv6(packet, 2000, ident=1)
    with pytest.raises(FragmentError, match="already a fragment"):
        fragment_ipv6(frags[0], 1280, ident=2)
    big = Ipv6DestOptionsRepr(IpProtocol.UDP, pad_options((Ipv6Option(0x1E, bytes(250)),) * 4))
    body = big.to_bytes() + udp6(bytes(100))
    chained = Ipv6Repr(SRC6, DST6, big.PROTOCOL, len(body)).to_bytes(body)
    with pytest.raises(FragmentError, match="7112"):
        fragment_ipv6(chained, 600, ident=3)
    with pytest.raises(FragmentError):
        fragment_ipv6(packet, 1280, ident=2**32)


# --- round trips and oracles -------------------------------------------------------------

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(packet=ipv4_packets(), mtu=st.integers(100, 1600), seed=st.integers())
def test_ipv4_reassemble_shuffled_fragments(packet: bytes, mtu: int, seed: int) -> None:
    frags = fragment_ipv4(packet, mtu)
    assert all(len(f) <= mtu for f in frags)
    random.Random(seed).shuffle(frags)
    assert feed_all(Reassembler(big_config()), frags) == [packet]
    # scapy's defragment is the independent oracle.
    if len(frags) > 1:
        scapy_whole = defragment([IP(f) for f in frags])
        assert len(scapy_whole) == 1
        assert bytes(scapy_whole[0]) == packet


@PROPERTY
@given(packet=ipv6_packets(), mtu=st.integers(1280, 2000), seed=st.integers())
def test_ipv6_reassemble_shuffled_fragments(packet: bytes, mtu: int, seed: int) -> None:
    try:
        frags = fragment_ipv6(packet, mtu, ident=seed & 0xFFFFFFFF)
    except FragmentError:
        assume(False)
    assert all(len(f) <= mtu for f in frags)
    random.Random(seed).shuffle(frags)
    assert feed_all(Reassembler(big_config()), frags) == [packet]
    if len(frags) > 1:
        assert bytes(defragment6([IPv6(f) for f in frags])) == packet


@PROPERTY
@given(packet=ipv4_packets(min_size=1600), mtu=st.integers(100, 1600), seed=st.integers())
def test_ipv4_duplicates_are_dropped_alone(packet: bytes, mtu: int, seed: int) -> None:
    frags = fragment_ipv4(packet, mtu)
    assume(len(frags) > 1)
    rng = random.Random(seed)
    # The datagram completes only with the fragment held back for the end, so every
    # duplicate arrives while it is in progress.
    last = frags[rng.randrange(len(frags))]
    others = [f for f in frags if f is not last]
    dups = [f for f in others if rng.random() < 0.5]
    stream = others + dups
    rng.shuffle(stream)
    reassembler = Reassembler(big_config())
    assert feed_all(reassembler, [*stream, last]) == [packet]
    assert reassembler.stats.drops[ReassemblyDrop.DUPLICATE] == len(dups)
    assert reassembler.datagrams == 0 and reassembler.bytes_held == 0


@PROPERTY
@given(packet=ipv6_packets(min_size=2600), seed=st.integers())
def test_ipv6_overlap_discards_the_whole_datagram(packet: bytes, seed: int) -> None:
    try:
        frags = fragment_ipv6(packet, 1280, ident=7)
    except FragmentError:
        assume(False)
    assume(len(frags) > 2)
    # A fragment of the same datagram shifted 8 bytes back, with consistent data.
    second = Ipv6Packet(frags[1])
    chain = walk_extension_headers(frags[1])
    frag_header = next(h for h in chain.headers if isinstance(h, Ipv6FragmentRepr))
    at = chain.upper_offset - 8
    shifted = bytearray(frags[1])
    Ipv6FragmentRepr(
        frag_header.next_header, frag_header.frag_offset - 1, True, frag_header.ident
    ).emit(shifted, at)
    assert second.payload_len > 0
    rng = random.Random(seed)
    rest = frags[:]
    rng.shuffle(rest)
    reassembler = Reassembler(big_config())
    assert feed_all(reassembler, [bytes(shifted), *rest]) == []
    assert reassembler.stats.drops[ReassemblyDrop.OVERLAP] == 1
    # RFC 5722: the fragments that come after the overlap are discarded too.
    assert reassembler.stats.drops[ReassemblyDrop.DISCARDED_DATAGRAM] >= 1
    assert reassembler.bytes_held <= 256


@PROPERTY
@given(packet=ipv4_packets(min_size=1600), mtu=st.integers(200, 1000), seed=st.integers())
def test_ipv4_overlap_discards_the_whole_datagram(packet: bytes, mtu: int, seed: int) -> None:
    frags = fragment_ipv4(packet, mtu)
    assume(len(frags) > 2)
    # The second fragment again, 8 bytes earlier: same data where it overlaps the first.
    second = Ipv4Packet(frags[1])
    start = second.frag_offset * 8 - 8
    data = Ipv4Packet(packet).payload[start : start + len(second.payload)]
    header = Ipv4Repr.parse(frags[1])
    shifted = replace(header, frag_offset=start // 8, payload_len=len(data)).to_bytes(data)
    rest = frags[:]
    random.Random(seed).shuffle(rest)
    reassembler = Reassembler(big_config())
    assert feed_all(reassembler, [shifted, *rest]) == []
    assert reassembler.stats.drops[ReassemblyDrop.OVERLAP] == 1
    # Fragments before the first overlapping one were taken; every one after is refused.
    kill = min(rest.index(frags[0]), rest.index(frags[1]))
    assert reassembler.stats.drops[ReassemblyDrop.DISCARDED_DATAGRAM] == len(rest) - kill - 1
    assert reassembler.bytes_held <= 256


@PROPERTY
@given(
    payload=st.binary(min_size=1, max_size=6000),
    fragsize=st.integers(1, 180).map(lambda n: 8 * n),
    seed=st.integers(),
)
def test_scapy_fragments_reassemble(payload: bytes, fragsize: int, seed: int) -> None:
    original = IP(src=str(SRC4), dst=str(DST4), id=4321) / UDP(sport=1, dport=2) / payload
    whole = bytes(original)
    frags = [bytes(f) for f in fragment(IP(whole), fragsize)]
    random.Random(seed).shuffle(frags)
    assert feed_all(Reassembler(big_config()), frags) == [whole]


@PROPERTY
@given(payload=st.binary(min_size=1, max_size=6000), size=st.integers(1280, 1500))
def test_scapy_ipv6_fragments_reassemble(payload: bytes, size: int) -> None:
    original = IPv6(src=str(SRC6), dst=str(DST6)) / UDP(sport=1, dport=2) / payload
    whole = bytes(original)
    with_header = IPv6(src=str(SRC6), dst=str(DST6)) / IPv6ExtHdrFragment(id=99)
    with_header = with_header / UDP(sport=1, dport=2) / payload
    frags = [bytes(f) for f in fragment6(with_header, size)]
    assert feed_all(Reassembler(big_config()), frags) == [whole]


# --- refusals, limits and timers -----------------------------------------------------


def v4_frag(
    data: bytes, offset_bytes: int, more: bool, *, ident: int = 1, protocol: int = 253, ecn: int = 0
) -> bytes:
    return Ipv4Repr(
        SRC4,
        DST4,
        protocol,
        len(data),
        ident=ident,
        ecn=ecn,
        more_frags=more,
        frag_offset=offset_bytes // 8,
    ).to_bytes(data)


def test_not_a_fragment_comes_straight_back() -> None:
    packet = Ipv4Repr(SRC4, DST4, IpProtocol.UDP, 4).to_bytes(b"abcd")
    r = Reassembler()
    assert r.feed(packet, 0) == packet
    assert r.stats.fragments == 0


def test_small_refusals_are_counted_never_raised() -> None:
    r = Reassembler()
    assert r.feed(b"\x45\x00", 0) is None
    assert r.feed(v4_frag(b"", 8, True), 0) is None
    assert r.feed(v4_frag(bytes(12), 0, True), 0) is None
    assert r.feed(v4_frag(bytes(16), 8, True, protocol=IpProtocol.TCP), 0) is None
    assert r.feed(v4_frag(bytes(16), 0, True, protocol=IpProtocol.TCP), 0) is None
    assert r.feed(v4_frag(bytes(16), 65512, False), 0) is None
    drops = r.stats.drops
    assert drops[ReassemblyDrop.MALFORMED] == 1
    assert drops[ReassemblyDrop.ZERO_LENGTH] == 1
    assert drops[ReassemblyDrop.NOT_MULTIPLE_OF_8] == 1
    assert drops[ReassemblyDrop.TINY] == 2
    assert drops[ReassemblyDrop.TOO_BIG] == 1
    assert r.datagrams == 0 and r.bytes_held == 0


def test_inconsistent_end_kills_the_datagram() -> None:
    r = Reassembler()
    assert r.feed(v4_frag(bytes(16), 0, True), 0) is None
    assert r.feed(v4_frag(bytes(8), 32, False), 0) is None
    assert r.feed(v4_frag(bytes(8), 48, False), 0) is None  # a second, different end
    assert r.stats.drops[ReassemblyDrop.INCONSISTENT_END] == 1
    assert r.feed(v4_frag(bytes(16), 16, True), 0) is None
    assert r.stats.drops[ReassemblyDrop.DISCARDED_DATAGRAM] == 1


def test_timeout_reports_first_fragment_only_when_it_arrived() -> None:
    r = Reassembler()
    first = v4_frag(bytes(16), 0, True, ident=1)
    assert r.feed(first, 5) is None
    assert r.feed(v4_frag(bytes(16), 16, True, ident=2), 7 * NS_PER_S) is None
    assert r.next_timer_ns() == 5 + 30 * NS_PER_S
    assert r.on_timer(5 + 30 * NS_PER_S - 1) == []
    (expired,) = r.on_timer(5 + 30 * NS_PER_S)
    assert (expired.version, expired.src, expired.dst) == (4, SRC4, DST4)
    assert expired.first_fragment == first
    assert r.next_timer_ns() == 37 * NS_PER_S
    (second,) = r.on_timer(40 * NS_PER_S)
    assert second.first_fragment is None
    assert r.stats.timeouts == 2
    assert r.next_timer_ns() is None
    assert r.bytes_held == 0


def test_ipv6_timeout_is_60_seconds() -> None:
    packet = Ipv6Repr(SRC6, DST6, IpProtocol.UDP, 3008).to_bytes(udp6(bytes(3000)))
    frags = fragment_ipv6(packet, 1280, ident=5)
    r = Reassembler()
    r.feed(frags[1], 0)
    assert r.next_timer_ns() == 60 * NS_PER_S
    (expired,) = r.on_timer(60 * NS_PER_S)
    assert expired.version == 6 and expired.first_fragment is None


def test_global_memory_limit_refuses_new_fragments() -> None:
    r = Reassembler(ReassemblyConfig(high_thresh_bytes=64 * 1024))
    for ident in range(200):
        r.feed(v4_frag(bytes(1024), 0, True, ident=ident), 0)
        assert r.bytes_held <= 64 * 1024
    assert r.stats.drops[ReassemblyDrop.MEMORY_LIMIT] > 0
    r.on_timer(30 * NS_PER_S)
    assert r.bytes_held == 0 and r.datagrams == 0


def test_max_fragments_per_datagram() -> None:
    r = Reassembler(ReassemblyConfig(max_fragments=4))
    for n in range(5):
        r.feed(v4_frag(bytes(8), 8 * n, True), 0)
    assert r.stats.drops[ReassemblyDrop.TOO_MANY_FRAGMENTS] == 1
    assert r.feed(v4_frag(bytes(8), 64, False), 0) is None


def test_ecn_rules_of_rfc_3168() -> None:
    r = Reassembler()
    r.feed(v4_frag(bytes(8), 0, True, ecn=2), 0)
    whole = r.feed(v4_frag(bytes(8), 8, False, ecn=3), 0)
    assert whole is not None and Ipv4Packet(whole).ecn == 3
    r.feed(v4_frag(bytes(8), 0, True, ident=9, ecn=0), 0)
    assert r.feed(v4_frag(bytes(8), 8, False, ident=9, ecn=2), 0) is None
    assert r.stats.drops[ReassemblyDrop.ECN_MISMATCH] == 1


def test_ipv6_atomic_fragment_and_incomplete_chain() -> None:
    upper = udp6(b"hello")
    frag = Ipv6FragmentRepr(IpProtocol.UDP, 0, False, 77).to_bytes()
    atomic = Ipv6Repr(SRC6, DST6, IpProtocol.IPV6_FRAG, 8 + len(upper)).to_bytes(frag + upper)
    plain = Ipv6Repr(SRC6, DST6, IpProtocol.UDP, len(upper)).to_bytes(upper)
    r = Reassembler()
    assert r.feed(atomic, 0) == plain
    assert r.datagrams == 0
    # A first fragment whose UDP header is cut (RFC 7112).
    cut = Ipv6FragmentRepr(IpProtocol.UDP, 0, True, 78).to_bytes() + upper[:4]
    # Pad to a multiple of 8 with a destination-options-free, short first fragment.
    packet = Ipv6Repr(SRC6, DST6, IpProtocol.IPV6_FRAG, len(cut)).to_bytes(cut)
    assert r.feed(packet, 0) is None
    assert r.stats.drops[ReassemblyDrop.INCOMPLETE_CHAIN] == 1


def test_ipv6_not_multiple_of_8_and_too_big() -> None:
    r = Reassembler()
    body = Ipv6FragmentRepr(IpProtocol.UDP, 10, True, 1).to_bytes() + bytes(12)
    assert r.feed(Ipv6Repr(SRC6, DST6, IpProtocol.IPV6_FRAG, len(body)).to_bytes(body), 0) is None
    body = Ipv6FragmentRepr(IpProtocol.UDP, 8190, False, 1).to_bytes() + bytes(64)
    assert r.feed(Ipv6Repr(SRC6, DST6, IpProtocol.IPV6_FRAG, len(body)).to_bytes(body), 0) is None
    assert r.stats.drops[ReassemblyDrop.NOT_MULTIPLE_OF_8] == 1
    assert r.stats.drops[ReassemblyDrop.TOO_BIG] == 1


def test_keys_keep_datagrams_apart() -> None:
    payload = bytes(range(200)) * 10
    a = Ipv4Repr(SRC4, DST4, IpProtocol.UDP, len(payload), ident=5).to_bytes(payload)
    b = replace(Ipv4Repr.parse(a), protocol=253).to_bytes(payload[::-1])
    c = replace(Ipv4Repr.parse(a), src=IPv4Address("198.18.0.3")).to_bytes(payload[1:] + b"x")
    frags = fragment_ipv4(a, 600) + fragment_ipv4(b, 600) + fragment_ipv4(c, 600)
    random.Random(3).shuffle(frags)
    assert sorted(feed_all(Reassembler(), frags)) == sorted([a, b, c])
