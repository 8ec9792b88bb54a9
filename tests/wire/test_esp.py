"""ESP header view/repr and the decrypted-payload trailer; scapy is the oracle."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation

from netoffload.wire.error import WireError
from netoffload.wire.esp import EspPacket, EspRepr, EspTrailer, pad_len_for

# Not a capture: built by scapy 2.8 (SecurityAssociation(ESP, spi=0x1234,
# crypt_algo="NULL", auth_algo="NULL").encrypt(IP()/UDP(sport=1, dport=2)/b"hello")),
# so the "ciphertext" is the UDP datagram followed by the ESP trailer in clear:
# padding 01, pad length 1, next header 17.
ESP_NULL = bytes.fromhex("000012340000000100010002000d2fd768656c6c6f010111")
UDP_INNER = bytes.fromhex("00010002000d2fd768656c6c6f")


def test_deconstruct() -> None:
    packet = EspPacket.checked(ESP_NULL)
    assert packet.spi == 0x1234
    assert packet.sequence_number == 1
    assert bytes(packet.data) == ESP_NULL[8:]
    inner, trailer = EspTrailer.parse(packet.data)
    assert bytes(inner) == UDP_INNER
    assert trailer == EspTrailer(pad_len=1, next_header=17)
    assert EspRepr.parse(ESP_NULL) == EspRepr(0x1234, 1)


def test_construct() -> None:
    trailer = EspTrailer.for_payload(len(UDP_INNER), 17)
    assert trailer == EspTrailer(1, 17)
    plaintext = UDP_INNER + trailer.to_bytes()
    assert EspRepr(0x1234, 1).to_bytes(plaintext) == ESP_NULL
    buf = bytearray(len(UDP_INNER) + trailer.trailer_len)
    buf[: len(UDP_INNER)] = UDP_INNER
    trailer.emit(buf, len(UDP_INNER))
    assert bytes(buf) == plaintext


def test_setters_and_read_only() -> None:
    buf = bytearray(ESP_NULL)
    packet = EspPacket.checked(buf)
    packet.spi = 0xFFFFFFFF
    packet.sequence_number = 7
    assert EspRepr.parse(buf) == EspRepr(0xFFFFFFFF, 7)
    with pytest.raises(WireError):
        packet.spi = 2**32
    with pytest.raises(WireError, match="read-only"):
        EspPacket.checked(ESP_NULL).sequence_number = 1


def test_errors() -> None:
    with pytest.raises(WireError):
        EspPacket.checked(ESP_NULL[:7])
    with pytest.raises(WireError):
        EspTrailer.parse(b"\x11")
    with pytest.raises(WireError, match="exceeds"):
        EspTrailer.parse(b"\x05\x11")
    with pytest.raises(WireError, match="1, 2, 3"):
        EspTrailer.parse(b"abc\x02\x03\x02\x11")
    assert EspTrailer.parse(b"abc\x02\x03\x02\x11", check_padding=False)[1] == EspTrailer(2, 17)
    with pytest.raises(WireError):
        EspRepr(0, 2**32)
    with pytest.raises(WireError, match="too short"):
        EspRepr(1, 1).emit(bytearray(8), payload=b"x")
    with pytest.raises(WireError):
        EspTrailer(256, 1)


@pytest.mark.parametrize(
    ("payload_len", "block", "pad"), [(0, 4, 2), (2, 4, 0), (13, 4, 1), (13, 16, 1), (14, 16, 0)]
)
def test_pad_len(payload_len: int, block: int, pad: int) -> None:
    assert pad_len_for(payload_len, block) == pad
    assert (payload_len + pad + 2) % max(block, 4) == 0


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=100),
    st.sampled_from([1, 4, 8, 16]),
    st.integers(0, 255),
)
def test_roundtrip(spi: int, seq: int, inner: bytes, block: int, next_header: int) -> None:
    trailer = EspTrailer.for_payload(len(inner), next_header, block)
    packet = EspRepr(spi, seq).to_bytes(inner + trailer.to_bytes())
    assert EspRepr.parse(packet) == EspRepr(spi, seq)
    got_inner, got_trailer = EspTrailer.parse(EspPacket.checked(packet).data)
    assert (bytes(got_inner), got_trailer) == (inner, trailer)
    assert (len(inner) + trailer.trailer_len) % 4 == 0


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 2), st.binary(max_size=100))
def test_we_read_what_scapy_builds(spi: int, seq: int, payload: bytes) -> None:
    sa = SecurityAssociation(ESP, spi=spi, seq_num=seq, crypt_algo="NULL", auth_algo="NULL")
    inner = UDP(sport=5, dport=6) / payload
    packet = sa.encrypt(IP(src="198.18.0.1", dst="198.18.0.2") / inner)
    esp = bytes(packet[ESP])
    assert EspRepr.parse(esp) == EspRepr(spi, seq)
    got_inner, trailer = EspTrailer.parse(EspPacket.checked(esp).data)
    assert trailer.next_header == 17
    udp = UDP(bytes(got_inner))
    assert (udp.sport, udp.dport, udp.len) == (5, 6, 8 + len(payload))
    assert bytes(got_inner)[8:] == payload


@settings(max_examples=100, deadline=None)
# SPI 0 is reserved: scapy reads it as a NAT-T non-ESP marker, so start at 1.
@given(st.integers(1, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=100))
def test_scapy_reads_what_we_build(spi: int, seq: int, data: bytes) -> None:
    esp = ESP(EspRepr(spi, seq).to_bytes(data))
    assert (esp.spi, esp.seq, bytes(esp.data)) == (spi, seq, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        packet = EspPacket.checked(data)
    except WireError:
        pass
    else:
        _ = (packet.spi, packet.sequence_number, packet.data)
    for check in (True, False):
        with contextlib.suppress(WireError):
            EspTrailer.parse(data, check_padding=check)
