"""UDP view, repr and checksum rules; scapy is the independent oracle."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from netoffload.wire.checksum import ones_sum, pseudo_header_sum
from netoffload.wire.error import WireError
from netoffload.wire.udp import UdpPacket, UdpRepr

V4_SRC = bytes([198, 18, 0, 1])
V4_DST = bytes([198, 18, 0, 2])
V6_SRC = ipaddress.IPv6Address("fd00::1")
V6_DST = ipaddress.IPv6Address("fd00::2")

# Captured with an AF_PACKET socket on a veth pair (tx checksum offload off)
# between two private network namespaces, Linux 6.18:
# `sendto(b"ping", ("198.18.0.2", 9))` from 198.18.0.1.
PING_V4 = bytes.fromhex("a4ca0009000cf00970696e67")
# Same capture, over IPv6: `sendto(b"ping", ("fd00::2", 9))` from fd00::1.
PING_V6 = bytes.fromhex("99870009000c8d7070696e67")


def test_deconstruct() -> None:
    packet = UdpPacket.checked(PING_V4)
    assert packet.src_port == 42186
    assert packet.dst_port == 9
    assert packet.length == 12
    assert packet.checksum == 0xF009
    assert bytes(packet.payload) == b"ping"
    assert isinstance(packet.payload, memoryview)
    assert packet.verify_checksum(V4_SRC, V4_DST)
    assert UdpRepr.parse(PING_V4, src=V4_SRC, dst=V4_DST) == UdpRepr(42186, 9)


def test_construct() -> None:
    repr_ = UdpRepr(42186, 9)
    assert repr_.header_len == 8
    assert repr_.buffer_len(4) == 12
    assert repr_.to_bytes(b"ping", src=V4_SRC, dst=V4_DST) == PING_V4
    buf = bytearray(16)
    repr_.emit(buf, 4, payload=b"ping", src=ipaddress.IPv4Address(V4_SRC), dst=V4_DST)
    assert bytes(buf[4:]) == PING_V4


def test_ipv6_datagram() -> None:
    repr_ = UdpRepr.parse(PING_V6, src=V6_SRC, dst=V6_DST)
    assert repr_ == UdpRepr(39303, 9)
    assert repr_.to_bytes(b"ping", src=V6_SRC, dst=V6_DST) == PING_V6


def test_zero_checksum_means_none_over_ipv4_only() -> None:
    no_sum = UdpRepr(42186, 9).to_bytes(b"ping", checksum=0)
    assert no_sum[6:8] == b"\x00\x00"
    assert UdpPacket.checked(no_sum).verify_checksum(V4_SRC, V4_DST)
    assert UdpRepr.parse(no_sum, src=V4_SRC, dst=V4_DST) == UdpRepr(42186, 9)
    assert not UdpPacket.checked(no_sum).verify_checksum(V6_SRC, V6_DST)
    with pytest.raises(WireError, match="IPv6 must carry a checksum"):
        UdpRepr.parse(no_sum, src=V6_SRC, dst=V6_DST)
    assert UdpRepr.parse(no_sum, src=V6_SRC, dst=V6_DST, verify_checksum=False)


def _payload_summing_to_zero_checksum(src: bytes, dst: bytes, header: bytes) -> bytes:
    """Two payload bytes chosen so that the computed checksum is 0."""
    partial = ones_sum(header[:6] + b"\x00\x00", pseudo_header_sum(src, dst, 17, 10))
    # Want the total sum to be 0xFFFF: add the word that completes it.
    word = (0xFFFF - partial) & 0xFFFF
    return word.to_bytes(2, "big")


def test_computed_zero_is_sent_as_ffff() -> None:
    header = UdpRepr(1000, 2000).to_bytes(b"\x00\x00", checksum=0)
    payload = _payload_summing_to_zero_checksum(V4_SRC, V4_DST, header)
    data = UdpRepr(1000, 2000).to_bytes(payload, src=V4_SRC, dst=V4_DST)
    assert data[6:8] == b"\xff\xff"
    assert UdpPacket.checked(data).verify_checksum(V4_SRC, V4_DST)
    assert UdpPacket.checked(data).compute_checksum(V4_SRC, V4_DST) == 0xFFFF
    # scapy agrees (RFC 768: an all-zero result is transmitted as all ones).
    packet = IP(bytes(IP(src="198.18.0.1", dst="198.18.0.2", proto=17) / Raw(data)))
    del packet[UDP].chksum
    assert IP(bytes(packet))[UDP].chksum == 0xFFFF


def test_length_field_checked_against_buffer() -> None:
    with pytest.raises(WireError) as info:
        UdpPacket.checked(PING_V4[:11])
    assert info.value.offset == 4
    with pytest.raises(WireError) as info:
        UdpPacket.checked(PING_V4[:4] + b"\x00\x07" + PING_V4[6:])
    assert info.value.offset == 4
    with pytest.raises(WireError):
        UdpPacket.checked(PING_V4[:7])
    # Trailing bytes (say, Ethernet padding) are not part of the datagram.
    padded = UdpPacket.checked(PING_V4 + bytes(6))
    assert bytes(padded.payload) == b"ping"
    assert padded.verify_checksum(V4_SRC, V4_DST)


def test_setters() -> None:
    buf = bytearray(PING_V4)
    packet = UdpPacket.checked(buf)
    packet.src_port = 53
    packet.dst_port = 5353
    packet.fill_checksum(V4_SRC, V4_DST)
    assert UdpRepr.parse(buf, src=V4_SRC, dst=V4_DST) == UdpRepr(53, 5353)
    packet.length = 8
    assert bytes(packet.payload) == b""
    with pytest.raises(WireError):
        packet.dst_port = -1
    with pytest.raises(WireError, match="read-only"):
        UdpPacket.checked(PING_V4).checksum = 0


def test_emit_checks() -> None:
    repr_ = UdpRepr(1, 2)
    with pytest.raises(WireError, match="src and dst"):
        repr_.to_bytes(b"x")
    with pytest.raises(WireError, match="exceeds"):
        repr_.to_bytes(bytes(65528), checksum=0)
    with pytest.raises(WireError, match="too short"):
        repr_.emit(bytearray(8), payload=b"x", checksum=0)
    with pytest.raises(WireError, match="read-only"):
        repr_.emit(bytes(9), payload=b"x", checksum=0)
    with pytest.raises(WireError):
        repr_.to_bytes(b"x", src=V4_SRC, dst=V6_DST)
    with pytest.raises(WireError):
        UdpPacket.checked(PING_V4).verify_checksum(V4_SRC, V6_DST)
    with pytest.raises(WireError):
        UdpRepr(65536, 1)


_u16 = st.integers(0, 0xFFFF)
_v4 = st.binary(min_size=4, max_size=4)
_v6 = st.binary(min_size=16, max_size=16)
_addresses = st.one_of(st.tuples(_v4, _v4), st.tuples(_v6, _v6))


def _ip(src: bytes, dst: bytes) -> IP | IPv6:
    if len(src) == 4:
        return IP(src=str(ipaddress.IPv4Address(src)), dst=str(ipaddress.IPv4Address(dst)))
    return IPv6(src=str(ipaddress.IPv6Address(src)), dst=str(ipaddress.IPv6Address(dst)))


@settings(max_examples=300, deadline=None)
@given(st.builds(UdpRepr, _u16, _u16), st.binary(max_size=200), _addresses)
def test_parse_emit_roundtrip(repr_: UdpRepr, payload: bytes, addrs: tuple[bytes, bytes]) -> None:
    src, dst = addrs
    data = repr_.to_bytes(payload, src=src, dst=dst)
    assert UdpRepr.parse(data, src=src, dst=dst) == repr_
    assert bytes(UdpPacket.checked(data).payload) == payload


@settings(max_examples=200, deadline=None)
@given(_u16, _u16, st.binary(max_size=200), _addresses)
def test_scapy_reads_what_we_build(
    sport: int, dport: int, payload: bytes, addrs: tuple[bytes, bytes]
) -> None:
    src, dst = addrs
    datagram = UdpRepr(sport, dport).to_bytes(payload, src=src, dst=dst)
    ip = _ip(src, dst)
    if isinstance(ip, IP):
        ip.proto = 17
    else:
        ip.nh = 17
    packet = type(ip)(bytes(ip / Raw(datagram)))
    udp = packet[UDP]
    assert (udp.sport, udp.dport, udp.len) == (sport, dport, 8 + len(payload))
    assert bytes(udp.payload) == payload
    ours = udp.chksum
    del packet[UDP].chksum
    assert type(ip)(bytes(packet))[UDP].chksum == ours


@settings(max_examples=200, deadline=None)
@given(_u16, _u16, st.binary(max_size=200), _addresses)
def test_we_read_what_scapy_builds(
    sport: int, dport: int, payload: bytes, addrs: tuple[bytes, bytes]
) -> None:
    src, dst = addrs
    wire = bytes(_ip(src, dst) / UDP(sport=sport, dport=dport) / Raw(payload))
    datagram = wire[20 if len(src) == 4 else 40 :]
    assert UdpRepr.parse(datagram, src=src, dst=dst) == UdpRepr(sport, dport)
    assert bytes(UdpPacket.checked(datagram).payload) == payload
    assert UdpRepr(sport, dport).to_bytes(payload, src=src, dst=dst) == datagram


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40), _addresses)
def test_random_bytes_raise_only_wire_error(data: bytes, addrs: tuple[bytes, bytes]) -> None:
    src, dst = addrs
    try:
        packet = UdpPacket.checked(data)
    except WireError:
        return
    _ = (packet.src_port, packet.dst_port, packet.length, packet.checksum, packet.payload)
    packet.verify_checksum(src, dst)
    packet.compute_checksum(src, dst)
    try:
        UdpRepr.parse(data, src=src, dst=dst)
    except WireError as exc:
        assert exc.offset == 6
