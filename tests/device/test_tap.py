"""TapDevice: creation, capability probe, enable, and frames through the kernel."""

from __future__ import annotations

import os
import select
import socket
import time

import pytest

from netoffload.device.base import DeviceError
from netoffload.device.tap import (
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TapDevice,
)
from netoffload.device.vnet import segments_of
from netoffload.netns import Netns
from netoffload.offload import (
    ChecksumCaps,
    ChecksumRequest,
    ClassificationCaps,
    DropReason,
    GsoType,
    IpVersions,
    Packet,
    RssHashTypes,
    SegmentationRequest,
    Selection,
    SelectionError,
    Task,
    TcpAssemblyCaps,
    TxRequest,
    UdpAssemblyCaps,
    VirtioNetHdr,
)
from tests.device.device_frames import MAC_A, MAC_B, V4_A, V4_B, icmp_echo_v4, tcp_frame, udp_frame

pytestmark = pytest.mark.privileged


def _read_until(tap: TapDevice, want: int, timeout_s: float = 3.0) -> list[Packet]:
    got: list[Packet] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        select.select([tap.fileno()], [], [], 0.1)
        got.extend(tap.recv(64))
    return got


def _tap_in(ns: Netns, name: str = "nsotap0", **kwargs: object) -> TapDevice:
    with ns.entered():
        tap = TapDevice(name, **kwargs)  # type: ignore[arg-type]
    ns.set_link(name, mac=MAC_B)
    ns.add_address(name, f"{V4_B}/24")
    ns.add_neighbour(name, str(V4_A), MAC_A)
    return tap


def test_create_probe_and_close(netns: Netns) -> None:
    with netns.entered():
        tap = TapDevice("nsotap0")
    try:
        assert tap.name == "nsotap0"
        assert "nsotap0" in netns.link_names()
        tasks = {r.task for r in tap.capabilities()}
        # Every kernel this library supports (>= 4.x) takes CSUM and TSO4/6.
        assert {Task.CHECKSUM, Task.TCP_SEGMENTATION, Task.TCP_ASSEMBLY} <= tasks
        # Transmit checksum and segmentation are the kernel's whatever the flags say.
        assert tap.enabled() == tap.fixed_selection()
        assert set(tap.enabled()) == {
            Task.CHECKSUM,
            Task.TCP_SEGMENTATION,
            Task.UDP_SEGMENTATION,
        }
        assert tap.offload_flags() == 0
        fixed = {s.advertised.task for s in tap.status() if not s.changeable}
        assert fixed == {Task.TCP_SEGMENTATION, Task.UDP_SEGMENTATION}
    finally:
        tap.close()
    assert "nsotap0" not in netns.link_names()
    tap.close()  # idempotent


def test_kernel_chooses_a_name(netns: Netns) -> None:
    with netns.entered(), TapDevice() as tap:
        assert tap.name.startswith("tap")


def test_enable_sets_and_clears_offload_flags(netns: Netns) -> None:
    with netns.entered():
        tap = TapDevice("nsotap0")
    with tap:
        everything = Selection(tap.capabilities())
        tap.enable(everything)
        assert tap.offload_flags() & (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) == 0x7
        assert tap.enabled() == everything
        with netns.entered():
            from netoffload.device.ethtool import read_features

            features = read_features("nsotap0")
        assert features["tx-tcp-segmentation"].active
        assert features["tx-checksum-ip-generic"].active
        tap.enable(tap.fixed_selection().with_task(ChecksumCaps(*_csum_args(tap))))
        assert tap.offload_flags() == TUN_F_CSUM
        tap.enable(tap.fixed_selection())
        assert tap.offload_flags() == 0
        with netns.entered():
            assert not read_features("nsotap0")["tx-checksum-ip-generic"].active


def _csum_args(tap: TapDevice) -> tuple[object, object]:
    record = next(r for r in tap.capabilities() if isinstance(r, ChecksumCaps))
    return record.tx, record.rx


def test_enable_refuses_assembly_without_receive_checksums(netns: Netns) -> None:
    with netns.entered(), TapDevice("nsotap0") as tap:
        fixed = tap.fixed_selection()
        with pytest.raises(SelectionError, match="needs receive checksums"):
            tap.enable(fixed.with_task(TcpAssemblyCaps(versions=IpVersions.IPV4)))
        if any(isinstance(r, UdpAssemblyCaps) for r in tap.capabilities()):
            with pytest.raises(SelectionError, match="IPv4 and IPv6 together"):
                tap.enable(fixed.with_task(UdpAssemblyCaps(versions=IpVersions.IPV4)))
        assert tap.offload_flags() == 0


def test_fixed_transmit_tasks_cannot_be_turned_off(netns: Netns) -> None:
    with netns.entered(), TapDevice("nsotap0") as tap:
        for task in (Task.CHECKSUM, Task.TCP_SEGMENTATION, Task.UDP_SEGMENTATION):
            with pytest.raises(SelectionError, match="fixed"):
                tap.enable(tap.fixed_selection().without(task))
        assert tap.offload_flags() == 0


def test_attach_to_existing_tap_keeps_its_flags(netns: Netns) -> None:
    with netns.entered():
        first = TapDevice("nsotap0")
        first.enable(first.fixed_selection().with_task(ChecksumCaps(*_csum_args(first))))
        try:
            with TapDevice("nsotap0", create=False) as again:
                pass
        except DeviceError as exc:
            # A single-queue TAP has one fd; a second attach is busy.
            assert "busy" in str(exc)
        else:
            assert again.offload_flags() == TUN_F_CSUM
        first.close()


def test_missing_interface_without_create_is_one_line_error(netns: Netns) -> None:
    with netns.entered(), pytest.raises(DeviceError, match="no such interface") as info:
        TapDevice("nso-missing", create=False)
    assert "\n" not in str(info.value)


