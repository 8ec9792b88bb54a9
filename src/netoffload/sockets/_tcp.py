"""TCP sockets on the user-level stack: a connection (``TcpStream``) and a listener
(``TcpListen``), with the semantics of Linux's TCP sockets.

Every method runs with the runtime's lock held (the socket takes it). Errors
are ``OSError`` with Linux's errno: the connection core's ``TcpError`` carries
it (``ECONNRESET``, ``EPIPE``...), and its error events (``Refused``,
``Reset``, ``TimedOut``, ``Unreachable``) say which one a failed connect or
``SO_ERROR`` reports.
"""

from __future__ import annotations

import contextlib
import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netoffload.sockets._endpoint import Endpoint, os_error
from netoffload.sockets._stats import SocketRecord
from netoffload.stack._netaddr import IpAddress
from netoffload.stack.tcp import (
    Closed,
    Established,
    PeerClosed,
    Refused,
    Reset,
    TcpConfig,
    TcpError,
    TcpListener,
    TcpState,
    TimedOut,
    Unreachable,
)
from netoffload.stack.tcp.state import CAN_SEND
from netoffload.stack.tcp_layer import TcpHandle

if TYPE_CHECKING:
    from netoffload.sockets._runtime import Runtime

_CONNECTING = frozenset({TcpState.SYN_SENT, TcpState.SYN_RECEIVED})
_ERRORS = (Refused, Reset, TimedOut, Unreachable)


@dataclass(slots=True)
class TcpOptions:
    """What ``setsockopt`` set on a TCP socket, applied to its connections."""

    nodelay: bool = False
    keepalive: bool = False
    keepidle_s: int | None = None
    keepintvl_s: int | None = None
    keepcnt: int | None = None
    linger: tuple[int, int] = (0, 0)  # (l_onoff, l_linger)

    def apply(self, stream: TcpStream) -> None:
        conn = stream.conn
        conn.nodelay = self.nodelay
        if self.keepalive or self.keepidle_s or self.keepintvl_s or self.keepcnt:
            conn.set_keepalive(
                self.keepalive,
                idle_ns=None if self.keepidle_s is None else self.keepidle_s * 1_000_000_000,
                interval_ns=None if self.keepintvl_s is None else self.keepintvl_s * 1_000_000_000,
                probes=self.keepcnt,
            )


def raise_tcp(exc: TcpError) -> OSError:
    return os_error(exc.errno)


