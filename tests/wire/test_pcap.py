"""pcap and pcapng writers, read back by scapy, by our readers, and by tshark if present."""

from __future__ import annotations

import contextlib
import io
import shutil
import struct
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.utils import rdpcap

from netoffload.wire.error import WireError
from netoffload.wire.pcap import (
    LINKTYPE_RAW,
    PcapngWriter,
    PcapWriter,
    read_pcap,
    read_pcapng,
)

# Captured with an AF_PACKET socket on a veth pair between two private network
# namespaces, Linux 6.18: a TCP SYN, its SYN|ACK, and a UDP datagram b"ping"
# (198.18.0.1 <-> 198.18.0.2), as whole Ethernet frames.
FRAMES = [
    bytes.fromhex(
        "febff132cd16fe9bd0f917ca08004500003c3a91400040067403c6120001c6120002"
        "c15a1f90b7831d9900000000a002faf0b2d00000020405b40402080a670cf0ff0000"
        "00000103030a"
    ),
    bytes.fromhex(
        "fe9bd0f917cafebff132cd1608004500003c000040004006ae94c6120002c6120001"
        "1f90c15ad5d9c572b7831d9aa012fe8892df0000020405b40402080a9948e7b2670c"
        "f0ff0103030a"
    ),
    bytes.fromhex(
        "febff132cd16fe9bd0f917ca0800450000208882400040112623c6120001c6120002"
        "a4ca0009000cf00970696e67"
    ),
]
# Nanosecond timestamps, the last one with a sub-microsecond part.
TIMESTAMPS_NS = [1_700_000_000_000_000_001, 1_700_000_000_123_456_789, 1_700_000_001_999_999_999]


def _scapy_ns(value: object) -> int:
    return int(Decimal(str(value)) * 1_000_000_000)


def _write_pcap(path: Path, nanosecond: bool) -> None:
    with PcapWriter(path, nanosecond=nanosecond) as writer:
        for frame, ts in zip(FRAMES, TIMESTAMPS_NS, strict=True):
            writer.write(frame, ts)


def _write_pcapng(path: Path) -> None:
    with PcapngWriter(path, if_name="veth0", comment="netoffload test") as writer:
        for i, (frame, ts) in enumerate(zip(FRAMES, TIMESTAMPS_NS, strict=True)):
            writer.write(frame, ts, comment=f"frame {i}" if i == 1 else None)


def _tshark_reads(path: Path) -> None:
    if shutil.which("tshark") is None:
        return
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.len"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.split() == [str(len(f)) for f in FRAMES]


def test_pcap_nanosecond(tmp_path: Path) -> None:
    path = tmp_path / "ns.pcap"
    _write_pcap(path, nanosecond=True)
    assert struct.unpack_from("<I", path.read_bytes())[0] == 0xA1B23C4D
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == FRAMES
    assert [_scapy_ns(p.time) for p in packets] == TIMESTAMPS_NS
    assert list(read_pcap(path)) == list(zip(TIMESTAMPS_NS, FRAMES, strict=True))
    _tshark_reads(path)


