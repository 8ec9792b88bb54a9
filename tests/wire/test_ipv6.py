"""IPv6 fixed header and the extension header chain."""

from __future__ import annotations

import contextlib
from ipaddress import IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    HBHOptUnknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)

from netoffload.wire.error import WireError
from netoffload.wire.ipv4 import IpProtocol
from netoffload.wire.ipv6 import (
    MAX_EXT_HEADERS,
    Ipv6DestOptionsRepr,
    Ipv6ExtChain,
    Ipv6ExtHeader,
    Ipv6ExtRepr,
    Ipv6FragmentHeader,
    Ipv6FragmentRepr,
    Ipv6HopByHopRepr,
    Ipv6Option,
    Ipv6Packet,
    Ipv6Repr,
    Ipv6RoutingRepr,
    pad_options,
    walk_extension_headers,
)

# Built by scapy 2.6: IPv6(src="fd00::1", dst="fd00::2", tc=0xb8, fl=0x12345, hlim=33)
# / IPv6ExtHdrHopByHop(options=[RouterAlert(value=0), PadN(optdata=b"")])
# / IPv6ExtHdrRouting(type=0, segleft=1, addresses=["fd00::3"])
# / IPv6ExtHdrFragment(offset=0, m=1, id=0xdeadbeef)
# / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1e, optdata=b"ab"), Pad1(), Pad1()])
# / UDP(sport=1, dport=2) / b"hi"
PACKET = bytes.fromhex(
    "6b812345003a0021fd000000000000000000000000000001fd0000000000000000000000000000022b00"
    "0502000001002c02000100000000fd0000000000000000000000000000033c000001deadbeef11001e02"
    "6162000000010002000a9d686869"
)
UDP_BYTES = PACKET[88:]
IP_REPR = Ipv6Repr(
    src=IPv6Address("fd00::1"),
    dst=IPv6Address("fd00::2"),
    next_header=IpProtocol.HOPOPT,
    payload_len=58,
    hop_limit=33,
    traffic_class=0xB8,
    flow_label=0x12345,
)
HEADERS = (
    Ipv6HopByHopRepr(IpProtocol.IPV6_ROUTE, (Ipv6Option(5, b"\x00\x00"), Ipv6Option(1, b""))),
    Ipv6RoutingRepr(IpProtocol.IPV6_FRAG, 0, 1, bytes(4) + IPv6Address("fd00::3").packed),
    Ipv6FragmentRepr(IpProtocol.IPV6_OPTS, frag_offset=0, more_frags=True, ident=0xDEADBEEF),
    Ipv6DestOptionsRepr(IpProtocol.UDP, (Ipv6Option(0x1E, b"ab"), Ipv6Option(0), Ipv6Option(0))),
)

addresses = st.binary(min_size=16, max_size=16).map(IPv6Address)
ip_reprs = st.builds(
    Ipv6Repr,
    src=addresses,
    dst=addresses,
    next_header=st.integers(0, 255),
    payload_len=st.integers(0, 64),
    hop_limit=st.integers(0, 255),
    traffic_class=st.integers(0, 255),
    flow_label=st.integers(0, 0xFFFFF),
)
options = st.lists(
    st.one_of(
        st.just(Ipv6Option(0)),
        st.builds(Ipv6Option, st.integers(1, 255), st.binary(max_size=12)),
    ),
    max_size=4,
).map(lambda opts: pad_options(tuple(opts)))
next_headers = st.integers(0, 255)
ext_reprs = st.one_of(
    st.builds(Ipv6HopByHopRepr, next_headers, options),
    st.builds(Ipv6DestOptionsRepr, next_headers, options),
    st.builds(
        Ipv6RoutingRepr,
        next_headers,
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, 3).flatmap(lambda n: st.binary(min_size=4 + 8 * n, max_size=4 + 8 * n)),
    ),
    st.builds(
        Ipv6FragmentRepr,
        next_headers,
        st.integers(0, 0x1FFF),
        st.booleans(),
        st.integers(0, 2**32 - 1),
    ),
)


