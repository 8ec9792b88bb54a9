"""AH header view and repr; scapy is the oracle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import AH, SecurityAssociation

from netoffload.wire.ah import AhPacket, AhRepr
from netoffload.wire.error import WireError

# Not a capture: built by scapy 2.8 (SecurityAssociation(AH, spi=0x99,
# auth_algo="HMAC-SHA1-96", auth_key=b"k" * 20).encrypt(IP()/UDP(sport=1,
# dport=2)/b"hello")): AH with a 12-byte ICV (payload length 4), then the UDP datagram.
AH_SHA1_96 = bytes.fromhex(
    "1104000000000099000000016d1f67db86ce89833b99f1e000010002000d2fd768656c6c6f"
)
ICV = bytes.fromhex("6d1f67db86ce89833b99f1e0")
UDP_INNER = bytes.fromhex("00010002000d2fd768656c6c6f")
REPR = AhRepr(next_header=17, spi=0x99, sequence_number=1, icv=ICV)


def test_deconstruct() -> None:
    packet = AhPacket.checked(AH_SHA1_96)
    assert packet.next_header == 17
    assert packet.payload_len == 4
    assert packet.header_len == 24
    assert packet.reserved == 0
    assert packet.spi == 0x99
    assert packet.sequence_number == 1
    assert bytes(packet.icv) == ICV
    assert bytes(packet.payload) == UDP_INNER
    assert AhRepr.parse(AH_SHA1_96) == REPR


def test_construct() -> None:
    assert REPR.header_len == 24
    assert REPR.payload_len == 4
    assert REPR.to_bytes(UDP_INNER) == AH_SHA1_96
    buf = bytearray(REPR.buffer_len(len(UDP_INNER)) + 2)
    REPR.emit(buf, 2, payload=UDP_INNER)
    assert bytes(buf[2:]) == AH_SHA1_96


def test_setters_and_icv_zeroing() -> None:
    buf = bytearray(AH_SHA1_96)
    packet = AhPacket.checked(buf)
    packet.next_header = 6
    packet.spi = 1
    packet.sequence_number = 2**32 - 1
    packet.icv[:] = bytes(len(packet.icv))  # as while the ICV is computed
    assert AhRepr.parse(buf) == AhRepr(6, 1, 2**32 - 1, bytes(12))
    with pytest.raises(WireError):
        packet.next_header = 256
    with pytest.raises(WireError, match="read-only"):
        AhPacket.checked(AH_SHA1_96).spi = 3


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (AH_SHA1_96[:11], 0),
        (AH_SHA1_96[:1] + b"\x00" + AH_SHA1_96[2:], 1),  # payload length 0: 8-byte header
        (AH_SHA1_96[:1] + b"\x10" + AH_SHA1_96[2:], 1),  # 72-byte header in 37 bytes
    ],
)
def test_bad_lengths(data: bytes, offset: int) -> None:
    with pytest.raises(WireError) as info:
        AhPacket.checked(data)
    assert info.value.offset == offset


def test_repr_checks() -> None:
    with pytest.raises(WireError):
        AhRepr(17, 1, 1, b"\x00" * 10)  # not 4-byte aligned
    with pytest.raises(WireError):
        AhRepr(17, 1, 1, bytes(1020))
    with pytest.raises(WireError):
        AhRepr(256, 1, 1)
    with pytest.raises(WireError, match="too short"):
        REPR.emit(bytearray(23))


_reprs = st.builds(
    AhRepr,
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 16).map(lambda n: bytes(range(4 * n))),
)


@settings(max_examples=200, deadline=None)
@given(_reprs, st.binary(max_size=50))
def test_roundtrip(repr_: AhRepr, payload: bytes) -> None:
    data = repr_.to_bytes(payload)
    assert AhRepr.parse(data) == repr_
    assert bytes(AhPacket.checked(data).payload) == payload


@settings(max_examples=200, deadline=None)
@given(_reprs, st.binary(max_size=50))
def test_scapy_reads_what_we_build(repr_: AhRepr, payload: bytes) -> None:
    ah = AH(repr_.to_bytes(payload))
    assert (ah.nh, ah.payloadlen, ah.spi, ah.seq) == (
        repr_.next_header,
        repr_.payload_len,
        repr_.spi,
        repr_.sequence_number,
    )
    assert bytes(ah.icv) == repr_.icv


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 2), st.binary(max_size=50))
def test_we_read_what_scapy_builds(spi: int, seq: int, payload: bytes) -> None:
    sa = SecurityAssociation(AH, spi=spi, seq_num=seq, auth_algo="HMAC-SHA1-96", auth_key=b"k" * 20)
    packet = sa.encrypt(IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=1, dport=2) / payload)
    wire = bytes(packet)[20:]
    repr_ = AhRepr.parse(wire)
    assert (repr_.next_header, repr_.spi, repr_.sequence_number) == (17, spi, seq)
    assert repr_.icv == bytes(packet[AH].icv)
    assert bytes(AhPacket.checked(wire).payload) == bytes(packet[UDP])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        packet = AhPacket.checked(data)
    except WireError:
        return
    _ = (packet.next_header, packet.spi, packet.sequence_number, packet.icv, packet.payload)
    assert AhRepr.parse(data).header_len == packet.header_len
