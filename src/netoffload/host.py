"""The host-side software fallback: the same engine, run here for what the device won't do.

``HostOffload`` sits between a stack and a ``Device``. On transmit, each
packet's request is admitted against the device's enabled records
(``engine.admit``): the device gets what lies within them, and everything
else runs here through ``engine.pipeline.transmit``, counted in
``stats.fallbacks`` by task and reason. On receive, it keeps what the device
reported for each packet and finishes what the device did not: checksum
verification of packets the device left unchecked and, if asked, assembly.

Because both sides run the same engine, the frames on the wire are
byte-identical whichever side did the work; tests assert it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Sequence, Set

from netoffload.device.base import Device
from netoffload.engine import pipeline
from netoffload.engine.admit import ASSEMBLY, SEGMENTATION, Limits
from netoffload.engine.gso_batch import RowSource
from netoffload.offload import (
    ChecksumStatus,
    DeviceStats,
    Packet,
    Selection,
    Task,
)

TX_TASKS = frozenset(
    {Task.CHECKSUM, Task.TCP_SEGMENTATION, Task.UDP_SEGMENTATION, Task.ENCRYPT, Task.DIGEST}
)
_NO_TASKS: frozenset[Task] = frozenset()


class HostOffload:
    """Send and receive through ``device``, doing in software what it does not.

    ``allow`` limits which tasks the host lets the device do (``None``: all
    it has enabled; an empty set: offload off, everything in software).
    ``rx_tasks`` are the receive tasks the host wants done by someone.

    ``send`` never blocks: frames the device has no room for wait in
    ``backlog`` and go out on the next ``send`` or ``push``. The caller must
    not reuse a buffer it passed to ``send`` while ``backlog`` is non-zero.

    Received packets follow the device's ownership rule: pass them to
    ``release`` when done with them.
    """

    def __init__(
        self,
        device: Device,
        *,
        allow: Set[Task] | None = None,
        rx_tasks: Set[Task] = frozenset({Task.CHECKSUM}),
    ) -> None:
        self.device = device
        self.allow = None if allow is None else frozenset(allow)
        self.rx_tasks = frozenset(rx_tasks)
        self.stats = DeviceStats()
        self._backlog: collections.deque[Packet] = collections.deque()
        self._selection: Selection | None = None
        self._limits = Limits(_NO_TASKS)
        self._derived_from: tuple[frozenset[Task] | None, frozenset[Task]] | None = None
        self._device_tasks = _NO_TASKS
        self._host_rx = _NO_TASKS
        # A device that lends transmit memory (``XdpDevice.tx_rows``) gets the frames made
        # here built in it: segments cut, checksums filled, pieces gathered where it sends.
        self._rows: RowSource | None = getattr(device, "tx_rows", None)

    # -- who does what ----------------------------------------------------------------
    def device_limits(self) -> Limits:
        """The device's enabled records as per-packet limits (refreshed when they change)."""
        self._refresh()
        return self._limits

    def device_tasks(self) -> frozenset[Task]:
        """The tasks left to the device: enabled there, and allowed by the host."""
        self._refresh()
        return self._device_tasks

    def host_rx_tasks(self) -> frozenset[Task]:
        """Receive tasks the host may have to finish itself.

        Assembly the device does not do; and checksum verification whenever it
        is wanted: a device with the task enabled may still leave a packet
        unchecked (a protocol its record does not cover, a kernel that hands
        over a frame as it came), and such a packet is verified here.
        """
        self._refresh()
        return self._host_rx

    def _refresh(self) -> None:
        """Derive the limits and task sets again when the device's selection, ``allow``
        or ``rx_tasks`` changed (a cheap check: this runs per batch)."""
        selection = self.device.enabled()
        allow, rx_tasks = self.allow, self.rx_tasks
        if selection is self._selection and (allow, rx_tasks) == self._derived_from:
            return
        if selection is not self._selection:
            self._selection = selection
            self._limits = Limits.from_records(selection.values())
        self._derived_from = (allow, rx_tasks)
        enabled = self._limits.tasks
        self._device_tasks = enabled if allow is None else enabled & allow
        mine = (rx_tasks & ASSEMBLY) - self._device_tasks
        if mine or Task.CHECKSUM in rx_tasks:
            mine |= {Task.CHECKSUM}
        self._host_rx = frozenset(mine)

    # -- transmit ---------------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Frames processed but not yet taken by the device."""
        return len(self._backlog)

    def send(self, packets: Sequence[Packet]) -> int:
        """Do the host's share of the work on ``packets`` and hand them to the device.

        Returns how many frames the device took now (the rest are in ``backlog``).
        """
        stats = self.stats
        limits = self.device_limits()
        allow = self.allow
        mine: list[frozenset[Task]] = []
        queued: list[Packet] = []
        host_work = False
        fallbacks = stats.fallbacks
        for packet in packets:
            request = packet.tx
            wanted = request.tasks()
            if not wanted:
                mine.append(_NO_TASKS)
                queued.append(packet)
                continue
            admitted = limits.admit(packet.data, request, allow, head=packet.head)
            for task, refusal in admitted.refused:
                fallbacks[f"{task.label}/{refusal.value}"] += 1
            if admitted.request is not request:
                packet = Packet(packet.data, admitted.request, packet.rx, packet.head)
            here = admitted.request.tasks() - admitted.tasks
            mine.append(here)
            queued.append(packet)
            host_work = host_work or bool(here)
        if host_work or self._rows is not None:
            outcome = pipeline.transmit(queued, mine, rows=self._rows)
            for _, reason in outcome.drops:
                stats.drop(reason)
            for task, n in outcome.tasks.items():
                stats.task_done(task, n)
            handed: Sequence[int] = sorted(set(outcome.sources))
            self._backlog.extend(outcome.packets)
        else:
            handed = range(len(queued))
            self._backlog.extend(queued)
        # Every packet offered is handed on (as one frame or its segments) or dropped here.
        stats.tx_packets += len(handed)
        stats.tx_bytes += sum(len(packets[i]) for i in handed)
        return self.push()

    def push(self) -> int:
        """Offer the backlog to the device again; returns how many it took."""
        if not self._backlog:
            return 0
        batch = list(self._backlog)
        taken = self.device.send(batch)
        for _ in range(taken):
            self._backlog.popleft()
        self.stats.tx_frames += taken  # packets handed to the device, host-made segments each
        return taken

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Push until the backlog is empty or ``timeout_s`` passes; True when empty."""
        deadline = time.monotonic() + timeout_s
        while self._backlog:
            if self.push() == 0:
                left = deadline - time.monotonic()
                if left <= 0 or not self.device.wait(left, for_tx=True):
                    return False
        return True

    # -- receive ----------------------------------------------------------------------
    def recv(self, max_packets: int = 64) -> list[Packet]:
        """Packets from the device, with what it did not do finished here.

        The device's findings (checksum verdicts, assembly, flow hash, queue,
        mark, filter verdict) are kept; the host adds its own where the
        device left a field open.
        """
        packets = self.device.recv(max_packets)
        if not packets:
            return packets
        stats = self.stats
        stats.rx_packets += len(packets)
        stats.rx_bytes += sum(map(len, packets))
        mine = self.host_rx_tasks()
        if Task.CHECKSUM in mine and not mine & ASSEMBLY:
            unchecked = ChecksumStatus.NOT_CHECKED
            if all(p.rx.l4 is not unchecked for p in packets):
                mine = mine - {Task.CHECKSUM}  # the device checked every one
        if not mine:
            return packets
        outcome = pipeline.receive(
            [p.data for p in packets], frozenset(mine), infos=[p.rx for p in packets]
        )
        for task, n in outcome.tasks.items():
            stats.task_done(task, n)
        if mine & ASSEMBLY:
            # Frames merged into a new super-packet are copied out: their buffers go back.
            kept = {id(p.data) for p in outcome.packets}
            self.device.release([p for p in packets if id(p.data) not in kept])
        return outcome.packets

    def release(self, packets: Iterable[Packet]) -> None:
        """Hand received packets' buffers back to the device (see ``Device.release``)."""
        self.device.release(packets)


__all__ = ["SEGMENTATION", "TX_TASKS", "HostOffload"]
