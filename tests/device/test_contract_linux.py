"""The device contract on the Linux devices (TAP, AF_PACKET, AF_XDP), against the kernel.

Link facts from the kernel's own view, poll-based waits past descriptor 1024,
received buffers that stay intact, every packet offered sent or dropped with a
reason, one ``RxInfo`` meaning on every device, a feature the interface lacks
done by the host with the same bytes, and GRO never LRO.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netoffload.demo.flow import BulkFlowGenerator, FlowSpec, build_all
from netoffload.device import tap as tap_module
from netoffload.device.base import Device, DeviceError
from netoffload.device.cable import NO_IMPAIRMENTS, Cable
from netoffload.device.ethtool import read_features
from netoffload.device.packet import PacketDevice
from netoffload.device.softnic import SoftNic
from netoffload.device.tap import TapDevice
from netoffload.device.xdp import XdpDevice, af_xdp_missing
from netoffload.engine import gso
from netoffload.host import HostOffload
from netoffload.netns import Netns
from netoffload.offload import (
    ChecksumCaps,
    ChecksumFlags,
    ChecksumStatus,
    Packet,
    Selection,
    Task,
    TxRequest,
    VirtioFlags,
    VirtioNetHdr,
)
from netoffload.wire import MacAddress
from tests.device.device_frames import V4_A, V4_B, tcp_frame, udp_frame

pytestmark = pytest.mark.privileged

SOL_PACKET = 263
PACKET_VNET_HDR = 15
ALL_L4 = (
    ChecksumFlags.TCP_IPV4
    | ChecksumFlags.UDP_IPV4
    | ChecksumFlags.TCP_IPV6
    | ChecksumFlags.UDP_IPV6
)


@contextlib.contextmanager
def _high_descriptors(count: int = 1100) -> Iterator[None]:
    """Occupy the low descriptors, so whatever opens next gets numbers above 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 200), hard))
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(count)]
    try:
        yield
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _sys(ns: Netns, ifname: str, attribute: str) -> str:
    """An interface attribute as sysfs shows it inside the namespace (the kernel's word)."""
    return ns.exec("cat", f"/sys/class/net/{ifname}/{attribute}").strip()


def _injector(ns: Netns, ifname: str, *, vnet: bool = False) -> socket.socket:
    """An AF_PACKET socket that makes the kernel transmit our frames on ``ifname``."""
    with ns.entered():
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        if vnet:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.bind((ifname, 0))
    return sock


def _linux_device(kind: str) -> Device:
    """A TAP ``nsotap0``, or ``nsova`` through AF_PACKET or AF_XDP (call inside the namespace)."""
    if kind == "tap":
        return TapDevice("nsotap0")
    if kind == "xdp":
        return XdpDevice("nsova")
    return PacketDevice("nsova")


def _needs_af_xdp() -> None:
    """Skip, naming the kernel feature, where an XdpDevice cannot run."""
    missing = af_xdp_missing()
    if missing is not None:
        pytest.skip(missing)


def _read(dev: Device, want: int, timeout_s: float = 3.0) -> list[Packet]:
    got: list[Packet] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        dev.wait(0.1)
        got += dev.recv(64)
    return got


@pytest.fixture
def tap(netns: Netns) -> Iterator[TapDevice]:
    with netns.entered():
        device = TapDevice("nsotap0")
    with device:
        yield device


@pytest.fixture
def veth(netns: Netns) -> Iterator[tuple[PacketDevice, Netns]]:
    netns.add_veth("nsova", "nsovb")
    netns.set_link("nsova", up=True)
    netns.set_link("nsovb", up=True)
    with netns.entered():
        device = PacketDevice("nsova")
    with device:
        yield device, netns


# -- link facts ---------------------------------------------------------------------------


def test_tap_link_facts(netns: Netns, tap: TapDevice) -> None:
    assert tap.mtu == int(_sys(netns, "nsotap0", "mtu")) == 1500
    netns.set_link("nsotap0", mtu=9000)
    assert tap.mtu == 9000
    kernel_mac = tap.kernel_mac
    assert kernel_mac is not None and str(kernel_mac) == _sys(netns, "nsotap0", "address")
    # The user-space end is another station: its own locally administered unicast MAC.
    assert tap.mac != kernel_mac
    assert tap.mac.octets[0] & 0x03 == 0x02
    assert tap.link_up
    netns.set_link("nsotap0", up=False)
    assert not tap.link_up
    assert tap.filenos() == [tap.fileno()]


