"""Per-socket and per-path counters: what `netoffload stats NAME` shows for a running program.

Each socket has a ``SocketRecord`` that its own calls update (no lock: a
socket's counters are its callers'). ``PathCounters`` keeps the live records
and, for sockets already closed, their totals per path, so a total never
shrinks when a socket goes away. IP traffic over the OS (``inet_*``) is kept
apart from the rest of the OS path (AF_UNIX and the like), because only the
former could have taken the user-level path: ``user_level_bytes_fraction`` is
user-level bytes over user-level plus OS IP bytes.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Final

USER_LEVEL: Final = "user_level"
OS: Final = "os"
UNDECIDED: Final = "undecided"

#: At most this many sockets are listed in one answer (a control message is 64 KiB).
MAX_LISTED: Final = 100

_COUNTS: Final = ("bytes_sent", "bytes_received", "datagrams_sent", "datagrams_received")


@dataclass(slots=True, eq=False)
class SocketRecord:
    """One socket: where its calls go, why, and what it moved."""

    ident: int
    family: str
    kind: str
    inet: bool
    path: str = UNDECIDED
    reason: str = ""
    state: str = ""
    local: str = ""
    peer: str = ""
    bytes_sent: int = 0
    bytes_received: int = 0
    datagrams_sent: int = 0
    datagrams_received: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.ident,
            "family": self.family,
            "type": self.kind,
            "path": self.path,
            "reason": self.reason,
            "state": self.state,
            "local": self.local,
            "peer": self.peer,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "datagrams_sent": self.datagrams_sent,
            "datagrams_received": self.datagrams_received,
        }


def _path_of(record: SocketRecord) -> str:
    return USER_LEVEL if record.path == USER_LEVEL else OS


def _add(totals: MutableMapping[str, int], record: SocketRecord) -> None:
    """Add what ``record`` moved to its path's ``totals`` (IP traffic over the OS apart)."""
    inet_os = record.inet and _path_of(record) == OS
    for name in _COUNTS:
        value = getattr(record, name)
        totals[name] = totals.get(name, 0) + value
        if inet_os:
            totals[f"inet_{name}"] = totals.get(f"inet_{name}", 0) + value


class PathCounters:
    """Every socket of one runtime: live records, and the totals of closed ones per path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.live: dict[int, SocketRecord] = {}
        self._closed: dict[str, Counter[str]] = {USER_LEVEL: Counter(), OS: Counter()}
        #: How many sockets each choice was made for, by ``path/reason``.
        self.selections: Counter[str] = Counter()

    def open(self, family: str, kind: str, *, inet: bool) -> SocketRecord:
        record = SocketRecord(next(self._ids), family, kind, inet)
        with self._lock:
            self.live[record.ident] = record
        return record

    def chose(self, record: SocketRecord, path: str, reason: str) -> None:
        record.path = path
        record.reason = reason
        with self._lock:
            self.selections[f"{path}/{reason}"] += 1

    def close(self, record: SocketRecord) -> None:
        with self._lock:
            if self.live.pop(record.ident, None) is None:
                return
            totals = self._closed[_path_of(record)]
            totals["sockets_closed"] += 1
            _add(totals, record)

    def totals(self) -> dict[str, dict[str, int]]:
        """Per path: sockets open and closed, and everything moved (closed and live)."""
        with self._lock:
            live = list(self.live.values())
            out = {path: dict(counts) for path, counts in self._closed.items()}
        for path in (USER_LEVEL, OS):
            entry = out[path]
            entry.setdefault("sockets_closed", 0)
            entry["sockets_open"] = 0
            for name in _COUNTS:
                entry.setdefault(name, 0)
                if path == OS:
                    entry.setdefault(f"inet_{name}", 0)
        for record in live:
            entry = out[_path_of(record)]
            entry["sockets_open"] += 1
            _add(entry, record)
        return out

    def as_dict(self) -> dict[str, Any]:
        totals = self.totals()
        user = totals[USER_LEVEL]
        ours = user["bytes_sent"] + user["bytes_received"]
        theirs = totals[OS]["inet_bytes_sent"] + totals[OS]["inet_bytes_received"]
        with self._lock:
            live = sorted(self.live.values(), key=lambda r: r.ident)
            selections = dict(sorted(self.selections.items()))
        return {
            "paths": totals,
            "selections": selections,
            "user_level_bytes_fraction": ours / (ours + theirs) if ours + theirs else None,
            "sockets_listed": min(len(live), MAX_LISTED),
            "sockets_open": len(live),
            "sockets": [r.as_dict() for r in live[:MAX_LISTED]],
        }
