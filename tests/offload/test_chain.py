"""Capability records and the binary chain: round trips and hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.offload import (
    CapabilityError,
    ChecksumCaps,
    ChecksumFlags,
    ClassificationCaps,
    Clocks,
    CryptoAlgorithm,
    DecryptCaps,
    DigestAlgorithm,
    DigestCaps,
    DosFilterCaps,
    DosRuleKinds,
    EncryptCaps,
    IpVersions,
    KeySizes,
    RssHashTypes,
    Task,
    TcpAssemblyCaps,
    TcpSegmentationCaps,
    TxSchedulingCaps,
    UdpAssemblyCaps,
    UdpSegmentationCaps,
    UnknownCapability,
    decode_capabilities,
    encode_capabilities,
)
from netoffload.offload.caps import RECORD_TYPES
from netoffload.offload.chain import HEADER, MAX_RECORDS

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def flags(kind: type) -> st.SearchStrategy:  # type: ignore[type-arg]
    members = [m for m in kind if m.value]
    return st.lists(st.sampled_from(members), unique=True).map(
        lambda ms: kind(sum(m.value for m in ms))
    )


RECORDS = st.one_of(
    st.builds(ChecksumCaps, flags(ChecksumFlags), flags(ChecksumFlags)),
    *[
        st.builds(cls, u32, u16, u16, flags(IpVersions))
        for cls in (TcpSegmentationCaps, UdpSegmentationCaps, TcpAssemblyCaps, UdpAssemblyCaps)
    ],
    *[
        st.builds(cls, flags(CryptoAlgorithm), flags(KeySizes), u32)
        for cls in (EncryptCaps, DecryptCaps)
    ],
    st.builds(DigestCaps, flags(DigestAlgorithm), u32),
    st.builds(ClassificationCaps, u32, u16, flags(RssHashTypes)),
    st.builds(DosFilterCaps, flags(DosRuleKinds), u32),
    st.builds(TxSchedulingCaps, flags(Clocks), u32, st.integers(0, 2**64 - 1)),
    st.builds(UnknownCapability, st.integers(12, 0xFFFFFFFF), st.binary(max_size=64)),
)


def unique_by_task(records: list) -> list:  # type: ignore[type-arg]
    seen: set[int] = set()
    out = []
    for r in records:
        key = r.task_id if isinstance(r, UnknownCapability) else int(r.task)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


DEFAULT_CHAIN = [
    ChecksumCaps(ChecksumFlags.IPV4_HEADER | ChecksumFlags.TCP_IPV4, ChecksumFlags.TCP_IPV4),
    TcpSegmentationCaps(65536, 2, 0xFFFF, IpVersions.IPV4 | IpVersions.IPV6),
]


def test_every_task_has_a_record_type() -> None:
    assert set(RECORD_TYPES) == set(Task)


def test_construct() -> None:
    # Hand-assembled from the layout in chain.py's docstring: two records, the
    # first padded to a 4-byte boundary, the second last (next offset 0).
    expected = bytes.fromhex(
        "10000000"
        "01000000"
        "18000000"
        "08000000"  # size 16, checksum, next 24, buf 8
        "03000000"
        "02000000"  # tx: ipv4 header + tcp/ipv4; rx: tcp/ipv4
        "10000000"
        "05000000"
        "00000000"
        "0c000000"  # size 16, tcp seg, last, buf 12
        "00000100"
        "0200"
        "ffff"
        "03000000"  # 64 KiB, min 2, max 65535, v4+v6
    )
    assert encode_capabilities(DEFAULT_CHAIN) == expected


def test_deconstruct() -> None:
    assert decode_capabilities(encode_capabilities(DEFAULT_CHAIN)) == DEFAULT_CHAIN


@settings(max_examples=300)
@given(st.lists(RECORDS, max_size=14).map(unique_by_task))
def test_round_trip(records: list) -> None:  # type: ignore[type-arg]
    assert decode_capabilities(encode_capabilities(records)) == records


def test_empty_chain() -> None:
    assert encode_capabilities([]) == b""
    assert decode_capabilities(b"") == []


def test_newer_header_size_is_skipped() -> None:
    # A future record version with a 24-byte header: the reader skips the 8 new bytes.
    record = ChecksumCaps(ChecksumFlags.UDP_IPV6, ChecksumFlags.NONE)
    buf = record.encode_buffer()
    data = struct.pack("<IIII", 24, Task.CHECKSUM, 0, len(buf)) + b"\xee" * 8 + buf
    assert decode_capabilities(data) == [record]


def test_longer_task_buffer_is_accepted() -> None:
    record = DigestCaps(DigestAlgorithm.CRC32C, 4)
    buf = record.encode_buffer() + b"future fields"
    data = HEADER.pack(16, Task.DIGEST, 0, len(buf)) + buf
    assert decode_capabilities(data) == [record]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x10\x00\x00", "truncated header"),
        (HEADER.pack(0, 1, 0, 0), "zero size"),
        (HEADER.pack(8, 1, 0, 0), "below 16"),
        (HEADER.pack(16, 1, 0, 8) + b"\x00" * 4, "past the chain"),
        (HEADER.pack(16, 1, 0, 4) + b"\x00" * 4, "needs 8"),
        (HEADER.pack(16, 1, 24, 8) + b"\x00" * 8, "past the end"),
        (HEADER.pack(16, 1, 8, 8) + b"\x00" * 16, "overlaps"),
        (HEADER.pack(16, 1, 0, 8) + b"\x00" * 8 + b"junk" * 4, "after the last record"),
        (HEADER.pack(16, 1, 0, 0x10000), "too long"),
    ],
)
def test_malformed_chain(data: bytes, message: str) -> None:
    with pytest.raises(CapabilityError, match=message):
        decode_capabilities(data)


def test_duplicate_task_is_rejected() -> None:
    one = encode_capabilities([DEFAULT_CHAIN[0]])
    twice = bytearray(one + one)
    struct.pack_into("<I", twice, 8, len(one))
    with pytest.raises(CapabilityError, match="twice"):
        decode_capabilities(bytes(twice))
    with pytest.raises(CapabilityError, match="one record per task"):
        encode_capabilities([DEFAULT_CHAIN[0], DEFAULT_CHAIN[0]])


def test_self_loop_cannot_hang() -> None:
    # next_offset 0 means "last", so a record can only point forward: a chain
    # that claims to loop back is an overlap error, found in one step.
    data = HEADER.pack(16, 1, 1, 8) + b"\x00" * 8
    with pytest.raises(CapabilityError, match="overlaps"):
        decode_capabilities(data)


def test_too_many_records() -> None:
    records = [UnknownCapability(100 + i, b"") for i in range(MAX_RECORDS + 1)]
    with pytest.raises(CapabilityError):
        encode_capabilities(records)
    body = b"".join(HEADER.pack(16, 100 + i, 16, 0) for i in range(MAX_RECORDS + 1))
    body += HEADER.pack(16, 999, 0, 0)
    with pytest.raises(CapabilityError, match="more than"):
        decode_capabilities(body)


def test_field_out_of_range_is_a_capability_error() -> None:
    with pytest.raises(CapabilityError):
        TcpSegmentationCaps(max_size_bytes=2**32).encode_buffer()


def decodes_or_rejects(data: bytes) -> None:
    """Either a clear CapabilityError, or records that survive a re-encode."""
    try:
        records = decode_capabilities(data)
    except CapabilityError as exc:
        assert str(exc)
        return
    assert decode_capabilities(encode_capabilities(records)) == records


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_capability_error(data: bytes) -> None:
    decodes_or_rejects(data)


@settings(max_examples=500)
@given(
    st.lists(RECORDS, min_size=1, max_size=6).map(unique_by_task),
    st.data(),
)
def test_corrupted_chain_raises_only_capability_error(records: list, data: st.DataObject) -> None:  # type: ignore[type-arg]
    encoded = bytearray(encode_capabilities(records))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(encoded) - 1))
        encoded[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    for candidate in (bytes(encoded), bytes(encoded[:cut])):
        decodes_or_rejects(candidate)


def test_params_are_json_ready() -> None:
    params = ChecksumCaps(ChecksumFlags.TCP_IPV6, ChecksumFlags.NONE).params()
    assert params == {"tx": ["tcp_ipv6"], "rx": []}
    seg = TcpSegmentationCaps(versions=IpVersions.IPV4 | IpVersions.ECN).params()
    assert seg["versions"] == ["ipv4", "ecn"]
