"""``PoolSoftNic``: a SoftNic whose firmware also serves VMDq pools (guest windows).

The host side of ``pool_firmware``. It is a whole ``SoftNic`` (capabilities,
enable, its own send/recv rings) and, besides, owns the four pool queues the
switch and the firmware share (``queues``; the switch is their host end).
``attach_pool`` hands a guest's window to the firmware and forgets it: this
process never maps a window. Every call is bounded and watches the firmware's
pidfd, as every SoftNic call does.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
from collections.abc import Sequence
from typing import Any

from netoffload.device.base import DeviceError
from netoffload.device.cable import CableEnd
from netoffload.device.softnic.control import Op, Status
from netoffload.device.softnic.nic import SoftNic
from netoffload.device.softnic.pool_firmware import PoolOp
from netoffload.device.vmdq.queue import Queue, drain_eventfd, ring_eventfd, sealed_memfd
from netoffload.device.vmdq.steer import PortVlans, SteeringTable
from netoffload.device.vmdq.window import WindowGeometry, nic_queues
from netoffload.offload import AnyRecord

DEFAULT_QUEUE_CAPACITY = 4096


class PoolSoftNic(SoftNic):
    """A SoftNic with guest pools; see the module docstring."""

    firmware_module = "netoffload.device.softnic.pool_firmware"

    def __init__(
        self,
        caps: Sequence[AnyRecord] | None = None,
        cable: CableEnd | None = None,
        *,
        queue_capacity: int = DEFAULT_QUEUE_CAPACITY,
        **kwargs: Any,
    ) -> None:
        super().__init__(caps, cable, **kwargs)
        layout = nic_queues(queue_capacity)
        self.queue_capacity = queue_capacity
        try:
            fd = sealed_memfd(f"vswitch-queues-{self.name}", layout.total_bytes)
            self._res.fds.append(fd)
            self._queue_map = mmap.mmap(fd, layout.total_bytes)
            self.pool_bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._res.fds.append(self.pool_bell)
            self._pool_call(PoolOp.QUEUES, {"capacity": queue_capacity}, [fd, self.pool_bell])
        except BaseException:
            self.close()
            raise
        #: The host ends of the pool queues: fill and tx are written here, rx and done read.
        self.queues: dict[str, Queue] = layout.queues(memoryview(self._queue_map))

    def _pool_call(self, op: PoolOp, args: Any, fds: Sequence[int] = ()) -> bytes:
        self._check()
        message = op.value + json.dumps(args).encode()
        try:
            if fds:
                socket.send_fds(self._ctrl, [message], list(fds))
            else:
                self._ctrl.send(message)
        except OSError as exc:
            self._check_dying()
            raise DeviceError(f"softnic control channel: {exc}") from None
        reply = self._receive(self.call_timeout_s, f"pool {op.name.lower()}")
        if reply[:1] == Status.OK.value:
            return reply[1:]
        raise DeviceError(f"softnic firmware: {reply[1:].decode(errors='replace')}")

    def attach_pool(
        self, pool: int, window_fd: int, geometry: WindowGeometry, vlans: PortVlans
    ) -> None:
        """Give the firmware pool ``pool``'s window (the caller still closes ``window_fd``)."""
        self._pool_call(
            PoolOp.ATTACH,
            {"pool": pool, "geometry": geometry.as_dict(), "vlans": vlans.as_dict()},
            [window_fd],
        )

    def detach_pool(self, pool: int) -> dict[str, Any] | None:
        """The firmware unmaps ``pool``'s window and drops its posted buffers; its counters."""
        body = self._pool_call(PoolOp.DETACH, {"pool": pool})
        counters = json.loads(body) if body else None
        return counters if isinstance(counters, dict) else None

    def set_steering(self, table: SteeringTable) -> None:
        self._pool_call(PoolOp.TABLE, table.as_dict())

    def kick_pools(self) -> None:
        """Tell the firmware the pool queues have work."""
        ring_eventfd(self._nic_bell)

    def drain_pool_bell(self) -> None:
        drain_eventfd(self.pool_bell)

    def pool_stats(self) -> dict[str, Any]:
        """The firmware's pool counters (``PoolEngine.stats``), fetched with ``stats``."""
        body = json.loads(self._call(Op.STATS))
        pools = body.get("pools")
        return pools if isinstance(pools, dict) else {}
