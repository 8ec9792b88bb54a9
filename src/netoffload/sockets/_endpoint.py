"""What every user-level socket state shares: its runtime, waiting, readiness, errors."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from netoffload.sockets._readiness import Readiness
from netoffload.sockets._stats import SocketRecord

if TYPE_CHECKING:
    from netoffload.sockets._runtime import Runtime


def os_error(code: int, detail: str | None = None) -> OSError:
    """The ``OSError`` subclass Python raises for ``code`` (``ConnectionResetError``...)."""
    message = os.strerror(code)
    return OSError(code, message if detail is None else f"{message}: {detail}")


def would_block() -> BlockingIOError:
    return BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))


def deadline_for(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else time.monotonic() + timeout_s


class Endpoint:
    """A user-level socket's state; every method is called with the runtime's lock held.

    Blocking calls wait on ``cond`` (a condition on that lock), which the
    stack's thread notifies when the stack reports something about this
    socket. ``readiness``, once the socket's descriptor has been handed out,
    keeps that descriptor readable and writable as ``ready()`` says.
    """

    __slots__ = ("closed", "cond", "readiness", "record", "runtime", "waiters")

    def __init__(self, runtime: Runtime, record: SocketRecord) -> None:
        self.runtime = runtime
        self.record = record
        self.cond = threading.Condition(runtime.lock)
        self.readiness: Readiness | None = None
        self.closed = False
        self.waiters = 0

    def ready(self) -> tuple[bool, bool]:
        """(readable, writable): whether a receive and a send would not block."""
        raise NotImplementedError

    def changed(self) -> None:
        """Something about this socket changed: wake its waiters, update its descriptor."""
        if self.waiters:
            self.cond.notify_all()
        readiness = self.readiness
        if readiness is not None:
            readiness.set(*self.ready())

    def watch(self, readiness: Readiness) -> None:
        """From now on, ``readiness`` shows this socket's state."""
        self.readiness = readiness
        readiness.set(*self.ready())

    def wait(self, done: Callable[[], bool], deadline: float | None, *, nonblocking: bool) -> None:
        """Until ``done()``: ``BlockingIOError`` at once when non-blocking, ``TimeoutError``
        once ``deadline`` (``time.monotonic()``) has passed."""
        if done():
            return
        if nonblocking:
            raise would_block()
        runtime = self.runtime
        while not done():
            runtime.check()
            if self.closed:
                raise os_error(errno.EBADF)
            if deadline is None:
                remaining = None
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("timed out")
            self.waiters += 1
            try:
                self.cond.wait(remaining)
            finally:
                self.waiters -= 1

    def release(self) -> None:
        """Forget the descriptor's state (the socket is closing)."""
        self.closed = True
        if self.waiters:
            self.cond.notify_all()
        readiness, self.readiness = self.readiness, None
        if readiness is not None:
            readiness.release()

    def close(self) -> None:
        """Close this socket's part of the stack."""
        raise NotImplementedError
