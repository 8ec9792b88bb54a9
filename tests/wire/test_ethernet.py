"""Ethernet II, 802.1Q and 802.1ad (QinQ) headers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from netoffload.wire.error import WireError
from netoffload.wire.ethernet import (
    BROADCAST,
    EthernetFrame,
    EthernetRepr,
    EtherType,
    MacAddress,
    VlanTag,
)

# Built by scapy 2.6: Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
# / Dot1AD(prio=5, vlan=100) / Dot1Q(prio=3, id=1, vlan=200) / IP(src="198.18.0.1",
# dst="198.18.0.2") / ICMP(id=7, seq=1) / b"ping"
QINQ_FRAME = bytes.fromhex(
    "02000000000202000000000188a8a064810070c8080045000020000100004001eeb4c6120001c6120002"
    "080019270007000170696e67"
)
QINQ_PAYLOAD = QINQ_FRAME[22:]
QINQ_REPR = EthernetRepr(
    dst=MacAddress.parse("02:00:00:00:00:02"),
    src=MacAddress.parse("02:00:00:00:00:01"),
    ethertype=EtherType.IPV4,
    vlan_tags=(
        VlanTag(pcp=5, dei=False, vid=100, tpid=EtherType.QINQ),
        VlanTag(pcp=3, dei=True, vid=200, tpid=EtherType.VLAN),
    ),
)

macs = st.binary(min_size=6, max_size=6).map(MacAddress)
tags = st.builds(
    VlanTag,
    pcp=st.integers(0, 7),
    dei=st.booleans(),
    vid=st.integers(0, 4095),
    tpid=st.sampled_from([EtherType.VLAN, EtherType.QINQ]),
)
ethertypes = st.integers(1501, 0xFFFF).filter(lambda t: t not in (0x8100, 0x88A8, 0x9100))
reprs = st.builds(
    EthernetRepr,
    dst=macs,
    src=macs,
    ethertype=ethertypes,
    vlan_tags=st.lists(tags, max_size=3).map(tuple),
)


def test_deconstruct() -> None:
    frame = EthernetFrame.checked(QINQ_FRAME)
    assert frame.dst == MacAddress.parse("02:00:00:00:00:02")
    assert str(frame.src) == "02:00:00:00:00:01"
    assert frame.vlan_tags == QINQ_REPR.vlan_tags
    assert frame.ethertype is EtherType.IPV4
    assert frame.header_len == 22
    assert bytes(frame.payload) == QINQ_PAYLOAD
    assert EthernetRepr.parse(QINQ_FRAME) == QINQ_REPR


def test_construct() -> None:
    assert QINQ_REPR.to_bytes(QINQ_PAYLOAD) == QINQ_FRAME
    buf = bytearray(len(QINQ_FRAME))
    QINQ_REPR.emit(buf)
    assert bytes(buf[:22]) == QINQ_FRAME[:22]


def test_untagged_and_setters() -> None:
    frame_bytes = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01", type=0x0806))
    frame = EthernetFrame.checked(bytearray(frame_bytes))
    assert frame.dst == BROADCAST and frame.dst.is_broadcast and frame.dst.is_multicast
    assert frame.vlan_tags == () and frame.header_len == 14
    assert frame.ethertype is EtherType.ARP
    frame.dst = MacAddress.parse("02-00-00-00-00-09")
    frame.ethertype = EtherType.IPV6
    parsed = Ether(bytes(frame.buffer))
    assert parsed.dst == "02:00:00:00:00:09" and parsed.type == 0x86DD


def test_setter_on_read_only_buffer() -> None:
    frame = EthernetFrame.checked(QINQ_FRAME)
    with pytest.raises(WireError, match="read-only"):
        frame.ethertype = EtherType.IPV6


def test_unknown_ethertype_kept_as_int() -> None:
    frame = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=0x1234))
    r = EthernetRepr.parse(frame)
    assert r.ethertype == 0x1234 and not isinstance(r.ethertype, EtherType)
    assert r.to_bytes() == frame


@pytest.mark.parametrize("text", ["", "02:00:00:00:00", "02:00:00:00:00:0g", "020000000002"])
def test_bad_mac_text(text: str) -> None:
    with pytest.raises(WireError):
        MacAddress.parse(text)


def test_bad_values() -> None:
    with pytest.raises(WireError):
        MacAddress(b"\x00" * 5)
    with pytest.raises(WireError):
        VlanTag(pcp=8, dei=False, vid=1)
    with pytest.raises(WireError):
        VlanTag(pcp=0, dei=False, vid=4096)
    with pytest.raises(WireError):
        EthernetRepr(dst=BROADCAST, src=BROADCAST, ethertype=0x8100)
    with pytest.raises(WireError):
        EthernetRepr(dst=BROADCAST, src=BROADCAST, ethertype=60)  # an 802.3 length


def test_truncated_at_every_length() -> None:
    for n in range(22):
        with pytest.raises(WireError):
            EthernetRepr.parse(QINQ_FRAME[:n])
    EthernetRepr.parse(QINQ_FRAME[:22])


def test_too_many_tags() -> None:
    frame = bytes(12) + b"\x81\x00\x00\x01" * 9 + b"\x08\x00"
    with pytest.raises(WireError, match="VLAN tags"):
        EthernetFrame.checked(frame)


def test_emit_into_short_buffer() -> None:
    with pytest.raises(WireError):
        QINQ_REPR.emit(bytearray(21))
    with pytest.raises(WireError):
        QINQ_REPR.emit(bytes(22))


@given(reprs, st.binary(max_size=64))
@settings(max_examples=200)
def test_roundtrip(r: EthernetRepr, payload: bytes) -> None:
    data = r.to_bytes(payload)
    assert EthernetRepr.parse(data) == r
    assert bytes(EthernetFrame.checked(data).payload) == payload


def _scapy_frame(r: EthernetRepr, payload: bytes) -> Ether:
    pkt = Ether(dst=str(r.dst), src=str(r.src))
    for tag in r.vlan_tags:
        layer = Dot1AD if tag.tpid == EtherType.QINQ else Dot1Q
        pkt = pkt / layer(prio=tag.pcp, id=int(tag.dei), vlan=tag.vid)
    # scapy sets each type field from the layer that follows; the last one is ours.
    pkt.lastlayer().type = r.ethertype
    return pkt / payload


@given(reprs, st.binary(max_size=32))
@settings(max_examples=100, deadline=None)
def test_scapy_agrees(r: EthernetRepr, payload: bytes) -> None:
    ours = r.to_bytes(payload)
    theirs = bytes(_scapy_frame(r, payload))
    assert ours == theirs
    assert EthernetRepr.parse(theirs) == r


@given(st.binary(max_size=64))
@settings(max_examples=500)
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        frame = EthernetFrame.checked(data)
    except WireError:
        return
    _ = (frame.dst, frame.src, frame.vlan_tags, frame.ethertype, bytes(frame.payload))
    EthernetRepr.parse(data)
