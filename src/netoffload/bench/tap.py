"""`netoffload bench tap`: bytes through a TAP with offloads on vs off, both directions.

Everything happens in a private network namespace made for the run (and
always deleted), with addresses from 198.18.0.0/15 only.

* **write** (host -> kernel): our ``TapDevice.send`` writes UDP data into a
  TAP that is a bridge port; the bridge floods it out of a veth whose peer
  discards it (the destination MAC is nobody's). *On*: 64 KiB UDP_L4 GSO
  super-packets with NEEDS_CSUM; *off*: the same payload as 1472-byte
  datagrams with their checksums already filled.
* **read** (kernel -> host): a process inside the namespace sends UDP with
  UDP_SEGMENT (GSO) towards an address routed out of a second TAP, and our
  ``TapDevice.recv`` reads. *On*: the TAP has TUN_F_CSUM|TSO|USO, so the
  kernel hands over each 64 KiB super-packet whole; *off*: no offload
  flags, so the kernel segments and checksums in software and we read
  1514-byte frames.

Throughput is UDP payload (goodput), so on and off move the same bytes.
Each measurement is bounded in time; the sender exits on its own deadline
and is also killed when the run ends.

The machine is shared with whatever else runs, so every figure is the best
of a few rounds, with on and off interleaved so that a busy moment does not
land on one side only. While reading, the sender (whose system calls do the
kernel's half of the work: segmentation and checksums when offloads are off)
is pinned to one CPU and the reader to another, so neither preempts the other
on every wake-up.
"""

from __future__ import annotations

import os
import platform
import select
import subprocess
import sys
import time
from ipaddress import IPv4Address
from typing import Any

from rich.console import Console
from rich.table import Table

from netoffload.device.base import DeviceError
from netoffload.device.tap import TapDevice
from netoffload.netns import Netns
from netoffload.offload import Packet, Selection, TxRequest
from netoffload.progress import NO_PROGRESS, Progress
from netoffload.wire import (
    EthernetRepr,
    EtherType,
    FlowTemplate,
    IpProtocol,
    Ipv4Repr,
    MacAddress,
    UdpRepr,
)

SEGMENT = 1472  # UDP payload of a 1500-byte IPv4 packet
SEGMENTS = 44  # 44 x 1472 = 64768 bytes: under the 65507-byte UDP limit
HOST_ADDR = bytes([198, 18, 0, 1])
TAP_ADDR = bytes([198, 18, 0, 2])
FOREIGN_MAC = bytes.fromhex("02000000aa01")
SRC_MAC = bytes.fromhex("02000000aa02")
L2L3L4 = 14 + 20 + 8
UDP_SEGMENT_OPT = 103

# The sender sends one super-datagram per credit byte it reads from stdin; the
# reader hands out credits as it reads, so the TAP queue stays full without
# the sender burning the other CPU (and memory bandwidth) on datagrams the
# TAP would drop.
_SENDER = """
import os, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_UDP, {opt}, {seg})
payload = bytes({size})
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    credits = os.read(0, 4096)
    if not credits:
        break
    for _ in range(len(credits)):
        try:
            sock.sendto(payload, ("198.18.0.1", 9))
        except OSError:
            pass
"""
CREDITS_IN_FLIGHT = 400


_TEMPLATE = FlowTemplate(
    EthernetRepr(MacAddress(FOREIGN_MAC), MacAddress(SRC_MAC), EtherType.IPV4),
    Ipv4Repr(IPv4Address(TAP_ADDR), IPv4Address(HOST_ADDR), IpProtocol.UDP, 0, dont_frag=True),
    UdpRepr(40000, 9),
)


def _ipv4_udp(payload_len: int, ident: int, partial: bool) -> bytes:
    """A UDP/IPv4 frame of zeros from the template; ``partial`` leaves NEEDS_CSUM's seed."""
    frame = bytearray(L2L3L4 + payload_len)
    _TEMPLATE.write(frame, payload_len, ident=ident & 0xFFFF)
    if not partial:
        _TEMPLATE.finish_checksum(frame, len(frame))
    return bytes(frame)


