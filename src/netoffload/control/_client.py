"""The client side: find netoffload processes, ask them, clean up after dead ones."""

from __future__ import annotations

import enum
import os
import select
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from netoffload.control._paths import (
    SocketEntry,
    find_run_directory,
    socket_entries,
    stale,
)
from netoffload.control._protocol import (
    MAX_MESSAGE_BYTES,
    ControlError,
    NotAnswering,
    decode_reply,
    encode_request,
)
from netoffload.leftovers import CleanReport, Leftover, process_alive


def _seconds(timeout_s: float) -> str:
    return f"{timeout_s:g}s"


# -- asking one process -----------------------------------------------------------------


def resolve(target: str, directory: str | None = None) -> str:
    """The socket path of ``target``: a name, ``kind:name``, a pid, or a socket path.

    A path is anything with a ``/``. Raises ``ControlError`` when nothing, or
    more than one running process, matches.
    """
    if "/" in target:
        return target
    where = find_run_directory() if directory is None else directory
    entries = socket_entries(where)
    if target.isdigit():
        matches = [e for e in entries if e.pid == int(target)]
        missing = f"no netoffload process with pid {target}"
    elif ":" in target:
        kind, _, name = target.partition(":")
        matches = [e for e in entries if (e.kind, e.name) == (kind, name)]
        missing = f"no netoffload process {target!r}"
    else:
        matches = [e for e in entries if e.name == target]
        missing = f"no netoffload process named {target!r}"
    if not matches:
        raise ControlError(missing)
    if len(matches) > 1:
        live = [e for e in matches if process_alive(e.pid)]
        if len(live) > 1:
            which = ", ".join(f"{e.kind}:{e.name} pid {e.pid}" for e in live)
            raise ControlError(
                f"{len(live)} netoffload processes match {target!r} ({which}): "
                "give kind:name or a pid"
            )
        matches = live or matches[:1]
    return matches[0].path


def _connect(sock: socket.socket, path: str, deadline: float) -> None:
    """Connect by ``deadline``; raises ``TimeoutError`` while the server's backlog stays full.

    (AF_UNIX refuses a connection to a full backlog with EAGAIN rather than
    waiting, whatever the socket's timeout.)
    """
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            sock.connect(path)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError from None
            time.sleep(0.01)
        else:
            return


def request(
    target: str,
    op: str,
    args: Mapping[str, Any] | None = None,
    timeout_s: float = 2.0,
    *,
    directory: str | None = None,
) -> Any:
    """Ask ``target`` (name, ``kind:name``, pid or socket path) for ``op``; its result.

    Raises ``RemoteError`` when the process answers with an error,
    ``NotAnswering`` when it does not answer within ``timeout_s``, and
    ``ControlError`` for anything else (no such process, a stale socket, a
    malformed reply); every message is one line.
    """
    message = encode_request(op, dict(args or {}))
    path = resolve(target, directory)
    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        try:
            _connect(sock, path, deadline)
        except FileNotFoundError:
            raise ControlError(f"no netoffload process at {path}") from None
        except ConnectionRefusedError:
            raise ControlError(
                f"{target} is not running (stale socket {path}; netoffload clean removes it)"
            ) from None
        except PermissionError:
            raise ControlError(f"{target}: permission denied on {path}") from None
        except TimeoutError:
            raise NotAnswering(f"{target} did not answer within {_seconds(timeout_s)}") from None
        except OSError as exc:
            raise ControlError(f"{target}: cannot connect: {exc.strerror or exc}") from None
        try:
            sock.send(message)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data, _ancillary, flags, _address = sock.recvmsg(MAX_MESSAGE_BYTES)
        except TimeoutError:
            raise NotAnswering(f"{target} did not answer within {_seconds(timeout_s)}") from None
        except OSError as exc:
            raise ControlError(f"{target}: {exc.strerror or exc}") from None
    if flags & socket.MSG_TRUNC:
        raise ControlError(f"{target} sent a reply larger than {MAX_MESSAGE_BYTES} bytes")
    if not data:
        raise ControlError(f"{target} closed the connection without answering")
    return decode_reply(data, target, op)


# -- listing ------------------------------------------------------------------------------


