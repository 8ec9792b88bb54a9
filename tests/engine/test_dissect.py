"""The engine's frame dissector."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from netoffload.engine.dissect import DissectError, dissect
from netoffload.offload.stats import DropReason
from tests.engine.builders import DST6, MAC, SRC6, tcp4, tcp6, udp4


def test_ipv4_tcp_offsets() -> None:
    frame = tcp4(b"x" * 10, options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
    d = dissect(frame)
    assert (d.l3, d.l4, d.payload, d.version, d.protocol) == (14, 34, 66, 4, 6)
    assert d.ip_end == len(frame) and not d.fragment and not d.ipv4_options


def test_vlan_and_qinq_are_skipped() -> None:
    assert dissect(tcp4(b"x", vlan=5)).l3 == 18
    qinq = bytes(Ether(**MAC) / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IPv6(src=SRC6, dst=DST6) / UDP())
    d = dissect(qinq)
    assert (d.l3, d.l4, d.payload, d.protocol) == (22, 62, 70, 17)


def test_ipv4_options() -> None:
    d = dissect(tcp4(b"abc", ip_options=b"\x01\x01\x01\x00"))
    assert d.ipv4_options and d.l4 == 38


@pytest.mark.parametrize("ext", [IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(), IPv6ExtHdrDestOpt()])
def test_ipv6_extension_headers_are_walked(ext: object) -> None:
    d = dissect(tcp6(b"payload", ext=ext))  # type: ignore[arg-type]
    assert d.protocol == 6 and d.l4 == 14 + 40 + 8 and not d.fragment


def test_ipv6_fragment_header_marks_a_fragment() -> None:
    frame = bytes(Ether(**MAC) / IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment() / TCP() / b"xx")
    d = dissect(frame)
    assert d.fragment and d.protocol == 44 and d.l4_header_len == 0


def test_udp() -> None:
    d = dissect(udp4(b"12345"))
    assert (d.l4, d.payload, d.l4_header_len) == (34, 42, 8)


@pytest.mark.parametrize("cut", [0, 13, 20, 33, 40, 53])
def test_truncated_frames_are_malformed(cut: int) -> None:
    frame = tcp4(b"")
    with pytest.raises(DissectError) as info:
        dissect(frame[:cut])
    assert info.value.reason is DropReason.MALFORMED_FRAME


def test_bad_tcp_data_offset() -> None:
    frame = bytearray(tcp4(b"x" * 40))
    frame[34 + 12] = 0x40  # doff 4
    with pytest.raises(DissectError):
        dissect(bytes(frame))


def test_non_ip_is_malformed_for_the_engine() -> None:
    with pytest.raises(DissectError):
        dissect(bytes(Ether(**MAC, type=0x0806) / (b"\x00" * 28)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_garbage_raises_only_dissect_error(data: bytes) -> None:
    for frame in (data, tcp4(b"")[:14] + data, tcp6(b"")[:14] + data):
        with contextlib.suppress(DissectError):
            dissect(frame)