class TcpStream(Endpoint):
    """One connection of a socket, from ``connect`` or ``accept``."""

    __slots__ = ("conn", "eof", "error", "established", "gone", "handle", "read_shut")

    def __init__(self, runtime: Runtime, record: SocketRecord, handle: TcpHandle) -> None:
        super().__init__(runtime, record)
        self.handle = handle
        self.conn = handle.conn
        self.established = False
        self.eof = False
        self.gone = False
        self.read_shut = False
        #: The pending error (``SO_ERROR``): set by an error event, cleared when reported.
        self.error: int | None = None
        runtime.streams[id(self.conn)] = self
        self.on_events()

    # -- state ------------------------------------------------------------------------
    def on_events(self) -> None:
        events = self.handle.events
        while events:
            event = events.popleft()
            if isinstance(event, Established):
                self.established = True
            elif isinstance(event, PeerClosed):
                self.eof = True
            elif isinstance(event, _ERRORS):
                self.error = event.errno
            elif isinstance(event, Closed):
                self.gone = True
        self.changed()

    def connecting(self) -> bool:
        return not self.established and self.error is None and not self.gone

    def ready(self) -> tuple[bool, bool]:
        if self.connecting():
            return False, False
        conn = self.conn
        failed = self.error is not None or self.gone
        readable = failed or self.eof or self.read_shut or conn.readable() > 0
        writable = failed or conn.state not in CAN_SEND or conn.send_space() > 0
        return readable, writable

    def take_error(self) -> int:
        """``SO_ERROR``: the pending error, cleared."""
        error, self.error = self.error, None
        return error or 0

    def refresh_record(self) -> None:
        self.record.state = self.conn.state.value

    # -- calls ------------------------------------------------------------------------
    def wait_connected(self, deadline: float | None, *, nonblocking: bool) -> None:
        """Until the handshake ends; its error (``ECONNREFUSED``...) raised if it failed."""
        self.wait(lambda: not self.connecting(), deadline, nonblocking=nonblocking)
        if self.error is not None:
            raise os_error(self.take_error())
        if not self.established:
            raise os_error(errno.ECONNABORTED)

    def _wait_readable(self, deadline: float | None, nonblocking: bool) -> bool:
        """Until a receive would not block; False when the read side is shut."""
        if self.read_shut:
            return False
        conn = self.conn
        self.wait(
            lambda: conn.readable() > 0 or self.eof or self.error is not None or self.gone
            or self.read_shut,
            deadline,
            nonblocking=nonblocking,
        )  # fmt: skip
        return not self.read_shut

    def _read_done(self, n: int) -> None:
        self.record.bytes_received += n
        self.runtime.transmit(self.handle)  # a window update, when reading opened one
        if self.readiness is not None:
            self.changed()

    def recv_into(self, target: memoryview, deadline: float | None, *, nonblocking: bool) -> int:
        if not len(target) or not self._wait_readable(deadline, nonblocking):
            return 0
        try:
            n = self.conn.recv_into(target)
        except TcpError as exc:
            self.error = None
            raise raise_tcp(exc) from None
        if n:
            self._read_done(n)
        return n

    def recv(self, max_bytes: int, deadline: float | None, *, nonblocking: bool) -> bytes:
        if not max_bytes or not self._wait_readable(deadline, nonblocking):
            return b""
        try:
            data = self.conn.recv(max_bytes)
        except TcpError as exc:
            self.error = None
            raise raise_tcp(exc) from None
        if data:
            self._read_done(len(data))
        return data

    def send(self, data: memoryview, deadline: float | None, *, nonblocking: bool) -> int:
        """Copy what fits of ``data`` into the send buffer and send what may go now."""
        if self.connecting():
            self.wait(lambda: not self.connecting(), deadline, nonblocking=nonblocking)
        conn = self.conn
        while True:
            try:
                n = conn.send(data)
            except TcpError as exc:
                self.error = None
                raise raise_tcp(exc) from None
            if n:
                break
            if not len(data):
                return 0
            self.wait(
                lambda: conn.send_space() > 0 or conn.state not in CAN_SEND
                or self.error is not None or self.gone,
                deadline,
                nonblocking=nonblocking,
            )  # fmt: skip
        self.record.bytes_sent += n
        if conn.send_space() == 0 and conn.state in CAN_SEND:
            # A send that finds the buffer full asks the connection for SendSpaceFreed:
            # the event that tells a waiting writer (or a watched descriptor) it may go on.
            with contextlib.suppress(TcpError):
                conn.send(b"\0")
        self.runtime.transmit(self.handle)
        if self.readiness is not None:
            self.changed()
        return n

    def sendall(self, data: memoryview, deadline: float | None) -> None:
        while data:
            n = self.send(data, deadline, nonblocking=False)
            data = data[n:]

    def shutdown(self, how: int) -> None:
        conn = self.conn
        if conn.state in _CONNECTING or conn.state is TcpState.CLOSED:
            raise os_error(errno.ENOTCONN)
        if how in (0, 2):  # SHUT_RD, SHUT_RDWR
            self.read_shut = True
        if how in (1, 2):  # SHUT_WR, SHUT_RDWR
            try:
                conn.shutdown_write()
            except TcpError as exc:
                raise raise_tcp(exc) from None
            self.runtime.transmit(self.handle)
        self.changed()

    def close(self, *, abort: bool = False) -> None:
        """``close()``: FIN after the data (RST when data is left unread, or ``abort``)."""
        if self.closed:
            return
        self.refresh_record()
        if abort:
            self.conn.abort()
        else:
            self.conn.close()
        self.release()
        self.runtime.streams.pop(id(self.conn), None)
        self.runtime.wake()  # the closing handshake runs on the stack's timers
        self.runtime.transmit(self.handle)

    def delivered(self) -> bool:
        """Whether everything sent (and the FIN) has been acknowledged (``SO_LINGER``)."""
        return self.conn.state not in (TcpState.FIN_WAIT_1, TcpState.CLOSING, TcpState.LAST_ACK)

    def local(self) -> tuple[IpAddress, int]:
        return self.conn.local

    def remote(self) -> tuple[IpAddress, int]:
        return self.conn.remote


class TcpListen(Endpoint):
    """A listening socket: one ``TcpListener`` per address it listens on."""

    __slots__ = ("_next", "listeners")

    def __init__(
        self,
        runtime: Runtime,
        record: SocketRecord,
        addresses: list[IpAddress],
        port: int,
        *,
        backlog: int,
        config: TcpConfig | None,
    ) -> None:
        super().__init__(runtime, record)
        self._next = 0
        tcp = runtime.stack.tcp
        self.listeners: list[TcpListener] = []
        try:
            for address in addresses:
                self.listeners.append(tcp.listen(address, port, backlog, config=config))
        except OSError:
            self._drop()
            raise
        for listener in self.listeners:
            address, lport = listener.local
            runtime.listens[(address.packed, lport)] = self

    def ready(self) -> tuple[bool, bool]:
        return any(lst.accept_queue_len() for lst in self.listeners), False

    def accept(self, deadline: float | None, *, nonblocking: bool) -> TcpHandle:
        """The oldest established connection (round robin over the addresses)."""
        self.wait(lambda: self.ready()[0], deadline, nonblocking=nonblocking)
        tcp = self.runtime.stack.tcp
        count = len(self.listeners)
        for step in range(count):
            listener = self.listeners[(self._next + step) % count]
            handle = tcp.accept(listener)
            if handle is not None:
                self._next = (self._next + step + 1) % count
                if self.readiness is not None:
                    self.changed()
                return handle
        raise os_error(errno.EAGAIN)  # ready() said otherwise: cannot happen

    def _drop(self) -> None:
        tcp = self.runtime.stack.tcp
        for listener in self.listeners:
            address, port = listener.local
            key = (address.packed, port)
            listener.close()  # resets the connections nobody accepted, as Linux does
            if tcp.listeners.get(key) is listener:
                del tcp.listeners[key]
            if self.runtime.listens.get(key) is self:
                del self.runtime.listens[key]

    def close(self) -> None:
        if self.closed:
            return
        self._drop()
        self.release()
        self.runtime.wake()  # the stack's thread sends the RSTs of unaccepted connections
