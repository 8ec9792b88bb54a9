"""The mapped transmit path: frames built in lent rows, the same bytes as the copying path.

``transmit(..., rows=lender)`` must give exactly what ``transmit`` gives
(frames, residual requests, drops, task counts), with every frame it made
(segments, checksum fills, gathered pieces) lying in the lender's memory;
frames in one piece that need nothing stay the caller's objects. When the
lender has nothing to lend, the copying path runs. Checksums are checked
against scapy (``checksums_ok``).
"""

from __future__ import annotations

import ctypes

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.engine.checksum import FillJob, fill_batch, fill_rows_in_place
from netoffload.engine.pipeline import transmit
from netoffload.offload.extension import (
    ChecksumRequest,
    GsoType,
    SegmentationRequest,
    TxRequest,
)
from netoffload.offload.packet import Packet
from netoffload.offload.task import Task
from tests.engine.builders import as_partial, checksums_ok, tcp4, tcp6, udp4, udp6

ALL = frozenset(Task)
DATA = bytes((i * 31 + 7) % 256 for i in range(20000))


class Lender:
    """Rows of ``stride`` bytes lent in runs from one block of memory, as a device lends UMEM."""

    def __init__(self, rows: int = 512, stride: int = 2048, *, refuse: bool = False) -> None:
        self.memory = np.full((rows, stride), 0xEE, np.uint8)  # stale bytes, as a reused chunk
        self.stride = stride
        self.next = 0
        self.refuse = refuse
        self.lent = 0
        self.base = self.memory.ctypes.data

    def __call__(self, count: int, width: int) -> npt.NDArray[np.uint8] | None:
        if self.refuse or width > self.stride or self.next + count > len(self.memory):
            return None
        block = self.memory[self.next : self.next + count]
        self.next += count
        self.lent += count
        return block

    def owns(self, data: object) -> bool:
        if not isinstance(data, memoryview):
            return False
        address = ctypes.addressof(ctypes.c_char.from_buffer(data))
        return self.base <= address < self.base + self.memory.nbytes


def _tso(frame: bytes, kind: GsoType, mss: int, header_len: int) -> Packet:
    partial, start, offset = as_partial(frame)
    seg = SegmentationRequest(kind, mss, header_len)
    return Packet(partial, TxRequest(checksum=ChecksumRequest(start, offset), segmentation=seg))


def _csum(frame: bytes, *, ipv4: bool = False) -> Packet:
    partial, start, offset = as_partial(frame)
    return Packet(
        partial, TxRequest(checksum=ChecksumRequest(start, offset), ipv4_header_checksum=ipv4)
    )


def _split(packet: Packet, at: int) -> Packet:
    """The same frame in two pieces, as a stack hands it over (headers, then a view)."""
    frame = bytes(packet.data)
    at = min(at, len(frame))
    return Packet(memoryview(frame)[at:], packet.tx, packet.rx, frame[:at])


PACKETS = st.one_of(
    st.builds(
        lambda n, mss: _tso(tcp4(DATA[:n]), GsoType.TCPV4, mss, 54),
        st.integers(1, 9000),
        st.sampled_from([1448, 1000, 536]),
    ),
    st.builds(
        lambda n, mss: _tso(tcp6(DATA[:n]), GsoType.TCPV6, mss, 74),
        st.integers(1, 9000),
        st.sampled_from([1428, 700]),
    ),
    st.builds(
        lambda n, mss: _tso(udp4(DATA[:n]), GsoType.UDP_L4, mss, 42),
        st.integers(1, 6000),
        st.sampled_from([1200, 999]),
    ),
    st.builds(lambda n: _csum(tcp4(DATA[:n])), st.integers(0, 1448)),
    st.builds(lambda n: _csum(udp6(DATA[:n])), st.integers(0, 1400)),
    st.builds(lambda n: _csum(udp4(DATA[:n]), ipv4=True), st.integers(0, 1400)),
    st.builds(lambda n: Packet(tcp4(DATA[:n])), st.integers(0, 1448)),
    st.builds(  # offsets past the frame: dropped either way
        lambda n: Packet(udp4(DATA[:n]), TxRequest(checksum=ChecksumRequest(2000, 6))),
        st.integers(0, 100),
    ),
)
BATCHES = st.lists(
    st.tuples(PACKETS, st.one_of(st.none(), st.integers(14, 80))), min_size=1, max_size=12
)
TASK_SETS = st.sampled_from(
    [ALL, frozenset({Task.CHECKSUM}), frozenset(), frozenset({Task.TCP_SEGMENTATION})]
)


def _batch(items: list[tuple[Packet, int | None]]) -> list[Packet]:
    return [p if at is None else _split(p, at) for p, at in items]


