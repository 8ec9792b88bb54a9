"""The kernel is the oracle: our engine must do byte for byte what Linux does.

Every test builds its own namespace (addresses from 198.18.0.0/15 and
fd00::/8 only) and removes it, also on failure. Topologies:

* segmentation: TAP --bridge--> veth (TSO/GSO/checksum off) -> peer, captured
  with a PacketDevice. A bridge forwards without touching TTL or MACs, so the
  kernel's software GSO output is compared with ``engine.gso.segment``.
* assembly: PacketDevice -> veth (sender TSO off) -> peer with GRO on
  (NAPI, flush held by gro_flush_timeout so a burst meets in one GRO list)
  --bridge--> TAP with TSO/USO on; what the TAP reader gets is compared
  with ``engine.gro.coalesce`` of the same segments, headers included.
* checksum: TAP with an address and a UDP socket behind it.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from netoffload.device.packet import PacketDevice
from netoffload.device.tap import TapDevice
from netoffload.netns import Netns
from netoffload.offload import (
    ChecksumRequest,
    ChecksumStatus,
    GsoType,
    Packet,
    SegmentationRequest,
    Selection,
    TxRequest,
    VirtioNetHdr,
)
from tests.device.device_frames import MAC_A, MAC_B, V4_A, V4_B, l4_start, tcp_frame, udp_frame

pytestmark = pytest.mark.privileged

SPORT = 40000
TCP, UDP = 6, 17
# NOP, NOP, timestamp (kind 8, length 10): the option every Linux TCP segment carries.
TS_OPTION = bytes([1, 1, 8, 10]) + (0x01020304).to_bytes(4, "big") + (0x0A0B0C0D).to_bytes(4, "big")


def _ours(frame: bytes | memoryview) -> bool:
    """A frame of the test's flows (drops bridge IGMP and any other chatter)."""
    if bytes(frame[12:14]) == b"\x08\x00":
        l4 = 14 + (frame[14] & 0x0F) * 4
        proto = frame[23]
    elif bytes(frame[12:14]) == b"\x86\xdd":
        l4, proto = 54, frame[20]
    else:
        return False
    ports = (
        int.from_bytes(frame[l4 : l4 + 2], "big"),
        int.from_bytes(frame[l4 + 2 : l4 + 4], "big"),
    )
    return proto in (TCP, UDP) and SPORT in ports


def _collect(dev: TapDevice | PacketDevice, want: int, timeout_s: float = 3.0) -> list[Packet]:
    got: list[Packet] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        select.select([dev.fileno()], [], [], 0.05)
        got.extend(p for p in dev.recv(64) if _ours(p.data))
    return got


# `ethtool -K tso off` and `tx off` on a veth, by kernel feature name.
TSO = (
    "tx-tcp-segmentation",
    "tx-tcp-ecn-segmentation",
    "tx-tcp-mangleid-segmentation",
    "tx-tcp6-segmentation",
)
NO_SEGMENTATION_NO_CHECKSUM = (
    *TSO,
    "tx-generic-segmentation",
    "tx-udp-segmentation",
    "tx-checksum-ip-generic",
)


def _bridged_tap(ns: Netns, veth: str, peer: str) -> TapDevice:
    """A bridge joining a TAP (every offload on) and ``veth``, whose other end is ``peer``.

    A bridge, not a router: frames cross unchanged (no TTL or MAC rewrite), so the
    kernel's output compares byte for byte with the engine's.
    """
    ns.add_bridge("nsobr0")
    ns.add_veth(veth, peer)
    with ns.entered():
        tap = TapDevice("nsotap0", up=False)
    tap.enable(Selection(tap.capabilities()))
    for port in ("nsotap0", veth):
        ns.set_master(port, "nsobr0")
    return tap


# -- segmentation ---------------------------------------------------------------


@dataclass
class SegmentRig:
    ns: Netns
    tap: TapDevice
    capture: PacketDevice


