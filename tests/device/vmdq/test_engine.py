"""The NIC side of the pools, in one process: steering, tags taken off and put on (scapy is
the oracle for the frames), replicas, lost frames, zeroing, loopback with its offloads,
and frames for the uplink with their requests moved with the tag."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from scapy.layers.l2 import Dot1Q, Ether

from netoffload.device.softnic import layout
from netoffload.device.vmdq.engine import PoolEngine
from netoffload.device.vmdq.queue import (
    DONE_LEARNED,
    RX_COPIED,
    RX_GROUP,
    RX_LOOPBACK,
    Queue,
    Status,
    descs,
    sealed_memfd,
)
from netoffload.device.vmdq.steer import PortVlans, SteeringTable, mac_of_key
from netoffload.device.vmdq.window import HEADROOM, WindowGeometry, nic_queues
from netoffload.engine import pipeline
from netoffload.offload import (
    ChecksumStatus,
    Packet,
    RxInfo,
    Task,
    TxRequest,
)
from netoffload.wire import MacAddress
from tests.engine.builders import MAC, as_partial, checksums_ok, tcp4

GUEST_A = MacAddress.parse(MAC["dst"])  # the builders' frames go to A
GUEST_B = MacAddress.parse("02:00:00:00:00:0b")


@dataclass
class Window:
    fd: int
    region: mmap.mmap
    geometry: WindowGeometry

    def frame(self, buffer: int, offset: int, length: int) -> bytes:
        start = self.geometry.offset(buffer) + offset
        return bytes(self.region[start : start + length])

    def tail(self, buffer: int, end: int) -> bytes:
        g = self.geometry
        return bytes(self.region[g.offset(buffer) + end : g.offset(buffer) + g.buffer_bytes])


class Nic:
    """A PoolEngine and the switch's ends of its queues, with windows made here."""

    def __init__(self) -> None:
        queues = nic_queues(64)
        self.region = mmap.mmap(-1, queues.total_bytes)
        mem = memoryview(self.region)
        self.switch: dict[str, Queue] = queues.queues(mem)
        self.engine = PoolEngine(queues.queues(mem))
        self.windows: dict[int, Window] = {}

    def attach(self, pool: int, vlans: PortVlans, geometry: WindowGeometry | None = None) -> None:
        g = geometry or WindowGeometry(rx_buffers=4, tx_buffers=4)
        fd = sealed_memfd(f"test-window-{pool}", g.total_bytes)
        self.engine.attach(pool, fd, g, vlans)
        self.windows[pool] = Window(fd, mmap.mmap(fd, g.total_bytes), g)

    def post(self, pool: int, *buffers: int) -> None:
        rows = descs(len(buffers))
        rows["pool"] = pool
        rows["buffer"] = buffers
        rows["gen"] = 7
        self.switch["fill"].put(rows)

    def table(self, **kwargs: object) -> None:
        ports = {p: self.engine.pools[p].vlans for p in self.engine.pools}
        self.engine.set_table(SteeringTable(ports, **kwargs))  # type: ignore[arg-type]

    def received(self) -> list[tuple[int, bytes, RxInfo, int]]:
        """(pool, frame, info, flags) of every receive descriptor published."""
        out = []
        for row in self.switch["rx"].take():
            window = self.windows[int(row["pool"])]
            frame = window.frame(int(row["buffer"]), int(row["offset"]), int(row["length"]))
            info = layout.decode_rx_ext(row["ext"].tobytes())
            out.append((int(row["pool"]), frame, info, int(row["flags"])))
        return out

    def send(self, pool: int, buffer: int, frame: bytes, request: TxRequest) -> None:
        window = self.windows[pool]
        start = window.geometry.offset(buffer) + HEADROOM
        window.region[start : start + len(frame)] = frame
        rows = descs(1)
        rows["pool"] = pool
        rows["buffer"] = buffer
        rows["offset"] = HEADROOM
        rows["length"] = len(frame)
        rows["ext"] = np.array([layout.encode_tx_ext(request)], dtype="V52")
        self.switch["tx"].put(rows)

    def close(self) -> None:
        self.engine.close()
        for window in self.windows.values():
            window.region.close()
            os.close(window.fd)


@pytest.fixture
def nic() -> Iterator[Nic]:
    made = Nic()
    try:
        yield made
    finally:
        made.close()