def _fits(packet: Packet) -> bool:
    return len(packet) <= Lender().stride


def _mapped_kind(packet: Packet, tasks: frozenset[Task]) -> bool:
    """A frame the mapped path builds in a row: an L4 checksum fill, or pieces to gather
    (a super-packet too small to cut, or one asking for the IPv4 header, is copied)."""
    req = packet.tx
    if req.segmentation is not None:
        return bool(packet.head) and req.segmentation.task not in tasks
    if req.ipv4_header_checksum and Task.CHECKSUM in tasks:
        return False
    if req.checksum is not None and Task.CHECKSUM in tasks:
        return req.checksum.start + req.checksum.offset + 2 <= len(packet)
    return bool(packet.head)


@settings(max_examples=150, deadline=None)
@given(BATCHES, TASK_SETS)
def test_mapped_frames_equal_copied_frames(
    items: list[tuple[Packet, int | None]], tasks: frozenset[Task]
) -> None:
    packets = _batch(items)
    lender = Lender()
    mapped = transmit(packets, tasks, rows=lender)
    copied = transmit(packets, tasks)
    assert [bytes(p.frame()) for p in mapped.packets] == [bytes(p.frame()) for p in copied.packets]
    assert [p.tx for p in mapped.packets] == [p.tx for p in copied.packets]
    assert mapped.drops == copied.drops
    assert mapped.tasks == copied.tasks
    assert mapped.sources == copied.sources
    made = [s for s in set(mapped.sources) if mapped.sources.count(s) > 1]
    # One request for the rows of a batch: a frame wider than a row makes it copy them all.
    fit = all(_fits(p) for p in packets if _mapped_kind(p, tasks))
    for p, source in zip(mapped.packets, mapped.sources, strict=True):
        original = packets[source]
        if p.tx is original.tx and not original.head:
            assert p.data is original.data  # nothing to do: the caller's own buffer
        elif source in made or (fit and _mapped_kind(original, tasks)):
            assert lender.owns(p.data) and not p.head  # made here: in lent memory
        if p.tx.checksum is None and original.tx.checksum is not None:
            assert checksums_ok(bytes(p.data))


def test_segments_and_fills_are_cut_into_the_rows_they_were_lent() -> None:
    tso = _split(_tso(tcp4(DATA[:8000]), GsoType.TCPV4, 1448, 54), 54)
    ack = _split(_csum(tcp4(b"")), 54)
    data = _split(_csum(tcp4(DATA[:1000])), 54)
    lender = Lender()
    out = transmit([tso, ack, data], ALL, rows=lender)
    assert len(out.packets) == 6 + 2 and lender.lent == 8
    assert all(lender.owns(p.data) and checksums_ok(bytes(p.data)) for p in out.packets)
    assert all(p.tx == TxRequest() for p in out.packets)


def test_nothing_to_lend_takes_the_copying_path() -> None:
    packets = [
        _split(_csum(tcp4(DATA[:500])), 54),
        _tso(udp4(DATA[:3000]), GsoType.UDP_L4, 1200, 42),
    ]
    for lender in (Lender(refuse=True), Lender(stride=256)):
        out = transmit(packets, ALL, rows=lender)
        assert lender.lent == 0
        assert not any(lender.owns(p.data) for p in out.packets)
        assert [bytes(p.frame()) for p in out.packets] == [
            bytes(p.data) for p in transmit(packets, ALL).packets
        ]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 1400),
            st.sampled_from(["tcp4", "udp6", "odd"]),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_filling_rows_in_place_equals_filling_copies(items: list[tuple[int, str]]) -> None:
    frames: list[bytes] = []
    requests: list[tuple[ChecksumRequest | None, bool]] = []
    for size, kind in items:
        built = udp6(DATA[:size]) if kind == "udp6" else tcp4(DATA[:size])
        frame, start, offset = as_partial(built)
        if kind == "odd":  # an odd start: a checksum over a span that begins mid-word
            start, offset = 35, 15
        frames.append(frame)
        requests.append((ChecksumRequest(start, offset), False))
    stride = max(map(len, frames)) + 1 & ~1
    matrix = np.zeros((len(frames), stride), np.uint8)
    for k, frame in enumerate(frames):
        matrix[k, : len(frame)] = np.frombuffer(frame, np.uint8)
    reasons = fill_rows_in_place(matrix, [len(f) for f in frames], requests)
    expected = fill_batch([FillJob(f, r) for f, (r, _) in zip(frames, requests, strict=True)])
    assert reasons == [None] * len(frames)
    assert [bytes(matrix[k, : len(f)]) for k, f in enumerate(frames)] == expected
