"""A raw bulk flow between two SoftNics, offload on vs off: the device alone, no stack.

``netoffload bench softnic`` measures the SoftNic with it (the demo runs real
TCP and UDP between two stacks instead, in ``demo.run``).

Offload on: the host builds 64 KiB super-packets straight in the sending
NIC's pool buffers with a checksum + segmentation request; the NIC's
firmware segments and checksums, the receiving NIC verifies and coalesces.
Offload off: the same super-packets, but the host segments and checksums
them in software (the same engine, through ``HostOffload``), the NICs move
1500-byte frames, and the receiving host verifies checksums in software.

Host CPU is this process's CPU time only: the firmware processes are the
NICs' processors. The cable has a 1500-byte MTU, so a super-packet that
was not segmented could not cross it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from netoffload.demo.flow import BulkFlowGenerator, FlowSink, FlowSpec
from netoffload.device.base import DeviceError
from netoffload.device.cable import Impairments
from netoffload.device.softnic import SoftNic, softnic_pair
from netoffload.host import HostOffload
from netoffload.offload import CapabilityRecord, Selection, Task
from netoffload.progress import NO_PROGRESS, Progress

BATCH = 32  # super-packets posted per doorbell
STALL_S = 10.0

TCP_SPEC = FlowSpec(protocol="tcp", segment_bytes=1448, segments=45)
UDP_SPEC = FlowSpec(protocol="udp", segment_bytes=1472, segments=44, src_port=40001, dst_port=5202)


@dataclass
class ModeResult:
    """What one mode measured."""

    offload: bool
    bytes_sent: int = 0
    bytes_verified: int = 0
    seconds: float = 0.0
    host_cpu_s: float = 0.0
    super_packets: int = 0
    packets_posted: int = 0
    packets_received: int = 0
    sender: dict[str, Any] = field(default_factory=dict)
    receiver: dict[str, Any] = field(default_factory=dict)
    wire: dict[str, int] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    enabled: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        gb = self.bytes_sent / 1e9
        return self.extra | {
            "gbit_per_s": self.bytes_sent * 8 / 1e9 / self.seconds if self.seconds else 0.0,
            "host_cpu_s_per_gb": self.host_cpu_s / gb if gb else 0.0,
            "seconds": self.seconds,
            "host_cpu_s": self.host_cpu_s,
            "bytes_sent": self.bytes_sent,
            "bytes_verified": self.bytes_verified,
            "super_packets": self.super_packets,
            "packets_posted": self.packets_posted,
            "packets_received": self.packets_received,
            "sender_stats": self.sender,
            "receiver_stats": self.receiver,
            "host_stats": self.host,
            "wire": self.wire,
            "enabled": self.enabled,
        }


def _records(records: list[Any]) -> list[dict[str, Any]]:
    return [
        {"task": r.task.label, "params": r.params()}
        for r in records
        if isinstance(r, CapabilityRecord)
    ]


def _transfer(
    tx: HostOffload,
    rx: HostOffload,
    gen: BulkFlowGenerator,
    sink: FlowSink,
    *,
    offload: bool,
    result: ModeResult,
    progress: Progress = NO_PROGRESS,
    done_before: int = 0,
) -> None:
    """Move ``gen``'s stream through the pair into ``sink``, interleaving sends and
    receives, never blocking on one NIC while the other needs the host (the receiver
    pauses the wire when full)."""
    sender, receiver = tx.device, rx.device
    assert isinstance(sender, SoftNic) and isinstance(receiver, SoftNic)
    stream = gen.stream
    scratch = [bytearray(gen.frame_len(0)) for _ in range(BATCH)]
    index = 0
    last_progress = time.monotonic()
    while sink.bytes_received < len(stream):
        progressed = False
        if index < len(gen) and tx.backlog == 0:
            count = min(BATCH, len(gen) - index)
            if offload:
                # Zero copy: the frames are built where the NIC reads them.
                buffers: list[Any] = sender.tx_buffers(count)
            else:
                buffers = scratch[:count]
            packets = [gen.write(buf, index + k) for k, buf in enumerate(buffers)]
            if packets:
                tx.send(packets)
                index += len(packets)
                result.super_packets += len(packets)
                progressed = True
        elif tx.backlog:
            progressed = tx.push() > 0
        got = rx.recv(256)
        if got:
            sink.accept(got)
            progress.update(done_before + sink.bytes_received)
            rx.release(got)  # copied into the sink: the NIC may reuse those buffers
            result.packets_received += len(got)
            progressed = True
        if progressed:
            last_progress = time.monotonic()
            continue
        if index >= len(gen) and not tx.backlog and time.monotonic() - last_progress > STALL_S:
            break  # everything was sent; what has not arrived by now is lost
        if time.monotonic() - last_progress > 3 * STALL_S:
            raise DeviceError("demo transfer made no progress for 30 s")
        receiver.wait(0.05)
    receiver.release()


def run_mode(
    offload: bool,
    streams: list[tuple[bytes, FlowSpec]],
    on_capabilities: Callable[[str, SoftNic], None] | None = None,
    progress: Progress = NO_PROGRESS,
) -> ModeResult:
    """One mode on a fresh pair of SoftNics and a fresh 1500-byte-MTU wire."""
    result = ModeResult(offload)
    with softnic_pair(Impairments(mtu=1500)) as (sender, receiver):
        if on_capabilities is not None:
            on_capabilities("nic-a", sender)
            on_capabilities("nic-b", receiver)
        for nic in (sender, receiver):
            nic.enable(Selection.everything(nic.capabilities()) if offload else Selection())
        result.enabled = [t.label for t in sender.enabled()]
        tx = HostOffload(sender)
        rx = HostOffload(receiver, rx_tasks={Task.CHECKSUM})
        # The application's side is set up before the clocks start and checked after
        # they stop: generator tables and the zeroed receive buffers are not network work.
        flows = [(BulkFlowGenerator(stream, spec), FlowSink(spec, len(stream)))
                 for stream, spec in streams]  # fmt: skip
        progress.stage(f"offload {'on' if offload else 'off'}", sum(len(s) for s, _ in streams))
        cpu0, t0 = time.process_time(), time.perf_counter()
        done = 0
        for gen, sink in flows:
            _transfer(
                tx, rx, gen, sink, offload=offload, result=result,
                progress=progress, done_before=done,
            )  # fmt: skip
            done += len(gen.stream)
        result.seconds = time.perf_counter() - t0
        result.host_cpu_s = time.process_time() - cpu0
        for (stream, _), (_, sink) in zip(streams, flows, strict=True):
            result.bytes_sent += len(stream)
            result.bytes_verified += sink.verified_bytes(stream)
        sender.flush()
        result.sender = sender.stats().as_dict()
        result.wire = sender.cable_counters()
        result.receiver = receiver.stats().as_dict()
        result.packets_posted = tx.stats.tx_frames
        stats = tx.stats
        stats.merge(rx.stats)
        result.host = stats.as_dict()
    return result
