"""ICMPv6 echo and neighbor discovery messages, pseudo-header checksum."""

from __future__ import annotations

import contextlib
from ipaddress import IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    IPv6,
)

from netoffload.wire.error import WireError
from netoffload.wire.ethernet import MacAddress
from netoffload.wire.icmpv6 import (
    Icmpv6EchoRepr,
    Icmpv6NeighborAdvertRepr,
    Icmpv6NeighborSolicitRepr,
    Icmpv6OtherRepr,
    Icmpv6Packet,
    Icmpv6Repr,
    Icmpv6Type,
    NdpLinkAddress,
    NdpOptionType,
    NdpRawOption,
)

HOST1 = IPv6Address("fd00::1")
HOST2 = IPv6Address("fd00::2")
SOLICITED_NODE = IPv6Address("ff02::1:ff00:2")
MAC1 = MacAddress.parse("02:00:00:00:00:01")
MAC2 = MacAddress.parse("02:00:00:00:00:02")

# Built by scapy 2.6 (ICMPv6 bytes after the IPv6 header):
# IPv6(src="fd00::1", dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt="fd00::2")
# / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:01")
NS = bytes.fromhex("87007d9700000000fd0000000000000000000000000000020101020000000001")
NS_REPR = Icmpv6NeighborSolicitRepr(HOST2, (NdpLinkAddress(NdpOptionType.SOURCE_LINK_ADDR, MAC1),))
# IPv6(src="fd00::2", dst="fd00::1", hlim=255) / ICMPv6ND_NA(tgt="fd00::2", R=0, S=1, O=1)
# / ICMPv6NDOptDstLLAddr(lladdr="02:00:00:00:00:02")
NA = bytes.fromhex("88001c9a60000000fd0000000000000000000000000000020201020000000002")
NA_REPR = Icmpv6NeighborAdvertRepr(
    HOST2,
    router=False,
    solicited=True,
    override=True,
    options=(NdpLinkAddress(NdpOptionType.TARGET_LINK_ADDR, MAC2),),
)
# IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest(id=0x4242, seq=3, data=b"ping")
ECHO = bytes.fromhex("8000649e4242000370696e67")
ECHO_REPR = Icmpv6EchoRepr(0x4242, 3, b"ping")

addresses = st.binary(min_size=16, max_size=16).map(IPv6Address)
macs = st.binary(min_size=6, max_size=6).map(MacAddress)
ndp_options = st.lists(
    st.one_of(
        st.builds(NdpLinkAddress, st.sampled_from([1, 2]), macs),
        st.integers(0, 3).flatmap(
            lambda n: st.builds(
                NdpRawOption,
                st.integers(3, 255),
                st.binary(min_size=6 + 8 * n, max_size=6 + 8 * n),
            )
        ),
    ),
    max_size=3,
).map(tuple)
reprs = st.one_of(
    st.builds(
        Icmpv6EchoRepr,
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.binary(max_size=48),
        st.booleans(),
    ),
    st.builds(Icmpv6NeighborSolicitRepr, addresses, ndp_options),
    st.builds(
        Icmpv6NeighborAdvertRepr,
        addresses,
        st.booleans(),
        st.booleans(),
        st.booleans(),
        ndp_options,
    ),
    st.builds(
        Icmpv6OtherRepr,
        st.sampled_from([1, 2, 3, 4, 133, 134, 137, 200]),
        st.integers(0, 255),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=48),
    ),
)


def test_deconstruct() -> None:
    p = Icmpv6Packet.checked(NS)
    assert (p.icmp_type, p.code, p.checksum, p.rest) == (Icmpv6Type.NEIGHBOR_SOLICIT, 0, 0x7D97, 0)
    assert p.verify_checksum(HOST1, SOLICITED_NODE)
    assert p.verify_checksum(HOST1.packed, SOLICITED_NODE.packed)
    assert not p.verify_checksum(HOST2, SOLICITED_NODE)
    assert Icmpv6Repr.parse(NS, HOST1, SOLICITED_NODE) == NS_REPR
    assert Icmpv6Repr.parse(NA, HOST2, HOST1) == NA_REPR
    e = Icmpv6Packet.checked(ECHO)
    assert (e.echo_ident, e.echo_seq, bytes(e.data)) == (0x4242, 3, b"ping")
    assert Icmpv6Repr.parse(ECHO, HOST1, HOST2) == ECHO_REPR


def test_construct() -> None:
    assert NS_REPR.to_bytes(HOST1, SOLICITED_NODE) == NS
    assert NA_REPR.to_bytes(HOST2, HOST1) == NA
    assert ECHO_REPR.to_bytes(HOST1, HOST2) == ECHO
    buf = bytearray(len(ECHO) + 2)
    ECHO_REPR.emit(buf, 2, src=HOST1, dst=HOST2)
    assert bytes(buf[2:]) == ECHO


def test_fill_checksum_and_setters() -> None:
    buf = bytearray(ECHO)
    p = Icmpv6Packet.checked(buf)
    p.icmp_type = Icmpv6Type.ECHO_REPLY
    p.fill_checksum(HOST2, HOST1)
    assert Icmpv6Repr.parse(buf, HOST2, HOST1) == Icmpv6EchoRepr(0x4242, 3, b"ping", reply=True)
    scapy = IPv6(bytes(IPv6(src=str(HOST2), dst=str(HOST1)) / ICMPv6EchoReply(bytes(buf))))
    assert scapy[ICMPv6EchoReply].cksum == p.checksum
    with pytest.raises(WireError, match="read-only"):
        Icmpv6Packet.checked(ECHO).code = 1


