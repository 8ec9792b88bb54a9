"""IPv4 headers: view, repr, checksum, malformed input."""

from __future__ import annotations

import contextlib
import dataclasses
from ipaddress import IPv4Address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP

from netoffload.wire.error import WireError
from netoffload.wire.ipv4 import IpProtocol, Ipv4Packet, Ipv4Repr

# Built by scapy 2.6: IP(src="198.18.0.1", dst="198.19.255.254", tos=0xb9, id=0x1234,
# flags="DF", ttl=17, options=[IPOption_Router_Alert(), IPOption_NOP() x 4])
# / UDP(sport=1234, dport=5678) / b"hello"
PACKET = bytes.fromhex(
    "47b9002912344000111132abc6120001c613fffe940400000101010104d2162e000d14dc68656c6c6f"
)
OPTIONS = bytes.fromhex("9404000001010101")
PAYLOAD = PACKET[28:]
REPR = Ipv4Repr(
    src=IPv4Address("198.18.0.1"),
    dst=IPv4Address("198.19.255.254"),
    protocol=IpProtocol.UDP,
    payload_len=13,
    ttl=17,
    dscp=0xB9 >> 2,
    ecn=1,
    ident=0x1234,
    dont_frag=True,
    options=OPTIONS,
)

addresses = st.integers(0, 2**32 - 1).map(IPv4Address)
reprs = st.builds(
    Ipv4Repr,
    src=addresses,
    dst=addresses,
    protocol=st.integers(0, 255),
    payload_len=st.integers(0, 64),
    ttl=st.integers(0, 255),
    dscp=st.integers(0, 63),
    ecn=st.integers(0, 3),
    ident=st.integers(0, 0xFFFF),
    dont_frag=st.booleans(),
    more_frags=st.booleans(),
    frag_offset=st.integers(0, 0x1FFF),
    options=st.integers(0, 10).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)),
)


def test_deconstruct() -> None:
    p = Ipv4Packet.checked(PACKET)
    assert (p.version, p.ihl, p.header_len) == (4, 7, 28)
    assert (p.dscp, p.ecn, p.total_len, p.ident) == (0x2E, 1, 41, 0x1234)
    assert p.dont_frag and not p.more_frags and p.frag_offset == 0
    assert (p.ttl, p.protocol, p.checksum) == (17, IpProtocol.UDP, 0x32AB)
    assert p.src == IPv4Address("198.18.0.1") and p.dst == IPv4Address("198.19.255.254")
    assert bytes(p.src_bytes) == bytes([198, 18, 0, 1])
    assert bytes(p.options) == OPTIONS
    assert bytes(p.payload) == PAYLOAD
    assert p.verify_checksum()
    assert Ipv4Repr.parse(PACKET) == REPR


def test_construct() -> None:
    assert REPR.to_bytes(PAYLOAD) == PACKET
    buf = bytearray(b"\xee" * (len(PACKET) + 4))
    REPR.emit(buf, 2)
    assert bytes(buf[2:30]) == PACKET[:28]


def test_padding_beyond_total_len_is_not_payload() -> None:
    p = Ipv4Packet.checked(PACKET + bytes(19))
    assert bytes(p.payload) == PAYLOAD
    assert Ipv4Repr.parse(PACKET + bytes(19)) == REPR


def test_setters_and_fill_checksum() -> None:
    buf = bytearray(PACKET)
    p = Ipv4Packet.checked(buf)
    p.ttl = 16
    p.src = IPv4Address("198.18.9.9")
    p.dont_frag = False
    p.more_frags = True
    p.frag_offset = 100
    p.dscp = 10
    p.ecn = 3
    p.ident = 7
    assert not p.verify_checksum()
    p.fill_checksum()
    assert p.verify_checksum()
    scapy_ip = IP(bytes(buf))
    assert scapy_ip.ttl == 16 and scapy_ip.src == "198.18.9.9" and scapy_ip.frag == 100
    assert str(scapy_ip.flags) == "MF" and scapy_ip.tos == (10 << 2) | 3 and scapy_ip.id == 7
    # scapy recomputes the checksum when it rebuilds with chksum deleted
    del scapy_ip.chksum
    assert IP(bytes(scapy_ip)).chksum == p.checksum


def test_setter_on_read_only_buffer() -> None:
    with pytest.raises(WireError, match="read-only"):
        Ipv4Packet.checked(PACKET).ttl = 1


def test_bad_checksum() -> None:
    bad = bytearray(PACKET)
    bad[11] ^= 1
    with pytest.raises(WireError, match="checksum"):
        Ipv4Repr.parse(bad)
    assert Ipv4Repr.parse(bad, verify_checksum=False) == REPR


