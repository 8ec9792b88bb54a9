"""The switch's uplink: the NIC side of the guests' pools, and the wire behind it.

Every uplink gives the switch the same thing: its ends of the four pool
queues (``window.NIC_QUEUES``), ``attach``/``detach`` of a guest's window,
and the steering table to use. What differs is who the NIC side is:

* ``SoftNicUplink``: the SoftNic firmware, in its own process, runs the
  ``PoolEngine``. Windows go to it over its control channel and are never
  mapped here (``maps_windows`` is False): frames from the wire are written
  into guests' buffers by the firmware, and the switch copies no payload.
* ``LinuxUplink`` (a ``TapDevice`` or ``PacketDevice``): the kernel has the
  wire, so this process is the NIC side: it maps the windows and runs the
  engine itself (``service``). A frame the kernel handed over is in this
  process's memory, so putting it in a guest's buffer is a copy, counted as
  one. Guests' frames go out through ``HostOffload``: offloads the device
  has enabled pass through in the frame's request, the rest are done here.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import mmap
import os
from typing import Any

from netoffload.device.base import Device
from netoffload.device.packet import PacketDevice
from netoffload.device.softnic.pool_nic import PoolSoftNic
from netoffload.device.vmdq.engine import PoolEngine, TxWork
from netoffload.device.vmdq.queue import Queue, drain_eventfd, sealed_memfd
from netoffload.device.vmdq.steer import PortVlans, SteeringTable
from netoffload.device.vmdq.window import WindowGeometry, nic_queues
from netoffload.host import HostOffload
from netoffload.offload import CapabilityRecord, Selection, SelectionError, Task

DEFAULT_CAPACITY = 4096
#: What a Linux uplink is asked to do for guests' frames (the rest is done here).
UPLINK_TASKS = frozenset(
    {
        Task.CHECKSUM,
        Task.TCP_SEGMENTATION,
        Task.UDP_SEGMENTATION,
        Task.TCP_ASSEMBLY,
        Task.UDP_ASSEMBLY,
    }
)
_ROUNDS = 8  # batches per direction per service call: bounded work per turn


class Uplink(abc.ABC):
    """What the switch needs of its uplink; see the module docstring."""

    name: str
    kind: str
    #: True when this process maps guests' windows (it is the NIC side).
    maps_windows: bool
    capacity: int
    #: The switch's ends of the pool queues: it writes fill and tx, reads rx and done.
    queues: dict[str, Queue]

    @abc.abstractmethod
    def attach(self, pool: int, window_fd: int, geometry: WindowGeometry, vlans: PortVlans) -> None:
        """Give the NIC side a guest's window (the caller closes ``window_fd`` afterwards)."""

    @abc.abstractmethod
    def detach(self, pool: int) -> dict[str, Any] | None:
        """The NIC side forgets a pool; its last counters."""

    @abc.abstractmethod
    def set_table(self, table: SteeringTable) -> None:
        """The steering table the NIC side uses from now on."""

    @abc.abstractmethod
    def kick(self) -> None:
        """Tell the NIC side the queues have work."""

    @abc.abstractmethod
    def filenos(self) -> list[int]:
        """Descriptors readable when the NIC side has something for the switch."""

    def service(self) -> bool:
        """Work the NIC side does in this process; True when anything moved."""
        return False

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """``{"device": ..., "nic": PoolEngine.stats(), ...}``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the uplink; idempotent."""


class SoftNicUplink(Uplink):
    """A ``PoolSoftNic``: its firmware is the NIC side (see the module docstring)."""

    kind = "softnic"
    maps_windows = False

    def __init__(self, nic: PoolSoftNic | None = None) -> None:
        self.nic = nic if nic is not None else PoolSoftNic(name="vswitch-uplink")
        self.name = self.nic.name
        self.capacity = self.nic.queue_capacity
        self.queues = self.nic.queues

    def attach(self, pool: int, window_fd: int, geometry: WindowGeometry, vlans: PortVlans) -> None:
        self.nic.attach_pool(pool, window_fd, geometry, vlans)

    def detach(self, pool: int) -> dict[str, Any] | None:
        return self.nic.detach_pool(pool)

    def set_table(self, table: SteeringTable) -> None:
        self.nic.set_steering(table)

    def kick(self) -> None:
        self.nic.kick_pools()

    def filenos(self) -> list[int]:
        return [self.nic.pool_bell]

    def service(self) -> bool:
        drain_eventfd(self.nic.pool_bell)
        if not self.nic.link_up:
            self.nic.wait(0.0)  # raises DeviceError with the firmware's last words
        return False

    def stats(self) -> dict[str, Any]:
        device = self.nic.stats().as_dict()
        return {"device": device, "wire": self.nic.cable_counters(), "nic": self.nic.pool_stats()}

    def close(self) -> None:
        self.nic.close()


