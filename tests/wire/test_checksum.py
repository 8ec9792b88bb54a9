"""Internet checksum core: RFC vectors, scapy as oracle, incremental and batch paths."""

from __future__ import annotations

import ipaddress
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from netoffload.wire.checksum import (
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    add16,
    fold32,
    internet_checksum,
    ones_sum,
    ones_sum_rows,
    ones_sum_spans,
    pseudo_header_sum,
    update,
    update16,
)
from netoffload.wire.error import WireError


def reference_sum(data: bytes) -> int:
    """RFC 1071 section 4.1, word by word, with the end-around carry at the end."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


# RFC 1071 section 3 ("Numerical Examples"): the byte sequence 00 01 f2 03 f4 f5 f6 f7
# has the one's-complement sum ddf2 (big-endian words 0001 + f203 + f4f5 + f6f7).
RFC1071_BYTES = bytes.fromhex("0001f203f4f5f6f7")
RFC1071_SUM = 0xDDF2


def test_rfc1071_example() -> None:
    assert ones_sum(RFC1071_BYTES) == RFC1071_SUM
    assert internet_checksum(RFC1071_BYTES) == ~RFC1071_SUM & 0xFFFF == 0x220D
    assert reference_sum(RFC1071_BYTES) == RFC1071_SUM
    # The same bytes in a NumPy-sized buffer give the same answer.
    assert ones_sum(RFC1071_BYTES + bytes(4096)) == RFC1071_SUM


# Captured on Linux 6.18 loopback (which keeps CHECKSUM_PARTIAL): the checksum
# field of a 40-byte TCP SYN and a 12-byte UDP datagram from 127.0.0.1 to
# 127.0.0.1 holds the pseudo-header sum the kernel seeds for the device.
LOOPBACK_SYN_CHECK = 0xFE30
LOOPBACK_UDP_CHECK = 0xFE1F


def test_pseudo_header_matches_linux_partial_seed() -> None:
    lo = ipaddress.IPv4Address("127.0.0.1")
    assert pseudo_header_sum(lo, lo, IPPROTO_TCP, 40) == LOOPBACK_SYN_CHECK
    assert pseudo_header_sum(lo.packed, lo.packed, IPPROTO_UDP, 12) == LOOPBACK_UDP_CHECK


def test_pseudo_header_rejects_bad_addresses() -> None:
    with pytest.raises(WireError):
        pseudo_header_sum(b"\x01\x02\x03\x04", bytes(16), IPPROTO_TCP, 20)
    with pytest.raises(WireError):
        pseudo_header_sum(b"\x01\x02\x03", b"\x01\x02\x03", IPPROTO_TCP, 20)
    with pytest.raises(WireError):
        pseudo_header_sum(bytes(4), bytes(4), IPPROTO_TCP, -1)


@pytest.mark.parametrize(
    "n", [0, 1, 2, 3, 4, 5, 63, 64, 65, 511, 512, 513, 514, 515, 1459, 1460, 1461, 9001, 65535]
)
def test_lengths_around_every_threshold(n: int) -> None:
    data = random.Random(n).randbytes(n)
    assert ones_sum(data) == reference_sum(data)
    assert ones_sum(bytearray(data)) == reference_sum(data)
    assert ones_sum(memoryview(data)) == reference_sum(data)
    assert internet_checksum(data) == ~reference_sum(data) & 0xFFFF


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 511, 512, 513, 1460, 1461, 65536])
def test_all_zero_and_all_ones(n: int) -> None:
    assert ones_sum(bytes(n)) == 0
    assert internet_checksum(bytes(n)) == 0xFFFF
    ones = b"\xff" * n
    expected = 0xFF00 if n % 2 else 0xFFFF  # an odd byte is padded with a zero
    assert ones_sum(ones) == reference_sum(ones) == expected
    assert internet_checksum(ones) == ~expected & 0xFFFF


def test_residue_zero_is_negative_zero() -> None:
    # 0x8000 + 0x7fff == 0xffff: a sum that folds to "negative zero", not 0.
    for size in (4, 1024):
        data = b"\x80\x00\x7f\xff" + bytes(size - 4)
        assert ones_sum(data) == 0xFFFF
        assert internet_checksum(data) == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_matches_reference(data: bytes, initial: int) -> None:
    assert ones_sum(data) == reference_sum(data)
    assert ones_sum(data, initial) == add16(reference_sum(data), initial)
    assert internet_checksum(data, initial) == ~add16(reference_sum(data), initial) & 0xFFFF


def test_add16_and_fold32() -> None:
    assert add16(0xFFFF, 0x0001) == 0x0001
    assert add16(0x8000, 0x8000) == 0x0001
    assert fold32(0) == 0
    assert fold32(0x1FFFE) == 0xFFFF
    assert fold32(0x12345678) == reference_sum((0x12345678).to_bytes(4, "big"))


# --- scapy as the oracle --------------------------------------------------------

_v4 = st.ip_addresses(v=4)
_v6 = st.ip_addresses(v=6)
_ports = st.integers(0, 0xFFFF)
_payloads = st.binary(max_size=1600)


def _zero_field(data: bytes, offset: int) -> bytes:
    return data[:offset] + b"\x00\x00" + data[offset + 2 :]


@settings(max_examples=150, deadline=None)
@given(_v4, _v4, st.tuples(_ports, _ports, st.integers(0, 2**32 - 1)), _payloads)
def test_tcp_ipv4_matches_scapy(
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    fields: tuple[int, int, int],
    payload: bytes,
) -> None:
    sport, dport, seq = fields
    wire = bytes(IP(src=str(src), dst=str(dst)) / TCP(sport=sport, dport=dport, seq=seq) / payload)
    segment = wire[20:]
    pseudo = pseudo_header_sum(src, dst, IPPROTO_TCP, len(segment))
    ours = internet_checksum(_zero_field(segment, 16), pseudo)
    assert ours == int.from_bytes(segment[16:18], "big")


@settings(max_examples=150, deadline=None)
@given(_v6, _v6, _ports, _ports, _payloads)
def test_tcp_ipv6_matches_scapy(
    src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, sport: int, dport: int, payload: bytes
) -> None:
    wire = bytes(IPv6(src=str(src), dst=str(dst)) / TCP(sport=sport, dport=dport) / payload)
    segment = wire[40:]
    pseudo = pseudo_header_sum(src.packed, dst.packed, IPPROTO_TCP, len(segment))
    ours = internet_checksum(_zero_field(segment, 16), pseudo)
    assert ours == int.from_bytes(segment[16:18], "big")


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.tuples(_v4, _v4), st.tuples(_v6, _v6)), _ports, _ports, _payloads)
def test_udp_matches_scapy(
    addrs: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]
    | tuple[ipaddress.IPv6Address, ipaddress.IPv6Address],
    sport: int,
    dport: int,
    payload: bytes,
) -> None:
    src, dst = addrs
    layer = IP if src.version == 4 else IPv6
    wire = bytes(layer(src=str(src), dst=str(dst)) / UDP(sport=sport, dport=dport) / payload)
    datagram = wire[20 if src.version == 4 else 40 :]
    pseudo = pseudo_header_sum(src, dst, IPPROTO_UDP, len(datagram))
    # RFC 768: a computed 0 goes out as 0xFFFF (scapy does the same).
    ours = internet_checksum(_zero_field(datagram, 6), pseudo) or 0xFFFF
    assert ours == int.from_bytes(datagram[6:8], "big")


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), _payloads)
def test_icmpv4_matches_scapy(ident: int, seq: int, payload: bytes) -> None:
    message = bytes(ICMP(type=8, id=ident, seq=seq) / Raw(payload))
    assert internet_checksum(_zero_field(message, 2)) == int.from_bytes(message[2:4], "big")


@settings(max_examples=150, deadline=None)
@given(_v6, _v6, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), _payloads)
def test_icmpv6_matches_scapy(
    src: ipaddress.IPv6Address,
    dst: ipaddress.IPv6Address,
    ident: int,
    seq: int,
    payload: bytes,
) -> None:
    echo = ICMPv6EchoRequest(id=ident, seq=seq, data=payload)
    message = bytes(IPv6(src=str(src), dst=str(dst)) / echo)[40:]
    pseudo = pseudo_header_sum(src, dst, IPPROTO_ICMPV6, len(message))
    ours = internet_checksum(_zero_field(message, 2), pseudo)
    assert ours == int.from_bytes(message[2:4], "big")


# --- RFC 1624 incremental update ------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=2, max_size=200), st.data())
def test_update16_equals_recompute(body: bytes, data: st.DataObject) -> None:
    # A fixed non-zero first word, as in every real header: with an all-zero
    # buffer the update yields +0 where a recompute yields -0 (RFC 1624 sec. 3).
    buf = bytearray(b"\x45\x00" + body[: len(body) & ~1])
    before = internet_checksum(buf)
    pos = data.draw(st.integers(1, len(buf) // 2 - 1)) * 2 if len(buf) > 2 else None
    if pos is None:
        return
    new_word = data.draw(st.integers(0, 0xFFFF))
    old_word = int.from_bytes(buf[pos : pos + 2], "big")
    buf[pos : pos + 2] = new_word.to_bytes(2, "big")
    assert update16(before, old_word, new_word) == internet_checksum(buf)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=40, max_size=200), st.sampled_from([4, 16]), st.data())
def test_update_field_equals_recompute(body: bytes, width: int, data: st.DataObject) -> None:
    buf = bytearray(b"\x45\x00" + body)
    before = internet_checksum(buf)
    pos = 2 + data.draw(st.integers(0, (len(body) - width) // 2)) * 2
    old = bytes(buf[pos : pos + width])
    new = data.draw(st.binary(min_size=width, max_size=width))
    buf[pos : pos + width] = new
    assert update(before, old, new) == internet_checksum(buf)


def test_update_rejects_odd_or_unequal_fields() -> None:
    with pytest.raises(WireError):
        update(0, b"\x01\x02\x03", b"\x01\x02\x03")
    with pytest.raises(WireError):
        update(0, b"\x01\x02", b"\x01\x02\x03\x04")


# --- batch paths ------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=1600), min_size=1, max_size=16))
def test_rows_equal_per_buffer(frames: list[bytes]) -> None:
    width = max(len(f) for f in frames)
    matrix = np.zeros((len(frames), width), dtype=np.uint8)
    for row, frame in enumerate(frames):
        matrix[row, : len(frame)] = np.frombuffer(frame, dtype=np.uint8)
    sums = ones_sum_rows(matrix)
    assert sums.tolist() == [ones_sum(f) for f in frames]


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=4000), st.data())
def test_spans_equal_per_buffer(buf: bytes, data: st.DataObject) -> None:
    spans = data.draw(
        st.lists(
            st.integers(0, len(buf)).flatmap(
                lambda s: st.tuples(st.just(s), st.integers(0, len(buf) - s))
            ),
            min_size=1,
            max_size=12,
        )
    )
    starts = [s for s, _ in spans]
    lengths = [n for _, n in spans]
    sums = ones_sum_spans(buf, starts, lengths)
    assert sums.tolist() == [ones_sum(buf[s : s + n]) for s, n in spans]


@pytest.mark.parametrize(("count", "stride", "length"), [(1, 0, 5), (8, 1460, 1460), (5, 7, 5)])
def test_spans_at_a_fixed_stride(count: int, stride: int, length: int) -> None:
    buf = random.Random(count).randbytes(3 + stride * count + length)
    starts = [3 + i * stride for i in range(count)]
    sums = ones_sum_spans(buf, starts, [length] * count)
    assert sums.tolist() == [ones_sum(buf[s : s + length]) for s in starts]


def test_batch_input_errors() -> None:
    with pytest.raises(WireError):
        ones_sum_rows(np.zeros(4, dtype=np.uint8))
    with pytest.raises(WireError):
        ones_sum_spans(bytes(10), [0, 8], [4, 4])
    with pytest.raises(WireError):
        ones_sum_spans(bytes(10), [0], [4, 4])
    assert ones_sum_spans(bytes(10), [], []).tolist() == []