@pytest.fixture(scope="module")
def segment_rig() -> Iterator[SegmentRig]:
    ns = Netns()
    try:
        tap = _bridged_tap(ns, "nsova", "nsovb")
        # The kernel must segment and checksum in software on the way out of nsova.
        ns.set_features("nsova", dict.fromkeys(NO_SEGMENTATION_NO_CHECKSUM, False))
        for dev in ("nsobr0", "nsova", "nsovb", "nsotap0"):
            ns.set_link(dev, up=True)
        with ns.entered():
            capture = PacketDevice("nsovb", ring_frames=128, frame_bytes=4096)
        try:
            yield SegmentRig(ns, tap, capture)
        finally:
            capture.close()
            tap.close()
    finally:
        ns.close()


@dataclass(frozen=True)
class SegCase:
    name: str
    version: int
    proto: int
    payload_len: int
    mss: int
    tcp_flags: int = 0x18
    ecn: bool = False
    df: bool = True
    hdr_len_hint: int | None = None
    options: bytes = b""


SEG_CASES = [
    SegCase("tcp4", 4, TCP, 5000, 1400),
    SegCase("tcp4-fin-psh-short-last", 4, TCP, 4321, 1000, tcp_flags=0x19),
    SegCase("tcp4-exact-multiple", 4, TCP, 4200, 1400),
    SegCase("tcp4-cwr-ecn", 4, TCP, 3000, 1000, tcp_flags=0x90, ecn=True),
    SegCase("tcp4-hdr-len-zero", 4, TCP, 3000, 1200, hdr_len_hint=0),
    SegCase("tcp4-no-df", 4, TCP, 3000, 1000, df=False),
    SegCase("tcp4-timestamps", 4, TCP, 3000, 1000, options=TS_OPTION),
    SegCase("tcp6", 6, TCP, 5000, 1400),
    SegCase("tcp6-timestamps", 6, TCP, 2500, 1200, options=TS_OPTION),
    SegCase("tcp6-fin", 6, TCP, 2999, 1000, tcp_flags=0x11),
    SegCase("udp4", 4, UDP, 3000, 1000),
    SegCase("udp4-short-last", 4, UDP, 2500, 1000),
    SegCase("udp6", 6, UDP, 3333, 1200),
    SegCase("udp4-not-above-gso-size", 4, UDP, 1000, 1000),
    SegCase("tcp4-not-above-mss", 4, TCP, 1000, 1400),
]


def _super_packet(case: SegCase) -> tuple[bytes, VirtioNetHdr]:
    payload = bytes((i * 7 + 3) & 0xFF for i in range(case.payload_len))
    start = l4_start(case.version)
    if case.proto == TCP:
        frame = tcp_frame(
            case.version,
            payload,
            flags=case.tcp_flags,
            partial=True,
            options=case.options,
            df=case.df,
        )
        kind = GsoType.TCPV4 if case.version == 4 else GsoType.TCPV6
        hdr_len, offset = start + 20 + len(case.options), 16
    else:
        frame = udp_frame(case.version, payload, partial=True)
        kind, hdr_len, offset = GsoType.UDP_L4, start + 8, 6
    if case.hdr_len_hint is not None:
        hdr_len = case.hdr_len_hint
    request = TxRequest(
        checksum=ChecksumRequest(start, offset),
        segmentation=SegmentationRequest(kind, case.mss, hdr_len, case.ecn),
    )
    return frame, VirtioNetHdr.from_tx_request(request)