class LocalUplink(Uplink):
    """An uplink whose NIC side is a ``PoolEngine`` in this process: it maps the guests'
    windows, and ``service`` moves frames between them and wherever the frames are."""

    maps_windows = True

    def __init__(self, name: str, *, capacity: int = DEFAULT_CAPACITY) -> None:
        self.name = name
        self.capacity = capacity
        layout = nic_queues(capacity)
        self._fd = sealed_memfd(f"vswitch-queues-{name}", layout.total_bytes)
        self._map = mmap.mmap(self._fd, layout.total_bytes)
        mem = memoryview(self._map)
        self.queues = layout.queues(mem)
        # The engine's ends are objects of their own over the same memory.
        self.engine = PoolEngine(layout.queues(mem), None, host_memory=True)
        self._closed = False

    def attach(self, pool: int, window_fd: int, geometry: WindowGeometry, vlans: PortVlans) -> None:
        self.engine.attach(pool, window_fd, geometry, vlans)

    def detach(self, pool: int) -> dict[str, Any] | None:
        counters = self.engine.detach(pool)
        return None if counters is None else counters.as_dict()

    def set_table(self, table: SteeringTable) -> None:
        self.engine.set_table(table)

    def kick(self) -> None:
        return None  # the engine runs in ``service``, on this thread

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.engine.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


class LinuxUplink(LocalUplink):
    """A TAP or AF_PACKET device; this process is the NIC side (see the module docstring).

    The device's offloads the switch can pass through are enabled, unless
    ``enable_offloads`` is False: then it keeps the ones it has.
    """

    def __init__(
        self, device: Device, *, capacity: int = DEFAULT_CAPACITY, enable_offloads: bool = True
    ) -> None:
        super().__init__(device.name, capacity=capacity)
        self.device = device
        self.kind = "packet" if isinstance(device, PacketDevice) else "tap"
        if isinstance(device, PacketDevice):
            device.set_promiscuous()  # a switch takes frames for its guests' MACs
        if enable_offloads:  # else the device keeps what it has (and the switch does the rest)
            offered = [r for r in device.capabilities() if isinstance(r, CapabilityRecord)]
            with contextlib.suppress(SelectionError):
                device.enable(Selection(r for r in offered if r.task in UPLINK_TASKS))
        self.host = HostOffload(device)
        self._pending: collections.deque[TxWork] = collections.deque()

    def filenos(self) -> list[int]:
        return self.device.filenos()

    def service(self) -> bool:
        engine, host = self.engine, self.host
        moved = engine.take_fills() > 0
        for _ in range(_ROUNDS):
            if not engine.has_buffers():
                break
            packets = host.recv(64)
            if not packets:
                break
            engine.receive(packets)
            host.release(packets)
            moved = True
        for _ in range(_ROUNDS):
            work = engine.transmit()
            if work is None:
                break
            moved = True
            if work.packets:
                host.send(work.packets)
            self._pending.append(work)
        if self._pending:
            host.push()
        if host.backlog == 0:
            # The device has taken every frame: the guests' buffers may go back.
            while self._pending:
                engine.complete(self._pending.popleft())
        engine.ring()
        return moved

    def stats(self) -> dict[str, Any]:
        return {
            "device": self.device.stats().as_dict(),
            "host": self.host.stats.as_dict(),
            "nic": self.engine.stats(),
        }

    def close(self) -> None:
        if not self._closed:
            super().close()
            self.device.close()
