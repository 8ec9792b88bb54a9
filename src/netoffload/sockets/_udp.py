"""UDP sockets on the user-level stack: one ``UdpTable`` endpoint per socket.

Every method runs with the runtime's lock held. A send goes to the device at
once (the datagram is formed in the caller's thread); a receive takes the
oldest queued datagram, cut to the buffer given as Linux does (the rest of it
is lost). Sends never block: a datagram the device cannot take yet waits in
the interface's backlog.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from netoffload.sockets._endpoint import Endpoint, os_error
from netoffload.sockets._stats import SocketRecord
from netoffload.stack._netaddr import IpAddress
from netoffload.stack.udp import Datagram

if TYPE_CHECKING:
    from netoffload.sockets._runtime import Runtime

#: The largest UDP payload an IPv4 (IPv6) datagram can carry.
MAX_PAYLOAD = {4: 65507, 6: 65527}


class UdpEndpoint(Endpoint):
    """A socket's UDP endpoint in the stack."""

    __slots__ = ("endpoint", "version")

    def __init__(
        self, runtime: Runtime, record: SocketRecord, version: int, rcvbuf_bytes: int | None
    ) -> None:
        super().__init__(runtime, record)
        self.version = version
        self.endpoint = runtime.stack.udp_open(version, rcvbuf_bytes=rcvbuf_bytes)
        runtime.datagrams[self.endpoint] = self

    def ready(self) -> tuple[bool, bool]:
        return self.runtime.stack.udp.queued(self.endpoint)[0] > 0 or self.closed, True

    def bind(self, address: IpAddress, port: int) -> None:
        self.runtime.stack.udp_bind(self.endpoint, address, port)

    def connect(self, address: IpAddress, port: int) -> None:
        stack = self.runtime.stack
        hop = stack.route(address)
        stack.udp.connect(self.endpoint, address, port, local_address=hop.source)

    def sendto(self, data: memoryview, address: IpAddress | None, port: int | None) -> int:
        """Send one datagram (to the connected peer when ``address`` is ``None``)."""
        stack = self.runtime.stack
        size = len(data)
        if size > MAX_PAYLOAD[self.version]:
            raise os_error(errno.EMSGSIZE)
        if address is None or port is None:
            peer = stack.udp.remote(self.endpoint)
            if peer is None:
                raise os_error(errno.EDESTADDRREQ)
            address, port = peer
        stack.udp_send(self.endpoint, [data], address, port, self.runtime.now_ns())
        self.runtime.flush_interfaces()
        self.runtime.wake()  # a neighbour being resolved runs on the stack's timers
        self.record.bytes_sent += size
        self.record.datagrams_sent += 1
        return size

    def recv(self, deadline: float | None, *, nonblocking: bool) -> Datagram:
        stack = self.runtime.stack
        endpoint = self.endpoint
        self.wait(
            lambda: stack.udp.queued(endpoint)[0] > 0, deadline, nonblocking=nonblocking
        )  # fmt: skip
        datagram = stack.udp_recv(endpoint)
        assert datagram is not None  # waited for
        self.record.bytes_received += len(datagram.payload)
        self.record.datagrams_received += 1
        if self.readiness is not None:
            self.changed()
        return datagram

    def local(self) -> tuple[IpAddress, int] | None:
        return self.runtime.stack.udp.local(self.endpoint)

    def remote(self) -> tuple[IpAddress, int] | None:
        return self.runtime.stack.udp.remote(self.endpoint)

    def close(self) -> None:
        if self.closed:
            return
        self.release()
        self.runtime.datagrams.pop(self.endpoint, None)
        self.runtime.stack.udp.close(self.endpoint)
