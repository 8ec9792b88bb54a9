"""Where control sockets live and how they are named.

A socket is ``<directory>/<kind>-<name>-<pid>.sock``: a ``kind`` of process
(``demo``, ``nc``, ``vswitch``, ...), the name it was given, and its process
id, so a listing finds every process and its kind without connecting, and
clean-up tells a dead process's socket from a live one's.

The directory is ``$NETOFFLOAD_RUN_DIR`` when set; otherwise the first usable
of ``/run/netoffload`` (root), ``$XDG_RUNTIME_DIR/netoffload`` and
``/tmp/netoffload-<uid>``. A directory netoffload makes is mode 0700; one it
finds must belong to this user (or root) and be writable by nobody else.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from dataclasses import dataclass

from netoffload.control._protocol import ControlError
from netoffload.leftovers import process_alive

ENV_RUN_DIR = "NETOFFLOAD_RUN_DIR"
SYSTEM_RUN_DIR = "/run/netoffload"

#: A process kind: lower case, as in a command's name.
KIND = re.compile(r"[a-z][a-z0-9_]{0,15}")
#: A process name: may hold ``-`` and ``.``, never ``/`` or ``:``; not only digits (that is a pid).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,39}")
SOCKET_NAME = re.compile(
    r"(?P<kind>[a-z][a-z0-9_]{0,15})-(?P<name>[A-Za-z0-9_][A-Za-z0-9_.-]{0,39})"
    r"-(?P<pid>[1-9][0-9]{0,9})\.sock"
)
#: ``sockaddr_un.sun_path`` holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


@dataclass(frozen=True, slots=True)
class SocketEntry:
    """A control socket found in the directory, read from its file name alone."""

    path: str
    kind: str
    name: str
    pid: int


def check_kind(kind: str) -> str:
    """``kind`` if it is a valid process kind; raises ``ValueError`` otherwise."""
    if not KIND.fullmatch(kind):
        raise ValueError(f"bad process kind {kind!r}: lower-case letters, digits, _ (16 at most)")
    return kind


def check_name(name: str) -> str:
    """``name`` if it is a valid process name; raises ``ValueError`` otherwise."""
    if not NAME.fullmatch(name) or name.isdigit():
        raise ValueError(
            f"bad process name {name!r}: letters, digits, '_', '.', '-' (40 at most, "
            "not starting with '.' or '-', not only digits)"
        )
    return name


def socket_file_name(kind: str, name: str, pid: int) -> str:
    return f"{check_kind(kind)}-{check_name(name)}-{pid}.sock"


def parse_socket_name(file_name: str) -> tuple[str, str, int] | None:
    """``(kind, name, pid)`` of a control socket's file name, None for any other name."""
    match = SOCKET_NAME.fullmatch(file_name)
    if match is None:
        return None
    return match["kind"], match["name"], int(match["pid"])


def _candidates() -> list[str]:
    override = os.environ.get(ENV_RUN_DIR)
    if override:
        return [override]
    out = [SYSTEM_RUN_DIR]
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        out.append(os.path.join(xdg, "netoffload"))
    out.append(f"/tmp/netoffload-{os.getuid()}")
    return out


def _unusable(path: str) -> str | None:
    """Why the existing ``path`` may not hold our sockets, or None when it may."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if st.st_uid not in (os.getuid(), 0):
        return f"belongs to uid {st.st_uid}"
    if st.st_mode & 0o022:
        return f"writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    return None


def find_run_directory() -> str:
    """The directory a listing looks in: the first candidate that exists and is usable.

    When none exists yet, the first candidate (nothing runs, so nothing is there).
    """
    candidates = _candidates()
    for path in candidates:
        if os.path.isdir(path) and _unusable(path) is None:
            return path
    return candidates[0]


def make_run_directory() -> str:
    """The directory a server binds in, made (mode 0700) when missing.

    Raises ``ControlError`` naming every candidate and why it could not be used.
    """
    reasons = []
    for path in _candidates():
        try:
            os.makedirs(path, mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
                raise ControlError(f"cannot make {path}: {exc.strerror or exc}") from None
            reasons.append(f"{path}: {exc.strerror or exc}")
            continue
        else:
            os.chmod(path, 0o700)  # makedirs's mode went through the umask
        why = _unusable(path)
        if why is None:
            return path
        reasons.append(f"{path}: {why}")
    raise ControlError("no directory for control sockets: " + "; ".join(reasons))


def socket_entries(directory: str) -> list[SocketEntry]:
    """Every control socket in ``directory``, by name; other files are not ours and ignored."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ControlError(f"cannot list {directory}: {exc.strerror or exc}") from None
    out = []
    for file_name in names:
        parsed = parse_socket_name(file_name)
        if parsed is None:
            continue
        path = os.path.join(directory, file_name)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
        except OSError:
            continue  # gone meanwhile
        kind, name, pid = parsed
        out.append(SocketEntry(path, kind, name, pid))
    return out


def listening(path: str) -> bool:
    """Whether some process listens on the socket at ``path``.

    Only a refused connection (or a vanished file) means nobody does; a full
    backlog or a permission error could be a live process, so they read as
    listening (clean-up then leaves the socket alone, the safe mistake).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.setblocking(False)
        try:
            sock.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True
        return True


def stale(entry: SocketEntry) -> bool:
    """True when the socket's process is gone: its pid is not running or nobody listens."""
    return not process_alive(entry.pid) or not listening(entry.path)