def test_pcap_microsecond(tmp_path: Path) -> None:
    path = tmp_path / "us.pcap"
    _write_pcap(path, nanosecond=False)
    truncated = [ts // 1000 * 1000 for ts in TIMESTAMPS_NS]
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == FRAMES
    assert [_scapy_ns(p.time) for p in packets] == truncated
    assert list(read_pcap(path)) == list(zip(truncated, FRAMES, strict=True))
    _tshark_reads(path)


def test_pcapng(tmp_path: Path) -> None:
    path = tmp_path / "capture.pcapng"
    _write_pcapng(path)
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == FRAMES
    assert [_scapy_ns(p.time) for p in packets] == TIMESTAMPS_NS
    assert packets[1].comment == b"frame 1"
    assert list(read_pcapng(path)) == list(zip(TIMESTAMPS_NS, FRAMES, strict=True))
    _tshark_reads(path)


def test_pcapng_microsecond_default_resolution() -> None:
    out = io.BytesIO()
    writer = PcapngWriter(out, nanosecond=False, application=None)
    writer.write(FRAMES[0], 1_500_000_000_123_456_789)
    writer.close()
    assert not out.closed  # a handed-in file object stays open
    out.seek(0)
    assert list(read_pcapng(out)) == [(1_500_000_000_123_456_000, FRAMES[0])]


def test_writers_take_file_objects_and_link_types() -> None:
    out = io.BytesIO()
    with PcapWriter(out, linktype=LINKTYPE_RAW, nanosecond=True) as writer:
        writer.write(memoryview(FRAMES[2])[14:], 5)
    header = out.getvalue()[:24]
    assert struct.unpack("<IHHiIII", header)[6] == LINKTYPE_RAW
    out.seek(0)
    assert list(read_pcap(out)) == [(5, FRAMES[2][14:])]


def test_snaplen_cuts_frames_and_keeps_original_length() -> None:
    out = io.BytesIO()
    with PcapWriter(out, snaplen=20) as writer:
        writer.write(FRAMES[0], 0)
    record = out.getvalue()[24:40]
    assert struct.unpack("<IIII", record)[2:] == (20, len(FRAMES[0]))
    out.seek(0)
    assert list(read_pcap(out)) == [(0, FRAMES[0][:20])]


def test_big_endian_pcap_is_read() -> None:
    header = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    record = struct.pack(">IIII", 3, 7, 4, 4) + b"abcd"
    assert list(read_pcap(io.BytesIO(header + record))) == [(3_000_007_000, b"abcd")]


def test_bad_timestamps_are_refused() -> None:
    writer = PcapWriter(io.BytesIO())
    with pytest.raises(WireError):
        writer.write(FRAMES[0], -1)
    with pytest.raises(WireError):
        writer.write(FRAMES[0], 2**32 * 1_000_000_000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 24,
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + b"\x00" * 7,
        struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
        + struct.pack("<IIII", 0, 0, 10, 10)
        + b"short",
    ],
)
def test_truncated_pcap_raises_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        list(read_pcap(io.BytesIO(data)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_into_readers_raise_only_wire_error(data: bytes) -> None:
    for reader in (read_pcap, read_pcapng):
        with contextlib.suppress(WireError):
            list(reader(io.BytesIO(data)))
    pcapng_prefix = io.BytesIO()
    PcapngWriter(pcapng_prefix).close()
    with contextlib.suppress(WireError):
        list(read_pcapng(io.BytesIO(pcapng_prefix.getvalue() + data)))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 2**62)), max_size=8))
def test_roundtrip_both_formats(records: list[tuple[bytes, int]]) -> None:
    classic, ng = io.BytesIO(), io.BytesIO()
    with PcapWriter(classic, nanosecond=True) as w1, PcapngWriter(ng) as w2:
        for frame, ts in records:
            ts %= 2**32 * 1_000_000_000
            w1.write(frame, ts)
            w2.write(frame, ts)
    expected = [(ts % (2**32 * 1_000_000_000), frame) for frame, ts in records]
    classic.seek(0)
    ng.seek(0)
    assert list(read_pcap(classic)) == expected
    assert list(read_pcapng(ng)) == expected


def _big_endian_pcapng(frames: list[bytes], timestamps_ns: list[int]) -> bytes:
    """A pcapng section written big-endian, as a big-endian host writes it (spec layout)."""

    def block(kind: int, body: bytes) -> bytes:
        body += b"\x00" * (-len(body) % 4)
        total = 12 + len(body)
        return struct.pack(">II", kind, total) + body + struct.pack(">I", total)

    shb = block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1))
    # if_tsresol = 9 (nanoseconds), then opt_endofopt.
    options = struct.pack(">HHB3x", 9, 1, 9) + struct.pack(">HH", 0, 0)
    idb = block(1, struct.pack(">HHI", 1, 0, 65535) + options)
    epbs = b"".join(
        block(6, struct.pack(">IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(f), len(f)) + f)
        for f, ts in zip(frames, timestamps_ns, strict=True)
    )
    return shb + idb + epbs


def test_pcapng_big_endian_section(tmp_path: Path) -> None:
    path = tmp_path / "big.pcapng"
    path.write_bytes(_big_endian_pcapng(FRAMES, TIMESTAMPS_NS))
    # scapy, the independent reader, sees the same packets: the file is well formed.
    assert [bytes(p) for p in rdpcap(str(path))] == FRAMES
    assert list(read_pcapng(path)) == list(zip(TIMESTAMPS_NS, FRAMES, strict=True))
