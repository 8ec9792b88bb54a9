"""The transmit/receive pipeline: task selection, residual requests, drops, no raising."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.engine.admit import Limits
from netoffload.engine.gro import coalesce
from netoffload.engine.gso import segment_request
from netoffload.engine.pipeline import receive, transmit
from netoffload.offload.caps import ChecksumCaps, ChecksumFlags, IpVersions, TcpAssemblyCaps
from netoffload.offload.extension import (
    NO_INFO,
    ChecksumRequest,
    ChecksumStatus,
    FilterVerdict,
    GsoType,
    HashReport,
    RxInfo,
    SegmentationRequest,
    TxRequest,
)
from netoffload.offload.packet import Packet
from netoffload.offload.stats import DropReason
from netoffload.offload.task import Task
from tests.engine.builders import as_partial, checksums_ok, tcp4, tcp6, udp4, udp6

ALL = frozenset(Task)
ALL_RX = (
    ChecksumFlags.IPV4_HEADER
    | ChecksumFlags.TCP_IPV4
    | ChecksumFlags.UDP_IPV4
    | ChecksumFlags.TCP_IPV6
    | ChecksumFlags.UDP_IPV6
)
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


# -- one bad request costs only its own packet ---------------------------------------


def _filled_alone(packet: Packet) -> bytes:
    (only,) = transmit([packet], ALL).packets
    return bytes(only.data)


def test_a_bad_checksum_start_mid_batch_drops_only_that_packet() -> None:
    # Twelve equal frames take the matrix path; the seventh asks for a start past its end.
    packets = [csum_packet(tcp4(DATA[i : i + 1000])) for i in range(12)]
    bad = Packet(packets[6].data, TxRequest(checksum=ChecksumRequest(5000, 16)))
    batch = [*packets[:6], bad, *packets[7:]]
    out = transmit(batch, ALL)
    assert out.drops == [(6, DropReason.CSUM_OFFSETS_INVALID)]
    assert out.sources == [i for i in range(12) if i != 6]
    assert [bytes(p.data) for p in out.packets] == [
        _filled_alone(p) for i, p in enumerate(batch) if i != 6
    ]
    assert out.tasks[Task.CHECKSUM] == 11


def test_a_bad_checksum_request_first_in_a_batch_costs_no_other_job() -> None:
    packets = [csum_packet(udp4(DATA[i : i + 700])) for i in range(10)]
    bad = Packet(b"\x00" * 40, TxRequest(checksum=ChecksumRequest(39, 16)))
    out = transmit([bad, *packets], ALL)
    assert out.drops == [(0, DropReason.CSUM_OFFSETS_INVALID)]
    assert [bytes(p.data) for p in out.packets] == [_filled_alone(p) for p in packets]
    assert all(checksums_ok(bytes(p.data)) for p in out.packets)


def test_largest_segment_size_never_raises() -> None:
    frame = tso_packet(20000).data
    req = TxRequest.segment_l4(l4_offset=34, protocol=6, ip_version=4, mss=0xFFFE)
    out = transmit([Packet(frame, req), tso_packet()], ALL)
    # Linux sends a payload no longer than gso_size whole: one frame, checksummed.
    assert out.sources == [0, 1, 1, 1, 1] and not out.drops
    assert checksums_ok(bytes(out.packets[0].data))


def test_per_packet_task_sets() -> None:
    packets = [tso_packet(), tso_packet()]
    out = transmit(packets, [ALL, frozenset()])
    assert out.sources == [0, 0, 0, 0, 1]
    assert out.packets[-1] is packets[1]


def _mutated(frame: bytes, cut: int, flip: int) -> bytes:
    data = bytearray(frame[: max(0, len(frame) - cut)])
    if data and flip:
        data[flip % len(data)] ^= 0xFF
    return bytes(data)


mostly_valid = st.one_of(
    st.builds(
        lambda l4, proto, version, mss: TxRequest.segment_l4(
            l4_offset=l4, protocol=proto, ip_version=version, mss=mss
        ),
        st.sampled_from([34, 54, 38]),
        st.sampled_from([6, 17]),
        st.sampled_from([4, 6]),
        st.integers(1, 3000),
    ),
    st.builds(
        lambda l4, proto: TxRequest.checksum_l4(l4_offset=l4, protocol=proto),
        st.sampled_from([34, 54, 0, 200]),
        st.sampled_from([6, 17]),
    ),
    requests,
)
SOURCES = [
    tso_packet().data,
    tso_packet(3000, mss=500).data,
    csum_packet(udp6(DATA[:3000])).data,
    csum_packet(tcp4(b"")).data,
    as_partial(udp4(DATA[:4000]))[0],
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.builds(
                    _mutated, st.sampled_from(SOURCES), st.integers(0, 60), st.integers(0, 5000)
                ),
                st.binary(max_size=200),
            ),
            mostly_valid,
        ),
        max_size=12,
    ),
    st.sets(st.sampled_from(list(Task))),
)
def test_every_packet_is_sent_or_dropped_with_a_reason(
    items: list[tuple[bytes, TxRequest]], tasks: set[Task]
) -> None:
    out = transmit([Packet(f, r) for f, r in items], tasks)
    dropped = [i for i, _ in out.drops]
    assert all(isinstance(reason, DropReason) for _, reason in out.drops)
    assert len(set(dropped)) == len(dropped)
    assert set(out.sources).isdisjoint(dropped)
    assert set(out.sources) | set(dropped) == set(range(len(items)))
    assert out.sources == sorted(out.sources)
    rx = receive([f for f, _ in items], tasks)
    assert sum(p.rx.segments for p in rx.packets) == len(items)


def test_receive_keeps_what_the_device_found() -> None:
    good = tcp4(b"hello", flags="PA")
    bad = bytearray(udp4(b"world"))
    bad[-1] ^= 1
    partial, _, _ = as_partial(tcp4(b"local", sport=7))  # a local sender's partial checksum
    device = [
        RxInfo(flow_hash=0x1234, hash_report=HashReport.TCPV4, queue=2, mark=7),
        RxInfo(queue=1, verdict=FilterVerdict.RATE_LIMITED),
        RxInfo(l4=ChecksumStatus.VERIFIED, checksum_partial=ChecksumRequest(34, 16), queue=3),
    ]
    out = receive([good, bytes(bad), partial], {Task.CHECKSUM}, infos=device)
    first, second, third = (p.rx for p in out.packets)
    assert (first.l4, first.flow_hash, first.queue, first.mark) == (
        ChecksumStatus.VERIFIED,
        0x1234,
        2,
        7,
    )
    assert (second.l4, second.verdict, second.queue) == (
        ChecksumStatus.FAILED,
        FilterVerdict.RATE_LIMITED,
        1,
    )
    # The host would call the pseudo-header sum wrong; the device's verdict stands.
    assert third.l4 is ChecksumStatus.VERIFIED and third.checksum_partial is not None
    assert third.queue == 3


def test_receive_limits_checksums_to_the_enabled_protocols() -> None:
    limits = Limits.from_records([ChecksumCaps(rx=ChecksumFlags.UDP_IPV4)])
    out = receive([tcp4(b"a"), udp4(b"b"), udp6(b"c")], limits)
    assert [p.rx.l4 for p in out.packets] == [
        ChecksumStatus.NOT_CHECKED,
        ChecksumStatus.VERIFIED,
        ChecksumStatus.NOT_CHECKED,
    ]
    assert all(p.rx.ipv4_header is ChecksumStatus.NOT_CHECKED for p in out.packets)


def test_assembly_only_for_the_enabled_ip_versions() -> None:
    v4 = [tcp4(DATA[i * 100 : (i + 1) * 100], seq=1000 + i * 100, ip_id=i) for i in range(4)]
    v6 = [tcp6(DATA[i * 100 : (i + 1) * 100], seq=1000 + i * 100) for i in range(4)]
    limits = Limits.from_records(
        [ChecksumCaps(rx=ALL_RX), TcpAssemblyCaps(versions=IpVersions.IPV4)]
    )
    out = receive([*v4, *v6], limits)
    # The IPv6 frames pass up at once; the held IPv4 flow is flushed at the end of the poll.
    assert [p.rx.segments for p in out.packets] == [1, 1, 1, 1, 4]
    assert all(p.rx.l4 is ChecksumStatus.VERIFIED for p in out.packets)
