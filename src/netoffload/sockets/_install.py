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
from typing import Any

from netoffload.sockets._current import set_default_runtime
from netoffload.sockets._runtime import Runtime
from netoffload.sockets._socket import _REAL, Socket
from netoffload.sockets._tls import _ORIGINAL_WRAP, wrap_socket

_lock = threading.Lock()
_state = {"installed": False}


def _wrap_method(  # noqa: PLR0917 - SSLContext.wrap_socket's signature
    self: ssl.SSLContext,
    sock: Any,
    server_side: bool = False,
    do_handshake_on_connect: bool = True,
    suppress_ragged_eofs: bool = True,
    server_hostname: str | bytes | None = None,
    session: ssl.SSLSession | None = None,
) -> Any:
    return wrap_socket(
        self,
        sock,
        server_side=server_side,
        do_handshake_on_connect=do_handshake_on_connect,
        suppress_ragged_eofs=suppress_ragged_eofs,
        server_hostname=server_hostname,
        session=session,
    )


_wrap_method._netoffload_original = _ORIGINAL_WRAP  # type: ignore[attr-defined]


def install(runtime: Runtime) -> None:
    """Make ``runtime`` the default and serve ``socket.socket`` and TLS from it."""
    with _lock:
        set_default_runtime(runtime)
        if not _state["installed"]:
            _std.socket = Socket  # type: ignore[misc]
            ssl.SSLContext.wrap_socket = _wrap_method  # type: ignore[method-assign]
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