def test_a_tag_comes_off_for_an_access_port_and_stays_for_a_trunk(nic: Nic) -> None:
    nic.attach(1, PortVlans.access(10))
    nic.attach(2, PortVlans.trunk([10]))
    nic.table(unicast={(10, GUEST_A.octets): 1, (10, GUEST_B.octets): 2})
    nic.post(1, 0)
    nic.post(2, 0)
    nic.engine.take_fills()
    to_a = tcp4(b"x" * 100, vlan=10)
    to_b = bytes(
        Ether(dst=str(GUEST_B), src=MAC["src"]) / Dot1Q(vlan=10) / Ether(to_a).payload.payload
    )
    info = RxInfo(l4=ChecksumStatus.VERIFIED)
    written = nic.engine.receive([Packet(to_a, rx=info), Packet(to_b, rx=info)])
    assert written == (2, len(to_a) - 4 + len(to_b))
    (pool_a, got_a, info_a, flags_a), (pool_b, got_b, _, _) = nic.received()
    assert (pool_a, pool_b) == (1, 2)
    untagged = Ether(to_a)
    untagged.type = untagged[Dot1Q].type
    untagged.remove_payload()
    assert got_a == bytes(untagged / Ether(to_a)[Dot1Q].payload)  # scapy: the same, untagged
    assert got_b == to_b
    assert info_a.l4 is ChecksumStatus.VERIFIED and flags_a == 0  # from the wire: no copy
    assert nic.engine.switching["unicast"] == 2


def test_a_group_frame_is_one_counted_replica_per_pool_of_its_vlan(nic: Nic) -> None:
    for pool in (1, 2, 3):
        nic.attach(pool, PortVlans.access(10 if pool < 3 else 20))
        nic.post(pool, 0)
    nic.table()
    nic.engine.take_fills()
    broadcast = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=MAC["src"]) / Dot1Q(vlan=10) / (b"y" * 60))
    nic.engine.receive([Packet(broadcast)])
    got = nic.received()
    assert [(p, f) for p, _, _, f in got] == [(1, RX_GROUP | RX_COPIED), (2, RX_GROUP | RX_COPIED)]
    for pool in (1, 2):
        counters = nic.engine.pools[pool].counters
        assert counters.copies == {"group": 1}
        assert counters.copied_bytes == {"group": len(broadcast) - 4}
    assert nic.engine.pools[3].counters.rx_packets == 0


def test_a_pool_without_a_posted_buffer_loses_its_frame_and_only_its_own(nic: Nic) -> None:
    nic.attach(1, PortVlans.access(0))
    nic.attach(2, PortVlans.access(0))
    nic.table(unicast={(0, GUEST_A.octets): 1, (0, GUEST_B.octets): 2})
    nic.post(2, 0, 1)
    nic.engine.take_fills()
    to_a = tcp4(b"a" * 10)
    to_b = bytes(Ether(dst=str(GUEST_B), src=MAC["src"]) / Ether(to_a).payload)
    nic.engine.receive([Packet(to_a), Packet(to_b), Packet(to_b)])
    assert [p for p, _, _, _ in nic.received()] == [2, 2]
    assert nic.engine.pools[1].counters.drops == {"no_buffer": 1}
    assert nic.engine.pools[2].counters.drops == {}


def test_a_buffer_holds_nothing_of_an_earlier_frame_after_a_shorter_one(nic: Nic) -> None:
    nic.attach(1, PortVlans.access(0))
    nic.table(unicast={(0, GUEST_A.octets): 1})
    window = nic.windows[1]
    window.region[: window.geometry.buffer_bytes] = b"\xee" * window.geometry.buffer_bytes
    for size in (30000, 200, 9000, 61):
        nic.post(1, 0)
        nic.engine.take_fills()
        frame = tcp4(b"z" * size)
        nic.engine.receive([Packet(frame)])
        [(_, got, _, _)] = nic.received()
        assert got == frame
        assert window.tail(0, HEADROOM + len(frame)) == bytes(
            window.geometry.buffer_bytes - HEADROOM - len(frame)
        )