def _write_batch(on: bool) -> list[Packet]:
    if on:
        request = TxRequest.segment_l4(
            l4_offset=_TEMPLATE.layout.l4_offset,
            protocol=IpProtocol.UDP,
            ip_version=4,
            mss=SEGMENT,
            header_len=L2L3L4,
        )
        frame = _ipv4_udp(SEGMENT * SEGMENTS, 1, partial=True)
        return [Packet(frame, tx=request)] * 16
    return [Packet(_ipv4_udp(SEGMENT, i, partial=False)) for i in range(SEGMENTS)] * 4


def _measure_write(tap: TapDevice, on: bool, seconds: float) -> tuple[float, float]:
    """(payload Gbit/s, frames/s) written; bounded by ``seconds``."""
    batch = _write_batch(on)
    payload = sum(len(p.data) - L2L3L4 for p in batch)
    frames = len(batch)
    before = tap.stats()
    start = time.perf_counter()
    deadline = start + seconds
    sent_payload = sent_frames = 0
    while time.perf_counter() < deadline:
        if tap.send(batch) == frames:
            sent_payload += payload
            sent_frames += frames
    elapsed = time.perf_counter() - start
    after = tap.stats()
    if after.dropped != before.dropped:
        raise DeviceError(f"TAP write dropped packets: {dict(after.drops)}")
    return sent_payload * 8 / elapsed / 1e9, sent_frames / elapsed