def test_tap_mac_can_be_chosen(netns: Netns) -> None:
    chosen = MacAddress.parse("02:aa:bb:cc:dd:ee")
    with netns.entered(), TapDevice("nsotap1", mac=chosen) as tap:
        assert tap.mac == chosen


def test_packet_device_link_facts(veth: tuple[PacketDevice, Netns]) -> None:
    dev, ns = veth
    assert str(dev.mac) == _sys(ns, "nsova", "address")
    assert dev.mtu == int(_sys(ns, "nsova", "mtu"))
    assert dev.link_up
    ns.set_link("nsovb", up=False)  # the peer down: no carrier, which linkwatch reports later
    deadline = time.monotonic() + 3.0
    while dev.link_up and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not dev.link_up


def test_xdp_device_link_facts(netns: Netns) -> None:
    _needs_af_xdp()
    netns.add_veth("nsova", "nsovb")
    netns.set_link("nsova", up=True)
    netns.set_link("nsovb", up=True)
    with netns.entered():
        dev = XdpDevice("nsova", data_path=False)
    with dev:
        assert str(dev.mac) == _sys(netns, "nsova", "address")
        assert dev.mtu == int(_sys(netns, "nsova", "mtu"))
        assert dev.link_up
        netns.set_link("nsovb", up=False)  # no carrier: linkwatch reports it a moment later
        deadline = time.monotonic() + 3.0
        while dev.link_up and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not dev.link_up


def test_waits_work_past_descriptor_1024(netns: Netns) -> None:
    with_xdp = af_xdp_missing() is None  # without AF_XDP, the other two still count
    for ours, peer in (("nsova", "nsovb"), ("nsoxa", "nsoxb")):
        netns.add_veth(ours, peer)
        netns.set_link(ours, up=True)
        netns.set_link(peer, up=True)
    with contextlib.ExitStack() as stack, _high_descriptors():
        with netns.entered():
            devices: list[tuple[Device, str]] = [
                (stack.enter_context(TapDevice("nsotap0")), "nsotap0"),
                (stack.enter_context(PacketDevice("nsova")), "nsovb"),
            ]
            if with_xdp:
                devices.append((stack.enter_context(XdpDevice("nsoxa", frames=64)), "nsoxb"))
        for dev, peer in devices:
            assert min(dev.filenos()) > 1024
            assert not dev.wait(0.01)
            with _injector(netns, peer) as inject:
                inject.send(udp_frame(4, b"high"))
            assert dev.wait(3.0), dev.name
            assert dev.wait(1.0, for_tx=True)


# -- received buffers stay intact -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["tap", "packet", "xdp"])
def test_received_data_is_never_overwritten(netns: Netns, kind: str) -> None:
    if kind == "xdp":
        _needs_af_xdp()
    netns.add_veth("nsova", "nsovb")
    netns.set_link("nsova", up=True)
    netns.set_link("nsovb", up=True)
    with netns.entered():
        dev = _linux_device(kind)
    peer = "nsotap0" if kind == "tap" else "nsovb"
    with dev, _injector(netns, peer) as inject:
        first = udp_frame(4, b"first" * 10, sport=1)
        inject.send(first)
        (held,) = _read(dev, 1)
        assert bytes(held.data) == first
        # Far more frames than one receive arena or ring holds, in bursts the ring takes.
        others = [udp_frame(4, bytes([i % 256]) * 1400, sport=2) for i in range(300)]
        received = 0
        for at in range(0, len(others), 30):
            for frame in others[at : at + 30]:
                inject.send(frame)
            got = _read(dev, 30)
            assert [bytes(p.data) for p in got] == others[at : at + 30]
            dev.release(got)
            received += len(got)
        assert received == len(others)
        assert bytes(held.data) == first
        dev.release([held])


# -- every packet offered is sent or dropped with a reason ----------------------------------

REQUESTS = st.one_of(
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
        st.sampled_from([34, 54, 1000]),
        st.sampled_from([6, 17]),
    ),
    st.builds(lambda: TxRequest(launch_time_ns=5)),
)
SOURCES = [
    tcp_frame(4, bytes(range(256)) * 20, partial=True),
    tcp_frame(6, bytes(3000), partial=True),
    udp_frame(4, bytes(4000), partial=True),
]
FRAMES = st.one_of(
    st.builds(
        lambda f, cut: f[: max(14, len(f) - cut)],
        st.sampled_from(SOURCES),
        st.integers(0, 3000),
    ),
    st.binary(min_size=14, max_size=200).map(lambda b: bytes(12) + b"\x08\x00" + b[14:]),
)