@pytest.mark.parametrize("case", SEG_CASES, ids=[c.name for c in SEG_CASES])
def test_segmentation_matches_the_kernel(segment_rig: SegmentRig, case: SegCase) -> None:
    from netoffload.engine import gso

    rig = segment_rig
    rig.capture.recv(256)  # anything left from an earlier case
    frame, hdr = _super_packet(case)
    expected_count = max(1, -(-case.payload_len // case.mss))
    request = hdr.to_tx_request()
    assert rig.tap.send([Packet(frame, tx=request)]) == 1
    assert rig.tap.stats().dropped == 0
    kernel = [bytes(p.data) for p in _collect(rig.capture, expected_count)]
    assert len(kernel) == expected_count, f"kernel produced {len(kernel)} segments"
    ours = [bytes(s) for s in gso.segment(frame, hdr)]
    assert len(ours) == len(kernel)
    for i, (mine, theirs) in enumerate(zip(ours, kernel, strict=True)):
        assert mine.hex() == theirs.hex(), f"segment {i} differs"


# -- assembly -------------------------------------------------------------------


@dataclass
class AssembleRig:
    ns: Netns
    tap: TapDevice
    sender: PacketDevice


@pytest.fixture(scope="module")
def assemble_rig() -> Iterator[AssembleRig]:
    ns = Netns()
    try:
        tap = _bridged_tap(ns, "nsovx", "nsovy")
        ns.set_features("nsovx", {"rx-gro": True, "rx-udp-gro-forwarding": True})
        # veth only hands a sender's packets to GRO when the sender could not have
        # sent them as one GSO packet itself.
        ns.set_features("nsovy", dict.fromkeys((*TSO, "tx-udp-segmentation"), False))
        ns.set_napi("nsovx", gro_flush_timeout_ns=20_000_000, defer_hard_irqs=10)
        for dev in ("nsobr0", "nsovx", "nsovy", "nsotap0"):
            ns.set_link(dev, up=True)
        with ns.entered():
            sender = PacketDevice("nsovy", ring_frames=64, frame_bytes=4096)
        try:
            yield AssembleRig(ns, tap, sender)
        finally:
            sender.close()
            tap.close()
    finally:
        ns.close()


def _tcp_segments(
    version: int,
    sizes: list[int],
    last_flags: int = 0x18,
    *,
    flags: dict[int, int] | None = None,
    ttls: dict[int, int] | None = None,
    options: bytes = b"",
) -> list[bytes]:
    out, seq = [], 1000
    for i, size in enumerate(sizes):
        default = last_flags if i == len(sizes) - 1 else 0x10
        payload = bytes((seq + j) & 0xFF for j in range(size))
        out.append(
            tcp_frame(
                version,
                payload,
                seq=seq,
                flags=(flags or {}).get(i, default),
                ident=100 + i,
                ttl=(ttls or {}).get(i, 64),
                options=options,
            )
        )
        seq += size
    return out


def _udp_segments(version: int, sizes: list[int]) -> list[bytes]:
    return [
        udp_frame(version, bytes((i + j) & 0xFF for j in range(size)), ident=200 + i)
        for i, size in enumerate(sizes)
    ]


ASSEMBLE_CASES = {
    "tcp4": lambda: _tcp_segments(4, [1400, 1400, 1400, 1400]),
    "tcp4-psh-in-the-middle": lambda: _tcp_segments(4, [1400, 1400, 1400], flags={1: 0x18}),
    "tcp4-ttl-differs": lambda: _tcp_segments(4, [1400, 1400, 1400], ttls={2: 63}),
    "tcp4-timestamps": lambda: _tcp_segments(4, [1388, 1388, 1388], options=TS_OPTION),
    "tcp4-short-last": lambda: _tcp_segments(4, [1400, 1400, 700]),
    "tcp6": lambda: _tcp_segments(6, [1400, 1400, 1400]),
    "udp4": lambda: _udp_segments(4, [1000, 1000, 1000]),
    "udp4-short-last": lambda: _udp_segments(4, [1000, 1000, 400]),
    "udp6": lambda: _udp_segments(6, [1200, 1200]),
    "udp4-larger-after-smaller": lambda: _udp_segments(4, [800, 800, 1000, 1000]),
}


def _normalised(hdr: VirtioNetHdr) -> VirtioNetHdr:
    # num_buffers is the mergeable-rx-buffer count of virtio-net; a TAP leaves it 0.
    return VirtioNetHdr(
        hdr.flags, hdr.gso_type, hdr.hdr_len, hdr.gso_size, hdr.csum_start, hdr.csum_offset
    )


@pytest.mark.parametrize("name", list(ASSEMBLE_CASES))
def test_assembly_matches_the_kernel(assemble_rig: AssembleRig, name: str) -> None:
    from netoffload.engine import gro

    rig = assemble_rig
    rig.tap.recv(256)
    segments = ASSEMBLE_CASES[name]()
    assert rig.sender.send([Packet(s) for s in segments]) == len(segments)
    got: list[Packet] = []
    deadline = time.monotonic() + 3
    while sum(p.rx.segments for p in got) < len(segments) and time.monotonic() < deadline:
        got.extend(_collect(rig.tap, 1, timeout_s=0.2))
    kernel = [(_normalised(VirtioNetHdr.from_rx_info(p.rx)), bytes(p.data)) for p in got]
    assert sum(p.rx.segments for p in got) == len(segments)
    assert any(p.rx.segments > 1 for p in got), "the kernel did not assemble anything"
    ours = [(_normalised(h), bytes(f)) for h, f in gro.coalesce(segments)]
    assert [h for h, _ in ours] == [h for h, _ in kernel]
    for i, ((_, mine), (_, theirs)) in enumerate(zip(ours, kernel, strict=True)):
        assert mine.hex() == theirs.hex(), f"super-packet {i} differs"


# -- checksum -------------------------------------------------------------------


@pytest.fixture
def addressed_tap(netns: Netns) -> Iterator[tuple[Netns, TapDevice]]:
    with netns.entered():
        tap = TapDevice("nsotap0", up=False)
    try:
        tap.enable(Selection(tap.capabilities()))
        netns.set_link("nsotap0", mac=MAC_B)
        netns.add_address("nsotap0", f"{V4_B}/24")
        netns.set_link("nsotap0", up=True)
        netns.add_neighbour("nsotap0", str(V4_A), MAC_A)
        yield netns, tap
    finally:
        tap.close()


def test_checksum_fill_and_bad_checksum_drop(addressed_tap: tuple[Netns, TapDevice]) -> None:
    from netoffload.engine.checksum import verify_batch

    ns, tap = addressed_tap
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((str(V4_B), 5001))
        sock.settimeout(3)
        errors_before = ns.snmp()["Udp"]["InCsumErrors"]
        partial = udp_frame(4, b"checksum filled by the kernel", partial=True)
        assert tap.send([Packet(partial, tx=TxRequest(checksum=ChecksumRequest(34, 6)))]) == 1
        assert sock.recv(2048) == b"checksum filled by the kernel"

        bad = udp_frame(4, b"this datagram has a bad checksum", corrupt=True)
        marker = udp_frame(4, b"marker after the bad one")
        assert tap.send([Packet(bad), Packet(marker)]) == 2
        # Same socket queue, in order: the marker arriving first means the bad one was dropped.
        assert sock.recv(2048) == b"marker after the bad one"
        assert ns.snmp()["Udp"]["InCsumErrors"] == errors_before + 1

    result = verify_batch([bad, marker])
    assert result.status(0)[1] is ChecksumStatus.FAILED
    assert result.status(1)[1] is ChecksumStatus.VERIFIED


def test_kernel_partial_checksum_completes_in_software(
    addressed_tap: tuple[Netns, TapDevice],
) -> None:
    """The kernel hands us NEEDS_CSUM frames; the engine's fill makes them verify."""
    from netoffload.engine.checksum import fill_partial, verify_batch

    ns, tap = addressed_tap
    tap.recv(256)
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((str(V4_B), 5001))
        sock.sendto(b"x" * 900, (str(V4_A), SPORT))
    got = _collect(tap, 1)
    assert got, "the kernel sent nothing out of the TAP"
    packet = got[0]
    assert packet.rx.checksum_partial is not None
    frame = bytearray(packet.data)
    assert verify_batch([bytes(frame)]).status(0)[1] is ChecksumStatus.FAILED
    fill_partial(frame, packet.rx.checksum_partial)
    assert verify_batch([bytes(frame)]).status(0)[1] is ChecksumStatus.VERIFIED
