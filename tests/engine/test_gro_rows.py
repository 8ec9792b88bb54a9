"""The column path of GRO against the frame-by-frame engines, on batches big enough to take it.

``assemble_scalar`` is the exact path, and ``gro_reference`` an earlier
plain rewrite of the rules; the kernel-oracle tests hold both to Linux. Every
batch here must come out of ``assemble``/``verify_and_assemble`` identical to
them: data, index, segment count, flags, requests, and order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netoffload.engine import gro_rows
from netoffload.engine.checksum import verify_batch
from netoffload.engine.gro import (
    Assembled,
    assemble,
    assemble_scalar,
    coalesce,
    verify_and_assemble,
)
from netoffload.engine.gso import segment
from tests.engine.batches import receive_batches
from tests.engine.gro_reference import reference_assemble
from tests.engine.segments import Seg, build

Frames = list[bytes | memoryview]


def _key(units: list[Any]) -> list[tuple[object, ...]]:
    return [
        (bytes(u.data), u.index, u.segments, u.version, u.protocol, u.validated, u.assembled,
         u.checksum_partial)
        for u in units
    ]  # fmt: skip


def _column_path_takes(frames: Frames, **kw: Any) -> bool:
    """Whether the column path decides this batch itself (not handing it to the scalar one)."""
    prepared = gro_rows.prepare(frames)
    if prepared is None:
        return False
    verified = gro_rows.verify(prepared)
    kw.setdefault("udp", True)
    kw.setdefault("max_size", 65536)
    kw.setdefault("max_segments", None)
    kw.setdefault("max_flows", 8)
    return gro_rows.assemble_prepared(prepared, verified, **kw) is not None


def _check(frames: Frames, **kw: Any) -> list[Assembled]:
    """Every entry point gives what the scalar engine and the reference give."""
    expected_verify = verify_batch(frames)
    scalar = assemble_scalar(frames, verified=expected_verify, **kw)
    verified, ours = verify_and_assemble(frames, **kw)
    assert verified.ipv4_header.tolist() == expected_verify.ipv4_header.tolist()
    assert verified.l4.tolist() == expected_verify.l4.tolist()
    assert _key(ours) == _key(scalar)
    assert _key(assemble(frames, verified=expected_verify, **kw)) == _key(scalar)
    assert _key(assemble(frames, **kw)) == _key(scalar)
    assert _key(reference_assemble(frames, verified=expected_verify, **kw)) == _key(scalar)
    return ours


def flow(count: int, *, size: int = 1448, seq: int = 1000, ip_id: int = 7, **kw: Any) -> list[Seg]:
    """``count`` back-to-back segments of one flow."""
    return [
        Seg(seq=seq + i * size, size=size, ip_id=ip_id + i, **kw) for i in range(count)
    ]  # fmt: skip


def runs(flows: list[list[Seg]]) -> list[bytes]:
    return [build(s) for f in flows for s in f]


def round_robin(flows: list[list[Seg]]) -> list[bytes]:
    out = []
    for i in range(max(map(len, flows))):
        out += [build(f[i]) for f in flows if i < len(f)]
    return out


def framed(frames: list[bytes]) -> Frames:
    """The frames as a firmware gets them: views into one buffer, a length before each."""
    buf = bytearray()
    spans = []
    for f in frames:
        buf += len(f).to_bytes(4, "little")
        spans.append((len(buf), len(f)))
        buf += f
    view = memoryview(buf)
    return [view[at : at + n] for at, n in spans]


# -- batches the column path must decide itself ---------------------------------------


def test_bench_shape_runs_and_interleaved() -> None:
    flows = [flow(16, flow=f, seq=1000 + 99 * f, ip_id=50 * f, timestamp=3) for f in range(8)]
    for frames in (runs(flows), round_robin(flows)):
        views = framed(frames)
        assert _column_path_takes(views)
        out = _check(views)
        assert sorted(u.segments for u in out) == [16] * 8
        # Every flow is still held at the end: flushed oldest first.
        assert [u.index for u in out] == sorted(u.index for u in out)
        # GSO is the exact inverse.
        back = [s for h, b in coalesce(views) for s in segment(b, h)]
        assert sorted(back) == sorted(frames)


def test_psh_fin_short_last_and_cwr_shape_the_super_packets() -> None:
    a = flow(10, flow=1)
    a[4] = dataclasses.replace(a[4], flags=0x18)  # PSH ends the first super-packet
    a[-1] = dataclasses.replace(a[-1], size=300)  # short last
    b = flow(12, flow=2)
    b[6] = dataclasses.replace(b[6], flags=0x90)  # CWR starts a new one, with ECN
    b[-1] = dataclasses.replace(b[-1], flags=0x11)  # FIN
    c = flow(8, flow=3)
    frames = round_robin([a, b, c])
    assert _column_path_takes(frames)
    out = _check(frames)
    # (first frame of each output, segments): a's PSH ends its first five at once; b's
    # CWR completes its first six; the rest are flushed at the end, oldest first.
    assert [(u.index, u.segments) for u in out] == [(0, 5), (1, 6), (15, 5), (19, 6), (2, 8)]
    ecn = [u for u in out if u.assembled is not None and u.assembled.ecn]
    assert [u.index for u in ecn] == [19]


def test_fixed_id_flow_and_pure_acks() -> None:
    fixed = [dataclasses.replace(s, ip_id=9) for s in flow(20, flow=1)]
    acks = [Seg(flow=2, seq=5, size=0, ip_id=i) for i in range(4)]
    mixed = [*flow(6, flow=3), Seg(flow=3, seq=1000 + 6 * 1448, size=0, ip_id=13)]
    mixed += flow(6, flow=3, seq=1000 + 6 * 1448, ip_id=14)
    frames = round_robin([fixed, acks, mixed])
    assert _column_path_takes(frames)
    out = _check(frames)
    assert any(u.assembled is not None and u.assembled.fixed_id for u in out)


@pytest.mark.parametrize("max_segments", [None, 1, 2, 5])
@pytest.mark.parametrize("max_size", [65536, 10000, 3000])
def test_size_and_segment_limits(max_segments: int | None, max_size: int) -> None:
    a = flow(50, flow=1)
    a[-1] = dataclasses.replace(a[-1], size=100, flags=0x18)
    frames = runs([a, flow(30, flow=2, size=1000)])
    assert _column_path_takes(frames, max_segments=max_segments, max_size=max_size)
    _check(frames, max_segments=max_segments, max_size=max_size)


def test_frames_passed_up_at_once_leave_the_column_path_alone() -> None:
    main = flow(30, flow=1)
    strangers = [
        Seg(flow=2, ip_options=True),
        Seg(flow=3, corrupt=True),
        Seg(kind="udp4", flow=4),
        Seg(flow=5, size=0, cut=10),  # not even a whole TCP header
    ]
    frames = [build(s) for s in main[:10]] + [build(s) for s in strangers]
    frames += [build(s) for s in main[10:]] + [b"\x00" * 60]
    assert _column_path_takes(frames, udp=False)
    out = _check(frames, udp=False)
    assert [u.index for u in out if u.segments == 1] == [10, 11, 12, 13, 34]
    assert [u.validated for u in out if u.segments == 1] == [False, False, False, False, False]


@pytest.mark.parametrize(
    "stranger",
    [
        Seg(kind="udp4", flow=4),  # UDP to coalesce
        Seg(kind="tcp6", flow=5, hop_by_hop=True),  # another TCP layout
        Seg(flow=1, seq=1000 + 10 * 1448, ip_id=17, timestamp=4),  # its flow, other options
    ],
)
def test_frames_that_reach_a_flow_outside_the_layout_go_to_the_scalar_engine(
    stranger: Seg,
) -> None:
    main = flow(30, flow=1)
    frames = [build(s) for s in main[:10]] + [build(stranger)] + [build(s) for s in main[10:]]
    assert not _column_path_takes(frames)
    _check(frames)


def test_a_frame_the_ip_layer_flushes_completes_its_flow_and_goes_up_alone() -> None:
    a, b = flow(20, flow=1), flow(20, flow=2)
    a[8] = dataclasses.replace(a[8], pad=6)  # Ethernet padding: IP length short of the frame
    b[3] = dataclasses.replace(b[3], cut=100)  # IP length past the frame
    frames = round_robin([a, b])
    assert _column_path_takes(frames)
    out = _check(frames)
    # Frame 2i is a[i], 2i + 1 is b[i]. Each flushed frame completes its flow's packet
    # first; what is held at the end goes up oldest first.
    assert [(u.index, u.segments, u.validated) for u in out] == [
        (1, 3, True), (7, 1, False), (0, 8, True), (16, 1, False),
        (9, 16, True), (18, 11, True),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "shape",
    [{"kind": "tcp6"}, {"vlan": 5}, {"timestamp": 77}, {"kind": "tcp6", "flow_label": 3}],
)
def test_layouts(shape: dict[str, Any]) -> None:
    flows = [flow(12, flow=f, **shape) for f in range(3)]
    frames = round_robin(flows)
    assert _column_path_takes(frames)
    _check(frames)


def test_flows_of_several_layouts_are_each_taken_by_their_own() -> None:
    flows = [
        flow(12, flow=1),
        flow(12, flow=2, kind="tcp6"),
        flow(12, flow=3, timestamp=5),
        flow(12, flow=4, vlan=7),
        flow(12, flow=5, kind="tcp6", timestamp=5),
    ]
    for frames in (runs(flows[:4]), round_robin(flows[:4]), round_robin(flows[1:])):
        assert _column_path_takes(frames)
        out = _check(frames)
        assert sorted(u.segments for u in out) == [12] * 4
    # Five layouts are one too many.
    assert not _column_path_takes(round_robin(flows))
    _check(round_robin(flows))


def test_a_flow_table_overflow_is_left_to_the_scalar_engine() -> None:
    frames = round_robin([flow(3, flow=f) for f in range(10)])
    assert not _column_path_takes(frames)
    _check(frames)
    frames = round_robin([flow(3, flow=f) for f in range(3)])
    _check(frames, max_flows=2)


# -- anything at all --------------------------------------------------------------------


# Tweaks a frame of a flow may get. The common ones keep the batch's layout; the
# rare ones (a frame the column path hands to the scalar engine) break it.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=receive_batches(regular=True),
    views=st.booleans(),
    max_segments=st.sampled_from([None, None, None, 1, 2, 3, 17]),
    max_size=st.sampled_from([65536, 65536, 5000, 20000]),
)
def test_regular_batches_take_the_column_path_and_equal_the_scalar_engine(
    *, batch: list[Seg], views: bool, max_segments: int | None, max_size: int
) -> None:
    frames: Frames = framed([build(s) for s in batch]) if views else [build(s) for s in batch]
    kw: dict[str, Any] = {"max_segments": max_segments, "max_size": max_size}
    if len(frames) >= gro_rows.MIN_FRAMES:
        assert _column_path_takes(frames, udp=False, **kw)
    _check(frames, udp=False, **kw)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=receive_batches(),
    views=st.booleans(),
    tcp=st.sampled_from([True, True, True, False]),
    udp=st.booleans(),
    max_segments=st.sampled_from([None, None, None, 1, 2, 3, 17]),
    max_flows=st.sampled_from([8, 8, 8, 1, 2, 5, 16]),
    max_size=st.sampled_from([65536, 65536, 5000, 20000]),
)
def test_every_batch_equals_the_scalar_engine(
    *,
    batch: list[Seg],
    views: bool,
    tcp: bool,
    udp: bool,
    max_segments: int | None,
    max_flows: int,
    max_size: int,
) -> None:
    frames: Frames = framed([build(s) for s in batch]) if views else [build(s) for s in batch]
    _check(
        frames,
        tcp=tcp,
        udp=udp,
        max_segments=max_segments,
        max_flows=max_flows,
        max_size=max_size,
    )


def test_nothing_merges_after_a_flushed_frame() -> None:
    """A frame the IP layer flushes (here: Ethernet padding) is neither merged nor held, so
    the next segment of its flow starts a packet even when its sequence continues it."""
    base = Seg(kind="tcp4", flow=0, dport=5201, seq=0, size=1448, ip_id=0, flags=16)
    batch = [dataclasses.replace(base, flow=f) for f in range(5)]
    batch += [
        dataclasses.replace(base, flow=5, pad=1),
        dataclasses.replace(base, flow=5, seq=1449, ip_id=1),
        dataclasses.replace(base, flow=5, seq=2897, ip_id=2),
    ]
    frames: Frames = [build(s) for s in batch]
    assert _column_path_takes(frames, udp=False)
    _check(frames, udp=False)
    assert [u.segments for u in assemble(frames, udp=False)] == [1, 1, 1, 1, 1, 1, 2]
