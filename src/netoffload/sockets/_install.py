"""``install()``: the standard library's ``socket`` module served by a runtime, process-wide.

After ``install(runtime)``, ``socket.socket`` is ``Socket`` (so
``socket.create_connection``, ``socketserver``, ``http.server``, ``asyncio``
and ``urllib`` make user-level sockets without knowing it) and
``ssl.SSLContext.wrap_socket`` wraps them with ``TlsSocket``. Modules that
imported the class itself earlier (``from socket import socket``) keep the
kernel's: install before the application imports them. ``uninstall()``
puts both back.
"""

from __future__ import annotations

import socket as _std
import ssl
import threading

from netoffload.sockets._current import set_default_runtime
from netoffload.sockets._runtime import Runtime
from netoffload.sockets._socket import _REAL, Socket
from netoffload.sockets._tls import _ORIGINAL_WRAP, wrap_socket

_lock = threading.Lock()
_state = {"installed": False}


def install(runtime: Runtime) -> None:
    """Make ``runtime`` the default and serve ``socket.socket`` and TLS from it."""
    with _lock:
        set_default_runtime(runtime)
        if not _state["installed"]:
            _std.socket = Socket  # type: ignore[misc]
            ssl.SSLContext.wrap_socket = wrap_socket  # type: ignore[method-assign,assignment]
            _state["installed"] = True


def uninstall() -> None:
    """Give the standard library back its own socket class and TLS wrapping."""
    with _lock:
        set_default_runtime(None)
        if _state["installed"]:
            _std.socket = _REAL  # type: ignore[misc]
            ssl.SSLContext.wrap_socket = _ORIGINAL_WRAP  # type: ignore[method-assign]
            _state["installed"] = False


def installed() -> bool:
    """Whether ``install()`` is in force."""
    return _state["installed"]