def test_explicit_checksum_zero_is_written() -> None:
    data = REPR.to_bytes(PAYLOAD, checksum=0)
    assert data[10:12] == b"\x00\x00"
    assert Ipv4Packet(data).compute_checksum() == 0x32AB


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({0: 0x67}, "version"),
        ({0: 0x44}, "IHL"),
        ({0: 0x4F}, "overruns"),
        ({2: 0x00, 3: 0x10}, "less than the header"),
        ({2: 0x00, 3: 0x2A}, "overruns"),
    ],
)
def test_malformed(patch: dict[int, int], message: str) -> None:
    bad = bytearray(PACKET)
    for offset, value in patch.items():
        bad[offset] = value
    with pytest.raises(WireError, match=message) as info:
        Ipv4Packet.checked(bad)
    assert info.value.offset is not None


def test_truncated_at_every_length() -> None:
    for n in range(len(PACKET)):
        with pytest.raises(WireError):
            Ipv4Repr.parse(PACKET[:n])


def test_bad_values() -> None:
    bad: list[tuple[str, Any]] = [
        ("ttl", 256),
        ("dscp", 64),
        ("ecn", 4),
        ("ident", -1),
        ("frag_offset", 0x2000),
        ("protocol", 256),
        ("options", b"\x01"),
        ("options", bytes(44)),
        ("payload_len", 65536),
    ]
    for field, value in bad:
        with pytest.raises(WireError):
            dataclasses.replace(REPR, **{field: value})
    with pytest.raises(WireError):
        REPR.to_bytes(b"short")
    with pytest.raises(WireError):
        REPR.emit(bytearray(27))
    with pytest.raises(WireError):
        REPR.emit(bytearray(28), checksum=0x10000)


@given(reprs, st.data())
@settings(max_examples=300)
def test_roundtrip(r: Ipv4Repr, data: st.DataObject) -> None:
    payload = data.draw(st.binary(min_size=r.payload_len, max_size=r.payload_len))
    wire = r.to_bytes(payload)
    assert Ipv4Repr.parse(wire) == r
    assert bytes(Ipv4Packet.checked(wire).payload) == payload


@given(reprs)
@settings(max_examples=100, deadline=None)
def test_scapy_parses_ours(r: Ipv4Repr) -> None:
    wire = r.to_bytes(bytes(r.payload_len))
    ip = IP(wire)
    assert (ip.src, ip.dst) == (str(r.src), str(r.dst))
    assert (ip.proto, ip.ttl, ip.id, ip.frag, ip.tos) == (
        r.protocol,
        r.ttl,
        r.ident,
        r.frag_offset,
        (r.dscp << 2) | r.ecn,
    )
    assert r.dont_frag == ip.flags.DF and r.more_frags == ip.flags.MF
    assert ip.len == r.buffer_len() and ip.ihl * 4 == r.header_len
    # scapy recomputes the checksum once the field is deleted; it must match ours
    fresh = IP(wire)
    del fresh.chksum
    assert IP(bytes(fresh)).chksum == ip.chksum


@given(reprs)
@settings(max_examples=100, deadline=None)
def test_we_parse_scapys(r: Ipv4Repr) -> None:
    flags = ("DF" if r.dont_frag else "") + ("+MF" if r.more_frags else "")
    pkt = IP(
        src=str(r.src),
        dst=str(r.dst),
        proto=r.protocol,
        ttl=r.ttl,
        id=r.ident,
        frag=r.frag_offset,
        tos=(r.dscp << 2) | r.ecn,
        flags=flags.strip("+") or 0,
        options=r.options,
    ) / bytes(r.payload_len)
    assert Ipv4Repr.parse(bytes(pkt)) == r


@given(st.binary(max_size=80))
@settings(max_examples=500)
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    _parse_everything(data)


@given(st.binary(min_size=20, max_size=80))
@settings(max_examples=500)
def test_near_valid_bytes_raise_only_wire_error(tail: bytes) -> None:
    # Start from a plausible version/IHL byte so that deeper checks are reached.
    _parse_everything(bytes([0x40 | (tail[0] & 0x0F)]) + tail[1:])


def _parse_everything(data: bytes) -> None:
    try:
        p = Ipv4Packet.checked(data)
    except WireError:
        return
    _ = (p.src, p.dst, p.protocol, p.ttl, bytes(p.options), bytes(p.payload), p.frag_offset)
    p.verify_checksum()
    with contextlib.suppress(WireError):
        Ipv4Repr.parse(data)
