"""The matrix paths (equal-length batches, TCP columns) against the general path, frame by frame.

A batch of one frame never reaches the matrix path, so ``f([x])`` is the
general path's answer for ``x``.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import IPv6ExtHdrHopByHop

from netoffload.engine import tcp_rows
from netoffload.engine.checksum import FillJob, fill_batch, verify_batch
from netoffload.engine.rows import MIN_ROWS
from netoffload.offload.extension import ChecksumRequest
from tests.engine.batches import receive_batches
from tests.engine.builders import as_partial, tcp4, tcp6, udp4, udp6
from tests.engine.segments import Seg, build

OPTS = [("NOP", None), ("NOP", None), ("Timestamp", (7, 9))]


def _templates(size: int) -> list[bytes]:
    payload = bytes((i * 13 + 5) % 256 for i in range(size))
    return [
        tcp4(payload),
        tcp4(payload, vlan=7),
        tcp4(payload, ip_options=b"\x01\x01\x01\x00", options=OPTS),
        tcp4(payload, df=False, ip_id=0xFFFF),
        tcp6(payload, options=OPTS),
        tcp6(payload, ext=IPv6ExtHdrHopByHop()),
        udp4(payload),
        udp6(payload),
        tcp4(payload) + b"\x00" * 3,  # trailing bytes past the IP length
        udp4(payload)[:-1],  # truncated: lengths disagree with the frame
    ]


TEMPLATES = [t for size in (0, 1, 2, 3, 6, 7, 100, 1405, 1406) for t in _templates(size)]

# (position, xor mask); positions past the end wrap around the frame.
mutation = st.tuples(st.integers(0, 2000), st.integers(1, 255))


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    """Groups of equal-length frames (some mutated anywhere, headers included), plus strays."""
    batch: list[bytes] = []
    for _ in range(draw(st.integers(1, 3))):
        base = draw(st.sampled_from(TEMPLATES))
        others = [t for t in TEMPLATES if len(t) == len(base)]
        for _ in range(draw(st.integers(MIN_ROWS - 1, 2 * MIN_ROWS))):
            frame = bytearray(draw(st.sampled_from(others)))
            for at, mask in draw(st.lists(mutation, max_size=2)):
                frame[at % len(frame)] ^= mask
            batch.append(bytes(frame))
    batch += draw(st.lists(st.sampled_from(TEMPLATES), max_size=4))
    return draw(st.permutations(batch))


@settings(max_examples=300, deadline=None)
@given(batches())
def test_verify_matrix_path_equals_general_path(batch: list[bytes]) -> None:
    result = verify_batch(batch)
    for i, frame in enumerate(batch):
        assert result.status(i) == verify_batch([frame]).status(0)


def test_verify_a_batch_of_one_length_uses_every_layout() -> None:
    batch = [t for t in TEMPLATES if len(t) == len(TEMPLATES[-3])] * MIN_ROWS
    result = verify_batch(batch)
    assert [result.status(i) for i in range(len(batch))] == [
        verify_batch([f]).status(0) for f in batch
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([t for t in TEMPLATES if len(t) > 60]),
    st.lists(st.lists(mutation, max_size=2), min_size=MIN_ROWS, max_size=2 * MIN_ROWS),
    st.integers(0, 40),
    st.sampled_from([6, 16, 0, 3]),
)
def test_fill_matrix_path_equals_general_path(
    base: bytes, mutations: list[list[tuple[int, int]]], shift: int, offset: int
) -> None:
    partial, start, _ = as_partial(base)
    start = max(start + 2 * shift - 40, 0)  # even starts before the L4 header and past it
    jobs = []
    for muts in mutations:
        frame = bytearray(partial)
        for at, mask in muts:
            frame[at % len(frame)] ^= mask
        jobs.append(FillJob(bytes(frame), ChecksumRequest(start, offset)))
    assert fill_batch(jobs) == [fill_batch([job])[0] for job in jobs]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(receive_batches(), st.booleans())
def test_verify_tcp_columns_equal_general_path(batch: list[Seg], views: bool) -> None:
    """A TCP batch is verified from its header columns: frame by frame as alone."""
    frames = [build(s) for s in batch]
    if views:
        buf = memoryview(b"".join(frames))
        at = [0, *itertools.accumulate(map(len, frames))]
        frames_or_views: list[bytes | memoryview] = [buf[a:b] for a, b in itertools.pairwise(at)]
    else:
        frames_or_views = list(frames)
    result = verify_batch(frames_or_views)
    assert [result.status(i) for i in range(len(frames))] == [
        verify_batch([f]).status(0) for f in frames
    ]


def test_verify_tcp_columns_take_a_tcp_batch() -> None:
    frames = [build(Seg(seq=1000 + 1448 * i, size=1448, ip_id=i)) for i in range(20)]
    frames[3] = build(Seg(seq=1000 + 1448 * 3, size=1448, ip_id=3, corrupt=True))
    prepared = tcp_rows.prepare(frames)
    assert prepared is not None and prepared.fits.all()
    hdr, l4, checked, good = tcp_rows.verify_fitting(prepared)
    assert checked.all() and good.tolist() == [i != 3 for i in range(20)]
    assert hdr.tolist() == [1] * 20 and l4.tolist() == [2 if i == 3 else 1 for i in range(20)]
    assert verify_batch(frames).status(3) == verify_batch([frames[3]]).status(0)
