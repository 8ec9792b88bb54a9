"""ARP for Ethernet/IPv4."""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import ARP

from netoffload.wire.arp import ArpOperation, ArpPacket, ArpRepr
from netoffload.wire.error import WireError
from netoffload.wire.ethernet import MacAddress

# Built by scapy 2.6: ARP(op=1, hwsrc="02:00:00:00:00:01", psrc="198.18.0.1",
# hwdst="00:00:00:00:00:00", pdst="198.18.0.2")
REQUEST = bytes.fromhex("0001080006040001020000000001c6120001000000000000c6120002")
REQUEST_REPR = ArpRepr(
    operation=ArpOperation.REQUEST,
    sender_hw=MacAddress.parse("02:00:00:00:00:01"),
    sender_proto=IPv4Address("198.18.0.1"),
    target_hw=MacAddress(bytes(6)),
    target_proto=IPv4Address("198.18.0.2"),
)

macs = st.binary(min_size=6, max_size=6).map(MacAddress)
ipv4s = st.integers(0, 2**32 - 1).map(IPv4Address)
reprs = st.builds(ArpRepr, st.integers(0, 0xFFFF), macs, ipv4s, macs, ipv4s)


def test_deconstruct() -> None:
    p = ArpPacket.checked(REQUEST)
    assert (p.hardware_type, p.protocol_type, p.hardware_len, p.protocol_len) == (1, 0x800, 6, 4)
    assert p.operation is ArpOperation.REQUEST
    assert str(p.sender_hw) == "02:00:00:00:00:01" and p.target_proto == IPv4Address("198.18.0.2")
    assert ArpRepr.parse(REQUEST) == REQUEST_REPR
    assert ArpRepr.parse(REQUEST + bytes(18)) == REQUEST_REPR  # Ethernet padding


def test_construct() -> None:
    assert REQUEST_REPR.to_bytes() == REQUEST
    buf = bytearray(30)
    REQUEST_REPR.emit(buf, 2)
    assert bytes(buf[2:]) == REQUEST


def test_setters_make_a_reply() -> None:
    buf = bytearray(REQUEST)
    p = ArpPacket.checked(buf)
    p.operation = ArpOperation.REPLY
    p.target_hw, p.target_proto = p.sender_hw, p.sender_proto
    p.sender_hw = MacAddress.parse("02:00:00:00:00:02")
    p.sender_proto = IPv4Address("198.18.0.2")
    arp = ARP(bytes(buf))
    assert (arp.op, arp.hwsrc, arp.psrc) == (2, "02:00:00:00:00:02", "198.18.0.2")
    assert (arp.hwdst, arp.pdst) == ("02:00:00:00:00:01", "198.18.0.1")
    with pytest.raises(WireError, match="read-only"):
        ArpPacket.checked(REQUEST).operation = ArpOperation.REPLY


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [(1, 6, "hardware type"), (2, 0x86, "protocol type"), (4, 8, "hardware length"),
     (5, 16, "protocol length")],
)  # fmt: skip
def test_wrong_types_and_sizes(offset: int, value: int, message: str) -> None:
    bad = bytearray(REQUEST)
    bad[offset] = value
    with pytest.raises(WireError, match=message):
        ArpRepr.parse(bad)


def test_truncated_and_bad_values() -> None:
    for n in range(len(REQUEST)):
        with pytest.raises(WireError):
            ArpRepr.parse(REQUEST[:n])
    with pytest.raises(WireError):
        ArpRepr(0x10000, REQUEST_REPR.sender_hw, REQUEST_REPR.sender_proto,
                REQUEST_REPR.target_hw, REQUEST_REPR.target_proto)  # fmt: skip
    with pytest.raises(WireError):
        REQUEST_REPR.emit(bytearray(27))


@given(reprs)
@settings(max_examples=200)
def test_roundtrip(r: ArpRepr) -> None:
    assert ArpRepr.parse(r.to_bytes()) == r


@given(reprs)
@settings(max_examples=100, deadline=None)
def test_scapy_agrees(r: ArpRepr) -> None:
    theirs = ARP(
        op=r.operation,
        hwsrc=str(r.sender_hw),
        psrc=str(r.sender_proto),
        hwdst=str(r.target_hw),
        pdst=str(r.target_proto),
    )
    assert bytes(theirs) == r.to_bytes()
    assert ArpRepr.parse(bytes(theirs)) == r


@given(st.binary(max_size=40))
@settings(max_examples=500)
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        ArpRepr.parse(data)
    with contextlib.suppress(WireError):
        ArpRepr.parse(bytes.fromhex("0001080006040001") + data)
