"""VirtioNetHdr: layout, round trips, conversions to and from the extension."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.offload import (
    GSO_ECN,
    ChecksumRequest,
    ChecksumStatus,
    DigestRequest,
    GsoType,
    HashReport,
    RxInfo,
    SegmentationRequest,
    TxRequest,
    VirtioFlags,
    VirtioHdrError,
    VirtioNetHdr,
)
from netoffload.offload.caps import DigestAlgorithm

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)

HEADERS = st.builds(VirtioNetHdr, u8, u8, u16, u16, u16, u16, u16, st.integers(0, 0xFFFFFFFF), u16)

# struct virtio_net_hdr_v1 for a TCPv4 super-packet as a TAP reader sees it:
# flags NEEDS_CSUM, gso_type TCPV4, hdr_len 66, gso_size 1448, csum_start 34
# (14 Ethernet + 20 IPv4), csum_offset 16, num_buffers 1; little-endian.
TCPV4_HDR = bytes.fromhex("01 01 4200 a805 2200 1000 0100".replace(" ", ""))


def test_deconstruct() -> None:
    hdr = VirtioNetHdr.unpack(TCPV4_HDR)
    assert hdr == VirtioNetHdr(1, 1, 66, 1448, 34, 16, 1)
    assert hdr.needs_csum and not hdr.data_valid and not hdr.ecn
    assert hdr.gso_kind is GsoType.TCPV4


def test_construct() -> None:
    assert VirtioNetHdr(1, 1, 66, 1448, 34, 16, 1).pack() == TCPV4_HDR


def test_sizes_and_byte_order() -> None:
    hdr = VirtioNetHdr(2, 5, 1, 2, 3, 4, 5, 0xDEADBEEF, 2)
    assert len(hdr.pack(10)) == 10
    assert hdr.pack(10) == hdr.pack(12)[:10] == hdr.pack(20)[:10]
    assert hdr.pack(12, "big")[2:4] == b"\x00\x01"
    assert hdr.pack(20)[12:16] == bytes.fromhex("efbeadde")
    legacy = VirtioNetHdr.unpack(hdr.pack(10), 10)
    assert legacy == VirtioNetHdr(2, 5, 1, 2, 3, 4)


@settings(max_examples=500)
@given(HEADERS, st.sampled_from([10, 12, 20]), st.sampled_from(["little", "big"]))
def test_round_trip(hdr: VirtioNetHdr, size: int, order: str) -> None:
    packed = hdr.pack(size, order)  # type: ignore[arg-type]
    back = VirtioNetHdr.unpack(packed, size, order)  # type: ignore[arg-type]
    assert back.pack(size, order) == packed  # type: ignore[arg-type]
    if size == 20:
        assert back == hdr


@given(HEADERS, st.integers(0, 8))
def test_pack_into_at_offset(hdr: VirtioNetHdr, offset: int) -> None:
    buf = bytearray(offset + 20)
    hdr.pack_into(buf, offset, 20)
    assert VirtioNetHdr.unpack(buf, 20, offset=offset) == hdr


@settings(max_examples=300)
@given(st.binary(max_size=24), st.sampled_from([10, 12, 20]))
def test_short_or_random_input(data: bytes, size: int) -> None:
    if len(data) < size:
        with pytest.raises(VirtioHdrError, match="needs"):
            VirtioNetHdr.unpack(data, size)
    else:
        # Every byte comes back but the two padding bytes of the hash layout.
        expected = data[:size] if size < 20 else data[:18] + b"\0\0"
        assert VirtioNetHdr.unpack(data, size).pack(size) == expected


def test_bad_size_and_range() -> None:
    with pytest.raises(VirtioHdrError, match="10, 12 or 20"):
        VirtioNetHdr().pack(11)
    with pytest.raises(VirtioHdrError, match="gso_size"):
        VirtioNetHdr(gso_size=70000)
    with pytest.raises(VirtioHdrError, match="no room"):
        VirtioNetHdr().pack_into(bytearray(5))


def test_unknown_gso_type_survives_unpack() -> None:
    hdr = VirtioNetHdr.unpack(bytes([0, 9]) + bytes(10))
    assert hdr.gso_kind is None
    with pytest.raises(VirtioHdrError, match="unknown gso_type"):
        hdr.to_tx_request()


TX_REQUESTS = st.builds(
    TxRequest,
    checksum=st.none() | st.builds(ChecksumRequest, u16, u16),
    segmentation=st.none()
    | st.builds(
        SegmentationRequest,
        st.sampled_from([GsoType.TCPV4, GsoType.TCPV6, GsoType.UDP_L4]),
        st.integers(1, 0xFFFE),
        u16,
        st.booleans(),
    ),
)


@given(TX_REQUESTS)
def test_tx_request_round_trip(request: TxRequest) -> None:
    hdr = VirtioNetHdr.from_tx_request(request)
    assert hdr.to_tx_request() == request
    assert VirtioNetHdr.unpack(hdr.pack()).to_tx_request() == request


def test_tx_request_fields() -> None:
    req = TxRequest(
        checksum=ChecksumRequest(34, 16),
        segmentation=SegmentationRequest(GsoType.TCPV6, 1440, 74, ecn=True),
    )
    hdr = VirtioNetHdr.from_tx_request(req)
    assert hdr.flags == VirtioFlags.NEEDS_CSUM
    assert hdr.gso_type == GsoType.TCPV6 | GSO_ECN
    assert (hdr.gso_size, hdr.hdr_len, hdr.csum_start, hdr.csum_offset) == (1440, 74, 34, 16)


def test_tasks_without_a_virtio_form_are_refused() -> None:
    digest = DigestRequest(DigestAlgorithm.CRC32C, 0, 0, 10, 10)
    for req in (
        TxRequest(sa_handle=7, esp_seq=1),
        TxRequest(digest=digest),
        TxRequest(launch_time_ns=1),
    ):
        with pytest.raises(VirtioHdrError, match="cannot carry"):
            VirtioNetHdr.from_tx_request(req)


def test_rx_info_from_header() -> None:
    info = VirtioNetHdr(VirtioFlags.DATA_VALID).to_rx_info()
    assert info.l4 is ChecksumStatus.VERIFIED and info.assembled is None
    super_packet = VirtioNetHdr(1, GsoType.UDP_L4, 42, 1000, 34, 6, 1, 0x1234, 3)
    info = super_packet.to_rx_info(segments=5)
    assert info.checksum_partial == ChecksumRequest(34, 6)
    assert info.assembled == SegmentationRequest(GsoType.UDP_L4, 1000, 42)
    assert info.segments == 5
    assert (info.flow_hash, info.hash_report) == (0x1234, HashReport.UDPV4)


@given(
    st.builds(
        RxInfo,
        l4=st.sampled_from([ChecksumStatus.NOT_CHECKED, ChecksumStatus.VERIFIED]),
        checksum_partial=st.none() | st.builds(ChecksumRequest, u16, u16),
        assembled=st.none()
        | st.builds(
            SegmentationRequest,
            st.sampled_from([GsoType.TCPV4, GsoType.TCPV6, GsoType.UDP_L4]),
            st.integers(1, 0xFFFE),
            u16,
            st.booleans(),
        ),
        flow_hash=st.none() | st.integers(0, 0xFFFFFFFF),
        hash_report=st.sampled_from(list(HashReport)[1:]),
    )
)
def test_rx_info_round_trip(info: RxInfo) -> None:
    back = VirtioNetHdr.from_rx_info(info).to_rx_info()
    # NEEDS_CSUM wins over DATA_VALID in the one flags byte, as in Linux, and a partial
    # checksum from a local sender counts as verified (Linux skb_csum_unnecessary).
    expected_l4 = ChecksumStatus.VERIFIED if info.checksum_partial else info.l4
    assert back.l4 is expected_l4
    assert back.checksum_partial == info.checksum_partial
    assert back.assembled == info.assembled
    assert back.flow_hash == info.flow_hash