def test_deconstruct() -> None:
    p = Ipv6Packet.checked(PACKET)
    assert (p.version, p.traffic_class, p.flow_label) == (6, 0xB8, 0x12345)
    assert (p.payload_len, p.next_header, p.hop_limit) == (58, IpProtocol.HOPOPT, 33)
    assert p.src == IPv6Address("fd00::1") and bytes(p.dst_bytes) == IP_REPR.dst.packed
    assert bytes(p.payload) == PACKET[40:]
    assert Ipv6Repr.parse(PACKET) == IP_REPR
    assert walk_extension_headers(PACKET) == Ipv6ExtChain(HEADERS, IpProtocol.UDP, 88)
    frag = Ipv6FragmentHeader.checked(PACKET[72:])
    assert (frag.frag_offset, frag.more_frags, frag.ident) == (0, True, 0xDEADBEEF)
    routing = Ipv6ExtHeader.checked(PACKET[48:])
    assert (routing.next_header, routing.header_len) == (IpProtocol.IPV6_FRAG, 24)


def test_construct() -> None:
    out = bytearray(len(PACKET))
    IP_REPR.emit(out)
    offset = 40
    for header in HEADERS:
        header.emit(out, offset)
        offset += header.header_len
    out[offset:] = UDP_BYTES
    assert bytes(out) == PACKET
    chain = b"".join(h.to_bytes() for h in HEADERS) + UDP_BYTES
    assert IP_REPR.to_bytes(chain) == PACKET


def test_padding_beyond_payload_is_ignored() -> None:
    padded = PACKET + bytes(6)
    assert bytes(Ipv6Packet.checked(padded).payload) == PACKET[40:]
    assert walk_extension_headers(padded).upper_offset == 88


def test_setters() -> None:
    buf = bytearray(PACKET)
    p = Ipv6Packet.checked(buf)
    p.traffic_class = 0x01
    p.flow_label = 0xABCDE
    p.hop_limit = 1
    p.dst = IPv6Address("fd00::99")
    frag = Ipv6FragmentHeader.checked(memoryview(buf)[72:80])
    frag.frag_offset = 0x1234
    frag.more_frags = False
    frag.ident = 5
    ip = IPv6(bytes(buf))
    assert (ip.tc, ip.fl, ip.hlim, ip.dst) == (1, 0xABCDE, 1, "fd00::99")
    scapy_frag = ip[IPv6ExtHdrFragment]
    assert (scapy_frag.offset, scapy_frag.m, scapy_frag.id) == (0x1234, 0, 5)
    with pytest.raises(WireError, match="read-only"):
        Ipv6Packet.checked(PACKET).hop_limit = 1


def test_non_first_fragment_stops_the_walk() -> None:
    frag = Ipv6FragmentRepr(IpProtocol.IPV6_OPTS, frag_offset=3, more_frags=False, ident=9)
    # what follows is fragment data that only looks like a destination options header
    body = frag.to_bytes() + b"\x3c\xff" + bytes(6)
    ip = Ipv6Repr(IP_REPR.src, IP_REPR.dst, IpProtocol.IPV6_FRAG, len(body))
    chain = walk_extension_headers(ip.to_bytes(body))
    assert chain == Ipv6ExtChain((frag,), IpProtocol.IPV6_OPTS, 48)


def test_no_extension_headers() -> None:
    ip = Ipv6Repr(IP_REPR.src, IP_REPR.dst, IpProtocol.TCP, 0)
    assert walk_extension_headers(ip.to_bytes()) == Ipv6ExtChain((), IpProtocol.TCP, 40)


def _chain_packet(headers: list[bytes], first: int) -> bytes:
    body = b"".join(headers)
    return Ipv6Repr(IP_REPR.src, IP_REPR.dst, first, len(body)).to_bytes(body)


def test_overlong_chain() -> None:
    dest = Ipv6DestOptionsRepr(IpProtocol.IPV6_OPTS, pad_options(())).to_bytes()
    data = _chain_packet([dest] * (MAX_EXT_HEADERS + 1), IpProtocol.IPV6_OPTS)
    with pytest.raises(WireError, match="more than"):
        walk_extension_headers(data)
    last = Ipv6DestOptionsRepr(IpProtocol.UDP, pad_options(())).to_bytes()
    ok = _chain_packet([dest] * (MAX_EXT_HEADERS - 1) + [last], IpProtocol.IPV6_OPTS)
    assert walk_extension_headers(ok).upper_offset == 40 + 8 * MAX_EXT_HEADERS


def test_hop_by_hop_must_be_first() -> None:
    hbh = Ipv6HopByHopRepr(IpProtocol.HOPOPT, pad_options(())).to_bytes()
    with pytest.raises(WireError, match="not first") as info:
        walk_extension_headers(_chain_packet([hbh, hbh], IpProtocol.HOPOPT))
    assert info.value.offset == 48


