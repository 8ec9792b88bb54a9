"""Per-packet requests check their values when made; the builders; one error family."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.offload import (
    CapabilityError,
    ChecksumRequest,
    DigestAlgorithm,
    DigestRequest,
    GsoType,
    OffloadError,
    RequestError,
    SegmentationRequest,
    SelectionError,
    TxRequest,
    VirtioHdrError,
    VirtioNetHdr,
)
from netoffload.wire import EthernetRepr, EtherType, IpProtocol, MacAddress

ANY_INT = st.one_of(
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 0, 1, 0xFFFE, 0xFFFF, 0x10000, 2**32, 2**64, True, False]),
)
ANY_VALUE = st.one_of(ANY_INT, st.none(), st.text(max_size=3), st.floats(allow_nan=True))


def test_every_offload_error_has_one_base() -> None:
    for error in (CapabilityError, SelectionError, VirtioHdrError, RequestError):
        assert issubclass(error, OffloadError)


@settings(max_examples=500)
@given(ANY_INT, ANY_INT)
def test_checksum_request_takes_only_16_bit_offsets(start: int, offset: int) -> None:
    try:
        req = ChecksumRequest(start, offset)
    except RequestError:
        assert not (
            type(start) is int and type(offset) is int and 0 <= start <= 0xFFFF >= offset >= 0
        )
    else:
        assert 0 <= req.start <= 0xFFFF and 0 <= req.offset <= 0xFFFF


@settings(max_examples=500)
@given(ANY_VALUE, ANY_INT, ANY_INT, ANY_VALUE, ANY_VALUE)
def test_segmentation_request_raises_only_its_typed_error(
    kind: object, size: int, hdr_len: int, ecn: object, fixed_id: object
) -> None:
    try:
        req = SegmentationRequest(kind, size, hdr_len, ecn, fixed_id)  # type: ignore[arg-type]
    except RequestError:
        return
    assert req.gso_type in (GsoType.TCPV4, GsoType.TCPV6, GsoType.UDP_L4, GsoType.UDP)
    assert 1 <= req.size <= 0xFFFE and 0 <= req.hdr_len <= 0xFFFF


def _u(value: object, bits: int) -> bool:
    return type(value) is int and 0 <= value < 1 << bits


@settings(max_examples=300)
@given(ANY_VALUE, ANY_INT, ANY_INT, ANY_INT, ANY_INT)
def test_digest_request_raises_only_its_typed_error(
    algorithm: object, key: int, start: int, length: int, result: int
) -> None:
    valid = (
        isinstance(algorithm, DigestAlgorithm)
        and algorithm.value.bit_count() == 1
        and _u(key, 32)
        and all(_u(v, 16) for v in (start, length, result))
    )
    try:
        DigestRequest(algorithm, key, start, length, result)  # type: ignore[arg-type]
    except RequestError:
        assert not valid
    else:
        assert valid


@settings(max_examples=300)
@given(ANY_VALUE, ANY_VALUE, ANY_VALUE, ANY_VALUE)
def test_tx_request_raises_only_its_typed_error(
    checksum: object, header: object, sa: object, launch: object
) -> None:
    valid = (
        checksum is None
        and isinstance(header, bool)
        and (sa is None or _u(sa, 32))
        and (launch is None or _u(launch, 64))
    )
    try:
        TxRequest(
            checksum=checksum,  # type: ignore[arg-type]
            ipv4_header_checksum=header,  # type: ignore[arg-type]
            sa_handle=sa,  # type: ignore[arg-type]
            launch_time_ns=launch,  # type: ignore[arg-type]
            esp_seq=None if sa is None else 1,
        )
    except RequestError:
        assert not valid
    else:
        assert valid


@pytest.mark.parametrize(
    "make",
    [
        # Once: a negative start checksummed the previous frame's bytes in a batch.
        lambda: ChecksumRequest(-2, 16),
        lambda: ChecksumRequest(34, -1),
        lambda: ChecksumRequest(0x10000, 16),
        # Once: a gso_size of 70000 made transmit raise VirtioHdrError.
        lambda: SegmentationRequest(GsoType.TCPV4, 70000),
        lambda: SegmentationRequest(GsoType.TCPV4, 0),
        lambda: SegmentationRequest(GsoType.TCPV4, 0xFFFF),  # GSO_BY_FRAGS
        lambda: SegmentationRequest(GsoType.NONE, 1448),
        lambda: SegmentationRequest(2, 1448),  # type: ignore[arg-type]
        lambda: DigestRequest(DigestAlgorithm.HMAC_SHA256_128 | DigestAlgorithm.CRC32C, 0, 0, 0, 0),
        lambda: TxRequest(sa_handle=-1, esp_seq=1),
        lambda: TxRequest(sa_handle=1, esp_seq=0),
        lambda: TxRequest(sa_handle=1),  # no sequence number
        lambda: TxRequest(launch_time_ns=-5),
        lambda: TxRequest(checksum=(34, 16)),  # type: ignore[arg-type]
    ],
)
def test_bad_values_are_refused_when_made(make: object) -> None:
    with pytest.raises(RequestError):
        make()  # type: ignore[operator]


def test_largest_segment_size_is_accepted() -> None:
    assert SegmentationRequest(GsoType.UDP_L4, 0xFFFE).size == 0xFFFE


def test_builders_name_the_offsets_a_stack_knows() -> None:
    eth = EthernetRepr(MacAddress(b"\x02" * 6), MacAddress(b"\x02" * 6), EtherType.IPV4)
    l4 = eth.header_len + 20
    assert TxRequest.checksum_l4(l4_offset=l4, protocol=IpProtocol.UDP) == TxRequest(
        checksum=ChecksumRequest(34, 6)
    )
    tso = TxRequest.segment_l4(
        l4_offset=54, protocol=IpProtocol.TCP, ip_version=6, mss=1440, header_len=74, ecn=True
    )
    assert tso == TxRequest(
        checksum=ChecksumRequest(54, 16),
        segmentation=SegmentationRequest(GsoType.TCPV6, 1440, 74, ecn=True),
    )
    uso = TxRequest.segment_l4(l4_offset=34, protocol=IpProtocol.UDP, ip_version=4, mss=1472)
    assert uso.segmentation is not None and uso.segmentation.gso_type is GsoType.UDP_L4
    assert uso.checksum == ChecksumRequest(34, 6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"protocol": 1, "ip_version": 4, "mss": 1000},
        {"protocol": 6, "ip_version": 5, "mss": 1000},
        {"protocol": 6, "ip_version": 4, "mss": 0},
        {"protocol": 17, "ip_version": 4, "mss": 70000},
    ],
)
def test_builders_refuse_what_no_device_can_do(kwargs: dict[str, int]) -> None:
    with pytest.raises(RequestError):
        TxRequest.segment_l4(l4_offset=34, **kwargs)


def test_one_encoder_for_every_path() -> None:
    req = TxRequest.segment_l4(l4_offset=34, protocol=6, ip_version=4, mss=1448, header_len=66)
    hdr = VirtioNetHdr.from_tx_request(req)
    assert (hdr.flags, hdr.gso_type, hdr.hdr_len, hdr.gso_size) == (1, 1, 66, 1448)
    assert (hdr.csum_start, hdr.csum_offset) == (34, 16)


def test_bad_byte_order_is_a_virtio_error() -> None:
    with pytest.raises(VirtioHdrError, match="byte order"):
        VirtioNetHdr().pack(12, "middle")  # type: ignore[arg-type]
    with pytest.raises(VirtioHdrError, match="byte order"):
        VirtioNetHdr.unpack(bytes(12), 12, "middle")  # type: ignore[arg-type]


def test_a_header_no_request_can_hold_is_a_virtio_error() -> None:
    with pytest.raises(VirtioHdrError):
        VirtioNetHdr(flags=1, gso_type=1, gso_size=0, csum_start=34, csum_offset=16).to_tx_request()
    with pytest.raises(VirtioHdrError):
        VirtioNetHdr(gso_type=1, gso_size=0xFFFF).to_rx_info()
