"""XdpDevice against the kernel on a veth pair in a private namespace.

Frames both ways between the UMEM and kernel sockets (UDP, ICMP echo);
receive chunks lent and given back through the fill ring; no capabilities,
and a request for any task dropped with a reason; host segmentation and
checksums built in UMEM rows, the kernel's UDP checksum counters the oracle;
the XDP program gone from the interface after ``close()`` and after a
set-up that fails half way; bad frames and bad descriptors never break
``recv``. Addresses are 198.18.0.0/15 only.
"""

from __future__ import annotations

import gc
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from pyroute2 import IPRoute

from netoffload.cli import main
from netoffload.device.base import DeviceError
from netoffload.device.names import open_device
from netoffload.device.xdp import XdpDevice, af_xdp_missing
from netoffload.device.xsk import DescRing
from netoffload.host import HostOffload
from netoffload.netns import Netns
from netoffload.offload import (
    ChecksumCaps,
    ChecksumFlags,
    ChecksumRequest,
    ChecksumStatus,
    GsoType,
    Packet,
    SegmentationRequest,
    Selection,
    SelectionError,
    TxRequest,
)
from netoffload.wire import Icmpv4EchoRepr, Icmpv4Repr, Ipv4Packet, UdpPacket
from tests.device.device_frames import MAC_A, MAC_B, V4_A, icmp_echo_v4, tcp_frame, udp_frame

pytestmark = pytest.mark.privileged


@pytest.fixture(autouse=True)
def _af_xdp() -> None:
    """Skip, naming the kernel feature, on a machine that cannot run an XdpDevice."""
    if os.geteuid() == 0 and (missing := af_xdp_missing()) is not None:
        pytest.skip(missing)


OURS, PEER = "nsoxa", "nsoxb"
PORT = 5001


@pytest.fixture
def pair(netns: Netns) -> Netns:
    """``nsoxa`` (ours, MAC_A) -- ``nsoxb`` (the kernel's, MAC_B, 198.18.0.2/24).

    The kernel's side computes its checksums (tx-checksumming off): a partial
    checksum never crosses XDP (README, known limits).
    """
    netns.add_veth(OURS, PEER)
    netns.set_link(OURS, up=True, mac=MAC_A)
    netns.set_link(PEER, up=True, mac=MAC_B)
    netns.set_features(PEER, {"tx-checksum-ip-generic": False})
    netns.add_address(PEER, "198.18.0.2/24")
    netns.add_neighbour(PEER, str(V4_A), MAC_A)
    return netns


@pytest.fixture
def dev(pair: Netns) -> Iterator[XdpDevice]:
    with pair.entered():
        device = XdpDevice(OURS, frames=64)
    with device:
        yield device


def _udp_socket(ns: Netns) -> socket.socket:
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("198.18.0.2", PORT))
    sock.settimeout(3)
    return sock


def _read(dev: XdpDevice, want: int, timeout_s: float = 3.0) -> list[Packet]:
    got: list[Packet] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        dev.wait(0.1)
        got += dev.recv(64)
    return got


def _xdp_attached(ns: Netns, ifname: str) -> bool:
    with ns.entered(), IPRoute() as ipr:
        link = ipr.link("get", index=ipr.link_lookup(ifname=ifname)[0])[0]
    xdp = link.get_attr("IFLA_XDP")
    return xdp is not None and xdp.get_attr("IFLA_XDP_ATTACHED") not in (None, 0)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- frames both ways ----------------------------------------------------------------------


def test_frames_reach_kernel_sockets_copied_or_built_in_umem(pair: Netns, dev: XdpDevice) -> None:
    with _udp_socket(pair) as sock:
        copied = udp_frame(4, b"copied into a chunk", dport=PORT)
        assert dev.send([Packet(copied)]) == 1
        assert sock.recv(100) == b"copied into a chunk"
        (buf,) = dev.tx_buffers(1)
        built = udp_frame(4, b"built where it is sent", dport=PORT)
        buf[: len(built)] = built
        assert dev.send([Packet(buf[: len(built)])]) == 1
        assert sock.recv(100) == b"built where it is sent"
    stats = dev.stats()
    assert (stats.tx_copies, stats.tx_copy_bytes, stats.tx_in_place) == (1, len(copied), 1)
    assert stats.tx_packets == 2 and not stats.drops


def test_kernel_frames_arrive_as_views_into_umem(pair: Netns, dev: XdpDevice) -> None:
    with pair.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        for i in range(5):
            sock.sendto(b"to the umem %d" % i, (str(V4_A), 4000))
        got = _read(dev, 5)
    assert len(got) == 5 and dev.rx_held == 5
    payloads = []
    for p in got:
        assert isinstance(p.data, memoryview) and p.rx.l4 is ChecksumStatus.NOT_CHECKED
        ip = Ipv4Packet.checked(p.data[14:])
        payloads.append(bytes(UdpPacket.checked(ip.payload).payload))
    assert payloads == [b"to the umem %d" % i for i in range(5)]
    dev.release(got)
    assert dev.rx_held == 0


