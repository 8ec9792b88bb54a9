"""Cable: framing, impairments deterministic from the seed, drops counted."""

from __future__ import annotations

import pytest

from netoffload.device.cable import NO_IMPAIRMENTS, Cable, Impairments
from netoffload.offload import DropReason


def _frames(n: int, size: int = 200) -> list[bytes]:
    return [i.to_bytes(4, "big") + bytes([i & 0xFF]) * (size - 4) for i in range(n)]


def _run(impairments: Impairments, seed: int, frames: list[bytes]) -> tuple[list[bytes], dict]:
    """Send ``frames`` a→b at 1 µs intervals; return what b got and a's counters."""
    with Cable(impairments, seed=seed) as cable:
        for i, frame in enumerate(frames):
            cable.a.send(frame, now_ns=i * 1000)
        cable.a.release(now_ns=10**12)
        assert cable.a.drain(timeout_s=5.0)
        got = []
        while (frame := cable.b.recv(timeout_s=0.2)) is not None:
            got.append(frame)
        return got, dict(cable.a.counters)


def test_frames_cross_intact_and_in_order_both_ways() -> None:
    frames = [*_frames(50, 1514), b"\x00" * 14, b"\xff" * 9000]
    with Cable(NO_IMPAIRMENTS) as cable:
        cable.a.send_batch(frames)
        cable.b.send(b"back" * 20)
        assert cable.a.drain()
        got = [cable.b.recv(timeout_s=2.0) for _ in frames]
        assert got == frames
        assert cable.a.recv(timeout_s=2.0) == b"back" * 20
        assert cable.b.recv() is None


def test_batch_views_are_frames() -> None:
    frames = _frames(20)
    with Cable(NO_IMPAIRMENTS) as cable:
        cable.a.send_batch(frames)
        views = cable.b.recv_batch(64, timeout_s=2.0)
        while len(views) < len(frames):
            more = cable.b.recv_batch(64, timeout_s=2.0)
            assert more
            views = [*[bytes(v) for v in views], *more]
        assert [bytes(v) for v in views] == frames


MIXED = Impairments(loss=0.1, duplicate=0.1, reorder=0.1, corrupt=0.1, mtu=1500)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_seed_same_outcome(seed: int) -> None:
    frames = _frames(300)
    first = _run(MIXED, seed, frames)
    second = _run(MIXED, seed, frames)
    assert first == second
    got, counters = first
    assert counters["lost"] > 0 and counters["duplicated"] > 0
    assert counters["reordered"] > 0 and counters["corrupted"] > 0
    assert len(got) == 300 - counters["lost"] + counters["duplicated"]
    assert got != frames


def test_different_seeds_differ() -> None:
    frames = _frames(300)
    assert _run(MIXED, 1, frames)[0] != _run(MIXED, 2, frames)[0]


def test_loss_only_drops_and_keeps_order() -> None:
    frames = _frames(400)
    got, counters = _run(Impairments(loss=0.25), 7, frames)
    assert counters["lost"] == 400 - len(got) > 0
    positions = [frames.index(f) for f in got]
    assert positions == sorted(positions)


def test_corruption_flips_exactly_one_bit() -> None:
    frames = _frames(200)
    got, counters = _run(Impairments(corrupt=1.0), 3, frames)
    assert counters["corrupted"] == 200
    for sent, received in zip(frames, got, strict=True):
        diff = int.from_bytes(sent, "big") ^ int.from_bytes(received, "big")
        assert diff.bit_count() == 1


def test_reorder_swaps_neighbours() -> None:
    frames = _frames(100)
    got, counters = _run(Impairments(reorder=0.3), 5, frames)
    assert sorted(got) == sorted(frames)
    assert got != frames
    assert counters["reordered"] > 0


def test_mtu_drops_are_counted() -> None:
    frames = [b"\x00" * 1514, b"\x00" * 1515, b"\x00" * 9014, b"\x00" * 60]
    with Cable(Impairments(mtu=1500)) as cable:
        cable.a.send_batch(frames)
        assert cable.a.drain()
        got = [
            cable.b.recv(timeout_s=1.0),
            cable.b.recv(timeout_s=1.0),
            cable.b.recv(timeout_s=0.1),
        ]
        assert got == [frames[0], frames[3], None]
        assert cable.a.counters["mtu_exceeded"] == 2
        assert cable.a.drops() == {DropReason.MTU_EXCEEDED: 2}


