"""The transmit/receive pipeline: task selection, residual requests, drops, no raising."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.engine.gro import coalesce
from netoffload.engine.gso import segment_request
from netoffload.engine.pipeline import receive, transmit
from netoffload.offload.extension import (
    NO_INFO,
    ChecksumRequest,
    ChecksumStatus,
    GsoType,
    SegmentationRequest,
    TxRequest,
)
from netoffload.offload.packet import Packet
from netoffload.offload.stats import DropReason
from netoffload.offload.task import Task
from tests.engine.builders import as_partial, checksums_ok, tcp4, udp4, udp6

ALL = frozenset(Task)
DATA = bytes((i * 31 + 1) % 256 for i in range(10000))


def tso_packet(size: int = 5000, mss: int = 1448) -> Packet:
    frame, start, offset = as_partial(tcp4(DATA[:size]))
    seg = SegmentationRequest(GsoType.TCPV4, mss, 54)
    return Packet(frame, TxRequest(checksum=ChecksumRequest(start, offset), segmentation=seg))


def csum_packet(frame: bytes, ipv4: bool = False) -> Packet:
    partial, start, offset = as_partial(frame)
    return Packet(
        partial, TxRequest(checksum=ChecksumRequest(start, offset), ipv4_header_checksum=ipv4)
    )


def test_transmit_segments_and_clears_the_request() -> None:
    out = transmit([tso_packet(), csum_packet(udp6(b"abc"))], ALL)
    assert len(out.packets) == 5 and not out.drops
    assert all(p.tx == TxRequest() and checksums_ok(bytes(p.data)) for p in out.packets)
    assert out.tasks == {Task.TCP_SEGMENTATION: 1, Task.CHECKSUM: 2}


def test_tasks_not_allowed_stay_in_the_residual() -> None:
    packet = tso_packet()
    out = transmit([packet], {Task.CHECKSUM})
    assert out.packets == [packet] and not out.tasks  # cannot checksum unmade segments
    out = transmit([csum_packet(udp4(b"x"))], {Task.TCP_SEGMENTATION})
    assert out.packets[0].tx.checksum is not None


def test_offload_on_equals_off_then_software() -> None:
    packets = [tso_packet(), csum_packet(udp4(DATA[:99]), ipv4=True), Packet(tcp4(b"plain"))]
    on = transmit(packets, ALL)
    off = transmit(packets, frozenset())
    assert [p.tx for p in off.packets] == [p.tx for p in packets]
    later = transmit(off.packets, ALL)
    assert [bytes(p.data) for p in on.packets] == [bytes(p.data) for p in later.packets]
    assert [bytes(p.data) for p in on.packets[:4]] == segment_request(
        packets[0].data, packets[0].tx
    )


def test_bad_packets_are_dropped_with_a_reason() -> None:
    good = tso_packet()
    bad_seg = Packet(good.data, TxRequest(segmentation=SegmentationRequest(GsoType.UDP_L4, 100)))
    bad_csum = Packet(b"\x00" * 20, TxRequest(checksum=ChecksumRequest(30, 16)))
    out = transmit([bad_seg, good, bad_csum], ALL)
    assert out.drops == [(0, DropReason.BAD_VNET_HDR), (2, DropReason.CSUM_OFFSETS_INVALID)]
    assert len(out.packets) == 4


def test_receive_checksum_only() -> None:
    frames = [tcp4(b"a"), udp4(b"b"), b"\x01\x02"]
    out = receive(frames, {Task.CHECKSUM})
    v = ChecksumStatus.VERIFIED
    assert [(p.rx.ipv4_header, p.rx.l4) for p in out.packets[:2]] == [(v, v), (v, v)]
    assert out.packets[2].rx == NO_INFO or out.packets[2].rx.l4 is ChecksumStatus.NOT_CHECKED
    assert out.tasks == {Task.CHECKSUM: 3}


def test_receive_assembles_and_matches_coalesce() -> None:
    mss = 1000
    frames = [tcp4(DATA[i * mss : (i + 1) * mss], seq=1 + i * mss, ip_id=1 + i) for i in range(5)]
    frames.append(b"garbage")
    out = receive(frames, ALL)
    junk, merged = out.packets  # garbage goes up at once, the flow at the end of the poll
    assert merged.rx.segments == 5 and merged.rx.l4 is ChecksumStatus.VERIFIED
    assert merged.rx.assembled == SegmentationRequest(GsoType.TCPV4, mss, 54)
    assert merged.rx.checksum_partial == ChecksumRequest(34, 16)
    assert bytes(merged.data) == coalesce(frames)[1][1]
    assert junk.rx == NO_INFO
    assert out.tasks[Task.TCP_ASSEMBLY] == 5


def test_receive_assembly_without_checksum_reports_what_gro_validated() -> None:
    bad = bytearray(udp4(b"abc", sport=1))
    bad[-1] ^= 1
    out = receive([tcp4(b"x", flags="PA"), bytes(bad)], {Task.TCP_ASSEMBLY, Task.UDP_ASSEMBLY})
    assert out.packets[0].rx.l4 is ChecksumStatus.VERIFIED
    assert out.packets[1].rx == NO_INFO


requests = st.builds(
    TxRequest,
    checksum=st.none() | st.builds(ChecksumRequest, st.integers(0, 200), st.integers(0, 40)),
    ipv4_header_checksum=st.booleans(),
    segmentation=st.none()
    | st.builds(
        SegmentationRequest,
        st.sampled_from([k for k in GsoType if k is not GsoType.NONE]),
        st.integers(1, 3000),
        st.integers(0, 200),
        st.booleans(),
        st.booleans(),
    ),
)
FRAMES = [tso_packet().data, csum_packet(udp6(DATA[:3000])).data, tcp4(b"")]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.one_of(st.binary(max_size=100), st.sampled_from(FRAMES)), requests),
        max_size=6,
    ),
    st.sets(st.sampled_from(list(Task))),
)
def test_garbage_never_raises(items: list[tuple[bytes, TxRequest]], tasks: set[Task]) -> None:
    out = transmit([Packet(f, r) for f, r in items], tasks)
    assert all(isinstance(reason, DropReason) for _, reason in out.drops)
    rx = receive([f for f, _ in items], tasks)
    assert len(rx.packets) <= len(items)
