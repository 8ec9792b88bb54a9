"""Launch time, measured where the frames arrive: deadline order, none early, late ones counted.

Frames carry their launch time (CLOCK_TAI) in their payload and are handed
over in shuffled order; the far end of the cable stamps each on arrival with
the same clock. A frame may arrive late (a loaded machine), never early, and
the frames arrive in launch-time order. A frame whose launch time had passed
when it was handed over never arrives and is counted. Once with the SoftNic
firmware pacing, once with the host pacing for a device without the task.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from netoffload.device.cable import Cable, CableEnd, Impairments
from netoffload.device.softnic import SoftNic
from netoffload.host import HostOffload
from netoffload.offload import Clocks, Packet, Task, TxRequest, TxSchedulingCaps
from netoffload.wire import EthernetRepr, MacAddress

TIMED = 20
LATE = 3
STEP_NS = 10_000_000
LEAD_NS = 150_000_000
PEER = MacAddress(b"\x02\x00\x00\x00\x00\x42")


def tai_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_TAI)


def _frame(dst: MacAddress, launch_ns: int) -> bytes:
    eth = EthernetRepr(dst, PEER, ethertype=0x88B5)  # IEEE local experimental EtherType
    frame = bytearray(eth.header_len + 46)
    eth.emit(frame)
    frame[eth.header_len : eth.header_len + 8] = launch_ns.to_bytes(8, "big")
    return bytes(frame)


def _batch(mac: MacAddress) -> tuple[list[Packet], list[int]]:
    now = tai_ns()
    launches = [now + LEAD_NS + i * STEP_NS for i in range(TIMED)]
    random.Random(5).shuffle(launches)
    late = [now - 1_000_000_000 - i for i in range(LATE)]
    packets = [Packet(_frame(mac, t), TxRequest(launch_time_ns=t)) for t in launches + late]
    return packets, launches


def _arrivals(peer: CableEnd, count: int, timeout_s: float) -> list[tuple[int, int]]:
    """(launch time, arrival time) of each frame, in arrival order."""
    got: list[tuple[int, int]] = []
    end = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < end:
        for frame in peer.recv_batch(64, 0.01):
            got.append((int.from_bytes(frame[14:22], "big"), tai_ns()))
    return got


def _check(
    got: list[tuple[int, int]], launches: Sequence[int], drops: Callable[[], dict[str, int]]
) -> None:
    for launch, arrival in got:
        assert arrival >= launch, "a frame arrived before its launch time"
    order = [launch for launch, _ in got]
    assert order == sorted(order), "frames left out of launch-time order"
    assert set(order) <= set(launches)  # the late ones never arrive
    counted = drops()
    assert counted.get("launch_time_passed", 0) == LATE
    # A frame released too late on a loaded machine is dropped and counted, not sent.
    assert len(got) + counted.get("launch_time_missed", 0) == TIMED


def test_the_softnic_paces_launch_times_in_deadline_order() -> None:
    with Cable(Impairments(mtu=None), seed=4) as cable:
        nic = SoftNic(cable=cable.a, name="launch-nic")
        with nic:
            (record,) = [r for r in nic.capabilities() if isinstance(r, TxSchedulingCaps)]
            assert record.clocks == Clocks.TAI and record.horizon_ns > LEAD_NS
            packets, launches = _batch(PEER)
            assert nic.send(packets) == len(packets)
            got = _arrivals(cable.b, TIMED, 10.0)
            _check(got, launches, lambda: dict(nic.stats().drops))
            assert nic.stats().tasks["tx_scheduling"] == TIMED


def test_the_host_paces_for_a_device_without_launch_time() -> None:
    with Cable(Impairments(mtu=None), seed=5) as cable:
        nic = SoftNic(cable=cable.a, name="launch-host")
        with nic:
            nic.enable(nic.enabled().without(Task.TX_SCHEDULING))
            host = HostOffload(nic)
            packets, launches = _batch(PEER)
            host.send(packets)
            assert host.flush(10.0)
            got = _arrivals(cable.b, TIMED, 10.0)
            _check(got, launches, lambda: dict(host.stats.drops))
            assert host.stats.fallbacks["tx_scheduling/not_enabled"] == TIMED + LATE
            assert "tx_scheduling" not in nic.stats().tasks


def test_encrypted_frames_are_paced_too() -> None:
    """Launch time and inline ESP on one packet: the SoftNic encrypts it at once and holds
    the ESP frame for its time (scapy opens each to read the launch time inside)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.ipsec import ESP
    from scapy.layers.ipsec import SecurityAssociation as ScapySa
    from scapy.layers.l2 import Ether

    from netoffload.engine.esp_sa import EspAlgorithm, EspConfig
    from netoffload.offload import Selection

    key = bytes(range(16)) + b"salt"
    sa = EspConfig(spi=0x2001, algorithm=EspAlgorithm.AES_GCM, key=key)
    theirs = ScapySa(ESP, spi=sa.spi, crypt_algo="AES-GCM", crypt_key=key)
    with Cable(Impairments(mtu=None), seed=6) as cable:
        nic = SoftNic(cable=cable.a, name="launch-esp")
        with nic:
            nic.enable(Selection.everything(nic.capabilities()))
            now = tai_ns()
            launches = [now + LEAD_NS + i * STEP_NS for i in range(TIMED)]
            random.Random(6).shuffle(launches)
            late = [now - 1_000_000_000 - i for i in range(LATE)]
            packets = []
            for seq, launch in enumerate(launches + late, start=1):
                frame = bytes(
                    Ether(src=str(PEER), dst="02:00:00:00:00:43")
                    / IP(src="198.18.0.1", dst="198.18.0.2")
                    / UDP(sport=1, dport=2)
                    / launch.to_bytes(8, "big")
                )
                request = TxRequest(launch_time_ns=launch).encrypted(
                    0, seq, sa if seq == 1 else None
                )
                packets.append(Packet(frame, request))
            assert nic.send(packets) == len(packets)
            got: list[tuple[int, int]] = []
            end = time.monotonic() + 10
            while len(got) < TIMED and time.monotonic() < end:
                for frame in cable.b.recv_batch(64, 0.01):
                    arrival = tai_ns()
                    opened = theirs.decrypt(Ether(bytes(frame))[IP])
                    got.append((int.from_bytes(bytes(opened[UDP].payload)[:8], "big"), arrival))
            _check(got, launches, lambda: dict(nic.stats().drops))
            tasks = nic.stats().tasks
            assert tasks["tx_scheduling"] == TIMED and tasks["encrypt"] == TIMED + LATE