def test_delay_uses_the_passed_clock() -> None:
    with Cable(Impairments(delay_ns=5_000)) as cable:
        cable.a.send(b"x" * 60, now_ns=1_000)
        assert cable.b.recv(timeout_s=0.05) is None
        assert cable.a.next_due_ns() == 6_000
        cable.a.flush(now_ns=5_999)
        assert cable.b.recv(timeout_s=0.05) is None
        cable.a.flush(now_ns=6_000)
        assert cable.b.recv(timeout_s=1.0) == b"x" * 60


def test_rate_limit_polices_with_a_token_bucket() -> None:
    # 1 MB/s with a 3000-byte bucket: two 1500-byte frames pass at once, then one per 1.5 ms.
    imp = Impairments(rate_bytes_per_s=1_000_000, burst_bytes=3000)
    with Cable(imp) as cable:
        for i in range(10):
            cable.a.send(b"\x00" * 1500, now_ns=i * 100_000)  # 10 frames in 0.9 ms
        assert cable.a.counters["rate_limited"] == 8
        cable.a.send(b"\x00" * 1500, now_ns=5_000_000)
        assert cable.a.counters["sent_frames"] == 3
        assert cable.a.drops() == {DropReason.RATE_LIMITED: 8}


def test_peer_closed_counts_as_loss() -> None:
    with Cable(NO_IMPAIRMENTS) as cable:
        cable.b.close()
        cable.a.send(b"y" * 100)
        cable.a.send(b"y" * 100)
        assert cable.a.counters["peer_gone"] >= 1
        assert cable.a.recv(timeout_s=0.05) is None
        assert cable.a.peer_closed


def test_bad_probability_is_refused() -> None:
    with pytest.raises(ValueError):
        Impairments(loss=1.5)


def _framed(frames: list[bytes], split: bool) -> list[bytes]:
    """Frames in the cable's framing: one span, or a prefix and a frame each."""
    if split:
        return [c for f in frames for c in (len(f).to_bytes(4, "little"), f)]
    return [b"".join(len(f).to_bytes(4, "little") + f for f in frames)]


@pytest.mark.parametrize("split", [False, True])
def test_framed_spans_arrive_as_their_frames(split: bool) -> None:
    frames = [bytes([i]) * (60 + i) for i in range(20)]
    with Cable(Impairments(mtu=1500)) as cable:
        cable.a.send_framed(_framed(frames, split), [len(f) for f in frames])
        assert cable.a.drain()
        got = [bytes(f) for f in cable.b.recv_batch(100, timeout_s=1.0)]
        assert got == frames
        assert cable.a.counters["sent_frames"] == 20


def test_framed_frames_over_the_mtu_are_dropped_one_by_one() -> None:
    frames = [b"\x01" * 1514, b"\x02" * 1515, b"\x03" * 100]
    with Cable(Impairments(mtu=1500)) as cable:
        cable.a.send_framed(_framed(frames, False), [len(f) for f in frames])
        assert cable.a.drain()
        got = [bytes(f) for f in cable.b.recv_batch(100, timeout_s=1.0)]
        assert got == [frames[0], frames[2]]
        assert cable.a.counters["mtu_exceeded"] == 1


def test_framed_frames_are_impaired_like_any_other() -> None:
    frames = [bytes([i]) * 200 for i in range(200)]
    impaired = Impairments(loss=0.2, mtu=None)
    with Cable(impaired, seed=5) as one, Cable(impaired, seed=5) as two:
        one.a.send_framed(_framed(frames, False), [len(f) for f in frames])
        two.a.send_batch(frames)
        assert one.a.drain() and two.a.drain()
        got_one = [bytes(f) for f in one.b.recv_batch(500, timeout_s=1.0)]
        got_two = [bytes(f) for f in two.b.recv_batch(500, timeout_s=1.0)]
        assert got_one == got_two and 100 < len(got_one) < 200