def test_a_guest_frame_for_another_guest_is_one_copy_with_its_offload_request(nic: Nic) -> None:
    nic.attach(1, PortVlans.trunk([10]))
    nic.attach(2, PortVlans.access(10))
    nic.table(unicast={(10, GUEST_A.octets): 2})
    nic.post(2, 0)
    nic.engine.take_fills()
    # Sent tagged by the trunk guest with a partial checksum; the access guest gets it
    # untagged, with the partial checksum's offsets moved by the tag.
    frame, l4, _ = as_partial(tcp4(b"p" * 300, vlan=10))
    work = nic.engine.transmit()
    assert work is None
    nic.send(1, 4, frame, TxRequest.checksum_l4(l4_offset=l4, protocol=6))
    work = nic.engine.transmit()
    assert work is not None and work.packets == []
    [(pool, got, info, flags)] = nic.received()
    assert pool == 2 and flags == RX_COPIED | RX_LOOPBACK
    assert info.l4 is ChecksumStatus.VERIFIED
    assert info.checksum_partial is not None and info.checksum_partial.start == l4 - 4
    # Finishing the checksum where the receiver is told to gives what scapy computes.
    finished = pipeline.transmit(
        [Packet(got, TxRequest(checksum=info.checksum_partial))], frozenset({Task.CHECKSUM})
    )
    assert checksums_ok(bytes(finished.packets[0].data))
    assert nic.engine.pools[2].counters.copies == {"guest": 1}
    nic.engine.complete(work)
    [done] = nic.switch["done"].take()
    assert done["status"] == Status.OK and done["flags"] == DONE_LEARNED
    assert (done["vlan"], mac_of_key(int(done["mac"]))) == (10, bytes.fromhex("020000000001"))


def test_a_frame_for_the_uplink_gets_its_tag_and_its_request_moves_with_it(nic: Nic) -> None:
    nic.attach(1, PortVlans.access(10))
    nic.table()
    frame, l4, _ = as_partial(tcp4(b"u" * 3000))
    request = TxRequest.segment_l4(l4_offset=l4, protocol=6, ip_version=4, mss=1000)
    nic.send(1, 4, frame, request)
    work = nic.engine.transmit()
    assert work is not None
    [packet] = work.packets
    assert packet.tx.checksum is not None and packet.tx.checksum.start == l4 + 4
    out = pipeline.transmit([packet], {Task.CHECKSUM, Task.TCP_SEGMENTATION})
    segments = [bytes(p.data) for p in out.packets]
    assert len(segments) == 3
    for segment in segments:
        parsed = Ether(segment)
        assert parsed[Dot1Q].vlan == 10 and checksums_ok(segment)
    assert b"".join(bytes(Ether(s)["TCP"].payload) for s in segments) == b"u" * 3000


def test_a_super_packet_too_big_for_a_guest_is_cut_on_the_way(nic: Nic) -> None:
    small = WindowGeometry(rx_buffers=8, tx_buffers=1, buffer_bytes=4096)
    nic.attach(1, PortVlans.access(0))
    nic.attach(2, PortVlans.access(0), small)
    nic.table(unicast={(0, GUEST_A.octets): 2})
    nic.post(2, *range(8))
    nic.engine.take_fills()
    frame, l4, _ = as_partial(tcp4(bytes(range(256)) * 20))
    request = TxRequest.segment_l4(l4_offset=l4, protocol=6, ip_version=4, mss=1448)
    nic.send(1, 4, frame, request)
    nic.engine.transmit()
    got = nic.received()
    assert len(got) == 4 and all(len(f) <= small.frame_capacity for _, f, _, _ in got)
    assert all(checksums_ok(f) for _, f, _, _ in got)
    assert b"".join(bytes(Ether(f)["TCP"].payload) for _, f, _, _ in got) == bytes(range(256)) * 20
    assert nic.engine.switching["loopback_segmented"] == 1


def test_bad_transmit_descriptors_cost_only_themselves(nic: Nic) -> None:
    nic.attach(1, PortVlans.access(0))
    nic.table()
    rows = descs(4)
    rows["pool"] = [1, 1, 9, 1]
    rows["buffer"] = [0, 4, 4, 5]  # a receive buffer; fine; no such pool; fine
    rows["offset"] = HEADROOM
    rows["length"] = [60, 60, 60, 60]
    rows["ext"] = np.array([bytes(52)] * 4, dtype="V52")
    rows["ext"][1] = b"\xff" + bytes(51)  # unknown descriptor flags
    nic.switch["tx"].put(rows)
    work = nic.engine.transmit()
    assert work is not None
    assert work.done["status"].tolist() == [
        Status.OUT_OF_RANGE,
        Status.MALFORMED,
        Status.GONE,
        Status.OK,
    ]
    assert len(work.packets) == 1
