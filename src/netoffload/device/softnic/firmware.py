"""SoftNic firmware: the NIC's own processor, run as ``python -m`` in a child process.

It maps the shared region, waits on its doorbell, its control socket and
its wire port, and runs the same engine the host would
(``engine.pipeline``) on the tasks the host enabled:

* transmit: descriptors from the TX ring become a batch of ``Packet``
  views into the pool; each request is admitted against the enabled records
  (``engine.admit``: IP versions, sizes, segment counts, checksums per
  protocol), and a packet asking for anything outside them is dropped as
  ``OUTSIDE_CAPABILITY``; ``pipeline.transmit`` does the work; the frames go
  on the cable and the slots come back on the completion ring.
* receive: frames from the wire go through ``pipeline.receive`` and are
  copied into slots the host posted on the fill ring, with an RX descriptor
  carrying their ``RxInfo``. With no fill slot left the port stops reading
  the wire, which backs up into the sender (a pause frame, not a drop).

* steering (``engine.steer``, with CLASSIFICATION / DOS_FILTER enabled and
  something to do): the port's received batch is DoS-filtered, hashed and
  classified before assembly; drops are counted by reason and per rule, the
  findings ride in each ``RxInfo``. With N queues the port firmware (queue 0,
  the one on the wire) hands each frame for queue q to queue q's firmware
  over an internal link, behind a ``META`` header with what steering found;
  the queue firmwares' transmitted frames come back over the same link and
  leave on the wire.
* launch time (TX_SCHEDULING): a packet with a CLOCK_TAI launch time is made
  at once, then waits in an earliest-deadline queue (``engine.schedule``) and
  goes on the wire no earlier than its time; one already late by more than the
  tolerance is dropped and counted (``launch_time_passed`` and friends).

Bad input is data: a malformed descriptor or frame is dropped with a reason
and counted; nothing a packet contains makes this process exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from netoffload.device.cable import ETHERNET_HEADER, CableEnd
from netoffload.device.softnic import control, layout
from netoffload.device.softnic.control import Op, Status
from netoffload.device.softnic.layout import (
    HEADROOM,
    DescRing,
    Geometry,
    Memo,
    SlotRing,
    tx_context_len,
)
from netoffload.engine import pipeline
from netoffload.engine.admit import Limits, Refusal
from netoffload.engine.digest import DigestKeys, digest_pass
from netoffload.engine.ipsec_offload import (
    Opened,
    SecurityContexts,
    decode_config,
    decrypt_frames,
    transmit_encrypted,
)
from netoffload.engine.schedule import LaunchQueue
from netoffload.engine.steer import Steering, SteeringError, merge_steering
from netoffload.offload import (
    NO_INFO,
    CapabilityError,
    CapabilityRecord,
    ClassificationCaps,
    CryptoStatus,
    DecryptCaps,
    DeviceStats,
    DigestAlgorithm,
    DigestCaps,
    DropReason,
    EncryptCaps,
    FilterVerdict,
    HashReport,
    OffloadError,
    Packet,
    RxInfo,
    Selection,
    SelectionError,
    Task,
    decode_capabilities,
    encode_capabilities,
)

# Descriptors handled per pass: big enough to amortise a pipeline call, small
# enough that control requests and the other direction are not starved.
BATCH = 128
# Stop taking transmit descriptors while this much is queued for the wire.
WIRE_BACKLOG_BYTES = 2 * 1024 * 1024
IDLE_POLL_MS = 1000
_NO_TASKS: frozenset[Task] = frozenset()
_FRAME_LEN = struct.Struct("<I")  # the cable's framing: each frame behind its length
#: In front of a frame the port hands a queue firmware: flow hash, mark, filter rule (-1:
#: none), hash report, verdict, flags (1: a hash, 2: a mark).
META = struct.Struct("<IIiBBBx")
_META_HASH, _META_MARK = 0x01, 0x02
#: Stop handing frames to a queue firmware while this much waits for it.
LINK_BACKLOG_BYTES = 8 * 1024 * 1024
#: A late packet: how far past its launch time it may still go out.
LAUNCH_TOLERANCE_NS = 50_000_000
#: The last stretch before a launch time, slept rather than polled.
LAUNCH_SLEEP_NS = 20_000_000


def tai_ns() -> int:
    """Now on CLOCK_TAI, the clock launch times are given on (SO_TXTIME's)."""
    return time.clock_gettime_ns(time.CLOCK_TAI)


def encode_meta(info: RxInfo) -> bytes:
    """The ``META`` header carrying steering's findings to a queue firmware."""
    flags = (_META_HASH if info.flow_hash is not None else 0) | (
        _META_MARK if info.mark is not None else 0
    )
    rule = -1 if info.filter_rule is None else info.filter_rule
    return META.pack(
        info.flow_hash or 0, info.mark or 0, rule, int(info.hash_report), int(info.verdict), flags
    )


def decode_meta(head: bytes | memoryview, queue: int) -> RxInfo:
    """The ``RxInfo`` fields a ``META`` header carries (written by the port: trusted)."""
    flow_hash, mark, rule, report, verdict, flags = META.unpack(head)
    return RxInfo(
        flow_hash=flow_hash if flags & _META_HASH else None,
        hash_report=HashReport(report),
        queue=queue,
        mark=mark if flags & _META_MARK else None,
        verdict=FilterVerdict(verdict),
        filter_rule=None if rule < 0 else rule,
    )


class Firmware:
    """The firmware's state and main loop."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.geometry = Geometry(**config["geometry"])
        g = self.geometry
        self.region = layout.map_region(config["mem_fd"], g)
        os.close(config["mem_fd"])
        self.mem = memoryview(self.region)
        self.tx = DescRing(self.mem, "tx", g.tx_ring_offset, g.ring_entries)
        self.rx = DescRing(self.mem, "rx", g.rx_ring_offset, g.ring_entries)
        self.pool = g.pool_offset  # a computed property: read once, used per frame
        self.completion = SlotRing(self.mem, "completion", g.completion_ring_offset, g.ring_entries)
        self.fill = SlotRing(self.mem, "fill", g.fill_ring_offset, g.ring_entries)
        self.nic_bell: int = config["nic_bell"]
        self.rx_bell: int = config["rx_bell"]
        self.completion_bell: int = config["completion_bell"]
        self.ctrl = socket.socket(fileno=config["ctrl_fd"])
        self.cable: CableEnd | None = None
        if config.get("cable_fd") is not None:
            self.cable = CableEnd.from_fd(config["cable_fd"], config["wire"])
        self.advertised = decode_capabilities(bytes.fromhex(config["caps"]))
        self.selection = Selection.everything(self.advertised)
        self.limits = Limits.from_records(self.selection.values())
        # Queue 0 is the port on the wire; a queue firmware's cable is its link to the port.
        self.queue_index: int = config.get("queue_index", 0)
        links = config.get("links", [])
        self.links = [CableEnd.from_fd(link["fd"], link["wire"]) for link in links]
        classes = [r for r in self.advertised if isinstance(r, ClassificationCaps)]
        self.steering = Steering(
            queues=1 + len(self.links),
            rule_slots=classes[0].rule_slots if classes else 0,
        )
        self.launch: LaunchQueue[bytes] = LaunchQueue(
            tolerance_ns=config.get("launch_tolerance_ns", LAUNCH_TOLERANCE_NS)
        )
        self._apply_selection()
        self.stats = DeviceStats()
        handles = max(
            (r.max_sas for r in self.advertised if isinstance(r, EncryptCaps | DecryptCaps)),
            default=0,
        )
        self.contexts = SecurityContexts(handles)
        self.digest_keys = DigestKeys()
        self.free_rx: list[int] = []
        self.decode_tx = Memo(layout.decode_tx_ext)
        self.encode_rx = Memo(layout.encode_rx_ext)
        self.running = True

    # -- main loop ------------------------------------------------------------------
    def run(self) -> None:
        """Serve until told to stop or until the host goes away."""
        self.ctrl.send(Op.READY.value)
        poller = select.poll()
        poller.register(self.nic_bell, select.POLLIN)
        poller.register(self.ctrl, select.POLLIN)
        for link in self.links:
            poller.register(link, select.POLLIN)
        cable_mask = -1
        while self.running:
            if self.cable is not None:
                mask = self._cable_interest()
                if mask != cable_mask:
                    poller.register(self.cable, mask)
                    cable_mask = mask
            if self.launch:
                self._sleep_to_launch()
            for fd, _ in poller.poll(self._timeout_ms()):
                if fd == self.nic_bell:
                    _drain_eventfd(fd)
                elif fd == self.ctrl.fileno():
                    self._control()
            self._service()

    def _cable_interest(self) -> int:
        assert self.cable is not None
        mask = 0
        if self.cable.pending_bytes:
            mask |= select.POLLOUT
        if (self.free_rx or self.fill.available()) and not self.cable.peer_closed:
            mask |= select.POLLIN
        return mask

    def _sleep_to_launch(self) -> None:
        """When the next launch time is near, sleep to it: a poll's timeout is coarse (it can
        wake milliseconds late), a nanosleep is not."""
        launch = self.launch.next_deadline_ns()
        if launch is None:
            return
        wait_ns = launch - tai_ns()
        if 0 < wait_ns <= LAUNCH_SLEEP_NS:
            time.sleep(wait_ns / 1e9)

    def _timeout_ms(self) -> int:
        due = self.cable.next_due_ns() if self.cable is not None else None
        timeout = IDLE_POLL_MS
        if due is not None:
            timeout = max(0, min(timeout, (due - time.monotonic_ns()) // 1_000_000 + 1))
        launch = self.launch.next_deadline_ns()
        if launch is not None:
            # Woken early, then ``_sleep_to_launch`` sleeps the rest precisely.
            wait_ns = max(0, launch - tai_ns() - LAUNCH_SLEEP_NS // 2)
            timeout = min(timeout, wait_ns // 1_000_000)
        return timeout

    def _service(self) -> None:
        """One pass over everything that may have work: transmit, then receive."""
        while self._transmit_batch():
            pass
        if self.launch:
            self._release_launched()
        for link in self.links:
            self._forward(link)
        while self._receive_batch():
            pass
        if self.cable is not None:
            self.cable.flush(time.monotonic_ns())
        for link in self.links:
            link.flush()

    def _forward(self, link: CableEnd) -> None:
        """What a queue firmware transmitted: onto the wire."""
        if self.cable is None:
            return
        for _ in range(64):  # bounded: the other work of this pass waits for it
            if self.cable.pending_bytes > WIRE_BACKLOG_BYTES:
                self.cable.flush()
                return
            frames = link.recv_batch(BATCH)
            if not frames:
                return
            self.cable.send_batch(frames, time.monotonic_ns())

    def _release_launched(self) -> None:
        """Put every packet whose launch time has come on the wire, earliest first."""
        out = self.launch.release(tai_ns())
        if out.missed:
            self.stats.drops["launch_time_missed"] += len(out.missed)
        if out.sent and self.cable is not None:
            self.cable.send_batch([r.item for r in out.sent], time.monotonic_ns())
            self.stats.tx_frames += len(out.sent)

    # -- transmit ---------------------------------------------------------------------
    def _transmit_batch(self) -> bool:
        """Take one batch of TX descriptors; False when there was nothing to take."""
        if self.cable is not None and self.cable.pending_bytes > WIRE_BACKLOG_BYTES:
            self.cable.flush()
            if self.cable.pending_bytes > WIRE_BACKLOG_BYTES:
                return False
        tail = self.tx.consumer
        count = min((self.tx.producer - tail) & 0xFFFFFFFF, BATCH)
        if count == 0:
            return False
        g, mem, stats = self.geometry, self.mem, self.stats
        pool, slot_bytes, slots = self.pool, g.slot_bytes, g.slots
        decode = self.decode_tx
        packets: list[Packet] = []
        done_slots: list[int] = []
        for slot, offset, length, ext in self.tx.read(tail, count):
            if slot >= slots:
                stats.drop(DropReason.MALFORMED_FRAME)
                continue
            done_slots.append(slot)
            if offset + length > slot_bytes or length < ETHERNET_HEADER:
                stats.drop(DropReason.MALFORMED_FRAME)
                continue
            try:
                request = decode(ext)
            except OffloadError:
                stats.drop(DropReason.BAD_VNET_HDR)
                continue
            context_len = tx_context_len(ext)
            if context_len:
                # The SA's context rides in front of the frame: admission checks it against
                # the record, and the engine installs it under the handle.
                start = pool + slot * slot_bytes
                try:
                    if context_len > offset or request.sa_handle is None:
                        raise ValueError("a context needs room in front and a handle")
                    config = decode_config(mem[start : start + context_len])
                    request = request.encrypted(request.sa_handle, request.esp_seq or 0, config)
                except (ValueError, OffloadError):
                    stats.drop(DropReason.BAD_REQUEST)
                    continue
            base = pool + slot * slot_bytes + offset
            packets.append(Packet(mem[base : base + length], request))
        self.tx.publish_consumer(tail + count)
        chunks, lengths = self._run_transmit(packets)
        stats.tx_frames += len(lengths)
        if self.cable is not None:
            # The cable copies whatever the socket does not take at once, so the slots may
            # go back to the host right after it.
            now = time.monotonic_ns()
            self.cable.send_framed(chunks, lengths, now)
            # A frame held back for reordering is overtaken within its batch at most.
            self.cable.release(now)
            self.cable.flush()
        self.completion.push(done_slots)
        os.eventfd_write(self.completion_bell, 1)
        return True

    def _run_transmit(self, packets: Sequence[Packet]) -> tuple[list[Any], list[int]]:
        """Admit, then run the engine; the framed chunks for the cable and the frame lengths.

        Counts every packet once: sent (``tx_packets``) or dropped with its reason.
        """
        stats = self.stats
        limits = self.limits
        admitted: list[Packet] = []
        allowed: list[frozenset[Task]] = []
        for packet in packets:
            if not packet.tx.tasks():
                admitted.append(packet)
                allowed.append(_NO_TASKS)
                continue
            verdict = limits.admit(packet.data, packet.tx)
            if verdict.refused:
                if all(r is Refusal.UNPARSABLE for _, r in verdict.refused):
                    # Within the records but malformed: the engine drops it with the reason.
                    admitted.append(packet)
                    allowed.append(packet.tx.tasks())
                else:
                    stats.drop(DropReason.OUTSIDE_CAPABILITY)
                continue
            if verdict.request is not packet.tx:
                packet = Packet(packet.data, verdict.request)
            admitted.append(packet)
            allowed.append(verdict.tasks)
        digested = digest_pass(self.digest_keys, admitted, allowed)
        for _, reason in digested.drops:
            stats.drop(reason)
        if digested.done:
            stats.task_done(Task.DIGEST, digested.done)
        admitted, allowed = digested.packets, digested.tasks
        if any(Task.TX_SCHEDULING in t for t in allowed):
            admitted, allowed = self._schedule(admitted, allowed)
        sealed = [p for p, tasks in zip(admitted, allowed, strict=True) if Task.ENCRYPT in tasks]
        if sealed:
            admitted = [p for p, t in zip(admitted, allowed, strict=True) if Task.ENCRYPT not in t]
            allowed = [t for t in allowed if Task.ENCRYPT not in t]
        try:
            outcome = pipeline.transmit_framed(admitted, allowed)
        except Exception:  # an engine bug must cost the batch, not the NIC
            stats.drop(DropReason.MALFORMED_FRAME, len(admitted))
            return [], []
        for _, reason in outcome.drops:
            stats.drop(reason)
        for task, n in outcome.tasks.items():
            stats.task_done(task, n)
        # Admission said yes and the engine did not: never put a half-done frame out.
        if outcome.residual:
            stats.drop(DropReason.TASK_NOT_ENABLED, len(outcome.residual))
        stats.tx_packets += len(outcome.sent)
        stats.tx_bytes += sum(len(admitted[i].data) for i in outcome.sent)
        if not sealed:
            return outcome.chunks, outcome.lengths
        chunks, lengths = list(outcome.chunks), list(outcome.lengths)
        self._seal(sealed, chunks, lengths)
        return chunks, lengths

    def _schedule(
        self, packets: list[Packet], allowed: list[frozenset[Task]]
    ) -> tuple[list[Packet], list[frozenset[Task]]]:
        """Make the packets that carry a launch time now and queue their frames for it;
        the other packets and their task sets are returned for the usual path."""
        rest: list[Packet] = []
        rest_tasks: list[frozenset[Task]] = []
        timed: list[Packet] = []
        timed_tasks: list[frozenset[Task]] = []
        launch_at: list[int] = []
        for packet, tasks in zip(packets, allowed, strict=True):
            launch = packet.tx.launch_time_ns
            if launch is None or Task.TX_SCHEDULING not in tasks:
                rest.append(packet)
                rest_tasks.append(tasks)
                continue
            request = replace(packet.tx, launch_time_ns=None)
            timed.append(Packet(packet.data, request))
            timed_tasks.append(tasks - {Task.TX_SCHEDULING})
            launch_at.append(launch)
        stats = self.stats
        made: list[tuple[Any, int]] = []  # (frame, index into ``timed``)
        plain = [k for k, tasks in enumerate(timed_tasks) if Task.ENCRYPT not in tasks]
        sealed = [k for k, tasks in enumerate(timed_tasks) if Task.ENCRYPT in tasks]
        try:
            if plain:
                outcome = pipeline.transmit(
                    [timed[k] for k in plain], [timed_tasks[k] for k in plain]
                )
                for _, reason in outcome.drops:
                    stats.drop(reason)
                for task, n in outcome.tasks.items():
                    stats.task_done(task, n)
                for packet, source in zip(outcome.packets, outcome.sources, strict=True):
                    if packet.tx.tasks():
                        stats.drop(DropReason.TASK_NOT_ENABLED)
                        continue
                    made.append((packet.data, plain[source]))
            if sealed:  # cut, checksummed and encrypted in one pass, then held for its time
                encrypted = transmit_encrypted([timed[k] for k in sealed], self.contexts)
                for _, reason in encrypted.drops:
                    stats.drop(reason)
                for task, n in encrypted.tasks.items():
                    stats.task_done(task, n)
                made += [
                    (frame, sealed[source])
                    for frame, source in zip(encrypted.frames, encrypted.sources, strict=True)
                ]
        except Exception:  # an engine bug must cost the batch, not the NIC
            stats.drop(DropReason.MALFORMED_FRAME, len(timed))
            return rest, rest_tasks
        now = tai_ns()
        late: set[int] = set()
        sent: set[int] = set()
        for frame, source in made:
            refused = self.launch.enqueue(bytes(frame), launch_at[source], now)
            if refused is not None:
                stats.drops[refused.value] += 1
                late.add(source)
            else:
                sent.add(source)
        stats.task_done(Task.TX_SCHEDULING, len(sent))
        stats.tx_packets += len(sent)
        stats.tx_bytes += sum(len(timed[i].data) for i in sent)
        return rest, rest_tasks

    def _seal(self, packets: list[Packet], chunks: list[Any], lengths: list[int]) -> None:
        """Segment, checksum and encrypt ``packets`` in one pass each (an inline IPsec NIC);
        their frames are framed onto ``chunks``."""
        stats = self.stats
        try:
            sealed = transmit_encrypted(packets, self.contexts)
        except Exception:  # an engine bug must cost the batch, not the NIC
            stats.drop(DropReason.MALFORMED_FRAME, len(packets))
            return
        for _, reason in sealed.drops:
            stats.drop(reason)
        for task, n in sealed.tasks.items():
            stats.task_done(task, n)
        pack = _FRAME_LEN.pack
        for frame in sealed.frames:
            chunks.append(pack(len(frame)))
            chunks.append(frame)
            lengths.append(len(frame))
        sent = set(sealed.sources)
        stats.tx_packets += len(sent)
        stats.tx_bytes += sum(len(packets[i].data) for i in sent)

    # -- receive ----------------------------------------------------------------------
    def _receive_batch(self) -> bool:
        """Move one batch of frames from the wire into fill slots; False when idle."""
        if self.cable is None:
            return False
        free = self.free_rx
        if len(free) < BATCH:
            free.extend(self.fill.pop())
        if not free:
            return False
        frames = self.cable.recv_batch(min(len(free), BATCH))
        if not frames:
            return False
        stats = self.stats
        mem, slot_bytes = self.mem, self.geometry.slot_bytes
        pool = self.pool
        encode = self.encode_rx
        head = self.rx.producer
        rows: list[tuple[int, int, int, bytes]] = []
        capacity = slot_bytes - HEADROOM
        for packet in self._received(frames):
            size = len(packet.data)
            if size > capacity:
                stats.drop(DropReason.TOO_LARGE)
                continue
            if not free:
                stats.drop(DropReason.NO_BUFFER)
                continue
            slot = free.pop()
            base = pool + slot * slot_bytes + HEADROOM
            mem[base : base + size] = packet.data
            rows.append((slot, HEADROOM, size, encode(packet.rx)))
            stats.rx_packets += 1
            stats.rx_bytes += size
        if rows:
            self.rx.write(head, rows)
            self.rx.publish_producer(head + len(rows))
            os.eventfd_write(self.rx_bell, 1)
        return True

    def _received(self, frames: list[memoryview]) -> list[Packet]:
        """What the receive engine makes of frames from the wire (runts dropped; filtered,
        hashed and classified, or what queue 0 found for a queue's frames; ESP for our
        inbound SAs decrypted; assembled), every drop and task counted."""
        stats = self.stats
        stats.rx_frames += len(frames)
        if min(map(len, frames)) < ETHERNET_HEADER:
            # A runt is not even an Ethernet frame: nothing above the port may see it.
            runts = sum(1 for f in frames if len(f) < ETHERNET_HEADER)
            stats.drop(DropReason.MALFORMED_FRAME, runts)
            frames = [f for f in frames if len(f) >= ETHERNET_HEADER]
        steered: list[RxInfo] | None = None
        if self.queue_index:
            frames, steered = self._strip_meta(frames)
        elif self.steering.has_work:
            frames, steered = self._steer(frames)
        opened: dict[int, int] = {}
        if len(self.contexts.inbound) and Task.DECRYPT in self.limits.tasks:
            if steered is not None:
                steered = None  # decryption re-frames: steering's rows no longer line up
            frames, opened = self._open(frames)
        if not frames:
            return []
        try:
            outcome = pipeline.receive(frames, self.limits)
        except Exception:  # an engine bug must cost the batch, not the NIC
            stats.drop(DropReason.MALFORMED_FRAME, len(frames))
            return []
        if steered is not None:
            for k, source in enumerate(outcome.sources):
                found = steered[source]
                if found is not NO_INFO:
                    p = outcome.packets[k]
                    outcome.packets[k] = Packet(p.data, p.tx, merge_steering(p.rx, found))
        if opened:
            for k, source in enumerate(outcome.sources):
                handle = opened.get(source)
                if handle is not None:
                    p = outcome.packets[k]
                    info = replace(p.rx, crypto=CryptoStatus.DECRYPTED, sa_handle=handle)
                    outcome.packets[k] = Packet(p.data, p.tx, info)
        for _, reason in outcome.drops:
            stats.drop(reason)
        for task, n in outcome.tasks.items():
            stats.task_done(task, n)
        return outcome.packets

    def _steer(self, frames: list[memoryview]) -> tuple[list[Any], list[RxInfo]]:
        """Filter, hash and classify; frames for other queues go to their firmware. The
        frames this queue keeps, and what steering found for each."""
        stats = self.stats
        try:
            outcome = self.steering.steer(frames, time.monotonic_ns())
        except Exception:  # an engine bug must cost the batch, not the NIC
            stats.drop(DropReason.MALFORMED_FRAME, len(frames))
            return [], []
        for reason, n in outcome.drops.items():
            stats.drops[reason] += n
        mine: list[Any] = []
        infos: list[RxInfo] = []
        handed: list[list[bytes | memoryview]] = [[] for _ in self.links]
        for row in outcome.rows:
            if row.queue == 0:
                mine.append(frames[row.index])
                infos.append(row.info)
            else:
                out = handed[row.queue - 1]
                out.append(encode_meta(row.info))
                out.append(frames[row.index])
        for link, out in zip(self.links, handed, strict=True):
            if not out:
                continue
            if link.pending_bytes > LINK_BACKLOG_BYTES:
                stats.drop(DropReason.NO_BUFFER, len(out) // 2)
                continue
            pack = _FRAME_LEN.pack
            chunks: list[Any] = []
            lengths: list[int] = []
            for k in range(0, len(out), 2):
                size = len(out[k]) + len(out[k + 1])
                chunks += [pack(size), out[k], out[k + 1]]
                lengths.append(size)
            link.send_framed(chunks, lengths)
        return mine, infos

    def _strip_meta(self, frames: list[memoryview]) -> tuple[list[Any], list[RxInfo]]:
        """A queue firmware's frames from the port: the ``META`` header off each."""
        size = META.size
        out: list[Any] = []
        infos: list[RxInfo] = []
        for frame in frames:
            if len(frame) < size + ETHERNET_HEADER:
                self.stats.drop(DropReason.MALFORMED_FRAME)
                continue
            infos.append(decode_meta(frame[:size], self.queue_index))
            out.append(frame[size:])
        return out, infos

    def _open(self, frames: list[memoryview]) -> tuple[list[Any], dict[int, int]]:
        """Decrypt the ESP for our inbound SAs before assembly (refused ESP is dropped and
        counted); the frames, and the handle each decrypted one was opened with."""
        stats = self.stats
        try:
            results = decrypt_frames(self.contexts, frames)
        except Exception:  # an engine bug must cost the batch, not the NIC
            stats.drop(DropReason.MALFORMED_FRAME, len(frames))
            return [], {}
        out: list[Any] = []
        opened: dict[int, int] = {}
        for frame, result in zip(frames, results, strict=True):
            if result is None:
                out.append(frame)
            elif isinstance(result, Opened):
                opened[len(out)] = result.handle
                out.append(result.frame)
                stats.task_done(Task.DECRYPT)
            else:
                stats.drop(DropReason(result.value))
        return out, opened

    # -- control ----------------------------------------------------------------------
    def _control(self) -> None:
        try:
            request = self.ctrl.recv(control.MAX_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            request = b""
        if not request:
            self.running = False  # the host closed its end: it is gone
            return
        op, payload = request[:1], request[1:]
        if op == Op.QUERY.value:
            self._reply(Status.OK, encode_capabilities(self.advertised))
        elif op == Op.ENABLED.value:
            self._reply(Status.OK, encode_capabilities(self.selection.records()))
        elif op == Op.ENABLE.value:
            self._enable(payload)
        elif op == Op.STATS.value:
            self._service()
            self._reply(Status.OK, json.dumps(self._stats_json()).encode())
        elif op == Op.FLUSH.value:
            self._flush()
            self._reply(Status.OK, b"")
        elif op == Op.INSTALL_SA.value:
            self._install_sa(payload)
        elif op == Op.REVOKE_SA.value:
            if len(payload) != 4:
                self._reply(Status.MALFORMED, b"revoke_sa takes a 4-byte handle")
                return
            self.contexts.revoke(int.from_bytes(payload, "little"))
            self._reply(Status.OK, b"")
        elif op == Op.INSTALL_DIGEST_KEY.value:
            self._install_digest_key(payload)
        elif op == Op.REVOKE_DIGEST_KEY.value:
            if len(payload) != 4:
                self._reply(Status.MALFORMED, b"revoke_digest_key takes a 4-byte handle")
                return
            self.digest_keys.revoke(int.from_bytes(payload, "little"))
            self._reply(Status.OK, b"")
        elif op == Op.RULES.value:
            self._rules(payload)
        elif op == Op.STOP.value:
            self._reply(Status.OK, b"")
            self.running = False
        else:
            self._reply(Status.MALFORMED, f"unknown request {op!r}".encode())

    def _enable(self, payload: bytes) -> None:
        try:
            records = decode_capabilities(payload)
            known = [r for r in records if isinstance(r, CapabilityRecord)]
            if len(known) != len(records):
                raise SelectionError("selection names a task this device does not know")
            selection = Selection(known)
            selection.check_against(self.advertised)
        except (CapabilityError, SelectionError) as exc:
            self._reply(Status.REFUSED, str(exc).encode())
            return
        self.selection = selection
        self.limits = Limits.from_records(selection.values())
        self._apply_selection()
        self._reply(Status.OK, encode_capabilities(selection.records()))

    def _rules(self, payload: bytes) -> None:
        """One rules command (``engine.steer``): JSON reply, or a one-line refusal."""
        if not self.selection.get(Task.CLASSIFICATION) and not self.selection.get(Task.DOS_FILTER):
            self._reply(Status.REFUSED, b"classification and DoS filtering are not enabled")
            return
        try:
            reply = self.steering.command(payload.decode())
        except (SteeringError, UnicodeDecodeError) as exc:
            self._reply(Status.REFUSED, str(exc).encode())
            return
        self._reply(Status.OK, json.dumps(reply).encode())

    def _apply_selection(self) -> None:
        """Steering follows the enabled records."""
        classes = self.selection.get(Task.CLASSIFICATION)
        self.steering.enable(
            classify=isinstance(classes, ClassificationCaps),
            dos=self.selection.get(Task.DOS_FILTER) is not None,
            hash_types=classes.hash_types if isinstance(classes, ClassificationCaps) else None,
        )

    def _install_sa(self, payload: bytes) -> None:
        """An inbound SA: checked against the enabled decrypt record, installed by handle."""
        try:
            if len(payload) < 4:
                raise ValueError("install_sa takes a 4-byte handle and a context")
            handle = int.from_bytes(payload[:4], "little")
            config = decode_config(payload[4:])
            record = self.selection.get(Task.DECRYPT)
            if not isinstance(record, DecryptCaps):
                raise ValueError("decryption is not enabled")
            if handle >= record.max_sas:
                raise ValueError(f"handle {handle} is outside 0..{record.max_sas - 1}")
            if config.algorithm & ~record.algorithms or config.key_size & ~record.key_sizes:
                raise ValueError("the SA's algorithm or key size is not enabled")
            self.contexts.install_inbound(handle, config)
        except ValueError as exc:
            self._reply(Status.REFUSED, str(exc).encode())
            return
        self._reply(Status.OK, b"")

    def _install_digest_key(self, payload: bytes) -> None:
        """A digest key: checked against the enabled digest record, held by handle."""
        try:
            if len(payload) < 9:
                raise ValueError("install_digest_key takes a handle, an algorithm and a key")
            handle, bits = struct.unpack_from("<II", payload)
            record = self.selection.get(Task.DIGEST)
            if not isinstance(record, DigestCaps):
                raise ValueError("the digest task is not enabled")
            if handle >= record.max_keys:
                raise ValueError(f"handle {handle} is outside 0..{record.max_keys - 1}")
            algorithm = DigestAlgorithm(bits)
            if algorithm & ~record.algorithms:
                raise ValueError(f"{algorithm.name} is not enabled")
            self.digest_keys.install(handle, algorithm, payload[8:])
        except ValueError as exc:
            self._reply(Status.REFUSED, str(exc).encode())
            return
        self._reply(Status.OK, b"")

    def _flush(self) -> None:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            self._service()
            wire_idle = self.cable is None or self.cable.pending_bytes == 0
            if self.tx.available() == 0 and wire_idle:
                return
            if self.cable is not None and self.cable.pending_bytes:
                select.select([], [self.cable], [], 0.05)

    def _stats_json(self) -> dict[str, Any]:
        # What the cable lost or refused (an MTU, impairments) is the cable's count, kept
        # apart: the device's own counters account for each packet exactly once.
        wire: dict[str, int] = {}
        if self.cable is not None:
            wire = dict(self.cable.counters)
        return {
            "device": self.stats.as_dict(),
            "wire": wire,
            "ipsec": self.contexts.as_dict(),
            "steering": self.steering.counters(),
            "launch_queue": len(self.launch),
        }

    def _reply(self, status: Status, payload: bytes) -> None:
        try:
            self.ctrl.send(status.value + payload)
        except OSError:
            self.running = False


def _drain_eventfd(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(fd)


def main(argv: list[str]) -> int:
    """Entry point: ``python -m netoffload.device.softnic.firmware CONFIG_JSON``."""
    config = json.loads(argv[1])
    firmware = Firmware(config)
    firmware.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
