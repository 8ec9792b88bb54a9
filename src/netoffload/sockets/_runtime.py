"""``Runtime``: a stack served to sockets, with the thread that drives it.

The stack is single-threaded and sans-I/O. Here it gets one lock (an
``RLock``) that every call into it holds, from whatever thread:

- **The application's threads form their own packets.** A socket call
  (``send``, ``recv``, ``connect``...) takes the lock, works on its connection
  and sends what that connection has to send at once, into the device,
  without waking anything (``transmit``).
- **The stack's thread** waits in ``poll(2)`` on the devices, a wake-up
  eventfd and the control socket, until the stack's next timer. With the
  lock it takes in what arrived, runs the timers, and the stack's hooks tell
  it which connections and UDP endpoints have news: their waiters are
  notified (each socket has a condition on the lock) and their descriptors
  updated.
- **Wake-ups are only for timers.** After a socket call, if the connection's
  next timer is earlier than the thread's sleep ends, the call writes the
  eventfd (once: the thread clears it when it wakes).

A device that fails (a TAP deleted, a firmware gone) ends the thread; every
socket call then raises ``ENETDOWN``. After ``fork()`` the child has no
stack thread: its user-level sockets raise ``EBADF`` and its new sockets go
to the OS.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from netoffload.device.base import Device, DeviceError
from netoffload.policy import LoadSampler
from netoffload.sockets._endpoint import Endpoint, os_error
from netoffload.sockets._stats import PathCounters
from netoffload.stack.stack import Stack
from netoffload.stack.tcp import TcpState
from netoffload.stack.tcp_layer import TcpHandle

if TYPE_CHECKING:
    from netoffload.control import ControlServer
    from netoffload.sockets._tcp import TcpListen, TcpStream
    from netoffload.sockets._udp import UdpEndpoint

log = logging.getLogger("netoffload.sockets")

#: The longest the stack's thread sleeps with nothing due (it is woken for anything sooner).
IDLE_WAIT_S = 1.0
#: ... and with a load sampler, which wants a sample every few milliseconds.
SAMPLED_WAIT_S = 0.01
#: States in which a closed connection still has data or a FIN to deliver.
_DELIVERING = frozenset({TcpState.FIN_WAIT_1, TcpState.CLOSING, TcpState.LAST_ACK})

_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for runtime in list(_runtimes):
        runtime._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Runtime:
    """A ``Stack`` (with its devices), driven by a thread of its own, serving sockets.

    ``start()`` starts the thread (and, with ``control=True``, serves the
    control socket ``run-NAME``: ``stats`` is ``as_dict()``); ``close()``
    stops it and closes the devices. Sockets reach it through
    ``netoffload.sockets.socket(..., runtime=rt)``, or as the default runtime
    ``install()`` sets.
    """

    def __init__(
        self,
        stack: Stack,
        *,
        devices: Sequence[Device] = (),
        name: str | None = None,
        control: bool = False,
        kind: str = "run",
        sampler: LoadSampler | None = None,
    ) -> None:
        self.stack = stack
        self.devices = list(devices)
        self.name = name or f"{kind}-{os.getpid()}"
        self.kind = kind
        self.sampler = sampler
        self.lock = threading.RLock()
        self.counters = PathCounters()
        #: Why the stack can no longer serve sockets (its device failed, or after fork()).
        self.failure: OSError | None = None
        self.streams: dict[int, TcpStream] = {}  # id(connection) -> its socket
        self.listens: dict[tuple[bytes, int], TcpListen] = {}  # listener key -> its socket
        self.datagrams: dict[int, UdpEndpoint] = {}  # UDP endpoint id -> its socket
        #: TCP ports bound by sockets: port -> the sockets (for EADDRINUSE).
        self.tcp_ports: dict[int, list[Any]] = {}
        self.stats = {"rounds": 0, "wakeups": 0, "timers": 0, "deferred_closes": 0}
        self._control_wanted = control
        self.control: ControlServer | None = None
        self._deferred: deque[Callable[[], None]] = deque()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._woken = False
        self._sleep_until_ns = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        stack.tcp.on_events = self._tcp_events
        stack.udp.on_queued = self._udp_queued
        _runtimes.add(self)

    # -- lifetime -------------------------------------------------------------------
    def start(self) -> Runtime:
        """Start the stack's thread (and the control socket, when asked for). Returns self."""
        if self._thread is not None:
            return self
        if self._control_wanted:
            self.control = self._serve_control()
        self._thread = threading.Thread(target=self._main, name=f"netoffload {self.name}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def _serve_control(self) -> ControlServer | None:
        from netoffload.control import ControlServer, register_device_ops

        try:
            server = ControlServer(self.kind, self.name)
        except (OSError, ValueError) as exc:
            log.warning("no control socket: %s", exc)
            return None
        server.register("stats", lambda args: self.as_dict())
        register_device_ops(server, {d.name: d for d in self.devices})
        return server

    def close(self, linger_s: float = 0.0) -> None:
        """Stop serving: wait up to ``linger_s`` for connections the application closed to
        deliver what they hold, stop the thread, close the control socket and the devices."""
        if os.getpid() != self._pid:
            return
        deadline = time.monotonic() + linger_s
        while linger_s > 0 and self.failure is None and time.monotonic() < deadline:
            with self.lock:
                busy = any(
                    h.conn.state in _DELIVERING for h in self.stack.tcp.handles()
                )  # fmt: skip
            if not busy:
                break
            time.sleep(0.01)
        with self.lock:
            self._stopping = True
        self.wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        with self.lock:
            if self.failure is None:
                self.failure = os_error(errno.ENETDOWN, "the stack was closed")
            self._wake_all()
        if self.control is not None:
            self.control.close()
            self.control = None
        for device in self.devices:
            with contextlib.suppress(Exception):
                device.close()
        with contextlib.suppress(OSError):
            os.close(self._wake_fd)

    def close_sockets(self) -> None:
        """Close every user-level socket's connection as process exit would (FIN, or RST
        where data is left unread)."""
        with self.lock:
            endpoints: list[Endpoint] = [*self.streams.values(), *self.listens.values()]
            endpoints += list(self.datagrams.values())
            for endpoint in endpoints:
                if not endpoint.closed:
                    with contextlib.suppress(OSError):
                        endpoint.close()

    @property
    def alive(self) -> bool:
        return self.failure is None

    def check(self) -> None:
        """Raise why the stack cannot serve a call, if it cannot."""
        if self.failure is not None:
            raise os_error(self.failure.errno or errno.ENETDOWN, self.failure.strerror)

    def _forked(self) -> None:
        # The child has a copy of the stack and no thread to run it; the lock may have
        # been held by a thread that does not exist here.
        self.lock = threading.RLock()
        self.failure = os_error(errno.EBADF, "a user-level socket is not usable after fork()")
        self._thread = None
        self.control = None

    # -- the application's side ---------------------------------------------------------
    def now_ns(self) -> int:
        return time.monotonic_ns()

    def transmit(self, handle: TcpHandle) -> None:
        """After a call on ``handle``'s connection: send what it has now, from this thread,
        and wake the stack's thread if the connection's next timer comes before its sleep
        ends. The caller holds the lock."""
        try:
            iface = self.stack.tcp.flush(handle, time.monotonic_ns())
            if iface is not None:
                iface.flush()
        except DeviceError as exc:
            self._fail(exc)
            raise os_error(errno.ENETDOWN, str(exc)) from None
        due = handle.conn.next_timer_ns()
        if due is not None and due < self._sleep_until_ns:
            self.wake()

    def flush_interfaces(self) -> None:
        """Hand every interface's queued frames to its device (after a UDP send)."""
        try:
            for iface in self.stack.interfaces:
                iface.flush()
        except DeviceError as exc:
            self._fail(exc)
            raise os_error(errno.ENETDOWN, str(exc)) from None

    def wake(self) -> None:
        """Make the stack's thread look at its timers (and ``_stopping``) again."""
        if not self._woken:
            self._woken = True
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake_fd, 1)

    def defer(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the stack's thread, with the lock (a socket collected without
        ``close()``: its finalizer must not run the stack from wherever the collector ran)."""
        self._deferred.append(callback)
        self.wake()

    # -- the stack's hooks (called with the lock held, inside the stack) ---------------
    def _tcp_events(self, handle: TcpHandle) -> None:
        stream = self.streams.get(id(handle.conn))
        if stream is not None:
            stream.on_events()
            return
        # A connection not accepted yet: its listening socket may have become readable.
        address, port = handle.conn.local
        listen = self.listens.get((address.packed, port))
        if listen is not None:
            listen.changed()

    def _udp_queued(self, endpoint: int) -> None:
        socket_state = self.datagrams.get(endpoint)
        if socket_state is not None:
            socket_state.changed()

    def _wake_all(self) -> None:
        endpoints: list[Endpoint] = [*self.streams.values(), *self.listens.values()]
        endpoints += list(self.datagrams.values())
        for endpoint in endpoints:
            endpoint.changed()

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            log.error("the stack stopped: %s", exc)
            self.failure = os_error(errno.ENETDOWN, str(exc))
            self._wake_all()

    # -- the stack's thread ----------------------------------------------------------------
    def _main(self) -> None:
        poller = select.poll()
        for fd in self.stack.filenos():
            poller.register(fd, select.POLLIN)
        poller.register(self._wake_fd, select.POLLIN)
        control = self.control
        control_fd = control.fileno() if control is not None else -1
        if control is not None:
            poller.register(control_fd, select.POLLIN)
        wake_fd = self._wake_fd
        stack = self.stack
        stats = self.stats
        while True:
            with self.lock:
                if self._stopping or self.failure is not None:
                    return
                self._woken = False
                try:
                    timeout_ms = self._round(stack)
                except DeviceError as exc:
                    self._fail(exc)
                    return
                except Exception as exc:  # a bug must not leave every socket hanging
                    log.exception("the stack's thread failed")
                    self._fail(exc)
                    return
            stats["rounds"] += 1
            for fd, _ in poller.poll(timeout_ms):
                if fd == wake_fd:
                    stats["wakeups"] += 1
                    with contextlib.suppress(OSError):
                        os.eventfd_read(wake_fd)
                elif fd == control_fd and control is not None:
                    with self.lock:
                        control.service()

    def _round(self, stack: Stack) -> int:
        """One round with the lock held: deferred closes, input, timers, the load sample.
        Returns how long to wait, in milliseconds."""
        while self._deferred:
            callback = self._deferred.popleft()
            self.stats["deferred_closes"] += 1
            with contextlib.suppress(OSError):
                callback()
        now = time.monotonic_ns()
        received = stack.poll(now)
        due = stack.next_timer_ns()
        if due is not None and due <= now:
            stack.on_timer(now)
            self.stats["timers"] += 1
            due = stack.next_timer_ns()
        longest = IDLE_WAIT_S
        if self.sampler is not None:
            longest = SAMPLED_WAIT_S
            queue = max((i.queue_fill() for i in stack.interfaces), default=0.0)
            sample = self.sampler.sample(now, queue)
            if sample is not None:
                stack.observe_load(sample)
        if received:
            wait_ns = 0
        elif any(i.backlog for i in stack.interfaces):
            wait_ns = 1_000_000
        else:
            wait_ns = int(longest * 1e9)
            if due is not None:
                wait_ns = max(0, min(wait_ns, due - now))
        self._sleep_until_ns = now + wait_ns
        return (wait_ns + 999_999) // 1_000_000

    # -- introspection -----------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """Per-path and per-socket counts, the runtime's own, and the stack's counters."""
        with self.lock:
            for stream in self.streams.values():
                stream.refresh_record()
            out = self.counters.as_dict()
            out["runtime"] = {
                "name": self.name,
                "pid": os.getpid(),
                **self.stats,
                "failure": None if self.failure is None else str(self.failure),
            }
            out["stack"] = self.stack.as_dict()
        return out
