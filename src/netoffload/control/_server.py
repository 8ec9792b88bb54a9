"""``ControlServer``: the control socket a long-running netoffload process serves.

It never blocks its owner and costs nothing while idle. Its sockets are
non-blocking and registered with one epoll descriptor, ``fileno()``, which
the owner's event loop polls with everything else; when it is readable the
owner calls ``service()``, which does a bounded amount of work (accept
pending clients, answer at most a few requests from each ready client,
drop clients that closed, misbehave or stall) and returns. There are no
threads and no timers: an idle server is one descriptor nobody reads.

Handlers run inside ``service()``, on the owner's thread, so they may read
the owner's state without locks; they should be quick (they hold up the
owner's loop) and must not close the server (set a flag and close it after
``service()`` returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from netoffload import __version__
from netoffload.control._paths import (
    MAX_SOCKET_PATH_BYTES,
    check_kind,
    check_name,
    listening,
    make_run_directory,
    socket_entries,
    socket_file_name,
    stale,
)
from netoffload.control._protocol import (
    MAX_MESSAGE_BYTES,
    OP_NAME,
    PROTOCOL_VERSION,
    ControlError,
    decode_request,
    describe_exception,
    encode_error,
    encode_result,
)

#: ``fn(args) -> result``: ``args`` is the request's JSON object, the result anything JSON.
Handler = Callable[[dict[str, Any]], Any]

BUILTIN_OPS = ("hello", "ops")

#: Requests answered per ready client in one ``service()`` call: one chatty client cannot
#: hold the owner, and whatever is left keeps the descriptor readable for the next turn.
_REQUESTS_PER_TURN = 4


class _Client:
    __slots__ = ("last_active", "sock")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.last_active = now


class _Resources:
    """Everything ``close`` must release; kept apart from the server so a finalizer can run
    without holding the server alive."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.owner_pid = os.getpid()
        self.listener: socket.socket | None = None
        self.epoll: select.epoll | None = None
        self.clients: dict[int, _Client] = {}
        self.bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we bound
        self.on_close: list[Callable[[], None]] = []
        self.closed = False

    def drop(self, fd: int) -> None:
        client = self.clients.pop(fd, None)
        if client is None:
            return
        if self.epoll is not None:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(fd)
        client.sock.close()

    def release(self) -> None:
        if self.closed:
            return
        self.closed = True
        for callback in self.on_close:
            with contextlib.suppress(Exception):
                callback()
        self.on_close = []
        for fd in list(self.clients):
            self.drop(fd)
        if self.epoll is not None:
            self.epoll.close()
        if self.listener is not None:
            self.listener.close()
        # A forked child inherits the object but not the socket's ownership; and a socket
        # someone else bound at the same path since (after an unlink) is not ours to remove.
        if self.bound is not None and os.getpid() == self.owner_pid:
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self.bound:
                    os.unlink(self.path)