def test_the_kernel_answers_our_echo_request(dev: XdpDevice) -> None:
    assert dev.send([Packet(icmp_echo_v4(ident=9, seq=3))]) == 1
    replies = [p for p in _read(dev, 1) if bytes(p.data[12:14]) == b"\x08\x00"]
    assert replies
    echo = Icmpv4Repr.parse(Ipv4Packet.checked(replies[0].data[14:]).payload)
    assert echo == Icmpv4EchoRepr(9, 3, b"netoffload", reply=True)


# -- what the device does: nothing ---------------------------------------------------------


def test_no_capabilities_and_any_task_is_outside_them(dev: XdpDevice) -> None:
    assert dev.capabilities() == [] and dev.status() == []
    assert dev.enabled() == Selection() == dev.fixed_selection()
    assert dev.enable(Selection()) == Selection()
    with pytest.raises(SelectionError):
        dev.enable(Selection([ChecksumCaps(tx=ChecksumFlags.TCP_IPV4)]))
    asks = [
        TxRequest(checksum=ChecksumRequest(34, 16)),
        TxRequest(segmentation=SegmentationRequest(GsoType.TCPV4, 1448, 54)),
        TxRequest(launch_time_ns=5),
    ]
    frame = tcp_frame(4, b"x" * 100, partial=True)
    assert dev.send([Packet(frame, ask) for ask in asks]) == 3
    stats = dev.stats()
    assert stats.drops == {"outside_capability": 3} and stats.tx_packets == 0


def test_the_host_segments_and_checksums_into_umem_rows(pair: Netns, dev: XdpDevice) -> None:
    payload = bytes(range(256)) * 40  # 10240 bytes: 8 datagrams of 1200 and one of 640
    request = TxRequest.segment_l4(l4_offset=34, protocol=17, ip_version=4, mss=1200)
    super_packet = udp_frame(4, payload, partial=True, dport=PORT)
    small = udp_frame(4, b"checksummed in place", partial=True, dport=PORT)
    headers, body = small[:42], memoryview(small)[42:]
    before = pair.snmp()["Udp"]
    with _udp_socket(pair) as sock:
        host = HostOffload(dev)
        host.send(
            [
                Packet(super_packet, request),
                Packet(body, TxRequest.checksum_l4(l4_offset=34, protocol=17), head=headers),
            ]
        )
        assert host.flush(5.0)
        got = [sock.recv(2000) for _ in range(10)]
    assert b"".join(got[:9]) == payload and got[9] == b"checksummed in place"
    after = pair.snmp()["Udp"]
    assert after["InDatagrams"] - before["InDatagrams"] == 10
    assert after["InCsumErrors"] == before["InCsumErrors"]
    stats = dev.stats()
    assert stats.tx_copies == 0 and stats.tx_in_place == 10
    assert host.stats.fallbacks == {"udp_segmentation/not_enabled": 1, "checksum/not_enabled": 1}


def test_lent_chunks_come_back_sent_or_unused(dev: XdpDevice) -> None:
    free = dev.tx_free
    assert free == dev.tx_frames
    views = dev.tx_buffers(3)
    rows = dev.tx_rows(4, 1514)
    assert rows is not None and rows.shape == (4, dev.frame_size)
    assert dev.tx_free == free - 7
    assert dev.tx_rows(free, 100) is None  # no run that long is free now
    assert dev.tx_rows(1, dev.frame_size + 1) is None
    frame = udp_frame(4, b"sent from a row")
    rows[0, : len(frame)] = list(frame)
    assert dev.send([Packet(memoryview(rows[0])[: len(frame)])]) == 1
    dev.return_tx_buffers([*views, rows])  # the row in flight stays the kernel's
    deadline = time.monotonic() + 3.0
    while dev.tx_pending() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dev.tx_free == free and dev.stats().tx_in_place == 1


# -- receive chunks: lent, given back ------------------------------------------------------


def test_released_chunks_go_back_to_the_kernel(pair: Netns) -> None:
    with pair.entered():
        dev = XdpDevice(OURS, frames=16)  # 8 receive chunks
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with dev, sock:
        for burst in range(12):  # 60 frames through 8 chunks
            for i in range(5):
                sock.sendto(bytes([burst, i]) * 50, (str(V4_A), 4000))
            got = _read(dev, 5)
            assert [bytes(p.data[-100:]) for p in got] == [bytes([burst, i]) * 50 for i in range(5)]
            dev.release(got)
        for i in range(20):  # more than the chunks: the kernel must drop the rest
            sock.sendto(bytes([0xAA, i]) * 50, (str(V4_A), 4000))
        held = _read(dev, 8, timeout_s=1.0)
        assert len(held) == 8 and dev.rx_held == 8
        time.sleep(0.1)
        assert dev.recv(64) == []
        assert dev.stats().drops.get("no_buffer", 0) >= 12
        assert [bytes(p.data[-100:]) for p in held] == [bytes([0xAA, i]) * 50 for i in range(8)]
        dev.release()  # every one held
        sock.sendto(b"flowing again", (str(V4_A), 4000))
        assert any(bytes(p.data).endswith(b"flowing again") for p in _read(dev, 1))


