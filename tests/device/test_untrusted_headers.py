"""Headers read from a device are untrusted: validated with the kernel's rules, bad ones counted.

A TapDevice is built over one end of a SOCK_SEQPACKET pair (message
boundaries like a TAP read); the test writes crafted header + frame records
into the other end.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from netoffload.device.tap import TUN_F_CSUM, TUN_F_TSO4, TapDevice
from netoffload.device.vnet import RxDecoder
from netoffload.offload import (
    DeviceStats,
    DropReason,
    GsoType,
    VirtioFlags,
    VirtioNetHdr,
)
from tests.device.device_frames import tcp_frame, udp_frame


@pytest.fixture
def fake_tap() -> Iterator[tuple[socket.socket, TapDevice]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    tap = TapDevice.over_fds([ours.fileno()], "fake0", TUN_F_CSUM | TUN_F_TSO4)
    try:
        yield theirs, tap
    finally:
        ours.close()
        theirs.close()


def _tcp_gso_hdr(**changes: int) -> VirtioNetHdr:
    fields = {
        "flags": int(VirtioFlags.NEEDS_CSUM),
        "gso_type": int(GsoType.TCPV4),
        "hdr_len": 54,
        "gso_size": 1400,
        "csum_start": 34,
        "csum_offset": 16,
    }
    fields.update(changes)
    return VirtioNetHdr(**fields)


SUPER = tcp_frame(4, bytes(4000), partial=True)


def test_good_and_bad_headers(fake_tap: tuple[socket.socket, TapDevice]) -> None:
    peer, tap = fake_tap
    plain = udp_frame(4, b"plain")
    records = [
        VirtioNetHdr().pack() + plain,  # fine
        _tcp_gso_hdr().pack() + SUPER,  # fine: a 3-segment super-packet
        _tcp_gso_hdr(gso_type=0x42).pack() + SUPER,  # unknown gso_type
        _tcp_gso_hdr(gso_size=0).pack() + SUPER,  # GSO with size 0
        _tcp_gso_hdr(csum_offset=6).pack() + SUPER,  # TCP with the UDP offset
        _tcp_gso_hdr(csum_start=60000).pack() + SUPER,  # checksum outside the frame
        _tcp_gso_hdr(gso_type=int(GsoType.UDP_L4)).pack() + SUPER,  # UDP_L4 with offset 16
        b"\x01\x02\x03",  # shorter than a header
        VirtioNetHdr().pack() + b"\x00" * 6,  # shorter than an Ethernet header
        bytes([0xFF] * 12) + plain,  # all-ones garbage
    ]
    for record in records:
        peer.send(record)
    got = tap.recv(64)
    assert [bytes(p.data) for p in got] == [plain, SUPER]
    assembled = got[1].rx.assembled
    assert assembled is not None and assembled.gso_type is GsoType.TCPV4
    assert assembled.size == 1400 and got[1].rx.segments == 3
    stats = tap.stats()
    assert stats.rx_packets == 2
    assert stats.dropped == len(records) - 2
    assert stats.drops[DropReason.BAD_VNET_HDR.value] >= 2
    assert stats.drops[DropReason.MALFORMED_FRAME.value] == 1
    assert tap.recv(64) == []


def test_packet_device_header_size_uses_the_same_rules() -> None:
    """PacketDevice reads the 10-byte legacy header through the same decoder."""
    stats = DeviceStats()
    decoder = RxDecoder(stats, VirtioNetHdr.LEGACY_SIZE)
    good = decoder.decode(memoryview(_tcp_gso_hdr().pack(10)), memoryview(SUPER))
    bad = decoder.decode(memoryview(_tcp_gso_hdr(gso_size=0).pack(10)), memoryview(SUPER))
    assert good is not None and good.rx.segments == 3
    assert bad is None and stats.dropped == 1
