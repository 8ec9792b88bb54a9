"""PacketDevice: capabilities from real features, rings in both directions, GSO via the TX ring."""

from __future__ import annotations

import select
import socket
import time

import pytest

from netoffload.device.base import DeviceError
from netoffload.device.ethtool import read_features
from netoffload.device.packet import PacketDevice
from netoffload.netns import Netns
from netoffload.offload import (
    ChecksumRequest,
    ClassificationCaps,
    GsoType,
    Packet,
    RssHashTypes,
    SegmentationRequest,
    SelectionError,
    Task,
    TxRequest,
)
from tests.device.device_frames import MAC_A, V4_A, V4_B, tcp_frame, udp_frame

pytestmark = pytest.mark.privileged


@pytest.fixture
def veth(netns: Netns) -> Netns:
    netns.add_veth("nsova", "nsovb")
    netns.set_link("nsova", up=True)
    netns.set_link("nsovb", up=True)
    return netns


def _drain(dev: PacketDevice, want: int, timeout_s: float = 3.0) -> list[Packet]:
    got: list[Packet] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        select.select([dev.fileno()], [], [], 0.1)
        got.extend(dev.recv(64))
    return got


def test_capabilities_follow_the_interface_features(veth: Netns) -> None:
    with veth.entered(), PacketDevice("nsova", rings=False) as dev:
        tasks = {r.task for r in dev.capabilities()}
        assert {Task.CHECKSUM, Task.TCP_SEGMENTATION, Task.TCP_ASSEMBLY} <= tasks
        on = dev.enabled()
        assert Task.TCP_SEGMENTATION in on and Task.TCP_ASSEMBLY not in on
        status = {s.advertised.task: s for s in dev.status()}
        assert status[Task.CHECKSUM].changeable


def test_enable_turns_kernel_features_on_and_off(veth: Netns) -> None:
    with veth.entered(), PacketDevice("nsova", rings=False) as dev:
        offered = {r.task: r for r in dev.capabilities()}
        after = dev.enable(dev.enabled().without(Task.TCP_SEGMENTATION))
        assert Task.TCP_SEGMENTATION not in after
        features = read_features("nsova")
        assert not features["tx-tcp-segmentation"].active
        assert not features["tx-tcp6-segmentation"].active
        after = dev.enable(after.with_task(offered[Task.TCP_ASSEMBLY]))
        assert Task.TCP_ASSEMBLY in after
        assert read_features("nsova")["rx-gro"].active


def test_fixed_feature_cannot_be_disabled(netns: Netns) -> None:
    with (
        netns.entered(),
        PacketDevice("lo", rings=False) as dev,
        pytest.raises(SelectionError, match="is fixed on lo"),
    ):
        dev.enable(dev.enabled().without(Task.CHECKSUM))


def test_missing_interface() -> None:
    with pytest.raises(DeviceError, match="no such interface"):
        PacketDevice("nso-missing")


def test_frames_cross_the_rings(veth: Netns) -> None:
    with veth.entered():
        a, b = PacketDevice("nsova", ring_frames=8), PacketDevice("nsovb", ring_frames=32)
    with a, b:
        frames = [udp_frame(4, bytes([i]) * (100 + i)) for i in range(20)]
        sent = 0
        deadline = time.monotonic() + 3
        while sent < len(frames) and time.monotonic() < deadline:
            sent += a.send([Packet(f) for f in frames[sent:]])
        assert sent == len(frames)
        got = _drain(b, len(frames))
        assert [bytes(p.data) for p in got] == frames
        assert a.stats().tx_packets == 20 and b.stats().rx_packets == 20


def test_full_rx_ring_drops_are_counted(veth: Netns) -> None:
    with veth.entered():
        a, b = PacketDevice("nsova", ring_frames=32), PacketDevice("nsovb", ring_frames=4)
    with a, b:
        assert a.send([Packet(udp_frame(4, b"q" * 64)) for _ in range(12)]) == 12
        deadline = time.monotonic() + 3
        while b.stats().drops["ring_full"] < 8 and time.monotonic() < deadline:
            select.select([], [], [], 0.05)
        assert len(b.recv(64)) == 4
        assert b.stats().drops["ring_full"] == 8


