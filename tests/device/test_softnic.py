"""SoftNic: control plane over the binary chain, rings, per-packet offload, failure."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Iterator

import psutil
import pytest

from netoffload.demo.flow import BulkFlowGenerator, FlowSpec, build_all
from netoffload.device.base import DeviceError
from netoffload.device.cable import Cable, Impairments
from netoffload.device.softnic import SoftNic, default_capabilities, softnic_pair
from netoffload.engine import gso
from netoffload.offload import (
    ChecksumCaps,
    ChecksumFlags,
    ChecksumStatus,
    DropReason,
    GsoType,
    Packet,
    Selection,
    SelectionError,
    Task,
    TcpSegmentationCaps,
    VirtioNetHdr,
    encode_capabilities,
)

BIG = Impairments(mtu=None)


@pytest.fixture(autouse=True)
def softnic_leaves_nothing_behind() -> Iterator[None]:
    """Every test ends with no child process and no new /dev/shm segment."""
    shm_before = set(os.listdir("/dev/shm"))
    yield
    gc.collect()
    children = psutil.Process().children(recursive=True)
    assert children == [], f"left running: {children}"
    assert set(os.listdir("/dev/shm")) - shm_before == set()


@pytest.fixture
def pair() -> Iterator[tuple[SoftNic, SoftNic]]:
    """Two SoftNics on one wire with no MTU limit."""
    with softnic_pair(BIG, names=("a", "b")) as pair:
        yield pair


def _receive(nic: SoftNic, count: int, timeout_s: float = 5.0) -> list[Packet]:
    """Copies of ``count`` packets (fewer if they do not come within the bound)."""
    got: list[Packet] = []
    while len(got) < count and nic.wait(timeout_s):
        batch = nic.recv()
        got += [Packet(bytes(p.data), rx=p.rx) for p in batch]
        nic.release(batch)
    return got


def _tcp_frames(size: int, mss: int = 1448) -> tuple[BulkFlowGenerator, list[Packet]]:
    gen = BulkFlowGenerator(bytes(range(256)) * (size // 256 + 1), FlowSpec(segment_bytes=mss))
    return gen, build_all(gen)


# -- control plane ------------------------------------------------------------------------


def test_query_returns_the_chain_the_firmware_advertises() -> None:
    with SoftNic() as nic:
        assert isinstance(nic, SoftNic)
        assert nic.capability_chain() == encode_capabilities(default_capabilities())
        assert nic.capabilities() == default_capabilities()
        assert set(nic.enabled()) == {r.task for r in default_capabilities()}


def test_enable_a_subset_and_read_it_back() -> None:
    with SoftNic() as nic:
        assert isinstance(nic, SoftNic)
        want = Selection([ChecksumCaps(tx=ChecksumFlags.TCP_IPV4, rx=ChecksumFlags.TCP_IPV4)])
        assert nic.enable(want) == want
        assert nic.enabled() == want
        assert [s.advertised.task for s in nic.status() if s.enabled] == [Task.CHECKSUM]
        assert nic.enable(Selection()) == Selection()


def test_enable_refuses_what_was_not_advertised() -> None:
    caps = [ChecksumCaps(tx=ChecksumFlags.TCP_IPV4, rx=ChecksumFlags.NONE)]
    with SoftNic(caps=caps) as nic:
        assert isinstance(nic, SoftNic)
        before = nic.enabled()
        with pytest.raises(SelectionError, match="tcp_segmentation"):
            nic.enable(Selection([TcpSegmentationCaps()]))
        with pytest.raises(SelectionError, match="checksum"):
            nic.enable(Selection([ChecksumCaps(tx=ChecksumFlags.UDP_IPV4)]))
        assert nic.enabled() == before
        assert nic.capabilities() == caps


# -- data path ----------------------------------------------------------------------------


def test_plain_frames_cross_and_are_counted(pair: tuple[SoftNic, SoftNic]) -> None:
    a, b = pair
    frames = [bytes([i]) * (60 + i) for i in range(100)]
    a.send_all([Packet(f) for f in frames])
    got = _receive(b, 100)
    assert [bytes(p.data) for p in got] == frames
    stats = a.stats()
    assert (stats.tx_packets, stats.tx_bytes) == (100, sum(map(len, frames)))
    assert b.stats().rx_packets == 100


def test_frames_built_in_pool_buffers_are_sent_in_place(pair: tuple[SoftNic, SoftNic]) -> None:
    a, b = pair
    views = a.tx_buffers(4)
    assert len(views) == 4 and all(len(v) >= 65600 for v in views)
    for i, view in enumerate(views):
        view[:100] = bytes([i]) * 100
    assert a.send([Packet(v[:100]) for v in views]) == 4
    got = _receive(b, 4)
    assert [bytes(p.data) for p in got] == [bytes([i]) * 100 for i in range(4)]


def test_received_views_live_until_released(pair: tuple[SoftNic, SoftNic]) -> None:
    a, b = pair
    a.send_all([Packet(b"\x01" * 64)])
    assert b.wait(5.0)
    first = b.recv()
    assert isinstance(first[0].data, memoryview) and bytes(first[0].data) == b"\x01" * 64
    assert b.rx_held == 1
    # More than every receive slot: the others are reused many times over, the held one never.
    a.send_all([Packet(b"\x02" * 64)] * 300)
    assert len(_receive(b, 300)) == 300
    assert bytes(first[0].data) == b"\x01" * 64
    b.release(first)
    assert b.rx_held == 0


def test_a_host_that_releases_nothing_pauses_the_port(pair: tuple[SoftNic, SoftNic]) -> None:
    a, b = pair
    slots = b.geometry.rx_slots
    a.send_all([Packet(bytes([i % 251]) * 80) for i in range(slots + 40)])
    held: list[Packet] = []
    while b.wait(1.0):
        batch = b.recv(512)
        if not batch:
            break
        held += batch
    # Every slot is held: the port stopped taking frames rather than overwrite one.
    assert len(held) == slots
    assert [bytes(p.data) for p in held] == [bytes([i % 251]) * 80 for i in range(slots)]
    b.release()
    rest = _receive(b, 40)
    assert [bytes(p.data) for p in rest] == [
        bytes([i % 251]) * 80 for i in range(slots, slots + 40)
    ]


def test_checksum_and_segmentation_match_the_engine(pair: tuple[SoftNic, SoftNic]) -> None:
    a, b = pair
    b.enable(Selection())  # the receiver passes frames up as they came off the wire
    _, packets = _tcp_frames(20000)
    super_packet = packets[0]
    assert super_packet.tx.segmentation is not None
    expected = gso.segment(bytes(super_packet.data), VirtioNetHdr.from_tx_request(super_packet.tx))
    a.send_all([super_packet])
    got = _receive(b, len(expected))
    assert [bytes(p.data) for p in got] == [bytes(s) for s in expected]
    assert a.stats().tasks[Task.TCP_SEGMENTATION.label] >= 1


def test_receive_verifies_and_coalesces(pair: tuple[SoftNic, SoftNic]) -> None:
    a, b = pair
    _, packets = _tcp_frames(60000)
    segments = -(-60000 // 1448)
    a.send_all(packets)
    got: list[Packet] = []
    while sum(p.rx.segments for p in got) < segments and b.wait(5.0):
        batch = b.recv()
        got += [Packet(bytes(p.data), rx=p.rx) for p in batch]
        b.release(batch)
    assert sum(p.rx.segments for p in got) == segments
    assert len(got) < segments  # how the reads fell decides the cut, not whether it merges
    assert all(p.rx.l4 is ChecksumStatus.VERIFIED for p in got)
    merged = [p.rx.assembled for p in got if p.rx.segments > 1]
    assert merged and all(m is not None and m.gso_type is GsoType.TCPV4 for m in merged)
    assert b.stats().tasks[Task.TCP_ASSEMBLY.label] >= 2


def test_a_task_that_is_not_enabled_is_dropped_and_counted(pair: tuple[SoftNic, SoftNic]) -> None:
    a, b = pair
    a.enable(Selection())
    _, packets = _tcp_frames(5000)
    a.send_all(packets)
    a.send_all([Packet(b"\x00" * 60)])
    got = _receive(b, 1)
    assert [bytes(p.data) for p in got] == [b"\x00" * 60]
    assert a.stats().drops[DropReason.OUTSIDE_CAPABILITY.value] == len(packets)


# -- bad input ----------------------------------------------------------------------------


def test_rejected_virtio_headers_are_dropped_and_the_firmware_survives(
    pair: tuple[SoftNic, SoftNic],
) -> None:
    a, b = pair
    _, packets = _tcp_frames(5000)
    frame = bytes(packets[0].data)
    bad = [
        VirtioNetHdr(gso_type=2),  # no such gso_type
        VirtioNetHdr(flags=2),  # DATA_VALID is a receive flag
        VirtioNetHdr(flags=1, gso_type=1, gso_size=0, csum_start=34, csum_offset=16),
        VirtioNetHdr(flags=1, gso_type=1, gso_size=1448, csum_start=34, csum_offset=6),
        VirtioNetHdr(flags=1, csum_start=60000, csum_offset=16),
    ]
    assert a.send_vnet([(h, frame) for h in bad]) == len(bad)
    assert a.send_vnet([(VirtioNetHdr(), b"\x07" * 60)]) == 1
    got = _receive(b, 1)
    assert [bytes(p.data) for p in got] == [b"\x07" * 60]
    stats = a.stats()
    assert stats.dropped == len(bad)
    # Unknown gso_type, a receive-only flag, gso_size 0: no request can hold them.
    assert stats.drops[DropReason.BAD_VNET_HDR.value] == 3
    assert stats.drops[DropReason.CSUM_OFFSETS_INVALID.value] == 2


def test_malformed_frames_from_the_wire() -> None:
    with SoftNic() as nic:
        assert isinstance(nic, SoftNic) and nic.peer is not None
        garbage = b"\xff" * 12 + b"\x08\x00" + b"\x45" * 30  # IPv4 header that lies
        for frame in (b"", b"\x00" * 5, b"\x01" * 13, garbage):
            nic.peer.send(frame)
        _, packets = _tcp_frames(1000)
        nic.peer.send(bytes(packets[0].data))  # still carrying the pseudo-header sum
        got = _receive(nic, 2)
        # A runt is dropped; a frame the NIC cannot parse goes up unchecked, as on Linux.
        assert [bytes(p.data) for p in got[:1]] == [garbage]
        assert got[0].rx.l4 is ChecksumStatus.NOT_CHECKED
        assert got[1].rx.l4 is ChecksumStatus.FAILED
        assert nic.stats().drops[DropReason.MALFORMED_FRAME.value] == 3


def test_mtu_exceeded_on_the_wire_is_counted() -> None:
    with Cable(Impairments(mtu=1500)) as cable, SoftNic(cable=cable.a) as nic:
        assert isinstance(nic, SoftNic)
        nic.enable(Selection())
        nic.send_all([Packet(b"\x00" * 1514), Packet(b"\x00" * 1515)])
        assert cable.b.recv(timeout_s=5.0) == b"\x00" * 1514
        nic.flush()
        stats = nic.stats()
        # The device sent both; the cable refused one, and says so in its own counters.
        assert stats.tx_packets == 2 and stats.dropped == 0
        assert nic.cable_counters()["mtu_exceeded"] == 1


# -- failure and lifetime -----------------------------------------------------------------


def test_killed_firmware_raises_device_error_not_a_hang() -> None:
    nic = SoftNic()
    try:
        os.kill(nic.firmware_pid, signal.SIGKILL)
        with pytest.raises(DeviceError, match="firmware exited with signal SIGKILL"):
            nic.wait(30.0)
        for call in (nic.recv, nic.stats, nic.capabilities, lambda: nic.send([Packet(b"x")])):
            with pytest.raises(DeviceError, match="SIGKILL"):
                call()
    finally:
        nic.close()


def test_killed_firmware_during_a_control_call() -> None:
    nic = SoftNic()
    try:
        os.kill(nic.firmware_pid, signal.SIGKILL)
        with pytest.raises(DeviceError, match="firmware exited"):
            nic.stats()
    finally:
        nic.close()


def test_close_is_idempotent_and_final() -> None:
    nic = SoftNic()
    nic.close()
    nic.close()
    with pytest.raises(DeviceError, match="closed"):
        nic.recv()


def test_dropping_the_last_reference_stops_the_firmware() -> None:
    nic = SoftNic()
    pid = nic.firmware_pid
    del nic
    gc.collect()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_firmware_sees_a_peer_hold_the_other_end() -> None:
    with SoftNic() as nic:
        assert isinstance(nic, SoftNic) and nic.peer is not None
        nic.peer.send(b"\x09" * 80)
        assert nic.peer.drain()
        got = _receive(nic, 1)
        assert [bytes(p.data) for p in got] == [b"\x09" * 80]
