"""The batch paths against the kernel: GRO's column path and ``segment_batch``.

Same rigs as ``tests/device/test_kernel_oracle.py``. Assembly: a sender, a
veth with GRO, a bridge, and a TAP that reads super-packets with their
virtio_net_hdr, fed whole bursts of several flows. Segmentation: super-packets
written to a TAP, segmented by the kernel on the way out of a veth without
offloads, compared with one ``segment_batch`` of them all.
"""

from __future__ import annotations

import dataclasses
import select
import time

import pytest

from netoffload.engine import gro, gro_rows, gso
from netoffload.offload import Packet, VirtioNetHdr
from tests.device.test_kernel_oracle import AssembleRig, SegmentRig
from tests.engine.builders import as_partial
from tests.engine.segments import Seg, build

pytestmark = pytest.mark.privileged


def _flow(dport: int, count: int, kind: str = "tcp4", size: int = 1400) -> list[Seg]:
    # Source port 40000: the rig's filter keeps frames of its test flows.
    return [
        Seg(kind=kind, dport=dport, seq=1000 + i * size, size=size, ip_id=10 + i, timestamp=7)
        for i in range(count)
    ]


def _bursts(flows: list[list[Seg]]) -> list[bytes]:
    return [build(s) for f in flows for s in f]


def _round_robin(flows: list[list[Seg]]) -> list[bytes]:
    return [build(f[i]) for i in range(max(map(len, flows))) for f in flows if i < len(f)]


def _cases() -> dict[str, list[bytes]]:
    a, b, c = _flow(5001, 10), _flow(5002, 10), _flow(5003, 8)
    a[-1] = dataclasses.replace(a[-1], size=700, flags=0x18)  # short, PSH
    b[4] = dataclasses.replace(b[4], flags=0x18)  # PSH in the middle
    c[5] = dataclasses.replace(c[5], ttl=63)  # a TTL change ends its packet
    v6 = [_flow(5001 + f, 9, "tcp6") for f in range(2)]
    return {
        "tcp4-bursts": _bursts([a, b, c]),
        "tcp4-interleaved": _round_robin([a, b, c]),
        "tcp6-interleaved": _round_robin(v6),
        "tcp4-and-tcp6": _round_robin([_flow(5001, 9), v6[1]]),
    }


CASES = _cases()


def _tcp_frames(data: bytes | memoryview) -> bool:
    """A frame of the test's flows (not the bridge's IGMP or IPv6 chatter)."""
    if bytes(data[12:14]) == b"\x08\x00":
        l4 = 14 + (data[14] & 0x0F) * 4
        proto = data[23]
    elif bytes(data[12:14]) == b"\x86\xdd":
        l4, proto = 54, data[20]
    else:
        return False
    return proto in (6, 17) and bytes(data[l4 : l4 + 2]) in (b"\x9c\x40", b"\x0f\xa0")


@pytest.mark.parametrize("name", list(CASES))
def test_column_path_matches_the_kernel(assemble_rig: AssembleRig, name: str) -> None:
    rig = assemble_rig
    rig.tap.recv(256)
    segments = CASES[name]
    assert len(segments) >= gro_rows.MIN_FRAMES
    prepared = gro_rows.prepare(segments)
    assert prepared is not None
    verified = gro_rows.verify(prepared)
    kw = {"udp": True, "max_size": gro.GRO_MAX_SIZE, "max_segments": None, "max_flows": 8}
    assert gro_rows.assemble_prepared(prepared, verified, **kw) is not None
    assert rig.sender.send([Packet(s) for s in segments]) == len(segments)
    got: list[Packet] = []
    deadline = time.monotonic() + 3
    while sum(p.rx.segments for p in got) < len(segments) and time.monotonic() < deadline:
        select.select([rig.tap.fileno()], [], [], 0.05)
        got.extend(p for p in rig.tap.recv(64) if _tcp_frames(p.data))
    assert sum(p.rx.segments for p in got) == len(segments)

    def plain(hdr: VirtioNetHdr) -> tuple[int, ...]:
        return (hdr.flags, hdr.gso_type, hdr.hdr_len, hdr.gso_size, hdr.csum_start, hdr.csum_offset)

    kernel = [(plain(VirtioNetHdr.from_rx_info(p.rx)), bytes(p.data)) for p in got]
    ours = [(plain(h), f) for h, f in gro.coalesce(segments)]
    assert [h for h, _ in ours] == [h for h, _ in kernel]
    for i, ((_, mine), (_, theirs)) in enumerate(zip(ours, kernel, strict=True)):
        assert mine.hex() == theirs.hex(), f"super-packet {i} differs"


def test_segment_batch_matches_the_kernel(segment_rig: SegmentRig) -> None:
    rig = segment_rig
    shapes = [
        (Seg(size=5000, flags=0x19, timestamp=3), 1, 1400),  # FIN+PSH only on the last
        (Seg(size=4200, flags=0x90), 0x81, 1400),  # CWR only on the first (ECN)
        (Seg(kind="tcp6", size=3001), 4, 1000),
        (Seg(kind="udp4", size=3000), 5, 1000),
        (Seg(kind="udp6", size=2500), 5, 1200),
        (Seg(size=900), 1, 1400),  # not above the MSS: sent whole
    ]
    frames, hdrs = [], []
    for seg, gso_type, mss in shapes:
        partial, start, offset = as_partial(build(seg))
        frames.append(partial)
        hdrs.append(VirtioNetHdr(1, gso_type, 0, mss, start, offset))
    batch = gso.segment_batch(frames, gso.plan_batch(frames, hdrs), headroom=4)
    assert batch.errors == [None] * len(shapes)
    for i, (frame, hdr) in enumerate(zip(frames, hdrs, strict=True)):
        rig.capture.recv(256)
        assert rig.tap.send([Packet(frame, tx=hdr.to_tx_request())]) == 1
        want = batch.count(i)
        kernel: list[bytes] = []
        deadline = time.monotonic() + 3
        while len(kernel) < want and time.monotonic() < deadline:
            select.select([rig.capture.fileno()], [], [], 0.05)
            kernel += [bytes(p.data) for p in rig.capture.recv(64) if _tcp_frames(p.data)]
        ours = [bytes(s) for s in batch.segments(i)]
        assert [s.hex() for s in ours] == [k.hex() for k in kernel], f"input {i}"
