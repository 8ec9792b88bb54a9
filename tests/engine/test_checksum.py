"""Checksum engine: CHECKSUM_PARTIAL fill, IPv4 header fill, batch verify."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import IPv6ExtHdrHopByHop

from netoffload.engine.checksum import (
    FillJob,
    complement_for_wire,
    fill_batch,
    fill_partial_split,
    verify_batch,
)
from netoffload.offload.extension import ChecksumRequest, ChecksumStatus
from netoffload.offload.stats import DropReason
from netoffload.wire.checksum import ones_sum
from tests.engine.builders import as_partial, checksums_ok, tcp4, tcp6, udp4, udp6

V, F, N, A = (
    ChecksumStatus.VERIFIED,
    ChecksumStatus.FAILED,
    ChecksumStatus.NOT_CHECKED,
    ChecksumStatus.ABSENT,
)


def reference_fill(frame: bytes, start: int, offset: int) -> bytes:
    """skb_checksum_help, written out plainly."""
    buf = bytearray(frame)
    value = ~ones_sum(frame[start:]) & 0xFFFF
    struct.pack_into("!H", buf, start + offset, value or 0xFFFF)
    return bytes(buf)


def test_fill_restores_the_scapy_checksum() -> None:
    frames = [tcp4(b"hello"), tcp6(bytes(range(200))), udp4(b"x" * 33), udp6(b"")]
    jobs = []
    for f in frames:
        partial, start, offset = as_partial(f)
        jobs.append(FillJob(partial, ChecksumRequest(start, offset)))
    out = fill_batch(jobs)
    assert all(isinstance(o, bytes) and checksums_ok(o) for o in out)


def test_ipv4_header_fill() -> None:
    frame = bytearray(tcp4(b"abc"))
    frame[24:26] = b"\x00\x00"
    (out,) = fill_batch([FillJob(bytes(frame), None, ipv4_header=True)])
    assert out == tcp4(b"abc")


def test_ipv4_header_fill_on_ipv6_is_malformed() -> None:
    (out,) = fill_batch([FillJob(tcp6(b"abc"), None, ipv4_header=True)])
    assert out is DropReason.MALFORMED_FRAME


def test_computed_zero_is_stored_as_ffff() -> None:
    # Span = 0xFFFF, 0x0000 (the field) -> sum 0xFFFF -> complement 0 -> stored 0xFFFF.
    frame = bytes(40) + b"\xff\xff\x00\x00"
    (out,) = fill_batch([FillJob(frame, ChecksumRequest(40, 2))])
    assert out == bytes(40) + b"\xff\xff\xff\xff"
    assert complement_for_wire(0xFFFF) == 0xFFFF and complement_for_wire(0) == 0xFFFF


def test_bad_offsets_are_dropped() -> None:
    jobs = [
        FillJob(bytes(60), ChecksumRequest(60, 0)),
        FillJob(bytes(60), ChecksumRequest(50, 9)),
        FillJob(bytes(60), ChecksumRequest(50, 8)),
    ]
    out = fill_batch(jobs)
    assert out[:2] == [DropReason.CSUM_OFFSETS_INVALID] * 2
    assert isinstance(out[2], bytes)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(min_size=2, max_size=300), st.integers(0, 299), st.integers(0, 40)),
        max_size=12,
    )
)
def test_batch_fill_equals_per_frame_fill(items: list[tuple[bytes, int, int]]) -> None:
    jobs = [FillJob(f, ChecksumRequest(s, o)) for f, s, o in items]
    out = fill_batch(jobs)
    for (frame, start, offset), result in zip(items, out, strict=True):
        if start < len(frame) and start + offset + 2 <= len(frame):
            assert result == reference_fill(frame, start, offset)
        else:
            assert result is DropReason.CSUM_OFFSETS_INVALID


@given(st.binary(min_size=2, max_size=400), st.integers(0, 399), st.integers(0, 40), st.data())
def test_a_fill_in_two_pieces_equals_the_fill_of_the_joined_frame(
    frame: bytes, start: int, offset: int, data: st.DataObject
) -> None:
    if start + offset + 2 > len(frame):
        return
    cut = data.draw(st.integers(start + offset + 2, len(frame)))  # the field in the first piece
    head = bytearray(frame[:cut])
    payload = memoryview(frame)[cut:]
    fill_partial_split(head, payload, ChecksumRequest(start, offset))
    assert bytes(head) + bytes(payload) == reference_fill(frame, start, offset)
    assert bytes(payload) == frame[cut:]


def statuses(frames: list[bytes]) -> list[tuple[ChecksumStatus, ChecksumStatus]]:
    result = verify_batch(frames)
    return [result.status(i) for i in range(len(frames))]


def corrupt(frame: bytes, at: int) -> bytes:
    buf = bytearray(frame)
    buf[at] ^= 0x01
    return bytes(buf)


def test_verify_good_frames() -> None:
    frames = [
        tcp4(b"a" * 1460),
        tcp4(b"odd", vlan=3),
        tcp4(b"o", ip_options=b"\x01\x01\x01\x00"),
        tcp6(b"b" * 100),
        tcp6(b"c", ext=IPv6ExtHdrHopByHop()),
        udp4(b"d" * 7),
        udp6(b"e" * 8),
    ]
    assert statuses(frames) == [(V, V)] * 3 + [(N, V)] * 2 + [(V, V), (N, V)]


def test_verify_corruption() -> None:
    tcp = tcp4(b"a" * 100)
    frames = [corrupt(tcp, 60), corrupt(tcp, 22), corrupt(tcp6(b"x" * 9), 70)]
    assert statuses(frames) == [(V, F), (F, V), (N, F)]  # TTL is not in the TCP sum


def test_udp_zero_checksum() -> None:
    v4 = bytearray(udp4(b"abc"))
    v4[40:42] = b"\x00\x00"
    v6 = bytearray(udp6(b"abc"))
    v6[60:62] = b"\x00\x00"
    assert statuses([bytes(v4), bytes(v6)]) == [(V, A), (N, F)]


def test_ethernet_padding_is_not_summed() -> None:
    frame = tcp4(b"") + b"\xaa" * 6  # padded to 60 bytes
    assert statuses([frame]) == [(V, V)]


def test_malformed_and_other_protocols_are_not_checked() -> None:
    truncated = tcp4(b"x" * 50)[:60]  # IP length says more than the frame has
    arp = b"\x02" * 12 + b"\x08\x06" + bytes(28)
    icmp = bytearray(tcp4(b"x"))
    icmp[23] = 1
    out = statuses([truncated, arp, b"", b"\x00" * 13])
    assert out == [(V, N), (N, N), (N, N), (N, N)]
    assert statuses([bytes(icmp)])[0][1] is N


POOL = [
    build(bytes(range(n % 256)) * (n // 256 + 1))
    for n in (0, 1, 2, 3, 17, 64, 255, 1000, 1460)
    for build in (tcp4, tcp6, udp4, udp6)
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(POOL), st.none() | st.integers(0, 2000)), max_size=10))
def test_verify_batch_matches_scapy(items: list[tuple[bytes, int | None]]) -> None:
    batch = []
    for frame, flip in items:
        l4 = 34 if frame[12:14] == b"\x08\x00" else 54
        if flip is None:
            batch.append(frame)
            continue
        # Flip one bit the L4 checksum covers; not the UDP length (that is malformed).
        at = l4 + flip % (len(frame) - l4)
        batch.append(corrupt(frame, l4 if at in (l4 + 4, l4 + 5) else at))
    result = verify_batch(batch)
    for i, frame in enumerate(batch):
        hdr, l4_status = result.status(i)
        assert hdr is (V if frame[12:14] == b"\x08\x00" else N)
        assert (l4_status is V) == checksums_ok(frame)
        assert l4_status is (V if items[i][1] is None else F)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=8))
def test_verify_garbage_never_raises(frames: list[bytes]) -> None:
    prefixed = [tcp4(b"")[:14] + f for f in frames] + [tcp6(b"")[:14] + f for f in frames]
    result = verify_batch(frames + prefixed)
    assert len(result) == 3 * len(frames)