def test_gso_super_packet_leaves_through_the_tx_ring(veth: Netns) -> None:
    """A TCP super-packet with a vnet header in a TX slot arrives segmented at the peer."""
    veth.set_features(
        "nsova",
        dict.fromkeys(
            ("tx-tcp-segmentation", "tx-tcp6-segmentation", "tx-checksum-ip-generic"), False
        ),
    )
    with veth.entered():
        a, b = PacketDevice("nsova", ring_frames=4), PacketDevice("nsovb", ring_frames=16)
    with a, b:
        payload = bytes(range(256)) * 20  # 5120 bytes: 4 segments at MSS 1448
        frame = tcp_frame(4, payload, partial=True)
        request = TxRequest(
            checksum=ChecksumRequest(34, 16),
            segmentation=SegmentationRequest(GsoType.TCPV4, 1448, 54),
        )
        assert a.send([Packet(frame, tx=request)]) == 1
        got = _drain(b, 4)
        assert len(got) == 4
        assert [len(p.data) - 54 for p in got] == [1448, 1448, 1448, 776]
        assert b"".join(bytes(p.data[54:]) for p in got) == payload
        assert a.stats().tasks["tcp_segmentation"] == 1


def test_oversized_frame_is_counted(veth: Netns) -> None:
    with veth.entered(), PacketDevice("nsova", ring_frames=2, frame_bytes=2048) as dev:
        assert dev.send([Packet(udp_frame(4, b"x" * 3000))]) == 1
        assert dev.stats().drops["too_large"] == 1
        assert dev.stats().tx_packets == 0


def test_fanout_queues_keep_each_flow_on_one_queue(veth: Netns) -> None:
    """Two PACKET_FANOUT queues on one interface: the kernel's flow hash picks the queue, so
    every flow is seen on exactly one of them (and 64 flows use both)."""
    veth.add_address("nsovb", f"{V4_B}/24")
    veth.add_neighbour("nsovb", str(V4_A), MAC_A)
    with veth.entered():
        queues = PacketDevice.queues("nsova", 2)
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
    try:
        # The records say so: two queues, the kernel's hash picks (no hash types or rule
        # slots of ours), on whatever is asked.
        kernel_picks = ClassificationCaps(rule_slots=0, queues=2, hash_types=RssHashTypes.NONE)
        for dev in queues:
            assert kernel_picks in dev.capabilities()
            assert dev.enabled().get(Task.CLASSIFICATION) == kernel_picks
            assert dev.fixed_selection().get(Task.CLASSIFICATION) == kernel_picks
            assert dev.enable(dev.enabled()).get(Task.CLASSIFICATION) == kernel_picks
        seen: dict[int, set[int]] = {}

        def drain(wait_s: float) -> None:
            select.select([q.fileno() for q in queues], [], [], wait_s)
            for index, dev in enumerate(queues):
                for packet in dev.recv(64):
                    frame = bytes(packet.data)
                    if frame[12:14] == b"\x08\x00" and frame[23] == 17:
                        seen.setdefault(int.from_bytes(frame[34:36], "big"), set()).add(index)
                dev.release()

        for flow, sock in enumerate(senders):
            sock.bind((str(V4_B), 42000 + flow))
            for k in range(2):
                sock.sendto(bytes([k]), (str(V4_A), 5001))
            drain(0.0)
        deadline = time.monotonic() + 5
        while len(seen) < 64 and time.monotonic() < deadline:
            drain(0.1)
        assert len(seen) == 64
        assert all(len(where) == 1 for where in seen.values())
        assert {q for where in seen.values() for q in where} == {0, 1}
    finally:
        for sock in senders:
            sock.close()
        for dev in queues:
            dev.close()
