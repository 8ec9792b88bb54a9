"""Messages between a guest and its switch, over a ``SOCK_SEQPACKET`` socket pair.

One JSON object per message, with descriptors beside it (``SCM_RIGHTS``)
where a message hands memory or a doorbell over:

* guest -> switch ``{"op": "attach", "name", "geometry", "ring_entries"}``
  with four descriptors: its window, its rings, its kick eventfd (the guest
  rings it when its rings have work) and its interrupt eventfd (the switch
  rings it when they have something for the guest);
* switch -> guest ``{"ok": true, "pool", "mac", "mtu", "vlans", "quota"}``,
  or ``{"ok": false, "error": "one line"}``;
* guest -> switch ``{"op": "report", "data": {...}}``: counters or results a
  guest wants shown in ``vswitch stats`` (the switch keeps the last);
* guest -> switch ``{"op": "bye"}``, or the socket closing: the guest is leaving.

Data never travels here: only through the rings.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
from collections.abc import Sequence
from typing import Any

MAX_MESSAGE = 64 * 1024
MAX_FDS = 4
ENV_FD = "NETOFFLOAD_VSWITCH_FD"


class ProtocolError(Exception):
    """A message that is not one (the message is one line)."""


def send_message(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes is over {MAX_MESSAGE}")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """The next message and the descriptors that came with it; ``None`` at end of stream.

    Raises ``BlockingIOError`` on a non-blocking socket with nothing to read,
    ``ProtocolError`` for a message that is not a JSON object (its descriptors
    are closed).
    """
    fds = array.array("i")
    data, ancillary, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % fds.itemsize
            fds.frombytes(payload[:usable])
    received = list(fds)
    if not data and not received:
        return None
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ProtocolError("message or its descriptors were truncated")
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ProtocolError("a message is a JSON object")
    except (ValueError, ProtocolError) as exc:
        close_all(received)
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(f"not JSON: {exc}") from None
    return message, received


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
