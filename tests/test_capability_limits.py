"""Enabled records are limits per packet: a SoftNic refuses what lies outside them, and
``HostOffload`` does that work on the host, counted as a fallback, with the same bytes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netoffload.demo.flow import BulkFlowGenerator, FlowSpec, build_all
from netoffload.device.cable import NO_IMPAIRMENTS, Cable, CableEnd
from netoffload.device.softnic import SoftNic, default_capabilities
from netoffload.host import HostOffload
from netoffload.offload import (
    ChecksumCaps,
    ChecksumFlags,
    DropReason,
    IpVersions,
    Packet,
    Selection,
    Task,
    TcpSegmentationCaps,
    TxRequest,
    UdpSegmentationCaps,
)

ALL = (
    ChecksumFlags.IPV4_HEADER
    | ChecksumFlags.TCP_IPV4
    | ChecksumFlags.UDP_IPV4
    | ChecksumFlags.TCP_IPV6
    | ChecksumFlags.UDP_IPV6
)


def _drain(peer: CableEnd, expected: int) -> list[bytes]:
    frames: list[bytes] = []
    while len(frames) < expected:
        batch = peer.recv_batch(512, timeout_s=5.0)
        if not batch:
            break
        frames += [bytes(f) for f in batch]
    return frames


def _segments(gen: BulkFlowGenerator) -> int:
    step = gen.spec.data_per_segment
    return sum(-(-size // step) for _, size in gen.chunks)


def _through(
    caps: list[object] | None, packets: list[Packet], expected: int
) -> tuple[list[bytes], HostOffload, SoftNic]:
    nic = SoftNic(caps=caps)  # type: ignore[arg-type]
    try:
        assert nic.peer is not None
        host = HostOffload(nic)
        host.send(packets)
        assert host.flush()
        nic.flush()
        return _drain(nic.peer, expected), host, nic
    except BaseException:
        nic.close()
        raise


def _check_fallback(caps: list[object], spec: FlowSpec, reason: str) -> None:
    gen = BulkFlowGenerator(os.urandom(spec.segment_bytes * spec.segments * 3), spec)
    packets = build_all(gen)
    expected = _segments(gen)
    reference, _, ref_nic = _through(None, packets, expected)
    ref_nic.close()
    frames, host, nic = _through(caps, packets, expected)
    with nic:
        assert len(frames) == expected
        assert frames == reference
        assert host.stats.fallbacks == {reason: len(packets)}
        stats = nic.stats()
        assert stats.tasks.get(Task.TCP_SEGMENTATION.label, 0) == 0
        assert stats.tx_packets == expected and stats.dropped == 0
        # Handed straight to the device instead, the same packets are refused there.
        assert nic.send(packets) == len(packets)
        nic.flush()
        after = nic.stats()
        assert after.drops[DropReason.OUTSIDE_CAPABILITY.value] == len(packets)
        assert after.tx_packets == stats.tx_packets


def test_ipv4_only_tso_gets_ipv6_super_packets_done_by_the_host() -> None:
    caps = [ChecksumCaps(tx=ALL, rx=ALL), TcpSegmentationCaps(versions=IpVersions.IPV4)]
    spec = FlowSpec(ipv6=True, segment_bytes=1428, segments=45)
    _check_fallback(caps, spec, "tcp_segmentation/ip_version")


def test_max_segments_8_gets_a_20_segment_packet_done_by_the_host() -> None:
    caps = [ChecksumCaps(tx=ALL, rx=ALL), TcpSegmentationCaps(max_segments=8)]
    _check_fallback(caps, FlowSpec(segments=20), "tcp_segmentation/too_many_segments")


def test_within_the_records_nothing_falls_back() -> None:
    caps = [ChecksumCaps(tx=ALL, rx=ALL), TcpSegmentationCaps(max_segments=45)]
    gen = BulkFlowGenerator(os.urandom(1448 * 45 * 2), FlowSpec())
    frames, host, nic = _through(caps, build_all(gen), _segments(gen))
    with nic:
        assert len(frames) == _segments(gen)
        assert host.stats.fallbacks == {} and host.stats.tasks == {}
        assert nic.stats().tasks[Task.TCP_SEGMENTATION.label] == 2


# -- every packet offered is sent or dropped with a reason, and no slot leaks ---------


@pytest.fixture
def nic_on_open_cable() -> Iterator[tuple[SoftNic, CableEnd]]:
    cable = Cable(NO_IMPAIRMENTS)
    nic = SoftNic(cable=cable.a, name="invariants")
    try:
        yield nic, cable.b
    finally:
        nic.close()
        cable.close()


FRAME_SOURCES = [
    bytes(p.data) for p in build_all(BulkFlowGenerator(bytes(range(256)) * 40, FlowSpec()))
] + [bytes(p.data) for p in build_all(BulkFlowGenerator(bytes(5000), FlowSpec(protocol="udp")))]

requests = st.one_of(
    st.just(TxRequest()),
    st.builds(
        lambda l4, proto, v, mss: TxRequest.segment_l4(
            l4_offset=l4, protocol=proto, ip_version=v, mss=mss
        ),
        st.sampled_from([34, 54, 30]),
        st.sampled_from([6, 17]),
        st.sampled_from([4, 6]),
        st.integers(1, 2000),
    ),
    st.builds(
        lambda l4, proto: TxRequest.checksum_l4(l4_offset=l4, protocol=proto),
        st.sampled_from([34, 54, 1000, 0xFFFF]),
        st.sampled_from([6, 17]),
    ),
    st.builds(lambda: TxRequest(launch_time_ns=5)),
)
frames = st.one_of(
    st.builds(
        lambda f, cut: f[: max(0, len(f) - cut)],
        st.sampled_from(FRAME_SOURCES),
        st.integers(0, 3000),
    ),
    st.binary(max_size=300),
    st.just(bytes(70_000)),
)
caps_choices = st.sampled_from(
    [
        default_capabilities(),
        [ChecksumCaps(tx=ChecksumFlags.TCP_IPV4)],
        [ChecksumCaps(tx=ALL), TcpSegmentationCaps(max_segments=4), UdpSegmentationCaps()],
        [],
    ]
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.tuples(frames, requests), max_size=20), st.booleans(), caps_choices)
def test_offered_equals_sent_plus_drops(
    nic_on_open_cable: tuple[SoftNic, CableEnd],
    items: list[tuple[bytes, TxRequest]],
    through_host: bool,
    enabled: list[object],
) -> None:
    nic, peer = nic_on_open_cable
    offered_tasks = {c.task for c in default_capabilities()}
    nic.enable(Selection(r for r in enabled if r.task in offered_tasks))  # type: ignore[attr-defined]
    before = nic.stats()
    packets = [Packet(f, r) for f, r in items]
    if through_host:
        host = HostOffload(nic)
        host.send(packets)
        assert host.flush()
        # The host hands every packet on (whole or as segments) or drops it with a reason...
        assert host.stats.tx_packets + host.stats.dropped == len(packets)
        handed = host.stats.tx_frames  # ...and the device gets them as this many packets.
    else:
        handed = 0
        while handed < len(packets):
            n = nic.send(packets[handed:])
            handed += n
            if n == 0:
                assert nic.wait(5.0, for_tx=True)
    nic.flush()
    while peer.recv_batch(4096, timeout_s=0.05):
        pass
    after = nic.stats()
    sent = after.tx_packets - before.tx_packets
    dropped = after.dropped - before.dropped
    assert sent + dropped == handed
    assert nic.tx_free == nic.geometry.tx_slots


def test_a_gathered_frame_goes_out_as_one() -> None:
    """Headers and payload given apart (a stack's send-buffer view) leave as the same bytes,
    whether the device or the host does the work."""
    gen = BulkFlowGenerator(os.urandom(1448 * 45 * 2), FlowSpec())
    whole = build_all(gen)
    hdr = gen.spec.header_len
    parts = [Packet(bytes(p.data)[hdr:], p.tx, head=bytes(p.data)[:hdr]) for p in whole]
    expected = _segments(gen)
    reference, _, ref_nic = _through(None, whole, expected)
    ref_nic.close()
    for caps in (None, [ChecksumCaps(tx=ALL, rx=ALL)]):
        frames, host, nic = _through(caps, parts, expected)
        nic.close()
        assert frames == reference
        assert host.stats.tx_packets == len(parts)
