"""``segment_batch`` against one-packet segmentation, the per-segment reference and scapy.

Every input of a batch must come out exactly as ``segment`` makes it alone
(or with the same drop reason), whatever else is in the batch.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from netoffload.engine.gso import GsoError, SegmentBatch, segment, segment_batch
from netoffload.engine.validate import VnetHdrRejected, plan_vnet_hdr
from netoffload.offload.stats import DropReason
from netoffload.offload.virtio import VirtioNetHdr
from tests.engine.builders import as_partial, checksums_ok
from tests.engine.gso_reference import reference_segments
from tests.engine.segments import Seg, build

_GSO_TYPE = {"tcp4": 1, "tcp6": 4, "udp4": 5, "udp6": 5}


def super_packet(
    seg: Seg, mss: int, *, needs_csum: bool = True, gso_type: int | None = None
) -> tuple[bytes, VirtioNetHdr]:
    """``seg`` as a GSO super-packet of ``mss``-byte segments, as a stack hands it over."""
    frame = build(seg)
    kind = _GSO_TYPE[seg.kind] if gso_type is None else gso_type
    if needs_csum or seg.kind.startswith("udp"):
        partial, start, offset = as_partial(frame)
        return partial, VirtioNetHdr(1, kind, 0, mss, start, offset)
    return frame, VirtioNetHdr(0, kind, 0, mss)


def plans_of(batch: list[tuple[bytes, VirtioNetHdr]]) -> list[Any]:
    out: list[Any] = []
    for frame, hdr in batch:
        try:
            out.append(plan_vnet_hdr(hdr, frame))
        except VnetHdrRejected as exc:
            out.append(exc.reason)
    return out


def alone(frame: bytes, hdr: VirtioNetHdr, fixed: bool) -> list[bytes] | DropReason:
    """The input segmented by itself: ``segment`` (or the reference, for a fixed ID)."""
    try:
        segs = segment(frame, hdr)
    except GsoError as exc:
        return exc.reason
    if fixed and len(segs) > 1:
        if not Ether(frame)[IP].flags.DF:
            return DropReason.BAD_VNET_HDR
        return reference_segments(frame, hdr, fixed_id=True)
    return segs


def check(
    batch: list[tuple[bytes, VirtioNetHdr]],
    fixed: list[bool] | None = None,
    headroom: int = 0,
) -> SegmentBatch:
    fixed = fixed or [False] * len(batch)
    out = segment_batch([f for f, _ in batch], plans_of(batch), fixed_id=fixed, headroom=headroom)
    assert len(out) == len(batch)
    for i, ((frame, hdr), fix) in enumerate(zip(batch, fixed, strict=True)):
        expected = alone(frame, hdr, fix)
        if isinstance(expected, DropReason):
            assert out.errors[i] is expected, i
            assert out.count(i) == 0 and out.segments(i) == []
        else:
            assert out.errors[i] is None, i
            assert [bytes(s) for s in out.segments(i)] == expected, i
            assert out.count(i) == len(expected)
    if headroom >= 4:
        out.write_length_prefixes()
        framed = b"".join(len(s).to_bytes(4, "little") + bytes(s) for s in out.all_segments())
        assert b"".join(out.wire_chunks()) == framed
    return out


def test_sixteen_64k_super_packets_in_one_matrix() -> None:
    batch = [
        super_packet(Seg(flow=i, seq=i * 99991, size=45 * 1448, ip_id=i * 45, timestamp=3), 1448)
        for i in range(16)
    ]
    out = check(batch, headroom=4)
    assert out.matrix.shape == (720, 4 + 1514) and out.rows == 720
    segs = out.segments(3)
    assert all(checksums_ok(bytes(s)) for s in segs[::11])
    p = Ether(bytes(segs[1]))
    assert p[TCP].seq == (3 * 99991 + 1448) & 0xFFFFFFFF and p[IP].id == 3 * 45 + 1
    # Equal segments run into each other: one span for the whole batch.
    assert len(out.wire_chunks()) == 1


def test_short_last_segments_end_their_spans() -> None:
    batch = [super_packet(Seg(flow=i, size=10 * 1448 + 100 * i + 1), 1448) for i in range(4)]
    out = check(batch, headroom=4)
    assert len(out.wire_chunks()) == 4


def test_bad_inputs_cost_only_themselves() -> None:
    good = super_packet(Seg(size=5000), 1000)
    no_df = super_packet(Seg(size=5000, df=False), 1000)
    ufo = super_packet(Seg(kind="udp4", size=3000), 1000, gso_type=3)
    small = super_packet(Seg(size=500), 1000)  # sent whole, its checksum filled
    garbage = (b"\x00" * 10, VirtioNetHdr())
    wrong_type = super_packet(Seg(kind="tcp6", size=3000), 1000, gso_type=1)
    batch = [good, no_df, ufo, small, garbage, wrong_type, good]
    fixed = [False, True, False, False, False, False, True]
    out = check(batch, fixed, headroom=4)
    assert out.errors == [
        None,
        DropReason.BAD_VNET_HDR,
        DropReason.GSO_UNSUPPORTED,
        None,
        DropReason.MALFORMED_FRAME,
        DropReason.GSO_TYPE_MISMATCH,
        None,
    ]
    assert [out.count(i) for i in range(len(batch))] == [5, 0, 0, 1, 0, 0, 5]
    assert bytes(out.segments(3)[0]) == build(Seg(size=500))
    assert {Ether(bytes(s))[IP].id for s in out.segments(6)} == {1}


def test_a_plan_for_another_frame_does_not_raise() -> None:
    frame, hdr = super_packet(Seg(size=5000), 1000)
    plan = plan_vnet_hdr(hdr, frame)
    # Shorter than the headers the plan names, the right one, nothing, more than planned.
    out = segment_batch([frame[:50], frame, b"", frame + bytes(3000)], [plan] * 4)
    assert out.errors[:3] == [DropReason.MALFORMED_FRAME, None, DropReason.MALFORMED_FRAME]
    assert out.count(1) == 5 and out.count(3) == 8
    with pytest.raises(ValueError, match="headroom"):
        segment_batch([frame], [plan], headroom=3)


_KINDS = ["tcp4", "tcp4", "tcp4vlan", "tcp4opts", "tcp6", "tcp6ext", "udp4", "udp6"]


@st.composite
def _input(draw: st.DrawFn) -> tuple[tuple[bytes, VirtioNetHdr], bool]:
    kind = draw(st.sampled_from(_KINDS))
    mss = draw(st.sampled_from([1448, 1448, 1000, 536, 99, 1]))
    size = draw(st.integers(1, min(65000, 40 * mss + 50)))
    base = kind[:4]
    seg = Seg(
        kind=base,
        size=size,
        seq=draw(st.integers(0, 0xFFFFFFFF)),
        ip_id=draw(st.integers(0, 0xFFFF)),
        flags=draw(st.sampled_from([0x10, 0x18, 0x11, 0x90, 0x99, 0x30])),
        df=draw(st.sampled_from([True, True, False])),
        vlan=5 if kind == "tcp4vlan" else None,
        timestamp=9 if kind == "tcp4opts" else draw(st.sampled_from([None, None, 4])),
        hop_by_hop=kind == "tcp6ext",
        flow=draw(st.integers(0, 3)),
    )
    if base.startswith("udp") and size > 128 * mss:
        seg = Seg(kind=base, size=min(size, 100 * mss))
    frame, hdr = super_packet(seg, mss, needs_csum=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:  # now and then a header Linux refuses
        hdr = draw(
            st.builds(
                VirtioNetHdr,
                flags=st.integers(0, 3),
                gso_type=st.sampled_from([0, 1, 3, 4, 5, 0x81, 9]),
                hdr_len=st.integers(0, 100),
                gso_size=st.integers(0, 2000),
                csum_start=st.integers(0, 100),
                csum_offset=st.integers(0, 20),
            )
        )
    return (frame, hdr), draw(st.booleans()) and base == "tcp4"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_input(), min_size=1, max_size=12), st.sampled_from([0, 0, 2, 4, 8]))
def test_every_input_is_segmented_as_alone(
    inputs: list[tuple[tuple[bytes, VirtioNetHdr], bool]], headroom: int
) -> None:
    check([b for b, _ in inputs], [f for _, f in inputs], headroom)