def _settle(dev: Device) -> None:
    if isinstance(dev, PacketDevice | XdpDevice):
        deadline = time.monotonic() + 5.0
        while dev.tx_pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dev.tx_pending() == 0  # every ring slot came back


@pytest.mark.parametrize("kind", ["tap", "packet", "xdp"])
def test_offered_equals_sent_plus_drops(netns: Netns, kind: str) -> None:
    if kind == "xdp":
        _needs_af_xdp()
    netns.add_veth("nsova", "nsovb")
    netns.set_link("nsova", up=True)
    netns.set_link("nsovb", up=True)
    with netns.entered():
        dev = _linux_device(kind)

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.lists(st.tuples(FRAMES, REQUESTS), max_size=16), st.booleans())
    def check(items: list[tuple[bytes, TxRequest]], through_host: bool) -> None:
        before = dev.stats()
        packets = [Packet(f, r) for f, r in items]
        if through_host:
            host = HostOffload(dev)
            host.send(packets)
            assert host.flush()
            assert host.stats.tx_packets + host.stats.dropped == len(packets)
            handed = host.stats.tx_frames
        else:
            handed = 0
            while handed < len(packets):
                n = dev.send(packets[handed:])
                handed += n
                if n == 0:
                    assert dev.wait(5.0, for_tx=True)
        _settle(dev)
        after = dev.stats()
        sent = after.tx_packets - before.tx_packets
        dropped = after.dropped - before.dropped
        assert sent + dropped == handed

    with dev:
        check()


# -- one RxInfo meaning on every device -----------------------------------------------------

GOOD = tcp_frame(4, b"good checksum")
BAD = bytearray(tcp_frame(4, b"bad checksum!"))
BAD[-1] ^= 0x01
UDP_ZERO = bytearray(udp_frame(4, b"no checksum"))
UDP_ZERO[40:42] = b"\x00\x00"
PARTIAL = tcp_frame(4, b"a local sender's", partial=True)
EXPECTED = [ChecksumStatus.VERIFIED, ChecksumStatus.FAILED, ChecksumStatus.ABSENT]


def _partial_hdr() -> bytes:
    return VirtioNetHdr(int(VirtioFlags.NEEDS_CSUM), csum_start=34, csum_offset=16).pack(10)


def _statuses(host: HostOffload, count: int) -> list[Packet]:
    got: list[Packet] = []
    deadline = time.monotonic() + 3.0
    while len(got) < count and time.monotonic() < deadline:
        host.device.wait(0.1)
        batch = host.recv(64)
        got += [Packet(bytes(p.data), rx=p.rx) for p in batch]
        host.release(batch)
    return got


def _kernel_side_frames(dev: Device, ns: Netns, peer: str) -> list[Packet]:
    """GOOD, BAD, UDP_ZERO sent plainly and PARTIAL with NEEDS_CSUM, through the kernel."""
    host = HostOffload(dev, rx_tasks={Task.CHECKSUM})
    with _injector(ns, peer) as plain, _injector(ns, peer, vnet=True) as vnet:
        for frame in (GOOD, BAD, UDP_ZERO):
            plain.send(bytes(frame))
        vnet.send(_partial_hdr() + PARTIAL)
        return _statuses(host, 4)


def _check_meanings(got: list[Packet], partial_too: bool) -> None:
    assert [bytes(p.data) for p in got[:3]] == [GOOD, bytes(BAD), bytes(UDP_ZERO)]
    assert [p.rx.l4 for p in got[:3]] == EXPECTED
    assert all(p.rx.checksum_partial is None for p in got[:3])
    if partial_too:
        local = got[3]
        assert bytes(local.data) == PARTIAL
        assert local.rx.l4 is ChecksumStatus.VERIFIED
        assert local.rx.checksum_partial is not None
        assert (local.rx.checksum_partial.start, local.rx.checksum_partial.offset) == (34, 16)


def test_rx_meaning_on_a_tap(netns: Netns, tap: TapDevice) -> None:
    # TUN_F_CSUM: the kernel may hand us a local sender's partial checksum as it is.
    tap.enable(tap.fixed_selection().with_task(ChecksumCaps(tx=ALL_L4, rx=ALL_L4)))
    _check_meanings(_kernel_side_frames(tap, netns, "nsotap0"), partial_too=True)


def test_rx_meaning_through_af_packet(veth: tuple[PacketDevice, Netns]) -> None:
    dev, ns = veth
    # With rx-checksum on, veth marks every frame from its peer CHECKSUM_UNNECESSARY (a
    # local peer is trusted), bad ones too: what the kernel says, reported as VERIFIED.
    # Off, the host checks them, as it would frames from a real medium.
    ns.set_features("nsova", {"rx-checksum": False})
    _check_meanings(_kernel_side_frames(dev, ns, "nsovb"), partial_too=True)


