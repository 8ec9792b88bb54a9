"""User-level sockets with fallback to the OS: the standard library's socket API, served
by netoffload's stack when it can serve a socket and by the kernel when it cannot.

::

    runtime = Runtime(stack, devices=[device]).start()   # the stack's thread
    sock = netoffload.sockets.create_connection(("198.18.0.1", 80), runtime=runtime)
    install(runtime)            # or: every socket.socket in the process, TLS included

Layout::

    _socket.py     Socket: the socket class, the choice of path, options, addresses
    _tcp.py        a connection and a listener on the stack, with Linux's semantics
    _udp.py        a UDP endpoint on the stack
    _runtime.py    Runtime: the stack, its lock, its thread, wake-ups, counters
    _readiness.py  the descriptor select/selectors/asyncio poll: readable and writable apart
    _tls.py        TlsSocket: ssl.SSLObject over MemoryBIOs, for sockets without a kernel fd
    _install.py    install()/uninstall(): socket.socket and SSLContext.wrap_socket
    _api.py        create_connection, create_server
    _stats.py      per-socket and per-path counters
    _boot.py       what `netoffload run` loads into a program

Names this package does not define (``AF_INET``, ``getaddrinfo``, ``timeout``...) are
the standard library's, so ``from netoffload import sockets as socket`` reads as usual.
"""

from __future__ import annotations

import socket as _std
from typing import Any

from netoffload.sockets._api import create_connection, create_server
from netoffload.sockets._current import current_runtime, set_default_runtime
from netoffload.sockets._install import install, installed, uninstall
from netoffload.sockets._runtime import Runtime
from netoffload.sockets._socket import Socket, socket
from netoffload.sockets._tls import TlsSocket, wrap_socket

SocketType = Socket


def __getattr__(name: str) -> Any:
    try:
        return getattr(_std, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


__all__ = [
    "Runtime",
    "Socket",
    "SocketType",
    "TlsSocket",
    "create_connection",
    "create_server",
    "current_runtime",
    "install",
    "installed",
    "set_default_runtime",
    "socket",
    "uninstall",
    "wrap_socket",
]
