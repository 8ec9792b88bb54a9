"""SoftNic firmware with VMDq pools: guest windows written straight from the wire.

``PoolFirmware`` is the SoftNic firmware (``firmware.Firmware``: its host
rings, engine and cable are untouched) plus a ``PoolEngine``: the switch
hands it a queue region and then guest windows (memfds, over the control
channel with ``SCM_RIGHTS``) and a steering table. From then on every frame
from the wire is run through the receive engine as before, steered, and
written by this process into a buffer the right guest posted; frames guests
send are read from their windows, looped back to other guests or put on the
wire with their offloads done here. The host (the switch) sees descriptors
only and never maps a guest window.

Pool requests have opcodes of their own, none of the base firmware's
(``control.Op``; checked when this module loads):

* ``q`` + ``{"capacity": N}`` with [queue region memfd, switch bell eventfd];
* ``a`` + ``{"pool", "geometry", "vlans"}`` with [window memfd];
* ``r`` + ``{"pool"}`` (detach); ``t`` + a steering table (``SteeringTable.as_dict``).

Each is answered like any request: ``K`` and a payload, or ``?`` and a reason.
"""

from __future__ import annotations

import array
import contextlib
import enum
import json
import mmap
import os
import select
import socket
import sys
import time
from typing import Any

from netoffload.device.softnic import control
from netoffload.device.softnic.control import Status
from netoffload.device.softnic.firmware import BATCH, WIRE_BACKLOG_BYTES, Firmware
from netoffload.device.vmdq.engine import PoolEngine
from netoffload.device.vmdq.queue import UnsafeMemory, map_sealed
from netoffload.device.vmdq.steer import PortVlans, SteerError, SteeringTable
from netoffload.device.vmdq.window import GeometryError, WindowGeometry, nic_queues

_MAX_FDS = 4


class PoolOp(bytes, enum.Enum):
    """Requests for the pools (never one of the base firmware's ``control.Op``)."""

    QUEUES = b"q"
    ATTACH = b"a"
    DETACH = b"r"
    TABLE = b"t"


_POOL_OPS = frozenset(op.value for op in PoolOp)
# A pool request with the base firmware's opcode would take its requests away from it.
assert not _POOL_OPS & {op.value for op in control.Op}, "pool and base opcodes overlap"


class PoolFirmware(Firmware):
    """The SoftNic firmware with guest pools; see the module docstring."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.engine: PoolEngine | None = None
        self._queue_map: mmap.mmap | None = None

    # -- control ----------------------------------------------------------------------
    def _control(self) -> None:
        try:
            op = self.ctrl.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            op = b""
        if op not in _POOL_OPS:
            super()._control()  # the base firmware's request (or the host going away)
            return
        fds = array.array("i")
        try:
            data, ancillary, _, _ = self.ctrl.recvmsg(
                control.MAX_MESSAGE, socket.CMSG_SPACE(_MAX_FDS * fds.itemsize)
            )
        except OSError:
            self.running = False
            return
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        try:
            reply = self._pool_request(PoolOp(data[:1]), data[1:], list(fds))
        except (ValueError, KeyError, TypeError, UnsafeMemory, OSError) as exc:
            self._reply(Status.MALFORMED, str(exc).encode())
            return
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._reply(Status.OK, reply)

    def _pool_request(self, op: PoolOp, payload: bytes, fds: list[int]) -> bytes:
        args = json.loads(payload) if payload else {}
        if op is PoolOp.QUEUES:
            if len(fds) != 2 or self.engine is not None:
                raise ValueError("queues take a region and a bell, once")
            layout = nic_queues(int(args["capacity"]))
            self._queue_map = map_sealed(fds[0], layout.total_bytes)
            bell = os.dup(fds[1])
            self.engine = PoolEngine(layout.queues(memoryview(self._queue_map)), bell)
            return b""
        engine = self._engine()
        if op is PoolOp.ATTACH:
            if len(fds) != 1:
                raise ValueError("attach takes one window")
            try:
                geometry = WindowGeometry.from_dict(args["geometry"])
                vlans = PortVlans.from_dict(args["vlans"])
            except (GeometryError, SteerError) as exc:
                raise ValueError(str(exc)) from None
            engine.attach(int(args["pool"]), fds[0], geometry, vlans)
            return b""
        if op is PoolOp.DETACH:
            counters = engine.detach(int(args["pool"]))
            return json.dumps(None if counters is None else counters.as_dict()).encode()
        try:
            engine.set_table(SteeringTable.from_dict(args))
        except SteerError as exc:
            raise ValueError(str(exc)) from None
        return b""

    def _engine(self) -> PoolEngine:
        if self.engine is None:
            raise ValueError("no queues yet")
        return self.engine

    def _stats_json(self) -> dict[str, Any]:
        out = super()._stats_json()
        if self.engine is not None:
            out["pools"] = self.engine.stats()
        return out

    # -- the loop's work ----------------------------------------------------------------
    def _service(self) -> None:
        engine = self.engine
        if engine is not None:
            engine.take_fills()
            while self._pool_transmit_batch(engine):
                pass
        super()._service()
        if engine is not None:
            engine.ring()

    def _cable_interest(self) -> int:
        engine = self.engine
        if engine is None:
            return super()._cable_interest()
        assert self.cable is not None
        mask = 0
        if self.cable.pending_bytes:
            mask |= select.POLLOUT
        if engine.has_buffers() and not self.cable.peer_closed:
            mask |= select.POLLIN
        return mask

    def _receive_batch(self) -> bool:
        engine = self.engine
        if engine is None:
            return super()._receive_batch()
        return self._pool_receive_batch(engine)

    def _pool_receive_batch(self, engine: PoolEngine) -> bool:
        """Frames from the wire, through the receive engine, into guests' posted buffers.

        No posted buffer anywhere: the port stops reading (the cable backs up).
        Buffers for some pools only: frames for the others are lost there, counted.
        """
        if self.cable is None:
            return False
        engine.take_fills()
        if not engine.has_buffers():
            return False
        frames = self.cable.recv_batch(BATCH)
        if not frames:
            return False
        stats = self.stats
        written, nbytes = engine.receive(self._received(frames))
        stats.rx_packets += written
        stats.rx_bytes += nbytes
        engine.ring()
        return True

    def _pool_transmit_batch(self, engine: PoolEngine) -> bool:
        """Frames guests sent: looped back, or done and put on the wire; buffers given back."""
        cable = self.cable
        if cable is not None and cable.pending_bytes > WIRE_BACKLOG_BYTES:
            cable.flush()
            if cable.pending_bytes > WIRE_BACKLOG_BYTES:
                return False
        work = engine.transmit(BATCH)
        if work is None:
            return False
        if work.packets:
            chunks, lengths = self._run_transmit(work.packets)
            self.stats.tx_frames += len(lengths)
            if cable is not None:
                now = time.monotonic_ns()
                # What the socket does not take now is copied by the cable: the guests'
                # buffers may go back right after.
                cable.send_framed(chunks, lengths, now)
                cable.release(now)
                cable.flush()
        engine.complete(work)
        return True


def main(argv: list[str]) -> int:
    """Entry point: ``python -m netoffload.device.softnic.pool_firmware CONFIG_JSON``."""
    firmware = PoolFirmware(json.loads(argv[1]))
    try:
        firmware.run()
    finally:
        if firmware.engine is not None:
            firmware.engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
