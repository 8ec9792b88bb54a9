"""The connection's option parser against the project's (``netoffload.wire.tcp``)."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from netoffload.stack.tcp.options import (
    encode_sack,
    encode_syn,
    encode_timestamps,
    parse_segment_options,
    timestamps_only,
)
from netoffload.wire.error import WireError
from netoffload.wire.tcp import (
    TcpMss,
    TcpNoOperation,
    TcpSack,
    TcpSackPermitted,
    TcpTimestamps,
    TcpWindowScale,
    options_bytes,
    parse_options,
)


def reference(raw: bytes) -> dict[str, object] | None:
    """What ``parse_options`` says, reduced to the fields a connection uses (last wins)."""
    try:
        parsed = parse_options(raw)
    except WireError:
        return None
    out: dict[str, object] = {
        "mss": None,
        "wscale": None,
        "sack_permitted": False,
        "tsval": None,
        "tsecr": None,
        "sack": None,
    }
    for opt in parsed:
        if isinstance(opt, TcpMss):
            out["mss"] = opt.mss_bytes
        elif isinstance(opt, TcpWindowScale):
            out["wscale"] = opt.shift
        elif isinstance(opt, TcpSackPermitted):
            out["sack_permitted"] = True
        elif isinstance(opt, TcpTimestamps):
            out["tsval"], out["tsecr"] = opt.tsval, opt.tsecr
        elif isinstance(opt, TcpSack):
            out["sack"] = tuple(opt.blocks)
    return out


def ours(raw: bytes) -> dict[str, object] | None:
    parsed = parse_segment_options(raw)
    if parsed is None:
        return None
    return {
        "mss": parsed.mss,
        "wscale": parsed.wscale,
        "sack_permitted": parsed.sack_permitted,
        "tsval": parsed.tsval,
        "tsecr": parsed.tsecr,
        "sack": parsed.sack,
    }


u32 = st.integers(0, 0xFFFFFFFF)
known_option = st.one_of(
    st.builds(lambda v: bytes((2, 4)) + v.to_bytes(2, "big"), st.integers(0, 0xFFFF)),
    st.builds(lambda v: bytes((3, 3, v)), st.integers(0, 255)),
    st.just(b"\x04\x02"),
    st.builds(lambda a, b: b"\x08\x0a" + a.to_bytes(4, "big") + b.to_bytes(4, "big"), u32, u32),
    st.builds(
        lambda blocks: (
            bytes((5, 2 + 8 * len(blocks)))
            + b"".join(a.to_bytes(4, "big") + b.to_bytes(4, "big") for a, b in blocks)
        ),
        st.lists(st.tuples(u32, u32), min_size=1, max_size=4),
    ),
    st.just(b"\x01"),
    st.just(b"\x00"),
    st.builds(lambda k, d: bytes((k, 2 + len(d))) + d, st.integers(9, 255), st.binary(max_size=6)),
)
# Well-formed lists, and arbitrary bytes (mostly malformed), both within a 40-byte header.
well_formed = st.lists(known_option, max_size=8).map(b"".join).filter(lambda b: len(b) <= 40)
anything = st.binary(max_size=40)


@settings(max_examples=1500)
@given(st.one_of(well_formed, anything))
@example(b"\x01\x01\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x02")
@example(b"\x01\x01\x08\x0a\x00\x00\x00\x01\x00\x00\x00")  # 11 bytes: truncated
@example(b"\x01\x01\x08\x09\x00\x00\x00\x01\x00\x00\x00\x02")  # wrong length
@example(b"\x05\x0a" + bytes(8))  # one SACK block
@example(b"\x05\x0b" + bytes(9))  # a SACK of the wrong size
@example(b"\x02")  # kind without a length
@example(b"\xfe\x01")  # length below 2
@example(b"\x00\x02\x04")  # after EOL, anything goes
def test_parser_agrees_with_wire_parse_options(raw: bytes) -> None:
    assert ours(raw) == reference(raw)


@settings(max_examples=1000)
@given(st.binary(min_size=12, max_size=12) | st.binary(max_size=40), u32, u32)
def test_timestamps_fast_path_agrees(raw: bytes, tsval: int, tsecr: int) -> None:
    for candidate in (raw, b"\x01\x01\x08\x0a" + raw[4:12], encode_timestamps(tsval, tsecr)):
        fast = timestamps_only(candidate)
        ref = reference(candidate)
        if fast is not None:
            # Exactly NOP, NOP, timestamps: the project's parser must say the same.
            assert len(candidate) == 12
            assert ref is not None and (ref["tsval"], ref["tsecr"]) == fast
            assert parse_options(candidate) == (
                TcpNoOperation(),
                TcpNoOperation(),
                TcpTimestamps(*fast),
            )
        elif len(candidate) == 12 and candidate[:4] == b"\x01\x01\x08\x0a":
            raise AssertionError("the fast path missed a timestamp-only option area")


@given(u32, u32)
def test_encoded_timestamps_parse_back(tsval: int, tsecr: int) -> None:
    raw = encode_timestamps(tsval, tsecr)
    assert parse_options(raw) == (TcpNoOperation(), TcpNoOperation(), TcpTimestamps(tsval, tsecr))


@given(st.lists(st.tuples(u32, u32), min_size=1, max_size=4))
def test_encoded_sack_parses_back(blocks: list[tuple[int, int]]) -> None:
    raw = encode_sack(blocks)
    assert len(raw) % 4 == 0
    assert parse_options(raw) == (TcpNoOperation(), TcpNoOperation(), TcpSack(tuple(blocks)))


@given(
    st.integers(88, 0xFFFF),
    st.none() | st.integers(0, 14),
    st.booleans(),
    st.none() | st.tuples(u32, u32),
)
def test_encoded_syn_options_parse_back(
    mss: int, wscale: int | None, sack: bool, ts: tuple[int, int] | None
) -> None:
    raw = encode_syn(mss, wscale, sack, ts)
    raw += bytes(-len(raw) % 4)
    assert len(raw) <= 40
    ref = reference(raw)
    assert ref is not None
    assert ref["mss"] == mss and ref["wscale"] == wscale and ref["sack_permitted"] == sack
    assert (ref["tsval"], ref["tsecr"]) == (ts if ts is not None else (None, None))


def test_syn_layout_is_linux_layout() -> None:
    # The SYN of tests/wire/test_tcp.py (a Linux 6.18 capture): MSS 1460, SACK permitted,
    # timestamps, NOP, wscale 10 -- byte for byte the same layout.
    captured = bytes.fromhex("020405b40402080a670cf0ff000000000103030a")
    assert encode_syn(1460, 10, True, (0x670CF0FF, 0)) == captured
    assert options_bytes(parse_options(captured)) == captured
