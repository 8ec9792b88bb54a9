"""``netoffload nc``: a netcat on the user-level stack.

TCP: connect to HOST PORT (or, with ``listen``, accept one connection on
PORT), copy standard input to the connection and the connection to standard
output, and finish after a clean close in both directions: our FIN sent and
acknowledged once standard input ends, the peer's FIN received and every
byte before it written out. UDP: each read of standard input is one datagram
(a listener starts reading once the first datagram has named its peer);
every datagram received is written out; it finishes once standard input has
ended and no datagram has come for ``idle_timeout_s``.

While it runs, the stack answers ARP/NDP and ICMP echo on its addresses.
Failures are ``NcError`` with a one-line message and the errno Linux would give.
"""

from __future__ import annotations

import errno
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from netoffload.control import ControlServer
from netoffload.loop import StackLoop
from netoffload.policy import LoadSampler
from netoffload.stack._netaddr import IpAddress
from netoffload.stack.stack import Stack
from netoffload.stack.tcp import (
    Closed,
    PeerClosed,
    Refused,
    Reset,
    TcpError,
    TcpListener,
    TcpState,
    TimedOut,
    Unreachable,
)
from netoffload.stack.tcp_layer import TcpHandle

READ_BYTES = 1 << 20
_DONE_STATES = (TcpState.CLOSED, TcpState.TIME_WAIT)


class NcError(Exception):
    """Why nc stopped early: one line, and the errno a kernel socket would have given."""

    def __init__(self, message: str, code: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = code


@dataclass(slots=True)
class NcResult:
    bytes_in: int = 0
    bytes_out: int = 0
    datagrams_in: int = 0
    datagrams_out: int = 0
    peer: str = ""


def _loop(stack: Stack, sampler: LoadSampler | None, control: ControlServer | None) -> StackLoop:
    loop = StackLoop(stack, sampler=sampler)
    if control is not None:
        loop.watch(control.fileno(), control.service)
    return loop


def _error_for(event: object, what: str) -> NcError | None:
    if isinstance(event, Refused):
        return NcError(f"{what}: connection refused", errno.ECONNREFUSED)
    if isinstance(event, Reset):
        return NcError(f"{what}: connection reset by peer", errno.ECONNRESET)
    if isinstance(event, TimedOut):
        return NcError(f"{what}: connection timed out", errno.ETIMEDOUT)
    if isinstance(event, Unreachable):
        return NcError(f"{what}: no route to host", errno.EHOSTUNREACH)
    return None


class _Io:
    """Standard input and output as non-blocking-enough byte pipes."""

    def __init__(self, stdin: int, stdout: int) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.stdin_open = True
        self._poller = select.poll()
        self._poller.register(stdin, select.POLLIN | select.POLLHUP)

    def readable(self) -> bool:
        return self.stdin_open and bool(self._poller.poll(0))

    def read(self, limit: int) -> bytes:
        data = os.read(self.stdin, limit)
        if not data:
            self.stdin_open = False
        return data

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.stdout, view)
            view = view[written:]


def run_tcp_client(
    stack: Stack,
    host: IpAddress,
    port: int,
    *,
    stdin: int = 0,
    stdout: int = 1,
    connect_timeout_s: float = 30.0,
    sampler: LoadSampler | None = None,
    on_step: Callable[[], None] | None = None,
    control: ControlServer | None = None,
) -> NcResult:
    loop = _loop(stack, sampler, control)
    what = f"{host} port {port}"
    try:
        handle = stack.tcp_connect(host, port, time.monotonic_ns())
    except OSError as exc:
        raise NcError(f"{what}: {exc.strerror or exc}", exc.errno or errno.EIO) from None
    established = loop.run_until(
        lambda: handle.state not in (TcpState.SYN_SENT, TcpState.CLOSED) or bool(handle.events),
        timeout_s=connect_timeout_s,
    )
    for event in list(handle.events):
        error = _error_for(event, what)
        if error is not None:
            raise error
    if not established or handle.state is TcpState.SYN_SENT:
        handle.conn.abort()
        raise NcError(f"{what}: connection timed out", errno.ETIMEDOUT)
    result = NcResult(peer=f"{host}:{port}")
    _copy(loop, handle, _Io(stdin, stdout), result, what=what, on_step=on_step)
    return result


