"""The host-side software fallback: the same engine, run here for what the device won't do.

``HostOffload`` sits between a stack and a ``Device``. On transmit, every
task a packet asks for that the device does not do (not advertised, not
enabled, or not allowed by the host's own choice) runs here through
``engine.pipeline.transmit``, and the device gets the residual request.
On receive, it finishes what the device did not: checksum verification
(and, if asked, assembly) through ``engine.pipeline.receive``.

Because both sides run the same engine, the frames on the wire are
byte-identical whichever side did the work; tests assert it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence, Set

from netoffload.device.base import Device
from netoffload.engine import pipeline
from netoffload.offload import DeviceStats, Packet, Task

TX_TASKS = frozenset(
    {Task.CHECKSUM, Task.TCP_SEGMENTATION, Task.UDP_SEGMENTATION, Task.ENCRYPT, Task.DIGEST}
)
SEGMENTATION = frozenset({Task.TCP_SEGMENTATION, Task.UDP_SEGMENTATION})
ASSEMBLY = frozenset({Task.TCP_ASSEMBLY, Task.UDP_ASSEMBLY})


class HostOffload:
    """Send and receive through ``device``, doing in software what it does not.

    ``allow`` limits which tasks the host lets the device do (``None``: all
    it has enabled; an empty set: offload off, everything in software).
    ``rx_tasks`` are the receive tasks the host wants done by someone.

    ``send`` never blocks: frames the device has no room for wait in
    ``backlog`` and go out on the next ``send`` or ``push``. The caller must
    not reuse a buffer it passed to ``send`` while ``backlog`` is non-zero.
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

    # -- who does what ----------------------------------------------------------------
    def device_tasks(self) -> frozenset[Task]:
        """The tasks left to the device: enabled there, and allowed by the host."""
        enabled = frozenset(self.device.enabled())
        return enabled if self.allow is None else enabled & self.allow

    def host_tx_tasks(self) -> frozenset[Task]:
        """Transmit tasks the host does itself.

        Without device checksumming the host segments too: each segment's
        checksum can only be computed after the cut.
        """
        on_device = self.device_tasks()
        mine = TX_TASKS - on_device
        if Task.CHECKSUM in mine:
            mine |= SEGMENTATION
        return mine

    def host_rx_tasks(self) -> frozenset[Task]:
        """Receive tasks the host finishes itself (assembly needs verified checksums)."""
        mine = self.rx_tasks - self.device_tasks()
        if mine & ASSEMBLY:
            mine |= {Task.CHECKSUM}
        return mine

    # -- transmit ---------------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Frames processed but not yet taken by the device."""
        return len(self._backlog)

    def send(self, packets: Sequence[Packet]) -> int:
        """Do the host's share of the work on ``packets`` and hand them to the device.

        Returns how many frames the device took now (the rest are in ``backlog``).
        """
        mine = self.host_tx_tasks()
        if mine & frozenset().union(*(p.tx.tasks() for p in packets)):
            outcome = pipeline.transmit(packets, mine)
            for _, reason in outcome.drops:
                self.stats.drop(reason)
            for task, n in outcome.tasks.items():
                self.stats.task_done(task, n)
            self._backlog.extend(outcome.packets)
        else:
            self._backlog.extend(packets)
        return self.push()

    def push(self) -> int:
        """Offer the backlog to the device again; returns how many it took."""
        if not self._backlog:
            return 0
        batch = list(self._backlog)
        taken = self.device.send(batch)
        for _ in range(taken):
            self._backlog.popleft()
        self.stats.tx_packets += taken
        return taken

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Push until the backlog is empty or ``timeout_s`` passes; True when empty."""
        wait = getattr(self.device, "wait", None)  # SoftNic can wait for ring space
        deadline = time.monotonic() + timeout_s
        while self._backlog:
            if self.push() == 0:
                left = deadline - time.monotonic()
                if wait is None or left <= 0 or not wait(left, for_tx=True):
                    return False
        return True

    # -- receive ----------------------------------------------------------------------
    def recv(self, max_packets: int = 64) -> list[Packet]:
        """Packets from the device, with what it did not do finished here."""
        packets = self.device.recv(max_packets)
        mine = self.host_rx_tasks()
        if not packets or not mine:
            return packets
        outcome = pipeline.receive([p.data for p in packets], mine)
        for _, reason in outcome.drops:
            self.stats.drop(reason)
        for task, n in outcome.tasks.items():
            self.stats.task_done(task, n)
        self.stats.rx_packets += len(outcome.packets)
        return outcome.packets


__all__ = ["HostOffload"]
