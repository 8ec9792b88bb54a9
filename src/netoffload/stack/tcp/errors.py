"""The error the TCP core raises on a call made in the wrong state."""

from __future__ import annotations

import errno as _errno
from enum import Enum


class TcpError(Exception):
    """A call the connection cannot honour now; ``errno`` says why (``errno.EPIPE``, ...).

    The core raises nothing else at its callers. Bad input from the network
    is never an exception: it is dropped and counted.
    """

    def __init__(self, errno: int, message: str | None = None) -> None:
        self.errno = errno
        super().__init__(message or _errno.errorcode.get(errno, str(errno)))

    def __reduce__(self) -> tuple[type[TcpError], tuple[int, str]]:
        return (type(self), (self.errno, str(self)))


class IcmpErrorKind(Enum):
    """An ICMP or ICMPv6 error about this connection, as the stack decoded it.

    Packet-too-big is not here: it lowers the MSS through ``set_path_mtu``.
    """

    NET_UNREACHABLE = "net-unreachable"
    HOST_UNREACHABLE = "host-unreachable"
    PROTOCOL_UNREACHABLE = "protocol-unreachable"
    PORT_UNREACHABLE = "port-unreachable"
    ADMIN_PROHIBITED = "admin-prohibited"
    SOURCE_ROUTE_FAILED = "source-route-failed"
    TIME_EXCEEDED = "time-exceeded"
    PARAMETER_PROBLEM = "parameter-problem"

    @property
    def errno(self) -> int:
        """What Linux reports for it (``icmp_err_convert``, ``icmpv6_err_convert``)."""
        return _ICMP_ERRNO[self]


_ICMP_ERRNO = {
    IcmpErrorKind.NET_UNREACHABLE: _errno.ENETUNREACH,
    IcmpErrorKind.HOST_UNREACHABLE: _errno.EHOSTUNREACH,
    IcmpErrorKind.PROTOCOL_UNREACHABLE: _errno.ENOPROTOOPT,
    IcmpErrorKind.PORT_UNREACHABLE: _errno.ECONNREFUSED,
    IcmpErrorKind.ADMIN_PROHIBITED: _errno.EACCES,
    IcmpErrorKind.SOURCE_ROUTE_FAILED: _errno.EOPNOTSUPP,
    IcmpErrorKind.TIME_EXCEEDED: _errno.EHOSTUNREACH,
    IcmpErrorKind.PARAMETER_PROBLEM: _errno.EPROTO,
}
