"""``Socket``: the standard library's ``socket.socket``, served by the user-level stack when
it can, by the OS otherwise.

It *is* a ``socket.socket`` (a subclass), so every check and helper of the
standard library accepts it. A new AF_INET/AF_INET6 TCP or UDP socket starts
undecided, on a kernel socket of its own; the path is chosen when it can first
be known — ``connect``, ``bind``, ``listen`` or the first ``sendto`` — and
kept for good:

- the **OS** when the destination is not reached through the stack's
  interfaces (loopback, no route, the stack's own address, multicast and
  broadcast), when the bound address is not the stack's, or when an option
  the stack does not implement was set first. The kernel socket is simply
  kept, with every option already on it: nothing is replayed.
- the **user-level stack** otherwise. The kernel socket's descriptor number
  then becomes the socket's readiness descriptor (``dup2``), so a number
  handed out before the choice (asyncio's ``sock_connect`` asks first) stays
  right; until someone asks for ``fileno()`` it is a copy of a placeholder.

AF_UNIX, raw and other sockets, and sockets made from a descriptor, are OS
sockets from the start. Every choice is counted (``path/reason``) and logged
at debug level on the ``netoffload.sockets`` logger.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import logging
import os
import socket as _std
import struct
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from netoffload.sockets._address import (
    AF_INET,
    AF_INET6,
    bind_reason,
    destination_reason,
    parse,
    resolve,
    sockaddr,
    unmapped,
    versions_for,
    wildcard,
)
from netoffload.sockets._current import current_runtime
from netoffload.sockets._endpoint import Endpoint, os_error
from netoffload.sockets._readiness import Readiness, new_pair, placeholder_dup, placeholder_fd
from netoffload.sockets._stats import OS, USER_LEVEL, SocketRecord
from netoffload.sockets._tcp import TcpListen, TcpOptions, TcpStream
from netoffload.sockets._udp import UdpEndpoint
from netoffload.stack._netaddr import IpAddress
from netoffload.stack.tcp import TcpConfig

if TYPE_CHECKING:
    from netoffload.sockets._runtime import Runtime

log = logging.getLogger("netoffload.sockets")


#: The kernel's socket class (``install()`` replaces ``socket.socket``, never before this runs).
_REAL = _std.socket

_SOL_SOCKET = _socket.SOL_SOCKET
_IPPROTO_TCP = _socket.IPPROTO_TCP
_IPPROTO_IPV6 = _socket.IPPROTO_IPV6
_STREAM = _socket.SOCK_STREAM
_DGRAM = _socket.SOCK_DGRAM
_DONTWAIT = _socket.MSG_DONTWAIT
_PEEK = _socket.MSG_PEEK
_TRUNC = _socket.MSG_TRUNC
#: Flags a user-level send accepts (and ignores: there is no SIGPIPE to suppress).
_SEND_FLAGS = _DONTWAIT | _socket.MSG_NOSIGNAL | getattr(_socket, "MSG_MORE", 0)
_LINGER = struct.Struct("ii")
_INT = struct.Struct("i")
#: Options a user-level socket implements; any other, set before the choice, means the OS.
_SUPPORTED = frozenset(
    {
        (_SOL_SOCKET, _socket.SO_REUSEADDR),
        (_SOL_SOCKET, _socket.SO_KEEPALIVE),
        (_SOL_SOCKET, _socket.SO_RCVBUF),
        (_SOL_SOCKET, _socket.SO_SNDBUF),
        (_SOL_SOCKET, _socket.SO_LINGER),
        (_SOL_SOCKET, _socket.SO_BROADCAST),
        (_IPPROTO_TCP, _socket.TCP_NODELAY),
        (_IPPROTO_TCP, _socket.TCP_KEEPIDLE),
        (_IPPROTO_TCP, _socket.TCP_KEEPINTVL),
        (_IPPROTO_TCP, _socket.TCP_KEEPCNT),
        (_IPPROTO_IPV6, _socket.IPV6_V6ONLY),
    }
)
_UNDECIDED = 0
_USER = 1
_OS = 2
_EPHEMERAL = (32768, 60999)


@dataclass(slots=True)
class _Options:
    """``setsockopt`` values of a socket that are applied to its user-level state."""

    reuseaddr: bool = False
    v6only: bool = False
    broadcast: bool = False
    rcvbuf: int | None = None
    sndbuf: int | None = None
    tcp: TcpOptions = field(default_factory=TcpOptions)


@dataclass(slots=True, eq=False)
class _Binding:
    """A TCP port a user-level socket holds (``EADDRINUSE`` between them)."""

    versions: tuple[int, ...]
    address: IpAddress | None
    port: int
    reuse: bool
    listening: bool = False

    def conflicts(self, other: _Binding) -> bool:
        if self.port != other.port or not set(self.versions) & set(other.versions):
            return False
        if None not in (self.address, other.address) and self.address != other.address:
            return False
        return not (self.reuse and other.reuse and not other.listening)


def _view(data: Any) -> memoryview:
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _family_name(value: int) -> str:
    try:
        return _std.AddressFamily(value).name
    except ValueError:
        return f"AF_{value}"


def _kind_name(value: int) -> str:
    try:
        return _std.SocketKind(value).name
    except ValueError:
        return f"SOCK_{value}"


def _unbind(rt: Runtime, binding: _Binding | None) -> None:
    """Give back a TCP port (the caller holds the lock)."""
    if binding is None:
        return
    ports = rt.tcp_ports.get(binding.port, [])
    if binding in ports:
        ports.remove(binding)
    if not ports:
        rt.tcp_ports.pop(binding.port, None)


class Socket(_std.socket):
    """``socket.socket`` with the transport chosen per socket; see the module docstring.

    ``runtime`` names the stack to use; by default the one ``install()`` set
    (with none, every socket is an OS socket).
    """

    _netoffload = True

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
        *,
        runtime: Runtime | None = None,
    ) -> None:
        self._rt: Runtime | None = None
        self._ul: Endpoint | None = None
        self._record: SocketRecord | None = None
        super().__init__(family, type, proto, fileno)
        self._begin(runtime, None if fileno is None else "fileno")

    def _begin(self, runtime: Runtime | None, reason: str | None) -> None:
        self._record = None
        rt = runtime if runtime is not None else current_runtime()
        self._rt = rt if rt is not None and rt.alive else None
        self._ul = None
        self._path = _UNDECIDED
        self._polled = False
        self._readiness: Readiness | None = None
        self._opts = _Options()
        self._force_os: str | None = None
        self._binding: _Binding | None = None
        #: Whether a connect() has reported the connection made (Linux: a connect() after a
        #: non-blocking one completed returns 0 once, then EISCONN).
        self._connect_told = False
        family, kind = int(self.family), int(self.type)
        rt = self._rt
        if rt is None:
            self._path = _OS
            return
        self._record = rt.counters.open(
            _family_name(family), _kind_name(kind), inet=family in (AF_INET, AF_INET6)
        )
        if reason is None:
            reason = self._os_only_reason(family, kind)
        if reason is not None:
            self._choose_os(reason)

    def _os_only_reason(self, family: int, kind: int) -> str | None:
        if family not in (AF_INET, AF_INET6):
            return _family_name(family).lower()
        proto = self.proto
        if kind == _STREAM and proto in (0, _IPPROTO_TCP):
            return None
        if kind == _DGRAM and proto in (0, _socket.IPPROTO_UDP):
            return None
        return _kind_name(kind).lower() if kind not in (_STREAM, _DGRAM) else "protocol"

    # -- the choice ---------------------------------------------------------------------
    @property
    def user_level(self) -> bool:
        """Whether the user-level stack serves this socket (False: the OS, or not chosen yet)."""
        return self._path == _USER

    @property
    def path(self) -> str:
        """``user_level``, ``os`` or ``undecided``."""
        return {_USER: USER_LEVEL, _OS: OS}.get(self._path, "undecided")

    def _choose_os(self, reason: str) -> None:
        self._path = _OS
        rt, record = self._rt, self._record
        if rt is not None and record is not None:
            rt.counters.chose(record, OS, reason)
            log.debug("socket %d (%s %s): the OS (%s)", record.ident, record.family,
                      record.kind, reason)  # fmt: skip

    def _choose_user(self, reason: str) -> None:
        """Leave the kernel socket: its number now belongs to the readiness descriptor."""
        fd = super().fileno()
        if self._polled:
            a, b = new_pair()
            os.dup2(a.fileno(), fd, inheritable=False)
            self._readiness = Readiness(a, b)
        else:
            os.dup2(placeholder_fd(), fd, inheritable=False)
        self._path = _USER
        rt, record = self._rt, self._record
        assert rt is not None and record is not None
        rt.counters.chose(record, USER_LEVEL, reason)
        log.debug("socket %d (%s %s): the user-level stack (%s)", record.ident, record.family,
                  record.kind, reason)  # fmt: skip

    def _runtime(self) -> Runtime:
        rt = self._rt
        assert rt is not None
        rt.check()
        return rt

    def _attach(self, endpoint: Endpoint) -> Endpoint:
        self._ul = endpoint
        if self._readiness is not None:
            endpoint.watch(self._readiness)
        return endpoint

    def _target(self, address: Any, what: str) -> tuple[IpAddress | None, int]:
        host, port = parse(int(self.family), address, what)
        ip = resolve(int(self.family), host, port, int(self.type))
        if ip is not None and int(self.family) == AF_INET6:
            mapped = unmapped(ip)
            if mapped is not ip and self._opts.v6only:
                return None, port  # the OS refuses it, with its own errno
            ip = mapped
        return ip, port

    def _timing(self, flags: int = 0) -> tuple[float | None, bool]:
        """(deadline, non-blocking) for one call, from the timeout and ``MSG_DONTWAIT``."""
        timeout = super().gettimeout()
        if flags & _DONTWAIT or timeout == 0:
            return None, True
        return (None if timeout is None else time.monotonic() + timeout), False

    def _tcp_config(self, rt: Runtime) -> TcpConfig | None:
        opts = self._opts
        if opts.rcvbuf is None and opts.sndbuf is None:
            return None
        base = rt.stack.tcp.config
        return replace(
            base,
            recv_buffer_bytes=opts.rcvbuf or base.recv_buffer_bytes,
            send_buffer_bytes=opts.sndbuf or base.send_buffer_bytes,
        )

    # -- descriptors ----------------------------------------------------------------------
    def fileno(self) -> int:
        fd = super().fileno()
        if not self._polled and fd >= 0:
            self._polled = True
            if self._path == _USER:
                rt = self._runtime()
                with rt.lock:
                    a, b = new_pair()
                    os.dup2(a.fileno(), fd, inheritable=False)
                    self._readiness = Readiness(a, b)
                    if self._ul is not None:
                        self._ul.watch(self._readiness)
        return fd

    def detach(self) -> int:
        if self._path == _USER:
            raise os_error(errno.EOPNOTSUPP, "a user-level socket has no kernel descriptor")
        self._close_record()
        return super().detach()

    def dup(self) -> Socket:
        if self._path == _USER:
            raise os_error(errno.EOPNOTSUPP, "a user-level socket cannot be duplicated")
        return super().dup()

    # -- connecting -----------------------------------------------------------------------
    def connect(self, address: Any) -> None:
        if self._path == _OS:
            return super().connect(address)
        if int(self.type) == _DGRAM:
            return self._udp_connect(address)
        if self._path == _UNDECIDED:
            ip, port = self._target(address, "connect")
            rt = self._runtime()
            with rt.lock:
                reason = self._force_os or (
                    "v4_mapped" if ip is None else destination_reason(rt.stack, ip)
                )
            if reason is not None:
                self._choose_os(reason)
                return super().connect(address)
            assert ip is not None
            self._choose_user("connect")
        else:
            ip, port = self._target(address, "connect")
            if ip is None:
                raise os_error(errno.ENETUNREACH)
        self._tcp_connect(ip, port)

    def _tcp_connect(self, ip: IpAddress, port: int) -> None:
        rt = self._runtime()
        deadline, nonblocking = self._timing()
        record = self._record
        assert record is not None
        with rt.lock:
            ul = self._ul
            if isinstance(ul, TcpStream):
                if ul.connecting():
                    raise os_error(errno.EALREADY if nonblocking else errno.EINPROGRESS)
                if not ul.gone and ul.error is None:
                    if not self._connect_told:
                        self._connect_told = True
                        return
                    raise os_error(errno.EISCONN)
                ul.close()
            elif isinstance(ul, TcpListen):
                raise os_error(errno.EISCONN)
            binding = self._binding
            local_port = binding.port if binding is not None else 0
            handle = rt.stack.tcp.connect(
                ip, port, rt.now_ns(), local_port=local_port, config=self._tcp_config(rt)
            )
            stream = TcpStream(rt, record, handle)
            self._attach(stream)
            self._opts.tcp.apply(stream)
            local, lport = handle.conn.local
            record.local, record.peer = f"{local}:{lport}", f"{ip}:{port}"
            rt.transmit(handle)
            rt.wake()  # the SYN's timers, and the neighbour's resolution
            if nonblocking:
                raise BlockingIOError(errno.EINPROGRESS, os.strerror(errno.EINPROGRESS))
            try:
                stream.wait_connected(deadline, nonblocking=False)
            except TimeoutError:
                stream.conn.abort()
                rt.transmit(handle)
                raise
            self._connect_told = True

    def connect_ex(self, address: Any) -> int:
        if self._path == _OS:
            return super().connect_ex(address)
        try:
            self.connect(address)
        except TimeoutError as exc:
            return exc.errno or errno.EAGAIN
        except (BlockingIOError, InterruptedError) as exc:
            return exc.errno or errno.EINPROGRESS
        except OSError as exc:
            if isinstance(exc, _socket.gaierror) or exc.errno is None:
                raise
            return exc.errno
        return 0

    # -- binding and listening --------------------------------------------------------------
    def bind(self, address: Any) -> None:
        if self._path == _OS:
            return super().bind(address)
        if self._path == _USER:
            raise os_error(errno.EINVAL)
        ip, port = self._target(address, "bind")
        family, v6only = int(self.family), self._opts.v6only
        rt = self._runtime()
        any_address = ip is None or ip.is_unspecified
        versions = versions_for(family, v6only) if any_address else (ip.version,)  # type: ignore[union-attr]
        with rt.lock:
            reason = self._force_os or bind_reason(rt.stack, ip, versions)
            dual = family == AF_INET6 and any_address and not v6only and rt.stack.addresses(4)
            if reason is None and int(self.type) == _DGRAM and dual:
                reason = "udp_dual_stack"  # one UDP endpoint serves one IP version
            if reason is not None:
                self._choose_os(reason)
            else:
                self._bind_user(rt, ip, port, versions)
                return
        super().bind(address)

    def _bind_user(
        self, rt: Runtime, ip: IpAddress | None, port: int, versions: tuple[int, ...]
    ) -> None:
        if ip is not None and ip.is_unspecified:
            ip = None
        if int(self.type) == _DGRAM:
            self._choose_user("bind")
            endpoint = self._udp_endpoint(rt, ip.version if ip is not None else versions[0])
            endpoint.bind(ip if ip is not None else wildcard(int(self.family)), port)
            self._note_local()
            return
        binding = _Binding(versions, ip, port, self._opts.reuseaddr)
        if port == 0:
            binding.port = self._free_port(rt, binding)
        elif any(binding.conflicts(b) for b in rt.tcp_ports.get(port, ())):
            raise os_error(errno.EADDRINUSE)
        self._choose_user("bind")
        rt.tcp_ports.setdefault(binding.port, []).append(binding)
        self._binding = binding
        self._note_local()

    def _free_port(self, rt: Runtime, binding: _Binding) -> int:
        low, high = _EPHEMERAL
        rng = rt.stack.rng
        listening = {port for (_, port) in rt.stack.tcp.listeners}
        for _ in range(256):
            port = rng.randint(low, high)
            if port in listening:
                continue
            probe = replace(binding, port=port, reuse=False)
            if not any(probe.conflicts(b) for b in rt.tcp_ports.get(port, ())):
                return port
        raise os_error(errno.EADDRINUSE)

    def listen(self, backlog: int = min(_socket.SOMAXCONN, 128)) -> None:
        if self._path == _OS:
            return super().listen(backlog)
        if int(self.type) != _STREAM:
            raise os_error(errno.EOPNOTSUPP)
        if self._path == _UNDECIDED:
            self.bind(("", 0) if int(self.family) == AF_INET else ("::", 0))
            if self._path == _OS:
                return super().listen(backlog)
        rt = self._runtime()
        with rt.lock:
            if isinstance(self._ul, TcpListen):
                return
            if self._ul is not None:
                raise os_error(errno.EINVAL)
            binding = self._binding
            assert binding is not None
            if binding.address is not None:
                addresses = [binding.address]
            else:
                addresses = [a for v in binding.versions for a in rt.stack.addresses(v)]
            record = self._record
            assert record is not None
            listen = TcpListen(
                rt, record, addresses, binding.port, backlog=backlog, config=self._tcp_config(rt)
            )
            binding.listening = True
            record.state = "LISTEN"
            self._attach(listen)

    def accept(self) -> tuple[_std.socket, Any]:
        listen = self._ul
        if self._path != _USER or not isinstance(listen, TcpListen):
            if self._path == _USER:
                raise os_error(errno.EINVAL)
            return super().accept()
        rt = self._runtime()
        deadline, nonblocking = self._timing()
        with rt.lock:
            handle = listen.accept(deadline, nonblocking=nonblocking)
            sock = Socket._accepted(self, rt, handle)
            remote, rport = handle.conn.remote
        return sock, sockaddr(int(self.family), remote, rport)

    @classmethod
    def _accepted(cls, listening: Socket, rt: Runtime, handle: Any) -> Socket:
        sock = cls.__new__(cls)
        _REAL.__init__(sock, listening.family, listening.type, listening.proto, placeholder_dup())
        sock._begin(rt, None)
        sock._path = _USER
        sock._connect_told = True
        record = sock._record
        assert record is not None
        rt.counters.chose(record, USER_LEVEL, "accept")
        sock._opts = replace(listening._opts, tcp=replace(listening._opts.tcp))
        stream = TcpStream(rt, record, handle)
        sock._ul = stream
        sock._opts.tcp.apply(stream)
        (local, lport), (remote, rport) = handle.conn.local, handle.conn.remote
        record.local, record.peer = f"{local}:{lport}", f"{remote}:{rport}"
        return sock

    # -- receiving --------------------------------------------------------------------------
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        ul = self._ul
        if self._path != _USER:
            data = super().recv(bufsize, flags)
            if self._record is not None:
                self._record.bytes_received += len(data)
            return data
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        self._check_recv_flags(flags)
        rt = self._runtime()
        deadline, nonblocking = self._timing(flags)
        with rt.lock:
            if isinstance(ul, TcpStream):
                return ul.recv(bufsize, deadline, nonblocking=nonblocking)
            if isinstance(ul, UdpEndpoint):
                return bytes(ul.recv(deadline, nonblocking=nonblocking).payload[:bufsize])
        raise os_error(errno.ENOTCONN)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        ul = self._ul
        if self._path != _USER:
            n = super().recv_into(buffer, nbytes, flags)
            if self._record is not None:
                self._record.bytes_received += n
            return n
        target = self._into(buffer, nbytes, "recv_into")
        self._check_recv_flags(flags)
        rt = self._runtime()
        deadline, nonblocking = self._timing(flags)
        with rt.lock:
            if isinstance(ul, TcpStream):
                return ul.recv_into(target, deadline, nonblocking=nonblocking)
            if isinstance(ul, UdpEndpoint):
                payload = ul.recv(deadline, nonblocking=nonblocking).payload
                n = min(len(payload), len(target))
                target[:n] = payload[:n]
                return n
        raise os_error(errno.ENOTCONN)

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        ul = self._ul
        if self._path != _USER:
            data, address = super().recvfrom(bufsize, flags)
            if self._record is not None:
                self._record.bytes_received += len(data)
                self._record.datagrams_received += int(self.type) == _DGRAM
            return data, address
        if isinstance(ul, UdpEndpoint):
            if bufsize < 0:
                raise ValueError("negative buffersize in recvfrom")
            self._check_recv_flags(flags)
            rt = self._runtime()
            deadline, nonblocking = self._timing(flags)
            with rt.lock:
                d = ul.recv(deadline, nonblocking=nonblocking)
            return bytes(d.payload[:bufsize]), sockaddr(int(self.family), d.src, d.src_port)
        return self.recv(bufsize, flags), None

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        ul = self._ul
        if self._path != _USER:
            n, address = super().recvfrom_into(buffer, nbytes, flags)
            if self._record is not None:
                self._record.bytes_received += n
                self._record.datagrams_received += int(self.type) == _DGRAM
            return n, address
        if isinstance(ul, UdpEndpoint):
            target = self._into(buffer, nbytes, "recvfrom_into")
            self._check_recv_flags(flags)
            rt = self._runtime()
            deadline, nonblocking = self._timing(flags)
            with rt.lock:
                d = ul.recv(deadline, nonblocking=nonblocking)
            n = min(len(d.payload), len(target))
            target[:n] = d.payload[:n]
            return n, sockaddr(int(self.family), d.src, d.src_port)
        return self.recv_into(buffer, nbytes, flags), None

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> Any:
        if self._path != _USER:
            return super().recvmsg(bufsize, ancbufsize, flags)
        data, address = self.recvfrom(bufsize, flags)
        return data, [], 0, address

    @staticmethod
    def _into(buffer: Any, nbytes: int, what: str) -> memoryview:
        target = _view(buffer)
        if target.readonly:
            raise TypeError(f"{what}() argument 'buffer' must be read-write bytes-like object")
        if nbytes < 0:
            raise ValueError(f"negative buffersize in {what}")
        if nbytes > len(target):
            raise ValueError("buffer too small for requested bytes")
        return target[:nbytes] if nbytes else target

    @staticmethod
    def _check_recv_flags(flags: int) -> None:
        if flags & _PEEK:
            raise os_error(errno.EOPNOTSUPP, "MSG_PEEK on a user-level socket")
        if flags & ~(_DONTWAIT | _socket.MSG_WAITALL | _TRUNC):
            raise os_error(errno.EOPNOTSUPP)

    # -- sending --------------------------------------------------------------------------
    def send(self, data: Any, flags: int = 0) -> int:
        ul = self._ul
        if self._path != _USER:
            n = super().send(data, flags)
            if self._record is not None:
                self._record.bytes_sent += n
            return n
        view = _view(data)
        if flags & ~_SEND_FLAGS:
            raise os_error(errno.EOPNOTSUPP)
        rt = self._runtime()
        deadline, nonblocking = self._timing(flags)
        with rt.lock:
            if isinstance(ul, TcpStream):
                return ul.send(view, deadline, nonblocking=nonblocking)
            if isinstance(ul, UdpEndpoint):
                return ul.sendto(view, None, None)
        raise os_error(errno.EPIPE)

    def sendall(self, data: Any, flags: int = 0) -> None:
        ul = self._ul
        if self._path != _USER:
            super().sendall(data, flags)
            if self._record is not None:
                self._record.bytes_sent += len(_view(data))
            return
        if not isinstance(ul, TcpStream):
            self.send(data, flags)  # a datagram, or EPIPE
            return
        view = _view(data)
        rt = self._runtime()
        deadline, nonblocking = self._timing(flags)
        with rt.lock:
            if nonblocking:
                ul.send(view, None, nonblocking=True)  # as much as fits, or BlockingIOError
                return
            ul.sendall(view, deadline)

    def sendto(self, data: Any, *args: Any) -> int:
        if len(args) == 1:
            flags, address = 0, args[0]
        elif len(args) == 2:
            flags, address = args
        else:
            raise TypeError(f"sendto() takes 2 or 3 arguments ({len(args) + 1} given)")
        if self._path == _UNDECIDED and int(self.type) == _DGRAM:
            self._udp_decide(address, "sendto")
        ul = self._ul
        if self._path != _USER:
            n = super().sendto(data, flags, address)
            if self._record is not None:
                self._record.bytes_sent += n
                self._record.datagrams_sent += int(self.type) == _DGRAM
            return n
        if not isinstance(ul, UdpEndpoint):
            return self.send(data, flags)
        ip, port = self._target(address, "sendto")
        if ip is None:
            raise os_error(errno.ENETUNREACH)
        rt = self._runtime()
        with rt.lock:
            return ul.sendto(_view(data), ip, port)

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        if self._path == _UNDECIDED and int(self.type) == _DGRAM and address is not None:
            self._udp_decide(address, "sendmsg")
        if self._path != _USER:
            if address is None:
                return super().sendmsg(buffers, ancdata, flags)
            return super().sendmsg(buffers, ancdata, flags, address)
        if list(ancdata):
            raise os_error(errno.EOPNOTSUPP, "ancillary data on a user-level socket")
        data = b"".join(bytes(_view(b)) for b in buffers)
        return self.send(data, flags) if address is None else self.sendto(data, flags, address)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        if self._path != _USER:
            return super().sendfile(file, offset, count)
        self._check_sendfile_params(file, offset, count)  # type: ignore[attr-defined]
        if super().gettimeout() == 0:
            raise ValueError("non-blocking sockets are not supported")
        if offset:
            file.seek(offset)
        total = 0
        try:
            while count is None or total < count:
                block = 1 << 18 if count is None else min(1 << 18, count - total)
                data = file.read(block)
                if not data:
                    break
                self.sendall(data)
                total += len(data)
        finally:
            if total and hasattr(file, "seek"):
                file.seek(offset + total)
        return total

    # -- UDP ------------------------------------------------------------------------------
    def _udp_decide(self, address: Any, what: str) -> None:
        ip, _port = self._target(address, what)
        rt = self._runtime()
        with rt.lock:
            reason = self._force_os or ("v4_mapped" if ip is None else None)
            if reason is None and ip is not None:
                reason = destination_reason(rt.stack, ip)
            if (
                reason is None
                and int(self.family) == AF_INET6
                and ip is not None
                and ip.version == 4
            ):
                reason = "udp_v4_mapped"  # one UDP endpoint serves one IP version
            if reason is not None:
                self._choose_os(reason)
                return
            assert ip is not None
            self._choose_user(what)
            self._udp_endpoint(rt, ip.version)

    def _udp_endpoint(self, rt: Runtime, version: int) -> UdpEndpoint:
        record = self._record
        assert record is not None
        endpoint = UdpEndpoint(rt, record, version, self._opts.rcvbuf)
        self._attach(endpoint)
        return endpoint

    def _udp_connect(self, address: Any) -> None:
        if self._path == _UNDECIDED:
            self._udp_decide(address, "connect")
            if self._path == _OS:
                return super().connect(address)
        ul = self._ul
        assert isinstance(ul, UdpEndpoint)
        ip, port = self._target(address, "connect")
        if ip is None:
            raise os_error(errno.ENETUNREACH)
        rt = self._runtime()
        with rt.lock:
            ul.connect(ip, port)
            self._note_local()
            if self._record is not None:
                self._record.peer = f"{ip}:{port}"

    # -- addresses ------------------------------------------------------------------------
    def _local(self) -> tuple[IpAddress, int]:
        ul = self._ul
        family = int(self.family)
        if isinstance(ul, TcpStream):
            return ul.local()
        if isinstance(ul, UdpEndpoint):
            return ul.local() or (wildcard(family), 0)
        binding = self._binding
        if binding is not None:
            return binding.address or wildcard(family), binding.port
        return wildcard(family), 0

    def _note_local(self) -> None:
        if self._record is not None:
            address, port = self._local()
            self._record.local = f"{address}:{port}"

    def getsockname(self) -> Any:
        if self._path != _USER:
            return super().getsockname()
        rt = self._runtime()
        with rt.lock:
            address, port = self._local()
        return sockaddr(int(self.family), address, port)

    def getpeername(self) -> Any:
        if self._path != _USER:
            return super().getpeername()
        rt = self._runtime()
        ul = self._ul
        with rt.lock:
            if isinstance(ul, TcpStream) and ul.established and not ul.gone:
                remote, port = ul.remote()
            elif isinstance(ul, UdpEndpoint) and ul.remote() is not None:
                remote, port = ul.remote()  # type: ignore[misc]
            else:
                raise os_error(errno.ENOTCONN)
        return sockaddr(int(self.family), remote, port)

    # -- shutting down --------------------------------------------------------------------
    def shutdown(self, how: int) -> None:
        if self._path != _USER:
            return super().shutdown(how)
        if how not in (_socket.SHUT_RD, _socket.SHUT_WR, _socket.SHUT_RDWR):
            raise os_error(errno.EINVAL)
        rt = self._runtime()
        ul = self._ul
        with rt.lock:
            if isinstance(ul, TcpStream):
                ul.shutdown(how)
            elif isinstance(ul, TcpListen):
                ul.close()
                self._ul = None
            elif not (isinstance(ul, UdpEndpoint) and ul.remote() is not None):
                raise os_error(errno.ENOTCONN)

    def _real_close(self, _ss: Any = None) -> None:
        ul, rt = self._ul, self._rt
        if rt is not None and rt.alive:
            with rt.lock:
                if ul is not None and not ul.closed:
                    self._close_user(rt, ul)
                _unbind(rt, self._binding)
        elif ul is not None:
            ul.release()
        self._binding = None
        if self._readiness is not None:
            self._readiness.release()
            self._readiness = None
        self._close_record()
        super()._real_close()  # type: ignore[misc]

    def _close_user(self, rt: Runtime, ul: Endpoint) -> None:
        if not isinstance(ul, TcpStream):
            ul.close()
            return
        onoff, seconds = self._opts.tcp.linger
        ul.close(abort=bool(onoff) and seconds == 0)
        if onoff and seconds > 0:
            deadline = time.monotonic() + seconds
            while not ul.delivered() and time.monotonic() < deadline and rt.alive:
                ul.cond.wait(0.01)

    def _close_record(self) -> None:
        rt, record = self._rt, self._record
        if rt is not None and record is not None:
            rt.counters.close(record)

    def __del__(self) -> None:
        # Collected without close(): the stack's thread closes what the stack holds (this
        # may run anywhere, even inside the stack), the descriptor goes as the base class's.
        ul, rt = getattr(self, "_ul", None), getattr(self, "_rt", None)
        binding = getattr(self, "_binding", None)
        if rt is not None and rt.alive and (ul is not None or binding is not None):

            def close() -> None:
                if ul is not None and not ul.closed:
                    ul.close()
                _unbind(rt, binding)

            rt.defer(close)
        if getattr(self, "_record", None) is not None:
            self._close_record()
        super().__del__()  # type: ignore[misc]

    # -- options --------------------------------------------------------------------------
    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        if self._path == _OS:
            if optlen is None:
                return super().setsockopt(level, optname, value)
            return super().setsockopt(level, optname, value, optlen)
        if self._path == _UNDECIDED:
            # The kernel socket checks the value and keeps it, in case the OS gets this socket.
            if optlen is None:
                super().setsockopt(level, optname, value)
            else:
                super().setsockopt(level, optname, value, optlen)
        if (level, optname) not in _SUPPORTED or optlen is not None:
            if self._path == _UNDECIDED:
                self._force_os = self._force_os or f"option_{level}_{optname}"
                return None
            raise os_error(errno.ENOPROTOOPT)
        self._set_option(level, optname, value)
        return None

    def _set_option(self, level: int, optname: int, value: Any) -> None:
        opts = self._opts
        if optname == _socket.SO_LINGER and level == _SOL_SOCKET:
            if not isinstance(value, bytes | bytearray) or len(value) < _LINGER.size:
                raise os_error(errno.EINVAL)
            onoff, seconds = _LINGER.unpack_from(value)
            opts.tcp.linger = (onoff, max(seconds, 0))
            return
        number = int.from_bytes(value[:4], "little") if isinstance(value, bytes) else int(value)
        if level == _SOL_SOCKET:
            if optname == _socket.SO_REUSEADDR:
                opts.reuseaddr = bool(number)
            elif optname == _socket.SO_BROADCAST:
                opts.broadcast = bool(number)
            elif optname in (_socket.SO_RCVBUF, _socket.SO_SNDBUF):
                size = min(max(number * 2, 4608), 1 << 30)  # as Linux, which doubles it
                if optname == _socket.SO_RCVBUF:
                    opts.rcvbuf = size
                else:
                    opts.sndbuf = size
            elif optname == _socket.SO_KEEPALIVE:
                opts.tcp.keepalive = bool(number)
        elif level == _IPPROTO_IPV6:
            if self._path == _USER:
                raise os_error(errno.EINVAL)  # as Linux, once bound
            opts.v6only = bool(number)
        elif level == _IPPROTO_TCP:
            if optname == _socket.TCP_NODELAY:
                opts.tcp.nodelay = bool(number)
            elif number < 1:
                raise os_error(errno.EINVAL)
            elif optname == _socket.TCP_KEEPIDLE:
                opts.tcp.keepidle_s = number
            elif optname == _socket.TCP_KEEPINTVL:
                opts.tcp.keepintvl_s = number
            else:
                opts.tcp.keepcnt = number
        ul = self._ul
        if isinstance(ul, TcpStream) and (level == _IPPROTO_TCP or optname == _socket.SO_KEEPALIVE):
            rt = self._runtime()
            with rt.lock:
                opts.tcp.apply(ul)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        if self._path != _USER:
            if buflen is None:
                return super().getsockopt(level, optname)
            return super().getsockopt(level, optname, buflen)
        value = self._get_option(level, optname)
        if isinstance(value, bytes):
            return value[: buflen or len(value)]
        if buflen is None:
            return value
        return _INT.pack(value)[:buflen].ljust(buflen, b"\0")

    def _get_option(self, level: int, optname: int) -> int | bytes:
        opts = self._opts
        ul = self._ul
        if level == _SOL_SOCKET:
            if optname == _socket.SO_ERROR:
                if isinstance(ul, TcpStream):
                    rt = self._runtime()
                    with rt.lock:
                        return ul.take_error()
                return 0
            if optname == _socket.SO_TYPE:
                return int(self.type)
            if optname == getattr(_socket, "SO_DOMAIN", -1):
                return int(self.family)
            if optname == getattr(_socket, "SO_PROTOCOL", -1):
                return _IPPROTO_TCP if int(self.type) == _STREAM else _socket.IPPROTO_UDP
            if optname == _socket.SO_ACCEPTCONN:
                return int(isinstance(ul, TcpListen))
            if optname == _socket.SO_REUSEADDR:
                return int(opts.reuseaddr)
            if optname == _socket.SO_BROADCAST:
                return int(opts.broadcast)
            if optname == _socket.SO_KEEPALIVE:
                return int(opts.tcp.keepalive)
            if optname == _socket.SO_LINGER:
                return _LINGER.pack(*opts.tcp.linger)
            if optname in (_socket.SO_RCVBUF, _socket.SO_SNDBUF):
                rt = self._runtime()
                config = self._tcp_config(rt) or rt.stack.tcp.config
                if optname == _socket.SO_RCVBUF:
                    return config.recv_buffer_bytes
                return config.send_buffer_bytes
        elif level == _IPPROTO_IPV6 and optname == _socket.IPV6_V6ONLY:
            return int(opts.v6only)
        elif level == _IPPROTO_TCP:
            tcp = opts.tcp
            if optname == _socket.TCP_NODELAY:
                return int(tcp.nodelay)
            if optname == _socket.TCP_MAXSEG and isinstance(ul, TcpStream):
                return ul.conn.mss_bytes
            if optname == _socket.TCP_KEEPIDLE:
                return tcp.keepidle_s or 7200
            if optname == _socket.TCP_KEEPINTVL:
                return tcp.keepintvl_s or 75
            if optname == _socket.TCP_KEEPCNT:
                return tcp.keepcnt or 9
        raise os_error(errno.ENOPROTOOPT)

    # -- the rest -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        closed = getattr(self, "_closed", False)
        fd = _REAL.fileno(self)
        text = (
            f"<{type(self).__module__}.{type(self).__qualname__}"
            f"{' [closed]' if closed else ''} fd={fd}, family={self.family!s}, "
            f"type={self.type!s}, proto={self.proto}, path={self.path}"
        )
        if not closed:
            with contextlib.suppress(OSError, TypeError):
                text += f", laddr={self.getsockname()}"
            with contextlib.suppress(OSError, TypeError):
                text += f", raddr={self.getpeername()}"
        return text + ">"


#: The standard library's spelling.
socket = Socket

__all__ = ["Socket", "socket"]