def test_extension_header_beyond_payload_len() -> None:
    routing = Ipv6RoutingRepr(IpProtocol.UDP, 0, 0, bytes(20)).to_bytes()
    data = bytearray(_chain_packet([routing], IpProtocol.IPV6_ROUTE))
    data[4:6] = (16).to_bytes(2, "big")  # the header claims 24 bytes, the payload is 16
    with pytest.raises(WireError, match="overruns") as info:
        walk_extension_headers(bytes(data))
    assert info.value.offset == 41


def test_option_beyond_header() -> None:
    hbh = bytes([IpProtocol.UDP, 0, 0x1E, 5, 0, 0, 0, 0])
    with pytest.raises(WireError, match="runs past") as info:
        walk_extension_headers(_chain_packet([hbh], IpProtocol.HOPOPT))
    assert info.value.offset == 42
    with pytest.raises(WireError, match="runs past"):
        Ipv6HopByHopRepr.parse(bytes([17, 0, 1, 0, 0, 0, 0, 0x1E]))


@pytest.mark.parametrize(
    ("patch", "message"),
    [({0: 0x4B}, "version"), ({4: 0x00, 5: 0x3B}, "overruns")],
)
def test_malformed_fixed_header(patch: dict[int, int], message: str) -> None:
    bad = bytearray(PACKET)
    for offset, value in patch.items():
        bad[offset] = value
    with pytest.raises(WireError, match=message):
        Ipv6Packet.checked(bad)


def test_truncated_at_every_length() -> None:
    for n in range(40):
        with pytest.raises(WireError):
            Ipv6Repr.parse(PACKET[:n])
    for n in range(40, len(PACKET)):
        cut = bytearray(PACKET[:n])
        cut[4:6] = (n - 40).to_bytes(2, "big")
        try:
            chain = walk_extension_headers(bytes(cut))
        except WireError:
            continue
        # a cut that ends exactly on a header boundary leaves a shorter valid chain
        assert chain.upper_offset <= n
    for header in HEADERS:
        wire = header.to_bytes()
        for n in range(len(wire)):
            with pytest.raises(WireError):
                type(header).parse(wire[:n])


def test_bad_values() -> None:
    with pytest.raises(WireError):
        Ipv6Repr(IP_REPR.src, IP_REPR.dst, 256, 0)
    with pytest.raises(WireError):
        Ipv6Repr(IP_REPR.src, IP_REPR.dst, 17, 0, flow_label=0x100000)
    with pytest.raises(WireError):
        Ipv6HopByHopRepr(17, (Ipv6Option(0x1E, b"a"),))  # 5 bytes: not a multiple of 8
    with pytest.raises(WireError):
        Ipv6Option(0, b"x")
    with pytest.raises(WireError):
        Ipv6RoutingRepr(17, 0, 0, bytes(3))
    with pytest.raises(WireError):
        Ipv6FragmentRepr(17, 0x2000, False, 0)
    with pytest.raises(WireError):
        IP_REPR.to_bytes(b"short")
    with pytest.raises(WireError):
        IP_REPR.emit(bytearray(39))
    with pytest.raises(WireError):
        HEADERS[0].emit(bytes(8))


def test_pad_options() -> None:
    for n in range(12):
        opts = pad_options((Ipv6Option(0x1E, bytes(n)),))
        assert Ipv6DestOptionsRepr(17, opts).header_len % 8 == 0


@given(ip_reprs, st.data())
@settings(max_examples=200)
def test_roundtrip(r: Ipv6Repr, data: st.DataObject) -> None:
    payload = data.draw(st.binary(min_size=r.payload_len, max_size=r.payload_len))
    wire = r.to_bytes(payload)
    assert Ipv6Repr.parse(wire) == r
    assert bytes(Ipv6Packet.checked(wire).payload) == payload


@given(st.lists(ext_reprs, max_size=5))
@settings(max_examples=200)
def test_chain_roundtrip(headers: list[Ipv6ExtRepr]) -> None:
    # Link the headers into a chain, hop-by-hop only first, ending in UDP.
    linked: list[Ipv6ExtRepr] = []
    for i, h in enumerate(headers):
        if isinstance(h, Ipv6HopByHopRepr) and i:
            h = Ipv6DestOptionsRepr(h.next_header, h.options)
        nxt = headers[i + 1] if i + 1 < len(headers) else None
        nxt_proto = IpProtocol.UDP if nxt is None else type(nxt).PROTOCOL
        if nxt is not None and isinstance(nxt, Ipv6HopByHopRepr):
            nxt_proto = IpProtocol.IPV6_OPTS
        linked.append(_relink(h, nxt_proto))
    first = type(headers[0]).PROTOCOL if headers else IpProtocol.UDP
    wire = _chain_packet([h.to_bytes() for h in linked], first)
    chain = walk_extension_headers(wire)
    stop = next(
        (i for i, h in enumerate(linked) if isinstance(h, Ipv6FragmentRepr) and h.frag_offset),
        len(linked) - 1,
    )
    expected = tuple(linked[: stop + 1])
    assert chain.headers == expected
    assert chain.upper_offset == 40 + sum(h.header_len for h in expected)
    for h in linked:
        assert type(h).parse(h.to_bytes()) == h


