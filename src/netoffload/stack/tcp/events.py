"""What a connection reports to its owner, oldest first, through ``next_event()``.

Every connection ends with exactly one ``Closed``, after any ``Reset``,
``Refused``, ``TimedOut`` or ``Unreachable``: that is when the stack may drop
it from its 4-tuple table (a connection in TIME_WAIT is still in the table).
Error events carry the ``errno`` a socket layer reports for them.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass

from netoffload.stack.tcp.errors import IcmpErrorKind


@dataclass(frozen=True, slots=True)
class TcpEvent:
    """Base of every connection event."""


@dataclass(frozen=True, slots=True)
class Established(TcpEvent):
    """The three-way handshake completed (the socket is writable and readable)."""


@dataclass(frozen=True, slots=True)
class DataReceived(TcpEvent):
    """The receive buffer went from empty to holding data (edge-triggered)."""


@dataclass(frozen=True, slots=True)
class SendSpaceFreed(TcpEvent):
    """Send-buffer space opened after a ``send`` found the buffer full (edge-triggered)."""


@dataclass(frozen=True, slots=True)
class PeerClosed(TcpEvent):
    """The peer sent FIN: end of stream once the data already buffered is read."""


@dataclass(frozen=True, slots=True)
class Reset(TcpEvent):
    """The peer reset the connection."""

    @property
    def errno(self) -> int:
        """``ECONNRESET``."""
        return _errno.ECONNRESET


@dataclass(frozen=True, slots=True)
class Refused(TcpEvent):
    """The peer answered our SYN with a reset: nothing listens there."""

    @property
    def errno(self) -> int:
        """``ECONNREFUSED``."""
        return _errno.ECONNREFUSED


@dataclass(frozen=True, slots=True)
class TimedOut(TcpEvent):
    """Retransmissions, zero-window probes or keep-alive probes went unanswered.

    ``soft_error`` is the last ICMP error seen meanwhile; like Linux, the
    socket then reports its errno instead of ``ETIMEDOUT``.
    """

    reason: str
    soft_error: IcmpErrorKind | None = None

    @property
    def errno(self) -> int:
        """``ETIMEDOUT``, or the errno of the soft error."""
        return _errno.ETIMEDOUT if self.soft_error is None else self.soft_error.errno


@dataclass(frozen=True, slots=True)
class Unreachable(TcpEvent):
    """An ICMP error aborted the connection (during the handshake: a hard error)."""

    kind: IcmpErrorKind

    @property
    def errno(self) -> int:
        """The errno Linux reports for ``kind``."""
        return self.kind.errno


@dataclass(frozen=True, slots=True)
class Closed(TcpEvent):
    """The connection is gone: remove it from the table. Always the last event."""
