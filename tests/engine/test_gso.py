"""Segmentation against scapy as the oracle, and the kernel's refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether

from netoffload.engine.gso import GsoError, segment, segment_request
from netoffload.offload.extension import (
    ChecksumRequest,
    GsoType,
    SegmentationRequest,
    TxRequest,
)
from netoffload.offload.stats import DropReason
from netoffload.offload.virtio import VirtioNetHdr
from tests.engine.builders import as_partial, checksums_ok, tcp4, tcp6, udp4, udp6
from tests.engine.gso_reference import reference_segments

OPTS = [("NOP", None), ("NOP", None), ("Timestamp", (7, 9))]
PAYLOAD = bytes((i * 7 + 3) % 256 for i in range(65000))


def tso(frame: bytes, mss: int, gso_type: int = 1) -> list[bytes]:
    partial, start, offset = as_partial(frame)
    h = VirtioNetHdr(flags=1, gso_type=gso_type, gso_size=mss, csum_start=start, csum_offset=offset)
    return segment(partial, h)


def test_tcp4_segments_match_the_kernel_rules() -> None:
    payload = PAYLOAD[:5000]
    frame = tcp4(payload, seq=0xFFFFF000, flags="FPAC", ip_id=0xFFFE, options=OPTS)
    segs = tso(frame, 1448)
    assert len(segs) == 4
    for i, s in enumerate(segs):
        p = Ether(s)
        assert checksums_ok(s)
        assert p[IP].id == (0xFFFE + i) & 0xFFFF
        assert p[IP].len == len(s) - 14 and p[IP].flags == "DF"
        assert p[TCP].seq == (0xFFFFF000 + i * 1448) & 0xFFFFFFFF
        assert p[TCP].options == Ether(frame)[TCP].options
        expected = {0: "AC", 3: "FPA"}.get(i, "A")
        assert p[TCP].flags == expected
    assert b"".join(bytes(Ether(s)[TCP].payload) for s in segs) == payload
    assert [len(s) for s in segs] == [14 + 20 + 32 + 1448] * 3 + [14 + 20 + 32 + 5000 - 3 * 1448]


def test_tcp6_with_hop_by_hop() -> None:
    frame = tcp6(PAYLOAD[:3000], ext=IPv6ExtHdrHopByHop(), flags="PA")
    segs = tso(frame, 1000, gso_type=4)
    assert len(segs) == 3
    for i, s in enumerate(segs):
        p = Ether(s)
        assert checksums_ok(s)
        assert p[IPv6].plen == len(s) - 54 and IPv6ExtHdrHopByHop in p
        assert p[TCP].seq == 1000 + i * 1000
        assert p[TCP].flags == ("PA" if i == 2 else "A")


def test_udp4_and_udp6() -> None:
    for build, gso in ((udp4, 5), (udp6, 5)):
        frame = build(PAYLOAD[:2500])
        segs = tso(frame, 1000, gso_type=gso)
        assert [len(bytes(Ether(s)[UDP].payload)) for s in segs] == [1000, 1000, 500]
        for i, s in enumerate(segs):
            p = Ether(s)
            assert checksums_ok(s) and p[UDP].chksum != 0
            assert p[UDP].len == 8 + (1000 if i < 2 else 500)
            if IP in p:
                assert p[IP].id == 1 + i


def test_udp_computed_zero_is_sent_as_ffff() -> None:
    # Choose the last payload word of segment 1 so its sum is 0xFFFF (checksum 0).
    base = bytearray(PAYLOAD[:300])
    base[-2:] = b"\x00\x00"
    first = Ether(tso(udp4(bytes(base)), 150, gso_type=5)[1])[UDP].chksum
    total = ~first & 0xFFFF
    base[-2:] = ((0xFFFF - total) & 0xFFFF).to_bytes(2, "big")
    seg = tso(udp4(bytes(base)), 150, gso_type=5)[1]
    assert Ether(seg)[UDP].chksum == 0xFFFF
    assert checksums_ok(seg)


def test_64k_super_packet_gives_45_segments() -> None:
    frame = tcp4(PAYLOAD[: 65535 - 40])
    segs = tso(frame, 1460)
    assert len(segs) == 45 and all(checksums_ok(s) for s in segs[::11])


def test_gso_without_needs_csum_computes_the_pseudo_header() -> None:
    frame = tcp4(PAYLOAD[:3000])  # the checksum field holds a full checksum: ignored
    segs = segment(frame, VirtioNetHdr(gso_type=1, gso_size=1460))
    assert len(segs) == 3 and all(checksums_ok(s) for s in segs)


def test_non_gso_with_needs_csum_fills_the_checksum() -> None:
    frame = tcp4(b"small")
    partial, start, offset = as_partial(frame)
    h = VirtioNetHdr(flags=1, csum_start=start, csum_offset=offset)
    assert segment(partial, h) == [frame]
    assert segment(frame, VirtioNetHdr()) == [frame]


def test_small_gso_packet_is_sent_whole() -> None:
    frame = tcp4(b"x" * 100)
    partial, start, offset = as_partial(frame)
    h = VirtioNetHdr(flags=1, gso_type=1, gso_size=1000, csum_start=start, csum_offset=offset)
    assert segment(partial, h) == [frame]


def test_vlan_frame() -> None:
    segs = tso(tcp4(PAYLOAD[:3000], vlan=7), 1500)
    assert len(segs) == 2 and all(checksums_ok(s) and s[12:14] == b"\x81\x00" for s in segs)


def test_fixed_id_keeps_the_id_and_needs_df() -> None:
    frame, start, offset = as_partial(tcp4(PAYLOAD[:3000], ip_id=77))
    seg = SegmentationRequest(GsoType.TCPV4, 1000, fixed_id=True)
    req = TxRequest(checksum=ChecksumRequest(start, offset), segmentation=seg)
    out = segment_request(frame, req)
    assert [Ether(s)[IP].id for s in out] == [77, 77, 77] and all(checksums_ok(s) for s in out)
    no_df, start, offset = as_partial(tcp4(PAYLOAD[:3000], df=False))
    with pytest.raises(GsoError) as info:
        segment_request(no_df, req)
    assert info.value.reason is DropReason.BAD_VNET_HDR


def test_segment_request_fills_ipv4_header_on_a_small_packet() -> None:
    frame = bytearray(tcp4(b"abc"))
    frame[24:26] = b"\x00\x00"
    partial, start, offset = as_partial(bytes(frame))
    req = TxRequest(checksum=ChecksumRequest(start, offset), ipv4_header_checksum=True)
    assert segment_request(partial, req) == [tcp4(b"abc")]


@pytest.mark.parametrize(
    ("frame", "hdr", "reason"),
    [
        (tcp4(bytes(3000)), VirtioNetHdr(gso_type=2, gso_size=10), DropReason.BAD_VNET_HDR),
        (tcp4(bytes(3000)), VirtioNetHdr(gso_type=1, gso_size=0), DropReason.GSO_SIZE_INVALID),
        (tcp6(bytes(3000)), VirtioNetHdr(gso_type=1, gso_size=100), DropReason.GSO_TYPE_MISMATCH),
        (udp4(bytes(3000)), VirtioNetHdr(gso_type=3, gso_size=1000), DropReason.GSO_UNSUPPORTED),
        (b"\x00" * 10, VirtioNetHdr(), DropReason.MALFORMED_FRAME),
    ],
)
def test_refusals_raise_gso_error(frame: bytes, hdr: VirtioNetHdr, reason: DropReason) -> None:
    with pytest.raises(GsoError) as info:
        segment(frame, hdr)
    assert info.value.reason is reason


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["tcp4", "tcp6", "udp4", "udp6"]),
    st.integers(1, 3000),
    st.integers(200, 1500),
    st.sampled_from(["A", "PA", "FA", "CA", "FPAC"]),
)
def test_segments_reassemble_to_the_payload(kind: str, size: int, mss: int, flags: str) -> None:
    payload = PAYLOAD[:size]
    build = {"tcp4": tcp4, "tcp6": tcp6}.get(kind)
    frame = build(payload, flags=flags) if build else (udp4 if kind == "udp4" else udp6)(payload)
    gso = {"tcp4": 1, "tcp6": 4}.get(kind, 5)
    segs = tso(frame, mss, gso)
    l4 = Ether(segs[0]).payload.payload
    assert all(checksums_ok(s) for s in segs)
    if size <= mss:
        assert segs == [frame]
        return
    assert len(segs) == -(-size // mss)
    pieces = [bytes(Ether(s).payload.payload.payload) for s in segs]
    assert b"".join(pieces) == payload
    assert isinstance(l4, TCP | UDP)


garbage_headers = st.builds(
    VirtioNetHdr,
    flags=st.integers(0, 3),
    gso_type=st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x85, 9]),
    hdr_len=st.integers(0, 100),
    gso_size=st.integers(0, 2000),
    csum_start=st.integers(0, 100),
    csum_offset=st.integers(0, 20),
)
BASES = [as_partial(f)[0] for f in (tcp4(bytes(2500)), tcp6(bytes(2500)), udp4(bytes(2500)))]


@settings(max_examples=300, deadline=None)
@given(
    garbage_headers,
    st.sampled_from(BASES),
    st.integers(0, 2600),
    st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4),
)
def test_garbage_raises_only_gso_error(
    hdr: VirtioNetHdr, base: bytes, cut: int, pokes: list[tuple[int, int]]
) -> None:
    frame = bytearray(base[:cut])
    for at, value in pokes:
        if at < len(frame):
            frame[at] = value
    try:
        segment(bytes(frame), hdr)
    except GsoError as exc:
        assert isinstance(exc.reason, DropReason)


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(["tcp4", "tcp4vlan", "tcp4opts", "tcp6", "tcp6ext", "udp4", "udp6"]),
    size=st.integers(2, 5000),
    mss=st.integers(1, 1500),
    flags=st.sampled_from(["A", "PA", "FA", "CA", "FPAC", "UA"]),
    seq=st.integers(0, 0xFFFFFFFF),
    ip_id=st.integers(0, 0xFFFF),
    needs_csum=st.booleans(),
    salt=st.binary(min_size=2, max_size=2),
)
def test_segments_equal_the_per_segment_reference(
    *,
    kind: str,
    size: int,
    mss: int,
    flags: str,
    seq: int,
    ip_id: int,
    needs_csum: bool,
    salt: bytes,
) -> None:
    payload = salt + PAYLOAD[: size - 2]
    tcp = kind.startswith("tcp")
    if kind == "tcp6ext":
        frame = tcp6(payload, flags=flags, seq=seq, ext=IPv6ExtHdrHopByHop())
    elif kind == "tcp6":
        frame = tcp6(payload, flags=flags, seq=seq, options=OPTS)
    elif tcp:
        vlan = 9 if kind == "tcp4vlan" else None
        opts = OPTS if kind == "tcp4opts" else None
        frame = tcp4(payload, flags=flags, seq=seq, ip_id=ip_id, vlan=vlan, options=opts)
    else:
        frame = udp4(payload, ip_id=ip_id) if kind == "udp4" else udp6(payload)
    gso_type = 5 if not tcp else (4 if kind.startswith("tcp6") else 1)
    partial, start, offset = as_partial(frame)
    if tcp and not needs_csum:
        hdr = VirtioNetHdr(gso_type=gso_type, gso_size=mss)
        partial = frame
    else:
        hdr = VirtioNetHdr(1, gso_type, 0, mss, start, offset)
    if size <= mss or (not tcp and size > 128 * mss):
        return
    assert segment(partial, hdr) == reference_segments(partial, hdr)
    if kind in ("tcp4", "tcp4vlan", "tcp4opts"):
        req = TxRequest(
            checksum=ChecksumRequest(start, offset),
            segmentation=SegmentationRequest(GsoType.TCPV4, mss, fixed_id=True),
        )
        assert segment_request(as_partial(frame)[0], req) == reference_segments(
            as_partial(frame)[0], VirtioNetHdr(1, 1, 0, mss, start, offset), fixed_id=True
        )
