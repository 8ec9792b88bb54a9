"""virtio_net_hdr validation: every rule Linux applies on a TAP write, and no stricter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.engine.validate import check_vnet_hdr, plan_vnet_hdr
from netoffload.offload.extension import GsoType
from netoffload.offload.stats import DropReason
from netoffload.offload.virtio import VirtioNetHdr
from tests.engine.builders import as_partial, tcp4, tcp6, udp4, udp6

NEEDS_CSUM = 1
TSO4 = VirtioNetHdr(
    flags=NEEDS_CSUM, gso_type=1, hdr_len=54, gso_size=1000, csum_start=34, csum_offset=16
)
BIG_TCP4, _, _ = as_partial(tcp4(bytes(3000)))
BIG_TCP6, _, _ = as_partial(tcp6(bytes(3000)))
BIG_UDP4, _, _ = as_partial(udp4(bytes(3000)))
BIG_UDP6, _, _ = as_partial(udp6(bytes(3000)))


def hdr(**fields: int) -> VirtioNetHdr:
    base = {
        "flags": NEEDS_CSUM,
        "gso_type": 1,
        "hdr_len": 54,
        "gso_size": 1000,
        "csum_start": 34,
        "csum_offset": 16,
    }
    base.update(fields)
    return VirtioNetHdr(**base)


def test_good_headers_pass() -> None:
    assert check_vnet_hdr(TSO4, BIG_TCP4) is None
    assert check_vnet_hdr(hdr(gso_type=4, csum_start=54), BIG_TCP6) is None
    assert check_vnet_hdr(hdr(gso_type=5, csum_offset=6), BIG_UDP4) is None
    assert check_vnet_hdr(hdr(gso_type=5, csum_offset=6, csum_start=54), BIG_UDP6) is None
    assert check_vnet_hdr(VirtioNetHdr(), b"\x00" * 14) is None


def test_a_short_last_segment_is_legal() -> None:
    assert check_vnet_hdr(hdr(gso_size=1400), BIG_TCP4) is None  # 1400 + 1400 + 200


def test_gso_without_needs_csum_is_legal_for_tcp() -> None:
    plan = plan_vnet_hdr(hdr(flags=0, csum_start=0, csum_offset=0), BIG_TCP4)
    assert plan.gso and plan.kind is GsoType.TCPV4


def test_ecn_bit_is_legal_for_tcp() -> None:
    assert check_vnet_hdr(hdr(gso_type=0x81), BIG_TCP4) is None


def test_small_packets_are_not_gso() -> None:
    # Linux: skb->len - p_off <= gso_size -> sent as one packet, no further checks.
    small, _, _ = as_partial(tcp6(bytes(100)))
    plan = plan_vnet_hdr(hdr(gso_type=1), small)  # TCPV4 on IPv6, but too small to matter
    assert not plan.gso


# -- tun.c ---------------------------------------------------------------------


def test_frame_shorter_than_ethernet() -> None:
    assert check_vnet_hdr(VirtioNetHdr(), b"\x00" * 13) is DropReason.MALFORMED_FRAME


def test_hdr_len_beyond_frame() -> None:
    assert check_vnet_hdr(hdr(hdr_len=len(BIG_TCP4) + 1), BIG_TCP4) is DropReason.BAD_VNET_HDR


def test_hdr_len_shorter_than_ethernet() -> None:
    assert check_vnet_hdr(VirtioNetHdr(hdr_len=10), BIG_TCP4) is DropReason.BAD_VNET_HDR


def test_checksum_field_beyond_frame() -> None:
    frame = BIG_TCP4[:60]
    h = VirtioNetHdr(flags=NEEDS_CSUM, csum_start=50, csum_offset=16)
    assert check_vnet_hdr(h, frame) is DropReason.CSUM_OFFSETS_INVALID


# -- virtio_net_hdr_to_skb ---------------------------------------------------------


@pytest.mark.parametrize("gso_type", [2, 6, 7, 0x80, 0x10 | 1, 0xFF])
def test_unknown_gso_type(gso_type: int) -> None:
    assert check_vnet_hdr(hdr(gso_type=gso_type), BIG_TCP4) is DropReason.BAD_VNET_HDR


def test_gso_size_zero() -> None:
    assert check_vnet_hdr(hdr(gso_size=0), BIG_TCP4) is DropReason.GSO_SIZE_INVALID


def test_gso_size_gso_by_frags() -> None:
    assert check_vnet_hdr(hdr(gso_size=0xFFFF), BIG_TCP4) is DropReason.GSO_SIZE_INVALID


def test_csum_start_below_network_minimum() -> None:
    assert check_vnet_hdr(hdr(csum_start=19), BIG_TCP4) is DropReason.CSUM_OFFSETS_INVALID
    h6 = hdr(gso_type=4, csum_start=39)
    assert check_vnet_hdr(h6, BIG_TCP6) is DropReason.CSUM_OFFSETS_INVALID


def test_csum_needs_room_for_the_l4_header() -> None:
    frame = BIG_TCP4[:50]
    h = hdr(gso_type=1, csum_start=34, csum_offset=6, hdr_len=0)
    assert check_vnet_hdr(h, frame) is DropReason.CSUM_OFFSETS_INVALID


def test_gso_without_csum_needs_minimal_headers() -> None:
    h = VirtioNetHdr(gso_type=4, gso_size=10)
    assert check_vnet_hdr(h, b"\x00" * 59) is DropReason.MALFORMED_FRAME


def test_udp_l4_requires_needs_csum() -> None:
    h = hdr(flags=0, gso_type=5, csum_start=0, csum_offset=0)
    assert check_vnet_hdr(h, BIG_UDP4) is DropReason.BAD_VNET_HDR


def test_udp_l4_requires_offset_6() -> None:
    assert check_vnet_hdr(hdr(gso_type=5), BIG_UDP4) is DropReason.CSUM_OFFSETS_INVALID


def test_udp_l4_at_most_128_segments() -> None:
    frame, _, _ = as_partial(udp4(bytes(129 * 10)))
    ok, _, _ = as_partial(udp4(bytes(128 * 10)))
    assert check_vnet_hdr(hdr(gso_type=5, csum_offset=6, gso_size=10), ok) is None
    bad = check_vnet_hdr(hdr(gso_type=5, csum_offset=6, gso_size=10), frame)
    assert bad is DropReason.TOO_MANY_SEGMENTS


def test_udp_l4_refuses_ecn() -> None:
    h = hdr(gso_type=0x85, csum_offset=6)
    assert check_vnet_hdr(h, BIG_UDP4) is DropReason.BAD_VNET_HDR


def test_tcp_requires_offset_16() -> None:
    assert check_vnet_hdr(hdr(csum_offset=6), BIG_TCP4) is DropReason.CSUM_OFFSETS_INVALID


# -- what segmentation re-checks ---------------------------------------------------


def test_tcpv4_on_ipv6_is_a_mismatch() -> None:
    assert check_vnet_hdr(hdr(csum_start=54), BIG_TCP6) is DropReason.GSO_TYPE_MISMATCH


def test_tcp_gso_on_udp_is_a_mismatch() -> None:
    assert check_vnet_hdr(hdr(), BIG_UDP4) is DropReason.GSO_TYPE_MISMATCH


def test_udp_gso_on_tcp_is_a_mismatch() -> None:
    assert check_vnet_hdr(hdr(gso_type=5, csum_offset=6), BIG_TCP4) is (
        DropReason.GSO_TYPE_MISMATCH
    )


def test_csum_start_must_be_the_l4_header() -> None:
    frame, start, _ = as_partial(tcp4(bytes(3000), ip_options=b"\x01\x01\x01\x00"))
    assert start == 38
    assert check_vnet_hdr(hdr(csum_start=34), frame) is DropReason.CSUM_OFFSETS_INVALID
    assert check_vnet_hdr(hdr(csum_start=38), frame) is None


def test_tcp_payload_not_longer_than_mss_is_refused_after_dodgy_marking() -> None:
    # 12 option bytes make the kernel's "len - (csum_start + 20) > gso_size" true although
    # the real payload is not longer than gso_size: tcp_gso_segment then refuses it.
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    frame, _, _ = as_partial(tcp4(bytes(995), options=opts))
    assert check_vnet_hdr(hdr(gso_size=1000), frame) is DropReason.GSO_SIZE_INVALID
    assert check_vnet_hdr(hdr(gso_size=1007), frame) is None  # now simply not GSO


def test_non_ip_gso_is_malformed() -> None:
    frame = b"\x02" * 12 + b"\x08\x06" + bytes(3000)
    h = hdr(flags=0, csum_start=0, csum_offset=0)
    assert check_vnet_hdr(h, frame) is DropReason.MALFORMED_FRAME


headers = st.builds(
    VirtioNetHdr,
    flags=st.integers(0, 255),
    gso_type=st.integers(0, 255),
    hdr_len=st.integers(0, 0xFFFF),
    gso_size=st.integers(0, 0xFFFF),
    csum_start=st.integers(0, 0xFFFF),
    csum_offset=st.integers(0, 0xFFFF),
)
small_headers = st.builds(
    VirtioNetHdr,
    flags=st.sampled_from([0, 1, 3]),
    gso_type=st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x84]),
    hdr_len=st.integers(0, 80),
    gso_size=st.integers(0, 3100),
    csum_start=st.integers(0, 80),
    csum_offset=st.integers(0, 20),
)
frames = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([BIG_TCP4, BIG_TCP6, BIG_UDP4, BIG_UDP6]),
    st.tuples(st.sampled_from([BIG_TCP4, BIG_UDP6]), st.integers(0, 3100)).map(
        lambda t: t[0][: t[1]]
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(headers, small_headers), frames)
def test_garbage_never_raises(h: VirtioNetHdr, frame: bytes) -> None:
    result = check_vnet_hdr(h, frame)
    assert result is None or isinstance(result, DropReason)