def _cpu_split() -> tuple[set[int], set[int]] | None:
    """(reader CPUs, sender CPUs): two different CPUs we may run on, or None with one."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, {cpus[1]}


def _measure_read(ns: Netns, tap: TapDevice, seconds: float) -> tuple[float, float]:
    """(payload Gbit/s, frames/s) read while a sender in the namespace runs."""
    original = os.sched_getaffinity(0)
    split = _cpu_split()
    try:
        if split is not None:
            os.sched_setaffinity(0, split[1])  # inherited by the sender
        sender = _start_sender(ns, seconds)
        if split is not None:
            os.sched_setaffinity(0, split[0])
        return _read_from(sender, tap, seconds)
    finally:
        os.sched_setaffinity(0, original)


def _start_sender(ns: Netns, seconds: float) -> subprocess.Popen[bytes]:
    code = _SENDER.format(opt=UDP_SEGMENT_OPT, seg=SEGMENT, size=SEGMENT * SEGMENTS)
    return ns.popen(
        [sys.executable, "-c", code, str(seconds + 3.0)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _read_from(
    sender: subprocess.Popen[bytes], tap: TapDevice, seconds: float
) -> tuple[float, float]:
    assert sender.stdin is not None
    credit_fd = sender.stdin.fileno()
    per_credit = SEGMENT * SEGMENTS
    try:
        os.write(credit_fd, bytes(CREDITS_IN_FLIGHT))
        warm_deadline = time.monotonic() + 3.0
        while not tap.recv(256):  # wait for the first frame: the sender is up
            if time.monotonic() > warm_deadline or sender.poll() is not None:
                err = sender.stderr.read().decode().strip() if sender.stderr else ""
                raise DeviceError(f"the traffic sender did not start {err}".strip())
            select.select([tap.fileno()], [], [], 0.01)
        got_payload = got_frames = owed = 0
        start = time.perf_counter()
        deadline = start + seconds
        fd = tap.fileno()
        while time.perf_counter() < deadline:
            packets = tap.recv(32)
            if not packets:
                select.select([fd], [], [], 0.01)
                continue
            got_frames += len(packets)
            payload = sum(len(p.data) for p in packets) - L2L3L4 * len(packets)
            got_payload += payload
            owed += payload
            if owed >= per_credit:
                os.write(credit_fd, bytes(owed // per_credit))
                owed %= per_credit
        elapsed = time.perf_counter() - start
    finally:
        sender.kill()
        sender.wait()
        sender.stdin.close()
        if sender.stderr is not None:
            sender.stderr.close()
        while tap.recv(256):
            pass
    return got_payload * 8 / elapsed / 1e9, got_frames / elapsed


def _require_privileges() -> None:
    if os.geteuid() != 0:
        raise DeviceError("bench tap needs root (CAP_NET_ADMIN) to create namespaces and TAPs")
    if not os.path.exists("/dev/net/tun"):
        raise DeviceError("bench tap needs /dev/net/tun")


def run(quick: bool, progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """Measure write and read Gbit/s with offloads on and off; returns the JSON result."""
    _require_privileges()
    seconds = 0.3 if quick else 1.0
    rounds = 1 if quick else 3
    result: dict[str, Any] = {
        "benchmark": "tap",
        "quick": quick,
        "kernel": platform.release(),
        "seconds_per_measurement": seconds,
        "rounds": rounds,
        "segment_payload_bytes": SEGMENT,
        "super_packet_payload_bytes": SEGMENT * SEGMENTS,
    }
    with Netns("nsobench") as ns:
        ns.add_bridge("nsobr0")
        ns.add_veth("nsova", "nsovb")
        with ns.entered():
            writer = TapDevice("nsotapw", up=False)
            reader = TapDevice("nsotapr", up=False)
        with writer, reader:
            ns.set_master("nsotapw", "nsobr0")
            ns.set_master("nsova", "nsobr0")
            ns.add_address("nsotapr", "198.18.0.2/24")
            for dev in ("nsobr0", "nsova", "nsovb", "nsotapw", "nsotapr"):
                ns.set_link(dev, up=True)
            ns.add_neighbour("nsotapr", "198.18.0.1", FOREIGN_MAC)
            best: dict[str, tuple[float, float]] = {}
            progress.stage("TAP, offloads off and on", 4 * rounds)
            done = 0
            for _ in range(rounds):
                for on in (False, True):
                    label = "on" if on else "off"
                    for tap in (writer, reader):
                        caps = tap.capabilities()
                        tap.enable(Selection.everything(caps) if on else tap.fixed_selection())
                    for key, measured in (
                        (f"write_{label}", _measure_write(writer, on, seconds)),
                        (f"read_{label}", _measure_read(ns, reader, seconds)),
                    ):
                        if measured[0] > best.get(key, (0.0, 0.0))[0]:
                            best[key] = measured
                        done += 1
                        progress.update(done)
    for key, (gbit, fps) in best.items():
        direction, label = key.split("_")
        result[f"{direction}_gbit_per_s_{label}"] = round(gbit, 3)
        result[f"{direction}_frames_per_s_{label}"] = round(fps)
    for direction in ("write", "read"):
        off = result[f"{direction}_gbit_per_s_off"]
        on_rate = result[f"{direction}_gbit_per_s_on"]
        result[f"{direction}_ratio"] = round(on_rate / off, 2) if off else None
    return result


def render(result: dict[str, Any], console: Console) -> None:
    """The side-by-side table."""
    table = Table(
        title=(
            f"TAP throughput, offloads on vs off (UDP goodput; kernel {result['kernel']}, "
            f"best of {result['rounds']} x {result['seconds_per_measurement']} s)"
        ),
        title_justify="left",
    )
    table.add_column("direction")
    table.add_column("off Gbit/s", justify="right")
    table.add_column("off frames/s", justify="right")
    table.add_column("on Gbit/s", justify="right")
    table.add_column("on frames/s", justify="right")
    table.add_column("on / off", justify="right")
    for direction, note in (("write", "host -> kernel"), ("read", "kernel -> host")):
        ratio = result.get(f"{direction}_ratio")
        table.add_row(
            f"{direction} ({note})",
            f"{result[f'{direction}_gbit_per_s_off']:.2f}",
            f"{result[f'{direction}_frames_per_s_off']:,}",
            f"{result[f'{direction}_gbit_per_s_on']:.2f}",
            f"{result[f'{direction}_frames_per_s_on']:,}",
            "-" if ratio is None else f"{ratio:.1f}x",
        )
    console.print(table)
    console.print(
        f"on: {result['super_packet_payload_bytes']}-byte UDP super-packets (GSO/USO, NEEDS_CSUM); "
        f"off: {result['segment_payload_bytes']}-byte datagrams, checksums in software."
    )
