"""The wire form of the control protocol: one JSON object per SOCK_SEQPACKET message.

Request ``{"op": "stats", "args": {...}}`` (``args`` may be left out; other
keys are ignored, so a later client may add some). Reply ``{"ok": true,
"result": ...}`` or ``{"ok": false, "error": "one line"}``. Every message,
either way, is at most ``MAX_MESSAGE_BYTES`` of UTF-8 JSON (no NaN or
infinity: strict JSON, so any JSON reader can take it).
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Version of this protocol, reported by ``hello``.
PROTOCOL_VERSION = 1

#: Largest message either way. AF_UNIX sends a SOCK_SEQPACKET message whole or not at all,
#: and the default socket buffer (about 208 KiB) holds a few of these.
MAX_MESSAGE_BYTES = 65536

#: What an op's name may be.
OP_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")

_MAX_LINE = 300


class ControlError(Exception):
    """A control request failed on this side: no such process, no answer, a bad reply.

    The message is one line, fit for a user.
    """


class RemoteError(ControlError):
    """The process answered with an error (``{"ok": false}``): its one-line message."""

    def __init__(self, target: str, op: str, error: str) -> None:
        super().__init__(f"{target}: {error}")
        self.target = target
        self.op = op
        self.error = error


class NotAnswering(ControlError):
    """The process took the connection but sent no reply in time."""


def one_line(text: str) -> str:
    """``text`` on one line, bounded: what an error message may be on the wire."""
    line = " ".join(text.split())
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 3] + "..."


def describe_exception(exc: BaseException) -> str:
    """An exception as one line: its message, or its type when the message says nothing."""
    text = one_line(str(exc))
    if not text or isinstance(exc, KeyError):
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text


def _dump(message: dict[str, Any]) -> bytes:
    return json.dumps(message, allow_nan=False, separators=(",", ":")).encode()


def encode_request(op: str, args: dict[str, Any]) -> bytes:
    """A request message; raises ``ControlError`` when ``args`` is not JSON or too large."""
    try:
        data = _dump({"op": op, "args": args})
    except (TypeError, ValueError, RecursionError) as exc:
        raise ControlError(f"arguments of {op!r} are not JSON: {one_line(str(exc))}") from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise ControlError(
            f"request {op!r} is {len(data)} bytes, more than the {MAX_MESSAGE_BYTES} "
            "a message may hold"
        )
    return data


def encode_error(error: str) -> bytes:
    """An error reply."""
    return _dump({"ok": False, "error": one_line(error)})


def encode_result(op: str, result: Any) -> bytes:
    """A reply carrying ``result``; an error reply when it is not JSON or does not fit."""
    try:
        data = _dump({"ok": True, "result": result})
    except (TypeError, ValueError, RecursionError) as exc:
        return encode_error(f"{op!r} returned something that is not JSON: {one_line(str(exc))}")
    if len(data) > MAX_MESSAGE_BYTES:
        return encode_error(
            f"the reply to {op!r} is {len(data)} bytes, more than the {MAX_MESSAGE_BYTES} "
            "a message may hold"
        )
    return data


def decode_request(data: bytes) -> tuple[str, dict[str, Any]]:
    """``(op, args)`` of a request; raises ``ValueError`` with a one-line reason."""
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"request is not JSON: {one_line(str(exc))}") from None
    if not isinstance(message, dict):
        raise ValueError('a request is a JSON object {"op": ..., "args": {...}}')
    op = message.get("op")
    if not isinstance(op, str):
        raise ValueError('request has no "op" string')
    args = message.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ValueError('"args" must be a JSON object')
    return op, args


def decode_reply(data: bytes, target: str, op: str) -> Any:
    """The result of a reply; ``RemoteError`` for an error reply, ``ControlError`` if malformed."""
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ControlError(
            f"{target} sent a reply that is not JSON: {one_line(str(exc))}"
        ) from None
    if not isinstance(message, dict) or not isinstance(message.get("ok"), bool):
        raise ControlError(f'{target} sent a reply without "ok"')
    if message["ok"]:
        if "result" not in message:
            raise ControlError(f'{target} sent a reply without "result"')
        return message["result"]
    error = message.get("error")
    raise RemoteError(target, op, one_line(error) if isinstance(error, str) else "failed")