def test_multi_queue_has_one_fd_per_queue(netns: Netns) -> None:
    with netns.entered(), TapDevice("nsotap0", queues=3) as tap:
        fds = tap.filenos()
        assert len(set(fds)) == 3
        assert tap.fileno() == fds[0]


def test_multi_queue_transmits_on_every_queue_a_flow_on_one(netns: Netns) -> None:
    """64 UDP flows written into a 2-queue TAP reach a kernel socket; both queues carry
    flows, and each flow keeps to one (its datagrams arrive in order)."""
    tap = _tap_in(netns, queues=2)
    with tap:
        # The records say so: two queues, the kernel's choice (none of our hash types, no rules).
        (record,) = [r for r in tap.capabilities() if isinstance(r, ClassificationCaps)]
        assert (record.queues, record.hash_types, record.rule_slots) == (2, RssHashTypes.NONE, 0)
        status = {s.advertised.task: s for s in tap.status()}
        assert not status[Task.CLASSIFICATION].changeable
        with netns.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.bind((str(V4_B), 5001))
            sock.settimeout(3)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            frames = [
                Packet(udp_frame(4, bytes([k]), sport=41000 + flow))
                for k in range(4)
                for flow in range(64)
            ]
            assert tap.send(frames) == len(frames)
            seen: dict[int, list[int]] = {}
            for _ in frames:
                data, (_, sport) = sock.recvfrom(2048)
                seen.setdefault(sport, []).append(data[0])
        assert len(seen) == 64 and all(order == [0, 1, 2, 3] for order in seen.values())
        per_queue = tap.tx_queue_packets
        assert sum(per_queue) == len(frames) and min(per_queue) > 0


def test_ping_through_the_kernel(netns: Netns) -> None:
    """An echo request written into the TAP comes back as a reply read from it."""
    tap = _tap_in(netns)
    with tap:
        request = icmp_echo_v4(seq=5)
        assert tap.send([Packet(request)]) == 1
        replies = [
            p
            for p in _read_until(tap, 1)
            if bytes(p.data[12:14]) == b"\x08\x00" and p.data[23] == 1
        ]
        assert replies, "no ICMP reply from the kernel"
        reply = bytes(replies[0].data)
        assert reply[:6] == MAC_A and reply[6:12] == MAC_B
        assert reply[26:30] == V4_B.packed and reply[30:34] == V4_A.packed
        assert reply[34] == 0  # echo reply
        stats = tap.stats()
        assert stats.tx_packets == 1 and stats.tx_bytes == len(request)
        assert stats.rx_packets >= 1


def test_needs_csum_write_reaches_a_kernel_socket(netns: Netns) -> None:
    tap = _tap_in(netns)
    with tap:
        # No TUNSETOFFLOAD flag: the kernel fills a checksum it is asked to on any write.
        assert tap.offload_flags() == 0
        with netns.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.bind((str(V4_B), 5001))
            sock.settimeout(3)
            frame = udp_frame(4, b"filled by the kernel", partial=True)
            request = TxRequest(checksum=ChecksumRequest(34, 6))
            assert tap.send([Packet(frame, tx=request)]) == 1
            data, addr = sock.recvfrom(2048)
        assert data == b"filled by the kernel"
        assert addr == (str(V4_A), 40000)
        assert tap.stats().tasks["checksum"] == 1


def test_request_outside_the_tap_is_counted_not_written(netns: Netns) -> None:
    with netns.entered(), TapDevice("nsotap0") as tap:
        frame = udp_frame(4, b"x" * 100, partial=True)
        header_only = TxRequest(checksum=ChecksumRequest(34, 6), ipv4_header_checksum=True)
        launch = TxRequest(launch_time_ns=1_000)
        assert tap.send([Packet(frame, tx=header_only), Packet(frame, tx=launch)]) == 2
        stats = tap.stats()
        assert stats.drops[DropReason.OUTSIDE_CAPABILITY.value] == 2
        assert stats.tx_packets == 0


def test_kernel_rejected_header_is_counted(netns: Netns) -> None:
    """A UDP_L4 request with a TCP checksum offset: the kernel refuses the write (EINVAL)."""
    with netns.entered(), TapDevice("nsotap0") as tap:
        tap.enable(Selection(tap.capabilities()))
        frame = udp_frame(4, b"y" * 3000, partial=True)
        request = TxRequest(
            checksum=ChecksumRequest(34, 16),
            segmentation=SegmentationRequest(GsoType.UDP_L4, 1000, 42),
        )
        tap.set_up(True)
        assert tap.send([Packet(frame, tx=request)]) == 1
        assert tap.stats().drops[DropReason.BAD_VNET_HDR.value] == 1


def test_segments_of_counts_from_the_l4_header() -> None:
    frame = memoryview(tcp_frame(4, b"z" * 4000, partial=True))
    hdr = VirtioNetHdr(1, int(GsoType.TCPV4), 54, 1448, 34, 16)
    assert segments_of(hdr, frame) == 3
    assert segments_of(VirtioNetHdr(), frame) == 1


def test_name_taken_by_another_kind_is_one_line_error(netns: Netns) -> None:
    """Opening a TAP whose name belongs to a bridge fails with one line naming it."""
    netns.add_bridge("nsobr0")
    with netns.entered(), pytest.raises(DeviceError) as info:
        TapDevice("nsobr0")
    assert "\n" not in str(info.value)
    assert "nsobr0" in str(info.value)


def test_nonblocking_read_returns_empty(netns: Netns) -> None:
    with netns.entered(), TapDevice("nsotap0", up=False) as tap:
        assert tap.recv() == []
        assert os.get_blocking(tap.fileno()) is False
