"""ICMPv4 messages: echo, destination unreachable, time exceeded, raw others."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP

from netoffload.wire.error import WireError
from netoffload.wire.icmpv4 import (
    DestUnreachableCode,
    Icmpv4DestUnreachableRepr,
    Icmpv4EchoRepr,
    Icmpv4OtherRepr,
    Icmpv4Packet,
    Icmpv4Repr,
    Icmpv4TimeExceededRepr,
    Icmpv4Type,
)
from netoffload.wire.ipv4 import Ipv4Repr

# Built by scapy 2.6: ICMP(type=8, id=0x1234, seq=7) / b"abcdefgh"
ECHO = bytes.fromhex("0800542f123400076162636465666768")
ECHO_REPR = Icmpv4EchoRepr(ident=0x1234, seq=7, data=b"abcdefgh")

# Built by scapy 2.6: ICMP(type=3, code=4, nexthopmtu=1400) / the first 28 bytes of
# IP(src="198.18.0.1", dst="198.18.0.2", ttl=1) / UDP(sport=4000, dport=53)
UNREACHABLE = bytes.fromhex(
    "030483c5000005784500001c0001000001112da9c6120001c61200020fa00035000863e1"
)
QUOTED = UNREACHABLE[8:]
UNREACHABLE_REPR = Icmpv4DestUnreachableRepr(
    DestUnreachableCode.FRAG_NEEDED, QUOTED, next_hop_mtu=1400
)

echoes = st.builds(
    Icmpv4EchoRepr,
    ident=st.integers(0, 0xFFFF),
    seq=st.integers(0, 0xFFFF),
    data=st.binary(max_size=64),
    reply=st.booleans(),
)
unreachables = st.integers(0, 15).flatmap(
    lambda code: st.builds(
        Icmpv4DestUnreachableRepr,
        code=st.just(code),
        quoted=st.binary(max_size=64),
        next_hop_mtu=st.integers(0, 0xFFFF) if code == 4 else st.just(0),
    )
)
exceeded = st.builds(Icmpv4TimeExceededRepr, code=st.integers(0, 1), quoted=st.binary(max_size=64))
others = st.builds(
    Icmpv4OtherRepr,
    # not timestamp (13, 14): scapy cannot read one without its 12 data bytes
    kind=st.sampled_from([4, 5, 12, 42, 255]),
    code=st.integers(0, 255),
    rest_word=st.integers(0, 2**32 - 1),
    data=st.binary(max_size=32),
)
reprs = st.one_of(echoes, unreachables, exceeded, others)


def test_deconstruct() -> None:
    p = Icmpv4Packet.checked(ECHO)
    assert (p.icmp_type, p.code, p.checksum) == (Icmpv4Type.ECHO_REQUEST, 0, 0x542F)
    assert (p.echo_ident, p.echo_seq, bytes(p.data)) == (0x1234, 7, b"abcdefgh")
    assert p.verify_checksum()
    assert Icmpv4Repr.parse(ECHO) == ECHO_REPR
    u = Icmpv4Packet.checked(UNREACHABLE)
    assert (u.icmp_type, u.code, u.next_hop_mtu) == (Icmpv4Type.DEST_UNREACHABLE, 4, 1400)
    parsed = Icmpv4Repr.parse(UNREACHABLE)
    assert parsed == UNREACHABLE_REPR
    assert isinstance(parsed, Icmpv4DestUnreachableRepr)
    inner = Ipv4Repr.parse(parsed.quoted)
    assert inner.ttl == 1 and str(inner.dst) == "198.18.0.2"


def test_construct() -> None:
    assert ECHO_REPR.to_bytes() == ECHO
    assert UNREACHABLE_REPR.to_bytes() == UNREACHABLE
    buf = bytearray(len(ECHO) + 3)
    ECHO_REPR.emit(buf, 3)
    assert bytes(buf[3:]) == ECHO


def test_time_exceeded_against_scapy() -> None:
    quoted = bytes(IP(src="198.18.0.1", dst="198.18.0.2", ttl=1) / UDP())[:28]
    ours = Icmpv4TimeExceededRepr(0, quoted).to_bytes()
    theirs = bytes(ICMP(type=11, code=0) / quoted)
    assert ours == theirs
    assert Icmpv4Repr.parse(theirs) == Icmpv4TimeExceededRepr(0, quoted)


def test_setters_and_fill_checksum() -> None:
    buf = bytearray(ECHO)
    p = Icmpv4Packet.checked(buf)
    p.icmp_type = Icmpv4Type.ECHO_REPLY
    p.echo_seq = 8
    assert not p.verify_checksum()
    p.fill_checksum()
    assert p.verify_checksum()
    assert Icmpv4Repr.parse(buf) == Icmpv4EchoRepr(0x1234, 8, b"abcdefgh", reply=True)
    with pytest.raises(WireError, match="read-only"):
        Icmpv4Packet.checked(ECHO).code = 1


def test_bad_checksum_and_explicit_checksum() -> None:
    bad = bytearray(ECHO)
    bad[-1] ^= 0xFF
    with pytest.raises(WireError, match="checksum"):
        Icmpv4Repr.parse(bad)
    assert Icmpv4Repr.parse(bad, verify_checksum=False) == Icmpv4EchoRepr(0x1234, 7, b"abcdefg\x97")
    assert ECHO_REPR.to_bytes(checksum=0)[2:4] == b"\x00\x00"


def test_unusual_values_are_kept_raw() -> None:
    # an echo with a non-zero code, and a port unreachable with non-zero unused bits
    for wire in (
        bytes(ICMP(type=8, code=1, id=1, seq=2)),
        bytes(ICMP(type=3, code=3, length=5) / QUOTED),
    ):
        parsed = Icmpv4Repr.parse(wire)
        assert isinstance(parsed, Icmpv4OtherRepr)
        assert parsed.to_bytes() == wire


def test_bad_values() -> None:
    with pytest.raises(WireError):
        Icmpv4EchoRepr(0x10000, 0)
    with pytest.raises(WireError):
        Icmpv4DestUnreachableRepr(3, b"", next_hop_mtu=1400)
    with pytest.raises(WireError):
        Icmpv4TimeExceededRepr(2, b"")
    with pytest.raises(WireError):
        Icmpv4OtherRepr(256, 0, 0)
    with pytest.raises(WireError):
        ECHO_REPR.emit(bytearray(len(ECHO) - 1))
    with pytest.raises(WireError):
        ECHO_REPR.emit(bytearray(len(ECHO)), checksum=-1)


def test_truncated() -> None:
    for n in range(8):
        with pytest.raises(WireError):
            Icmpv4Repr.parse(ECHO[:n], verify_checksum=False)


@given(reprs)
@settings(max_examples=300)
def test_roundtrip(r: Icmpv4Repr) -> None:
    assert Icmpv4Repr.parse(r.to_bytes()) == r


@given(reprs)
@settings(max_examples=100, deadline=None)
def test_scapy_agrees(r: Icmpv4Repr) -> None:
    ours = r.to_bytes()
    icmp = ICMP(ours)
    assert (icmp.type, icmp.code) == (r.icmp_type, r.icmp_code)
    fresh = ICMP(ours)
    del fresh.chksum
    assert ICMP(bytes(fresh)).chksum == icmp.chksum
    if isinstance(r, Icmpv4EchoRepr):
        assert (icmp.id, icmp.seq, bytes(icmp.payload)) == (r.ident, r.seq, r.data)
        theirs = ICMP(type=r.icmp_type, id=r.ident, seq=r.seq) / r.data
        assert Icmpv4Repr.parse(bytes(theirs)) == r
    if isinstance(r, Icmpv4DestUnreachableRepr):
        assert icmp.nexthopmtu == r.next_hop_mtu
        theirs = ICMP(type=3, code=r.code, nexthopmtu=r.next_hop_mtu) / r.quoted
        assert Icmpv4Repr.parse(bytes(theirs)) == r


@given(st.binary(max_size=40))
@settings(max_examples=500)
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        Icmpv4Repr.parse(data)
    with contextlib.suppress(WireError):
        Icmpv4Repr.parse(data, verify_checksum=False).to_bytes()
