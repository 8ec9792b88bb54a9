"""HostOffload: the software fallback gives the same bytes on the wire as the device."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netoffload.demo.flow import BulkFlowGenerator, FlowSpec, build_all
from netoffload.device.cable import CableEnd
from netoffload.device.softnic import SoftNic
from netoffload.host import HostOffload
from netoffload.offload import (
    ChecksumStatus,
    GsoType,
    Packet,
    Selection,
    Task,
    TcpAssemblyCaps,
    TcpSegmentationCaps,
    UdpSegmentationCaps,
)


@pytest.fixture(autouse=True)
def host_tests_leave_nothing_behind() -> Iterator[None]:
    """No firmware process and no /dev/shm segment outlives a test."""
    shm_before = set(os.listdir("/dev/shm"))
    yield
    gc.collect()
    assert psutil.Process().children(recursive=True) == []
    assert set(os.listdir("/dev/shm")) - shm_before == set()


def _capture(nic: SoftNic, peer: CableEnd, expected: int) -> list[bytes]:
    """Every frame the NIC put on its cable, up to ``expected`` of them."""
    nic.flush()
    frames: list[bytes] = []
    while len(frames) < expected:
        batch = peer.recv_batch(256, timeout_s=5.0)
        if not batch:
            break
        frames += [bytes(f) for f in batch]
    return frames


def _segments(gen: BulkFlowGenerator) -> int:
    step = gen.spec.data_per_segment
    return sum(-(-size // step) for _, size in gen.chunks)


def _send_both_ways(nic: SoftNic, gen: BulkFlowGenerator) -> tuple[list[bytes], list[bytes]]:
    assert nic.peer is not None
    expected = _segments(gen)
    nic.enable(Selection.everything(nic.capabilities()))
    host = HostOffload(nic)
    host.send(build_all(gen))
    assert host.flush()
    assert host.stats.tasks == {}  # nothing was left to the host
    offloaded = _capture(nic, nic.peer, expected)
    nic.enable(Selection())
    host = HostOffload(nic)
    host.send(build_all(gen))
    assert host.flush()
    software = _capture(nic, nic.peer, expected)
    return offloaded, software


@pytest.fixture(scope="module")
def shared_nic() -> Iterator[SoftNic]:
    nic = SoftNic(name="host-test")
    try:
        yield nic
    finally:
        nic.close()


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    size=st.integers(min_value=1, max_value=150_000),
    mss=st.integers(min_value=536, max_value=1448),
    udp=st.booleans(),
    ipv6=st.booleans(),
)
def test_offload_on_and_off_put_identical_bytes_on_the_wire(
    size: int, mss: int, udp: bool, ipv6: bool
) -> None:
    # A segment must fit the cable's 1500-byte MTU: IPv6 and UDP headers leave less room.
    mss = min(mss, 1500 - (40 if ipv6 else 20) - (8 if udp else 20))
    spec = FlowSpec(
        protocol="udp" if udp else "tcp",
        ipv6=ipv6,
        segment_bytes=mss,
        segments=max(1, min(40 if udp else 45, 60000 // mss)),
    )
    gen = BulkFlowGenerator(os.urandom(size), spec)
    with SoftNic() as nic:
        assert isinstance(nic, SoftNic)
        offloaded, software = _send_both_ways(nic, gen)
    assert len(offloaded) == _segments(gen)
    assert offloaded == software


def test_a_device_without_checksum_makes_the_host_segment_too() -> None:
    caps = [TcpSegmentationCaps(), UdpSegmentationCaps(), TcpAssemblyCaps()]
    gen = BulkFlowGenerator(os.urandom(100_000), FlowSpec())
    with SoftNic(caps=caps) as nic:
        assert isinstance(nic, SoftNic) and nic.peer is not None
        host = HostOffload(nic)
        packets = build_all(gen)
        host.send(packets)
        assert host.flush()
        frames = _capture(nic, nic.peer, _segments(gen))
        assert nic.stats().dropped == 0
        # Every super-packet's checksum was refused, so its segmentation moved too.
        assert host.stats.fallbacks == {"checksum/not_enabled": len(packets)}
        assert host.stats.tasks[Task.TCP_SEGMENTATION.label] == len(packets)
    with SoftNic() as reference:
        assert isinstance(reference, SoftNic) and reference.peer is not None
        HostOffload(reference).send(build_all(gen))
        assert frames == _capture(reference, reference.peer, _segments(gen))


def test_allow_keeps_work_on_the_host_even_when_enabled() -> None:
    gen = BulkFlowGenerator(os.urandom(20_000), FlowSpec())
    with SoftNic() as nic:
        assert isinstance(nic, SoftNic) and nic.peer is not None
        host = HostOffload(nic, allow=frozenset())
        host.send(build_all(gen))
        assert host.flush()
        frames = _capture(nic, nic.peer, _segments(gen))
        assert len(frames) == _segments(gen)
        assert host.stats.tasks[Task.TCP_SEGMENTATION.label] == len(gen)
        assert Task.TCP_SEGMENTATION.label not in nic.stats().tasks


def test_receive_verifies_in_software_what_the_device_did_not() -> None:
    gen = BulkFlowGenerator(os.urandom(3000), FlowSpec())
    with SoftNic() as sender, SoftNic() as receiver:
        assert isinstance(sender, SoftNic) and isinstance(receiver, SoftNic)
        assert sender.peer is not None and receiver.peer is not None
        HostOffload(sender).send(build_all(gen))
        good = _capture(sender, sender.peer, 3)
        bad = bytearray(good[0])
        bad[-1] ^= 0x01
        receiver.enable(Selection())
        host = HostOffload(receiver)
        for frame in [*good, bytes(bad)]:
            receiver.peer.send(frame)
        got: list[Packet] = []
        while len(got) < 4 and receiver.wait(5.0):
            batch = host.recv()
            got += [Packet(bytes(p.data), rx=p.rx) for p in batch]
            host.release(batch)
        assert [p.rx.l4 for p in got] == [ChecksumStatus.VERIFIED] * 3 + [ChecksumStatus.FAILED]
        assert host.stats.tasks[Task.CHECKSUM.label] == 4


def test_receive_leaves_alone_what_the_device_did() -> None:
    gen = BulkFlowGenerator(os.urandom(30_000), FlowSpec())
    with SoftNic() as sender, SoftNic() as receiver:
        assert isinstance(sender, SoftNic) and isinstance(receiver, SoftNic)
        assert sender.peer is not None and receiver.peer is not None
        HostOffload(sender).send(build_all(gen))
        frames = _capture(sender, sender.peer, _segments(gen))
        receiver.peer.send_batch(frames)
        host = HostOffload(receiver, rx_tasks={Task.CHECKSUM, Task.TCP_ASSEMBLY})
        assert host.host_rx_tasks() == {Task.CHECKSUM}  # only for what the device left open
        got: list[Packet] = []
        while sum(p.rx.segments for p in got) < len(frames) and receiver.wait(5.0):
            batch = host.recv()
            got += [Packet(bytes(p.data), rx=p.rx) for p in batch]
            host.release(batch)
        # Where a super-packet ends depends on how the firmware's reads fell; what it
        # holds does not.
        assert sum(p.rx.segments for p in got) == len(frames) and len(got) < len(frames)
        for packet in got:
            assert packet.rx.l4 is ChecksumStatus.VERIFIED
            if packet.rx.segments > 1:
                assert packet.rx.assembled is not None
                assert packet.rx.assembled.gso_type is GsoType.TCPV4
        assert host.stats.tasks == {}


def test_received_packets_are_counted_even_when_the_host_does_nothing() -> None:
    with SoftNic() as nic:
        assert isinstance(nic, SoftNic) and nic.peer is not None
        host = HostOffload(nic, rx_tasks=frozenset())
        frames = [bytes([i]) * 100 for i in range(5)]
        nic.peer.send_batch(frames)
        got: list[bytes] = []
        while len(got) < 5 and nic.wait(5.0):
            batch = host.recv()
            got += [bytes(p.data) for p in batch]
            host.release(batch)
        assert got == frames
        assert host.stats.rx_packets == 5 and host.stats.rx_bytes == 500
        assert host.stats.tasks == {}