def test_bad_checksum() -> None:
    # (swapping source and destination would not do: the sum is commutative)
    with pytest.raises(WireError, match="checksum"):
        Icmpv6Repr.parse(ECHO, HOST1, SOLICITED_NODE)
    assert Icmpv6Repr.parse(ECHO, HOST1, SOLICITED_NODE, verify_checksum=False) == ECHO_REPR
    assert ECHO_REPR.to_bytes(HOST1, HOST2, checksum=0)[2:4] == b"\x00\x00"


def test_unknown_ndp_option_kept_raw() -> None:
    mtu = NdpRawOption(NdpOptionType.MTU, bytes(2) + (1280).to_bytes(4, "big"))
    r = Icmpv6NeighborAdvertRepr(HOST2, options=(mtu, NdpLinkAddress(2, MAC2)))
    wire = r.to_bytes(HOST2, HOST1)
    assert Icmpv6Repr.parse(wire, HOST2, HOST1) == r


def test_packet_too_big_against_scapy() -> None:
    quoted = bytes(IPv6(src=str(HOST1), dst=str(HOST2)) / (b"x" * 8))
    theirs = bytes(IPv6(src=str(HOST2), dst=str(HOST1)) / ICMPv6PacketTooBig(mtu=1280) / quoted)
    r = Icmpv6Repr.parse(theirs[40:], HOST2, HOST1)
    assert r == Icmpv6OtherRepr(Icmpv6Type.PACKET_TOO_BIG, 0, 1280, quoted)
    assert r.to_bytes(HOST2, HOST1) == theirs[40:]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (bytes([135, 1]) + NS[2:], "code"),
        (NS[:23], "short"),
        (NS[:24] + b"\x01\x00" + bytes(6), "length 0"),
        (NS[:24] + b"\x01\x02" + bytes(6), "past the end"),
        (NS[:24] + b"\x01", "past the end"),
    ],
)
def test_malformed_ndp(wire: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        Icmpv6Repr.parse(wire, HOST1, SOLICITED_NODE, verify_checksum=False)


def test_truncated_and_bad_values() -> None:
    for n in range(8):
        with pytest.raises(WireError):
            Icmpv6Repr.parse(ECHO[:n], HOST1, HOST2, verify_checksum=False)
    with pytest.raises(WireError):
        Icmpv6EchoRepr(-1, 0)
    with pytest.raises(WireError):
        NdpLinkAddress(3, MAC1)
    with pytest.raises(WireError):
        NdpRawOption(5, bytes(5))
    with pytest.raises(WireError):
        Icmpv6OtherRepr(135, 0, 0)
    with pytest.raises(WireError):
        ECHO_REPR.to_bytes(HOST1, b"\x00" * 4)
    with pytest.raises(WireError):
        ECHO_REPR.emit(bytearray(11), src=HOST1, dst=HOST2)


@given(reprs, addresses, addresses)
@settings(max_examples=300)
def test_roundtrip(r: Icmpv6Repr, src: IPv6Address, dst: IPv6Address) -> None:
    assert Icmpv6Repr.parse(r.to_bytes(src, dst), src, dst) == r


def _scapy_ndp_options(options: tuple[NdpLinkAddress | NdpRawOption, ...]) -> bytes:
    out = b""
    for o in options:
        if isinstance(o, NdpLinkAddress):
            layer = ICMPv6NDOptSrcLLAddr if o.option_type == 1 else ICMPv6NDOptDstLLAddr
            out += bytes(layer(lladdr=str(o.address)))
        else:
            out += bytes([o.option_type, o.wire_len // 8]) + o.data
    return out


@given(reprs, addresses, addresses)
@settings(max_examples=100, deadline=None)
def test_scapy_agrees(r: Icmpv6Repr, src: IPv6Address, dst: IPv6Address) -> None:
    ours = r.to_bytes(src, dst)
    head = IPv6(src=str(src), dst=str(dst))
    if isinstance(r, Icmpv6EchoRepr):
        layer = ICMPv6EchoReply if r.reply else ICMPv6EchoRequest
        theirs = bytes(head / layer(id=r.ident, seq=r.seq, data=r.data))
    elif isinstance(r, Icmpv6NeighborSolicitRepr):
        theirs = bytes(head / ICMPv6ND_NS(tgt=str(r.target)) / _scapy_ndp_options(r.options))
    elif isinstance(r, Icmpv6NeighborAdvertRepr):
        na = ICMPv6ND_NA(tgt=str(r.target), R=r.router, S=r.solicited, O=r.override)
        theirs = bytes(head / na / _scapy_ndp_options(r.options))
    else:
        # scapy checksums a raw payload under next header 58 like any ICMPv6 message
        from scapy.layers.inet6 import ICMPv6Unknown

        assert isinstance(r, Icmpv6OtherRepr)
        unknown = ICMPv6Unknown(type=r.kind, code=r.code, msgbody=ours[4:])
        theirs = bytes(head / unknown)
    assert theirs[40:] == ours
    assert Icmpv6Repr.parse(theirs[40:], src, dst) == r


@given(st.binary(max_size=64))
@settings(max_examples=500)
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        Icmpv6Repr.parse(data, HOST1, HOST2)
    with contextlib.suppress(WireError):
        Icmpv6Repr.parse(data, HOST1, HOST2, verify_checksum=False).to_bytes(HOST1, HOST2)


@given(st.sampled_from([135, 136]), st.binary(max_size=64))
@settings(max_examples=500)
def test_random_ndp_bodies_raise_only_wire_error(kind: int, body: bytes) -> None:
    with contextlib.suppress(WireError):
        Icmpv6Repr.parse(bytes([kind]) + bytes(7) + body, HOST1, HOST2, verify_checksum=False)