class ProcessState(enum.Enum):
    """What a socket in the run directory says about its process."""

    RUNNING = "running"  # it answered hello
    STALE = "stale"  # its process is gone (or nobody listens): `netoffload clean` removes it
    NOT_ANSWERING = "not answering"  # someone listens but said nothing in time


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One control socket and, when its process answered ``hello``, what it said."""

    path: str
    kind: str
    name: str
    pid: int
    state: ProcessState
    started: float | None = None  # seconds since the epoch
    uptime_s: float | None = None
    ops: tuple[str, ...] = ()
    version: str | None = None
    error: str | None = None  # why there is no hello

    @property
    def stale(self) -> bool:
        return self.state is ProcessState.STALE

    def as_json(self) -> dict[str, object]:
        """A plain dict for ``--json`` output."""
        return {
            "path": self.path,
            "kind": self.kind,
            "name": self.name,
            "pid": self.pid,
            "state": self.state.value,
            "started": self.started,
            "uptime_s": self.uptime_s,
            "ops": list(self.ops),
            "version": self.version,
            "error": self.error,
        }


def _from_hello(entry: SocketEntry, result: Any) -> ProcessInfo:
    if not isinstance(result, dict):
        return ProcessInfo(
            entry.path,
            entry.kind,
            entry.name,
            entry.pid,
            ProcessState.NOT_ANSWERING,
            error="its hello is not an object",
        )
    ops = result.get("ops")
    started, uptime_s, version = (
        result.get("started"),
        result.get("uptime_s"),
        result.get("version"),
    )
    return ProcessInfo(
        entry.path,
        entry.kind,
        entry.name,
        entry.pid,
        ProcessState.RUNNING,
        started=float(started) if isinstance(started, int | float) else None,
        uptime_s=float(uptime_s) if isinstance(uptime_s, int | float) else None,
        ops=tuple(op for op in ops if isinstance(op, str)) if isinstance(ops, list) else (),
        version=version if isinstance(version, str) else None,
    )


def _silent(entry: SocketEntry, why: str) -> ProcessInfo:
    return ProcessInfo(
        entry.path, entry.kind, entry.name, entry.pid, ProcessState.NOT_ANSWERING, error=why
    )


def _stale(entry: SocketEntry, why: str) -> ProcessInfo:
    return ProcessInfo(entry.path, entry.kind, entry.name, entry.pid, ProcessState.STALE, error=why)


def list_processes(directory: str | None = None, timeout_s: float = 0.5) -> list[ProcessInfo]:
    """Every control socket in ``directory`` (default: the run directory), each asked ``hello``.

    All are asked at once, so the whole listing takes at most ``timeout_s``. A
    socket whose process is gone is ``STALE``, one whose process says nothing
    in time ``NOT_ANSWERING``: neither is an error.
    """
    where = find_run_directory() if directory is None else directory
    entries = socket_entries(where)
    found: dict[str, ProcessInfo] = {}
    waiting: dict[int, tuple[SocketEntry, socket.socket]] = {}
    hello = encode_request("hello", {})
    try:
        for entry in entries:
            if not process_alive(entry.pid):
                found[entry.path] = _stale(entry, f"process {entry.pid} is gone")
                continue
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.setblocking(False)
            try:
                sock.connect(entry.path)
                sock.send(hello)
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
                found[entry.path] = _stale(entry, "nobody listens on its socket")
                continue
            except BlockingIOError:
                sock.close()
                found[entry.path] = _silent(entry, "its queue of connections is full")
                continue
            except OSError as exc:
                sock.close()
                found[entry.path] = _silent(entry, exc.strerror or str(exc))
                continue
            waiting[sock.fileno()] = (entry, sock)
        _collect(waiting, found, time.monotonic() + timeout_s, timeout_s)
    finally:
        for _entry, sock in waiting.values():
            sock.close()
    return [found[e.path] for e in entries]


def _collect(
    waiting: dict[int, tuple[SocketEntry, socket.socket]],
    found: dict[str, ProcessInfo],
    deadline: float,
    timeout_s: float,
) -> None:
    poller = select.poll()
    for fd in waiting:
        poller.register(fd, select.POLLIN)
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for fd, _events in poller.poll(left * 1000):
            entry, sock = waiting.pop(fd)
            poller.unregister(fd)
            try:
                data = sock.recv(MAX_MESSAGE_BYTES)
            except OSError as exc:
                data, why = b"", exc.strerror or str(exc)
            else:
                why = "it closed the connection without answering"
            finally:
                sock.close()
            if not data:
                found[entry.path] = _silent(entry, why)
                continue
            try:
                found[entry.path] = _from_hello(entry, decode_reply(data, entry.name, "hello"))
            except ControlError as exc:
                found[entry.path] = _silent(entry, str(exc))
    for entry, _sock in waiting.values():
        found[entry.path] = _silent(entry, f"it did not answer within {_seconds(timeout_s)}")


# -- clean-up -----------------------------------------------------------------------------


def clean_sockets(
    *, everything: bool = False, dry_run: bool = False, directory: str | None = None
) -> CleanReport:
    """Remove control sockets whose process is gone (every one with ``everything``).

    A socket is gone when its pid no longer runs or nobody listens on it.
    Returns what was removed (with ``dry_run``: what would be), what was left
    alone, and what could not be removed with why.
    """
    where = find_run_directory() if directory is None else directory
    removed: list[Leftover] = []
    kept: list[Leftover] = []
    failed: list[tuple[Leftover, str]] = []
    for entry in socket_entries(where):
        leftover = Leftover(
            "socket", os.path.basename(entry.path), entry.pid, creator_alive=not stale(entry)
        )
        if leftover.creator_alive and not everything:
            kept.append(leftover)
            continue
        if dry_run:
            removed.append(leftover)
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue  # its process closed it meanwhile
        except OSError as exc:
            failed.append((leftover, exc.strerror or str(exc)))
            continue
        removed.append(leftover)
    return CleanReport(tuple(removed), tuple(kept), tuple(failed), dry_run)
