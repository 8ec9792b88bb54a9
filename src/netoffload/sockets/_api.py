"""``create_connection`` and ``create_server``: the standard library's, on ``Socket``."""

from __future__ import annotations

import _socket
import socket as _std
from typing import TYPE_CHECKING, Any

from netoffload.sockets._socket import Socket

if TYPE_CHECKING:
    from netoffload.sockets._runtime import Runtime

_DEFAULT: Any = _std._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]


def create_connection(
    address: tuple[str, int],
    timeout: float | None = _DEFAULT,
    source_address: tuple[str, int] | None = None,
    *,
    all_errors: bool = False,
    runtime: Runtime | None = None,
) -> Socket:
    """Connect to ``(host, port)``, trying each address ``getaddrinfo`` gives, as
    ``socket.create_connection`` does; the socket's path is chosen at its ``connect``."""
    host, port = address
    errors: list[OSError] = []
    for family, kind, proto, _canonname, target in _socket.getaddrinfo(
        host, port, 0, _socket.SOCK_STREAM
    ):
        sock = None
        try:
            sock = Socket(family, kind, proto, runtime=runtime)
            if timeout is not _DEFAULT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(target)
            return sock
        except OSError as exc:
            errors.append(exc)
            if sock is not None:
                sock.close()
    if errors:
        if all_errors:
            raise ExceptionGroup("create_connection failed", errors)
        raise errors[0]
    raise OSError("getaddrinfo returns an empty list")


def create_server(
    address: tuple[str, int],
    *,
    family: int = _socket.AF_INET,
    backlog: int | None = None,
    reuse_port: bool = False,
    dualstack_ipv6: bool = False,
    runtime: Runtime | None = None,
) -> Socket:
    """A listening TCP socket bound to ``address``, as ``socket.create_server`` makes it
    (``SO_REUSEADDR`` on; an AF_INET6 one serves IPv4 too with ``dualstack_ipv6``)."""
    if reuse_port and not hasattr(_socket, "SO_REUSEPORT"):
        raise ValueError("SO_REUSEPORT not supported on this platform")
    if dualstack_ipv6:
        if not _std.has_dualstack_ipv6():
            raise ValueError("dualstack_ipv6 not supported on this platform")
        if family != _socket.AF_INET6:
            raise ValueError("dualstack_ipv6 requires AF_INET6 family")
    sock = Socket(family, _socket.SOCK_STREAM, runtime=runtime)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
        if family == _socket.AF_INET6:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 0 if dualstack_ipv6 else 1)
        try:
            sock.bind(address)
        except OSError as err:
            message = f"{err.strerror} (while attempting to bind on address {address!r})"
            raise OSError(err.errno, message) from None
        if backlog is None:
            sock.listen()
        else:
            sock.listen(backlog)
        return sock
    except OSError:
        sock.close()
        raise