def _relink(h: Ipv6ExtRepr, next_header: int) -> Ipv6ExtRepr:
    if isinstance(h, Ipv6HopByHopRepr | Ipv6DestOptionsRepr):
        return type(h)(next_header, h.options)
    if isinstance(h, Ipv6RoutingRepr):
        return Ipv6RoutingRepr(next_header, h.routing_type, h.segments_left, h.data)
    return Ipv6FragmentRepr(next_header, h.frag_offset, h.more_frags, h.ident)


@given(ip_reprs)
@settings(max_examples=100, deadline=None)
def test_scapy_agrees_on_fixed_header(r: Ipv6Repr) -> None:
    wire = r.to_bytes(bytes(r.payload_len))
    ip = IPv6(wire)
    assert (ip.src, ip.dst, ip.nh, ip.plen) == (
        str(r.src),
        str(r.dst),
        r.next_header,
        r.payload_len,
    )
    assert (ip.hlim, ip.tc, ip.fl) == (r.hop_limit, r.traffic_class, r.flow_label)
    theirs = IPv6(
        src=str(r.src),
        dst=str(r.dst),
        nh=r.next_header,
        hlim=r.hop_limit,
        tc=r.traffic_class,
        fl=r.flow_label,
    ) / bytes(r.payload_len)
    assert Ipv6Repr.parse(bytes(theirs)) == r


@given(
    st.binary(min_size=1, max_size=9),
    st.integers(0, 0x1FFF),
    st.booleans(),
    st.integers(0, 2**32 - 1),
    st.integers(0, 255),
)
@settings(max_examples=100, deadline=None)
def test_we_parse_scapys_chain(
    optdata: bytes, offset: int, more: bool, ident: int, segleft: int
) -> None:
    pkt = (
        IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=0x3E, optdata=optdata)])
        / IPv6ExtHdrRouting(segleft=segleft, addresses=["fd00::5"])
        / IPv6ExtHdrFragment(offset=offset, m=int(more), id=ident)
        / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=0x1F, optdata=optdata)])
        / b"data"
    )
    chain = walk_extension_headers(bytes(pkt))
    hbh, routing, frag = chain.headers[:3]
    assert isinstance(hbh, Ipv6HopByHopRepr) and hbh.options[0] == Ipv6Option(0x3E, optdata)
    assert isinstance(routing, Ipv6RoutingRepr) and routing.segments_left == segleft
    assert frag == Ipv6FragmentRepr(IpProtocol.IPV6_OPTS, offset, more, ident)
    if offset:
        assert chain.upper_protocol == IpProtocol.IPV6_OPTS and len(chain.headers) == 3
    else:
        dest = chain.headers[3]
        assert isinstance(dest, Ipv6DestOptionsRepr)
        assert dest.options[0] == Ipv6Option(0x1F, optdata)
        assert chain.upper_protocol == IpProtocol.IPV6_NONXT  # scapy's default after options
        assert bytes(pkt)[chain.upper_offset :] == b"data"
    # and scapy re-reads our emitted headers the same way
    ours = Ipv6Repr.parse(bytes(pkt)).to_bytes(
        b"".join(h.to_bytes() for h in chain.headers) + bytes(pkt)[chain.upper_offset :]
    )
    assert ours == bytes(pkt)


@given(st.binary(max_size=120))
@settings(max_examples=300)
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    _parse_everything(data)


@given(st.integers(0, 255), st.binary(max_size=100))
@settings(max_examples=500)
def test_random_chains_raise_only_wire_error(first: int, body: bytes) -> None:
    _parse_everything(_chain_packet([body], first))


def _parse_everything(data: bytes) -> None:
    with contextlib.suppress(WireError):
        Ipv6Repr.parse(data)
    with contextlib.suppress(WireError):
        walk_extension_headers(data)
    for parser in (Ipv6HopByHopRepr, Ipv6DestOptionsRepr, Ipv6RoutingRepr, Ipv6FragmentRepr):
        with contextlib.suppress(WireError):
            parser.parse(data)
