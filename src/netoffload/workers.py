"""One worker process per receive queue: how netoffload scales past one core.

A multi-queue device (``SoftNic(queues=N)``) spreads flows over its queues
with RSS and the classification rules; ``QueueWorkers`` then forks one
process per queue, each handed its own queue as a ``Device`` (its own rings
and doorbells) to run a stack on. Flows never move between queues, so the
workers share nothing but the port.

Lifecycle as SoftNic's: every worker is started with a pipe back to the
parent, waits are bounded and watch the worker's pidfd, and leaving the
context (or the finalizer) stops every worker still running (SIGTERM, then
SIGKILL), so no worker outlives its owner's ``with``.

The device must not be used from the parent for the queues a worker holds
while the workers run: each process has its own host side of the rings.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from netoffload.device.base import Device, poll_fds

#: ``work(queue_index, queue_device, pipe)``: runs in the worker; ``pipe`` talks to the parent.
Work = Callable[[int, Device, multiprocessing.connection.Connection], None]


class MultiQueue(Protocol):
    """A device whose queues are devices of their own (``SoftNic``)."""

    @property
    def queue_count(self) -> int: ...

    def queue(self, index: int) -> Device: ...

    def detach_queues(self) -> None: ...


class WorkerError(Exception):
    """A worker that died, or did not answer in time."""


def _stop(processes: list[Any]) -> None:
    for proc in processes:
        if proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    for proc in processes:
        proc.join(timeout=5.0)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5.0)


class QueueWorkers:
    """One forked worker per queue of ``device``, each running ``work`` on its queue."""

    def __init__(self, device: MultiQueue, work: Work) -> None:
        device.detach_queues()
        context = multiprocessing.get_context("fork")
        self._processes: list[Any] = []
        self.pipes: list[multiprocessing.connection.Connection] = []
        self._finalizer = weakref.finalize(self, _stop, self._processes)
        try:
            for index in range(device.queue_count):
                parent, child = context.Pipe()
                proc = context.Process(
                    target=_run, args=(work, index, device.queue(index), child), daemon=True
                )
                proc.start()
                child.close()
                self._processes.append(proc)
                self.pipes.append(parent)
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._processes)

    def receive(self, index: int, timeout_s: float) -> Any:
        """The next message worker ``index`` sends; raises ``WorkerError`` if it dies first
        or sends nothing within ``timeout_s``."""
        pipe, proc = self.pipes[index], self._processes[index]
        pidfd = os.pidfd_open(proc.pid)
        try:
            ready = poll_fds([pipe.fileno(), pidfd], timeout_s)
        finally:
            os.close(pidfd)
        if pipe.fileno() in ready and pipe.poll():
            return pipe.recv()
        if pidfd in ready or not proc.is_alive():
            proc.join(timeout=5.0)
            raise WorkerError(f"worker {index} exited with status {proc.exitcode}")
        raise WorkerError(f"worker {index} sent nothing within {timeout_s:g}s")

    def send(self, index: int, message: Any) -> None:
        self.pipes[index].send(message)

    def close(self) -> None:
        """Stop every worker still running. Idempotent."""
        for pipe in self.pipes:
            pipe.close()
        self._finalizer()

    def __enter__(self) -> QueueWorkers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _run(
    work: Work, index: int, device: Device, pipe: multiprocessing.connection.Connection
) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    work(index, device, pipe)


__all__ = ["MultiQueue", "QueueWorkers", "Work", "WorkerError"]