def run_tcp_server(
    stack: Stack,
    port: int,
    *,
    address: IpAddress | None = None,
    stdin: int = 0,
    stdout: int = 1,
    sampler: LoadSampler | None = None,
    on_step: Callable[[], None] | None = None,
    on_listening: Callable[[list[TcpListener]], None] | None = None,
    control: ControlServer | None = None,
) -> NcResult:
    loop = _loop(stack, sampler, control)
    try:
        listeners = stack.tcp_listen(port, address=address)
    except OSError as exc:
        raise NcError(f"port {port}: {exc.strerror or exc}", exc.errno or errno.EIO) from None
    if on_listening is not None:
        on_listening(listeners)
    accepted: list[TcpHandle] = []

    def take() -> bool:
        if on_step is not None:
            on_step()
        handle = stack.tcp_accept(listeners)
        if handle is not None:
            accepted.append(handle)
        return bool(accepted)

    loop.run_until(take)
    for listener in listeners:
        listener.close()
    handle = accepted[0]
    remote, rport = handle.conn.remote
    result = NcResult(peer=f"{remote}:{rport}")
    _copy(loop, handle, _Io(stdin, stdout), result, what=f"{remote} port {rport}", on_step=on_step)
    return result


def _copy(
    loop: StackLoop,
    handle: TcpHandle,
    io: _Io,
    result: NcResult,
    *,
    what: str,
    on_step: Callable[[], None] | None,
) -> None:
    """Both directions until the connection is closed both ways (or fails)."""
    conn = handle.conn
    peer_done = False
    shut = False
    loop.watch(io.stdin, lambda: None)  # wake the loop when input comes
    watching = True
    while True:
        if on_step is not None:
            on_step()
        while conn.readable():
            data = conn.recv(READ_BYTES)
            result.bytes_in += len(data)
            io.write(data)
        event = handle.next_event()
        while event is not None:
            error = _error_for(event, what)
            if error is not None:
                raise error
            if isinstance(event, PeerClosed):
                peer_done = True
            if isinstance(event, Closed):
                return
            event = handle.next_event()
        if io.stdin_open:
            room = conn.send_space()
            if room and io.readable():
                data = io.read(min(room, READ_BYTES))
                if data:
                    try:
                        result.bytes_out += conn.send(data)
                    except TcpError as exc:
                        raise NcError(f"{what}: {exc}", exc.errno) from None
            if watching and (not io.stdin_open or not room):
                loop.unwatch(io.stdin)
                watching = False
            elif not watching and io.stdin_open and room:
                loop.watch(io.stdin, lambda: None)
                watching = True
        if not io.stdin_open and not shut:
            shut = True
            conn.shutdown_write()
        if shut and peer_done and not conn.readable() and conn.state in _DONE_STATES:
            return
        loop.step()


def run_udp(
    stack: Stack,
    *,
    host: IpAddress | None,
    port: int,
    listen: bool,
    stdin: int = 0,
    stdout: int = 1,
    idle_timeout_s: float = 2.0,
    sampler: LoadSampler | None = None,
    on_step: Callable[[], None] | None = None,
    control: ControlServer | None = None,
) -> NcResult:
    """UDP: send each read of standard input as a datagram, write out every datagram received.

    A client needs a route to ``host`` at once (as ``connect`` on a UDP socket
    does). A listener reads standard input only once the first datagram has
    named its peer: what it reads goes to that peer, nothing is read to be lost.
    """
    loop = _loop(stack, sampler, control)
    version = host.version if host is not None else (4 if stack.addresses(4) else 6)
    try:
        if host is not None:
            stack.route(host)
        endpoint = stack.udp_open(version)
        any_address: IpAddress = IPv4Address(0) if version == 4 else IPv6Address(0)
        stack.udp_bind(endpoint, any_address, port if listen else 0)
    except OSError as exc:
        where = f"port {port}" if host is None else f"{host} port {port}"
        raise NcError(f"{where}: {exc.strerror or exc}", exc.errno or errno.EIO) from None
    io = _Io(stdin, stdout)
    result = NcResult(peer="" if host is None else f"{host}:{port}")
    peer: tuple[IpAddress, int] | None = None if host is None else (host, port)
    last_seen = time.monotonic()
    watching = False
    while True:
        if on_step is not None:
            on_step()
        datagram = stack.udp_recv(endpoint)
        while datagram is not None:
            result.datagrams_in += 1
            result.bytes_in += len(datagram.payload)
            io.write(datagram.payload)
            peer = (datagram.src, datagram.src_port) if listen else peer
            last_seen = time.monotonic()
            datagram = stack.udp_recv(endpoint)
        reading = io.stdin_open and peer is not None
        if reading and peer is not None and io.readable():
            data = io.read(65507 - 8)
            if data:
                try:
                    stack.udp_send(endpoint, [data], peer[0], peer[1], time.monotonic_ns())
                except OSError as exc:
                    reason = f"{peer[0]} port {peer[1]}: {exc.strerror or exc}"
                    raise NcError(reason, exc.errno or errno.EIO) from None
                result.datagrams_out += 1
                result.bytes_out += len(data)
            reading = io.stdin_open
        if reading != watching:  # wake the loop for input only while it is wanted
            if reading:
                loop.watch(io.stdin, lambda: None)
            else:
                loop.unwatch(io.stdin)
            watching = reading
        if not io.stdin_open and time.monotonic() - last_seen > idle_timeout_s:
            loop.step(0.0)
            return result
        loop.step(0.05)