def test_rx_meaning_through_af_xdp(netns: Netns) -> None:
    _needs_af_xdp()
    netns.add_veth("nsova", "nsovb")
    netns.set_link("nsova", up=True)
    netns.set_link("nsovb", up=True)
    with netns.entered():
        dev = XdpDevice("nsova", frames=64)
    with dev:
        got = _kernel_side_frames(dev, netns, "nsovb")
    _check_meanings(got, partial_too=False)
    # XDP sees the bytes as they are: a local sender's partial checksum is the
    # pseudo-header sum, and nothing says so (README, known limits).
    assert bytes(got[3].data) == PARTIAL and got[3].rx.l4 is ChecksumStatus.FAILED


@pytest.mark.parametrize("device_checks", [True, False])
def test_rx_meaning_on_a_softnic_and_the_host_fallback(device_checks: bool) -> None:
    with Cable(NO_IMPAIRMENTS) as cable, SoftNic(cable=cable.a) as nic:
        nic.enable(Selection.everything(nic.capabilities()) if device_checks else Selection())
        host = HostOffload(nic, rx_tasks={Task.CHECKSUM})
        for frame in (GOOD, BAD, UDP_ZERO, PARTIAL):
            cable.b.send(bytes(frame))
        got = _statuses(host, 4)
        _check_meanings(got, partial_too=False)
        # A cable carries no "partial" flag: a pseudo-header sum that crossed it is wrong.
        assert got[3].rx.l4 is ChecksumStatus.FAILED
        assert (host.stats.tasks.get("checksum", 0) > 0) is not device_checks


# -- a feature the interface lacks: the host does it, same bytes ----------------------------


def test_udp_segmentation_off_on_a_veth_falls_back_with_the_same_bytes(
    veth: tuple[PacketDevice, Netns],
) -> None:
    dev, ns = veth
    spec = FlowSpec(protocol="udp", segment_bytes=1200, segments=20)
    packets = build_all(BulkFlowGenerator(bytes(range(256)) * 300, spec))
    with ns.entered():
        receiver = PacketDevice("nsovb", ring_frames=512)
    with receiver:
        results: dict[bool, list[bytes]] = {}
        for uso in (True, False):
            ns.set_features("nsova", {"tx-udp-segmentation": uso})
            host = HostOffload(dev)
            host.send(packets)
            assert host.flush()
            fallbacks = host.stats.fallbacks.get("udp_segmentation/not_enabled", 0)
            assert fallbacks == (0 if uso else len(packets))
            frames: list[bytes] = []
            for p in _read(receiver, 1000, timeout_s=2.0):
                seg = p.rx.assembled
                if seg is None:
                    frames.append(bytes(p.data))
                    continue
                # A super-packet the kernel kept whole: cut it as Linux would.
                hdr = VirtioNetHdr.from_tx_request(
                    TxRequest.segment_l4(l4_offset=34, protocol=17, ip_version=4, mss=seg.size)
                )
                frames += gso.segment(bytes(p.data), hdr)
            results[uso] = frames
        assert len(results[False]) == sum(-(-(len(p.data) - 42) // 1200) for p in packets)
        assert results[True] == results[False]


def test_tcp_assembly_turns_on_gro_and_never_lro(veth: tuple[PacketDevice, Netns]) -> None:
    dev, ns = veth
    offered = {r.task: r for r in dev.capabilities()}
    with ns.entered():
        dev.enable(dev.enabled().with_task(offered[Task.TCP_ASSEMBLY]))
        features = read_features("nsova")
    assert features["rx-gro"].active
    assert not features["rx-lro"].active


def test_a_tap_that_fails_half_way_leaves_no_descriptor(
    netns: Netns, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(name: str, up: bool = True, sock: object = None) -> None:
        raise DeviceError(f"cannot set {name!r} up: refused for the test")

    monkeypatch.setattr(tap_module, "set_link_up", refuse)
    before = set(os.listdir("/proc/self/fd"))
    with netns.entered(), pytest.raises(DeviceError, match="refused for the test"):
        TapDevice("nsotap0", queues=2)
    assert set(os.listdir("/proc/self/fd")) <= before
    assert "nsotap0" not in netns.link_names()  # the last fd closed: the TAP went too


def test_addresses_stay_in_the_test_ranges() -> None:
    assert V4_A.packed[:2] == V4_B.packed[:2] == bytes([198, 18])
