"""Steering is the same either way: the SoftNic firmware, or the host for a device without it.

The same rules go to two SoftNics through ``HostOffload.rules``: one steers in
its firmware, the other has CLASSIFICATION and DOS_FILTER turned off, so its
host steers. The same frames go into both; what each delivered frame carries
(flow hash, hash report, mark, verdict, rule) and what was dropped, by reason
and per rule, must be the same.
"""

from __future__ import annotations

import time

from netoffload.device.cable import Cable, Impairments
from netoffload.device.softnic import SoftNic
from netoffload.host import HostOffload
from netoffload.offload import FilterVerdict, HashReport, Packet, Task
from tests.engine.builders import tcp4, tcp6, udp4, udp6

RULES = (
    "add flow-type udp4 dst-port 9 action drop",
    "add flow-type udp4 dst-port 10 mark 5",
    "add flow-type tcp6 src-port 1000-1999 mark 6",
    "add dos limit syn 1 burst 2",
    "add dos block src-ip fd00:66::/32",
)


def _frames() -> list[bytes]:
    out: list[bytes] = []
    for i in range(6):
        out.append(udp4(bytes([i]) * 8, sport=5000 + i, dport=9 if i % 2 else 10))
        out.append(udp6(bytes([i]) * 8, sport=6000 + i))
        out.append(tcp6(bytes([i]) * 8, sport=1000 + 300 * i, flags="PA"))
        out.append(tcp4(b"", sport=7000 + i, flags="S"))  # the third SYN on gets a cookie
    out.append(tcp4(b"", flags="SF"))  # impossible flags: dropped as malformed
    return out


def _run(
    nic: SoftNic, peer: Cable, host: HostOffload, frames: list[bytes]
) -> list[tuple[object, ...]]:
    peer.b.send_batch(frames)
    assert peer.b.drain(5.0)
    got: list[Packet] = []
    end = time.monotonic() + 10
    while len(got) < len(frames) - 4 and time.monotonic() < end:
        nic.wait(0.05)
        got.extend(host.recv(64))
    rows = [
        (bytes(p.data), p.rx.flow_hash, p.rx.hash_report, p.rx.mark, p.rx.verdict, p.rx.filter_rule)
        for p in got
    ]
    host.release(got)
    return rows


def test_the_host_steers_as_the_firmware_does() -> None:
    frames = _frames()
    results = []
    drops = []
    for steer_in_device in (True, False):
        with Cable(Impairments(mtu=None), seed=7) as cable:
            nic = SoftNic(cable=cable.a, name=f"steer-{steer_in_device}")
            with nic:
                if not steer_in_device:
                    nic.enable(nic.enabled().without(Task.CLASSIFICATION).without(Task.DOS_FILTER))
                host = HostOffload(nic)
                for command in RULES:
                    host.rules(command)
                results.append(_run(nic, cable, host, frames))
                counted = nic.stats().drops if steer_in_device else host.stats.drops
                drops.append({k: v for k, v in counted.items() if k != "no_buffer"})
                listing = host.rules("list")["rules"]
                assert isinstance(listing, list)
                assert [r["hits"] for r in listing if r["table"] == "classify"] == [3, 3, 4]
    device, host_side = results
    assert len(device) == len(frames) - 4
    assert sorted(device, key=repr) == sorted(host_side, key=repr)  # (arrival order may differ)
    assert drops[0] == drops[1] == {"rule_drop": 3, "dos_bad_tcp_flags": 1}
    by_frame = {row[0]: row[1:] for row in device}
    # What the rows look like: a mark, the verdict and the deciding rule, the hash report.
    marked = by_frame[frames[0]]
    assert marked[1] is HashReport.UDPV4 and marked[2] == 5 and marked[4] == 2
    cookies = [
        by_frame[f] for f in frames if f in by_frame and by_frame[f][3] is FilterVerdict.SYN_COOKIE
    ]
    assert len(cookies) == 4 and all(row[4] == 1 for row in cookies)  # the SYN limit, dos rule 1