# -- lifetime ----------------------------------------------------------------------------


def test_close_detaches_the_program_and_closes_every_descriptor(pair: Netns) -> None:
    before = _open_fds()
    with pair.entered():
        dev = XdpDevice(OURS, frames=64)
    assert _xdp_attached(pair, OURS)
    dev.close()
    dev.close()
    assert not _xdp_attached(pair, OURS)
    assert _open_fds() <= before
    with pytest.raises(DeviceError, match="closed"):
        dev.recv()


def test_a_device_dropped_without_close_detaches_too(pair: Netns) -> None:
    with pair.entered():
        dev = XdpDevice(OURS, frames=64)
    assert _xdp_attached(pair, OURS)
    del dev
    gc.collect()
    assert not _xdp_attached(pair, OURS)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"zero_copy": True}, "zero-copy mode"), ({"queue": 5}, "queue 5")],
)
def test_a_set_up_that_fails_leaves_nothing_behind(
    pair: Netns, kwargs: dict[str, object], message: str
) -> None:
    before = _open_fds()
    with pair.entered(), pytest.raises(DeviceError, match=message):
        XdpDevice(OURS, frames=64, **kwargs)  # type: ignore[arg-type]
    assert not _xdp_attached(pair, OURS)
    assert _open_fds() <= before


def test_caps_on_the_command_line_leave_the_interface_alone(pair: Netns) -> None:
    runner = CliRunner()
    with pair.entered():
        result = runner.invoke(main, ["caps", f"xdp:{OURS}", "--json"])
        with open_device(f"xdp:{OURS}", data_path=False) as dev:
            assert dev.mtu == 1500 and str(dev.mac) == MAC_A.hex(":")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "[]"
    assert not _xdp_attached(pair, OURS)


# -- bad input never breaks recv ---------------------------------------------------------


def test_bad_frames_are_delivered_or_counted_never_raised(pair: Netns) -> None:
    # A veth drops what is over its receiver's MTU, and with XDP caps it at about a page.
    pair.set_link(OURS, mtu=3000)
    pair.set_link(PEER, mtu=3000)
    with pair.entered():
        dev = XdpDevice(OURS, frames=64, frame_size=2048)  # 1792 bytes after the headroom
        inject = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        inject.bind((PEER, 0))
    bad_offset = bytearray(tcp_frame(4, b"bad offset"))
    bad_offset[46] = 0x10  # TCP data offset 4 bytes
    bad = [
        bytes(12) + b"\x88\xb5" + b"not ip",  # another EtherType
        tcp_frame(4, b"cut short")[:40],  # a truncated TCP header
        bytes(14) + b"\x45" + bytes(5),  # IPv4 that ends in its header
        bytes(bad_offset),
        udp_frame(4, b"x" * 2500),  # longer than a receive chunk holds
    ]
    host = HostOffload(dev)
    with dev, inject:
        for frame in bad:
            inject.send(frame)
        got: list[Packet] = []
        deadline = time.monotonic() + 3.0
        while len(got) < 4 and time.monotonic() < deadline:
            dev.wait(0.1)
            batch = host.recv(64)
            got += [Packet(bytes(p.data), rx=p.rx) for p in batch]
            host.release(batch)
        assert dev.stats().drops == {"too_large": 1}
    assert [p.data for p in got] == bad[:4]
    assert all(p.rx.l4 is not ChecksumStatus.VERIFIED for p in got)


def test_bad_descriptors_are_dropped_and_the_good_ones_delivered(dev: XdpDevice) -> None:
    # A ring of our own in place of the kernel's: descriptors nobody checked.
    assert dev._xsk is not None
    mem = bytearray(128 + 8 * 16)
    fake = DescRing(mem, producer=0, consumer=64, desc=128, size=8)
    dev._xsk.rx = fake
    fs = dev.frame_size
    rx_bytes = dev.rx_frames * fs
    cases = [
        (rx_bytes + 256, 60),  # a transmit chunk
        (fs * 1000, 60),  # past the UMEM
        (fs + 256, fs),  # runs past its chunk
        (2 * fs + 256, 10),  # shorter than an Ethernet header: its chunk goes back
        (3 * fs + 256, 60),  # good
        (3 * fs + 256, 60),  # the same chunk again: held now, not the kernel's
    ]
    slots = fake.slots(len(cases))
    fake.addr[slots] = [a for a, _ in cases]
    fake.len[slots] = [n for _, n in cases]
    struct.pack_into("=I", mem, 0, len(cases))
    got = dev.recv(64)
    assert [len(p.data) for p in got] == [60]
    assert dev.stats().drops == {"malformed_frame": 5}
    dev.release(got)
