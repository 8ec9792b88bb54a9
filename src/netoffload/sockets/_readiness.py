"""The descriptor a user-level socket hands to ``select``, ``selectors`` and asyncio.

A user-level socket has no kernel socket whose readiness the kernel could
report, so its ``fileno()`` is one end (A) of an AF_UNIX datagram socketpair
that this module keeps in the state the socket is in:

- **readable** while A's receive queue holds a datagram (sent from B);
- **writable** while A's send buffer is below a quarter full: A's ``SO_SNDBUF``
  is the kernel's minimum, and a couple of datagrams A sent that B has not read
  charge it past that (``unix_writable``), so A polls as not writable until B
  reads them.

The two signals are separate queues, so all four combinations exist: an
eventfd could not do this (it is always writable), and an event loop would
spin on a socket whose send buffer is full. Each change of state is one or two
system calls; none is made while the state stays the same.
"""

from __future__ import annotations

import _socket
import contextlib
import select
import threading
from typing import Final

_AF_UNIX: Final = _socket.AF_UNIX
_DGRAM: Final = _socket.SOCK_DGRAM
_NOWAIT: Final = _socket.MSG_DONTWAIT
_BLOCKING_LIMIT: Final = 64

_calibration_lock = threading.Lock()
_calibrated: list[int] = []  # the one figure, once measured


def _pair() -> tuple[_socket.socket, _socket.socket]:
    a, b = _socket.socketpair(_AF_UNIX, _DGRAM | _socket.SOCK_CLOEXEC)
    a.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, 1)  # the kernel's minimum
    return a, b


def unwritable_after() -> int:
    """How many unread datagrams make a fresh A end poll as not writable on this kernel.

    Measured once per process (the figure depends on the kernel's accounting).
    """
    with _calibration_lock:
        if not _calibrated:
            a, b = _pair()
            try:
                poller = select.poll()
                poller.register(a.fileno(), select.POLLOUT)
                count = 0
                while poller.poll(0) and count < _BLOCKING_LIMIT:
                    a.send(b"\0", _NOWAIT)
                    count += 1
                if poller.poll(0):
                    raise OSError("cannot make an AF_UNIX socket unwritable on this kernel")
                _calibrated.append(count)
            finally:
                a.close()
                b.close()
        return _calibrated[0]


def new_pair() -> tuple[_socket.socket, _socket.socket]:
    """A fresh (A, B) pair: A readable never, writable now."""
    unwritable_after()
    return _pair()


class Readiness:
    """Keeps an A end readable and writable as its socket is.

    It holds a descriptor of its own for A (the socket's ``fileno()`` is
    another one, made with ``dup2``) and the B end, and closes both in
    ``release``: whatever happens to the socket's number, this object only ever
    writes to descriptors it owns.
    """

    __slots__ = ("_a", "_b", "_count", "readable", "writable")

    def __init__(self, a: _socket.socket, b: _socket.socket) -> None:
        self._a = a
        self._b = b
        self._count = unwritable_after()
        self.readable = False
        self.writable = True

    def set(self, readable: bool, writable: bool) -> None:
        """Make A poll as ``readable`` and ``writable``; nothing when it already does."""
        if readable is not self.readable:
            if readable:
                self._b.send(b"\0", _NOWAIT)
            else:
                with contextlib.suppress(BlockingIOError):
                    self._a.recv(1, _NOWAIT)
            self.readable = readable
        if writable is not self.writable:
            if writable:
                for _ in range(self._count):
                    with contextlib.suppress(BlockingIOError):
                        self._b.recv(1, _NOWAIT)
            else:
                for _ in range(self._count):
                    with contextlib.suppress(BlockingIOError):
                        self._a.send(b"\0", _NOWAIT)
            self.writable = writable

    def release(self) -> None:
        """Close both descriptors this object holds. Idempotent."""
        self._a.close()
        self._b.close()


_placeholder_lock = threading.Lock()
_placeholder: list[_socket.socket] = []  # the one socket, once made


def placeholder_fd() -> int:
    """The descriptor of one process-wide AF_UNIX socket that is never readable: what a
    user-level socket's number refers to until someone asks for ``fileno()`` (which
    puts an A end there before handing the number out)."""
    with _placeholder_lock:
        if not _placeholder:
            one, other = _socket.socketpair(_AF_UNIX, _DGRAM | _socket.SOCK_CLOEXEC)
            other.close()
            _placeholder.append(one)
        return _placeholder[0].fileno()


def placeholder_dup() -> int:
    """A new descriptor for the placeholder (for a socket made without a kernel socket)."""
    return _socket.dup(placeholder_fd())