class ControlServer:
    """A control socket, ``<directory>/<kind>-<name>-<pid>.sock``, answering JSON requests.

    ``kind`` says what the process is (``demo``, ``nc``, ...), ``name`` which
    one (default: the kind). ``directory`` defaults to the run directory
    (``$NETOFFLOAD_RUN_DIR``, ``/run/netoffload``, ...; made mode 0700); the
    socket is mode 0600. A stale socket of a dead process with the same kind
    and name is removed. At most ``max_clients`` clients stay connected (a new
    one pushes out the one idle longest), and a client silent for
    ``idle_timeout_s`` is dropped the next time the server runs.

    Raises ``ValueError`` for a bad kind or name, ``ControlError`` when the
    socket cannot be made.
    """

    def __init__(
        self,
        kind: str,
        name: str | None = None,
        *,
        directory: str | None = None,
        max_clients: int = 8,
        idle_timeout_s: float = 30.0,
    ) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.kind = check_kind(kind)
        self.name = check_name(kind if name is None else name)
        self.pid = os.getpid()
        #: When the server started, in seconds since the epoch.
        self.started = time.time()
        self._started_mono = time.monotonic()
        self.max_clients = max_clients
        self.idle_timeout_s = idle_timeout_s
        self.directory = make_run_directory() if directory is None else directory
        self.path = os.path.join(self.directory, socket_file_name(self.kind, self.name, self.pid))
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH_BYTES:
            raise ControlError(
                f"control socket path is longer than AF_UNIX allows ({MAX_SOCKET_PATH_BYTES} "
                f"bytes): {self.path}; set NETOFFLOAD_RUN_DIR to a shorter directory"
            )
        self._handlers: dict[str, Handler] = {"hello": self._hello, "ops": self._list_ops}
        self._res = res = _Resources(self.path)
        self._finalizer = weakref.finalize(self, res.release)
        try:
            self._remove_stale_namesakes()
            res.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            res.listener.setblocking(False)
            self._bind(res.listener)
            res.listener.listen(max(max_clients, 16))
            res.epoll = select.epoll()
            res.epoll.register(res.listener.fileno(), select.EPOLLIN)
        except BaseException:
            res.release()
            raise

    # -- set-up -----------------------------------------------------------------------
    def _remove_stale_namesakes(self) -> None:
        """Sockets of earlier processes of this kind and name whose process is gone."""
        for entry in socket_entries(self.directory):
            if (entry.kind, entry.name) != (self.kind, self.name) or entry.pid == self.pid:
                continue
            if stale(entry):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)

    def _bind(self, listener: socket.socket) -> None:
        try:
            listener.bind(self.path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ControlError(f"cannot bind {self.path}: {exc.strerror or exc}") from None
            # The same path means the same pid: a dead process's socket, or ours twice.
            if listening(self.path):
                raise ControlError(f"{self.path} is already being served") from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            listener.bind(self.path)
        st = os.lstat(self.path)
        self._res.bound = (st.st_dev, st.st_ino)
        # The directory (0700) already keeps others out; the socket says so too.
        os.chmod(self.path, 0o600)

    # -- ops ------------------------------------------------------------------------------
    def register(self, op: str, handler: Handler) -> None:
        """Serve ``op`` with ``handler(args) -> result``; an exception becomes an error reply.

        ``args`` is the request's JSON object (``{}`` when it had none); the
        result must be JSON (strict: no NaN) and fit in a message. Any
        ``Exception`` is replied as its one-line message; ``KeyboardInterrupt``
        and ``SystemExit`` reach the owner. Raises ``ValueError`` for a bad name
        or one already served.
        """
        if not OP_NAME.fullmatch(op):
            raise ValueError(f"bad op name {op!r}: lower-case letters, digits, _ (32 at most)")
        if op in self._handlers:
            raise ValueError(f"op {op!r} is already served")
        self._handlers[op] = handler

    def ops(self) -> list[str]:
        """Every op served, built-ins included, sorted."""
        return sorted(self._handlers)

    def _hello(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "pid": self.pid,
            "started": self.started,
            "uptime_s": round(time.monotonic() - self._started_mono, 3),
            "ops": self.ops(),
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
        }

    def _list_ops(self, args: dict[str, Any]) -> list[str]:
        return self.ops()

    # -- the owner's loop ---------------------------------------------------------------
    def fileno(self) -> int:
        """The one descriptor to poll: readable when ``service()`` has work. Stable for life."""
        return self._epoll().fileno()

    def filenos(self) -> list[int]:
        """Every descriptor to poll for readability: today the one ``fileno()``."""
        return [self.fileno()]

    @property
    def client_count(self) -> int:
        """Clients connected now."""
        return len(self._res.clients)

    def service(self) -> int:
        """Do what is pending, without blocking: accept, answer, drop. Returns requests answered.

        Bounded: at most ``max_clients`` accepts and a few requests per client per call.
        """
        res = self._res
        if res.closed or res.listener is None:
            return 0
        listener_fd = res.listener.fileno()
        now = time.monotonic()
        answered = 0
        # A handler that closes the server empties ``clients``; the listener then refuses.
        for fd, _events in self._epoll().poll(0, self.max_clients + 1):
            if fd == listener_fd:
                answered += self._accept(res.listener, now)
            else:
                client = res.clients.get(fd)
                if client is not None:
                    answered += self._serve(fd, client, now)
        self._expire(now)
        return answered

    def _epoll(self) -> select.epoll:
        epoll = self._res.epoll
        if epoll is None or self._res.closed:
            raise ValueError("control server is closed")
        return epoll

    def _accept(self, listener: socket.socket, now: float) -> int:
        res, answered = self._res, 0
        for _ in range(self.max_clients):
            try:
                sock, _address = listener.accept()
            except BlockingIOError:
                break
            except OSError:
                break  # out of descriptors or memory: the backlog keeps it for a later turn
            sock.setblocking(False)
            if len(res.clients) >= self.max_clients:
                idlest = min(res.clients, key=lambda fd: res.clients[fd].last_active)
                res.drop(idlest)
            client = _Client(sock, now)
            res.clients[sock.fileno()] = client
            self._epoll().register(sock.fileno(), select.EPOLLIN)
            # A client usually connects and writes at once: answer it in this same turn.
            answered += self._serve(sock.fileno(), client, now)
        return answered

    def _serve(self, fd: int, client: _Client, now: float) -> int:
        res, answered = self._res, 0
        for _ in range(_REQUESTS_PER_TURN):
            try:
                data, _ancillary, flags, _address = client.sock.recvmsg(MAX_MESSAGE_BYTES)
            except BlockingIOError:
                break
            except OSError:
                res.drop(fd)
                break
            if not data and not flags & socket.MSG_TRUNC:
                res.drop(fd)  # the client closed (or sent nothing, which no request is)
                break
            client.last_active = now
            if flags & socket.MSG_TRUNC:
                reply = encode_error(
                    f"request is larger than the {MAX_MESSAGE_BYTES} bytes a message may hold"
                )
            else:
                reply = self._answer(data)
            if res.closed:
                break  # a handler closed the server
            try:
                client.sock.send(reply, socket.MSG_NOSIGNAL)
            except OSError:
                # Full: it sends without reading its replies. Or gone. Either way, it goes.
                res.drop(fd)
                break
            answered += 1
        return answered

    def _answer(self, data: bytes) -> bytes:
        try:
            op, args = decode_request(data)
        except ValueError as exc:
            return encode_error(str(exc))
        handler = self._handlers.get(op)
        if handler is None:
            return encode_error(f"unknown op {op!r}; {self.name} serves: {', '.join(self.ops())}")
        try:
            result = handler(args)
        except Exception as exc:
            return encode_error(describe_exception(exc))
        return encode_result(op, result)

    def _expire(self, now: float) -> None:
        res = self._res
        for fd, client in list(res.clients.items()):
            if now - client.last_active > self.idle_timeout_s:
                res.drop(fd)

    # -- lifetime -----------------------------------------------------------------------
    def _on_close(self, callback: Callable[[], None]) -> None:
        self._res.on_close.append(callback)

    def close(self) -> None:
        """Drop every client, close the socket and remove its file. Idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._res.closed

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ", closed" if self.closed else ""
        return f"ControlServer({self.kind!r}, {self.name!r}, path={self.path!r}{state})"


def attach_to_loop(
    server: ControlServer, loop: asyncio.AbstractEventLoop | None = None
) -> Callable[[], None]:
    """Serve ``server`` from an asyncio loop (``loop.add_reader``); returns ``detach()``.

    ``loop`` defaults to the running loop. Closing the server detaches it too.
    """
    target = asyncio.get_running_loop() if loop is None else loop
    fd = server.fileno()
    target.add_reader(fd, server.service)
    attached = True

    def detach() -> None:
        nonlocal attached
        if attached:
            attached = False
            if not target.is_closed():
                target.remove_reader(fd)

    server._on_close(detach)
    return detach
