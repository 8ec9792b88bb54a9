"""The control socket every long-running netoffload process serves, and its clients.

A process makes a ``ControlServer(kind, name)``, registers its ops
(``server.register("stats", fn)``), and lets its event loop poll
``server.fileno()`` and call ``server.service()`` when it is readable (or
``attach_to_loop(server, loop)`` under asyncio). Commands find processes
with ``list_processes()`` and ask them with ``request(target, op, args)``.

The wire protocol is one JSON object per SOCK_SEQPACKET message (at most
``MAX_MESSAGE_BYTES``): ``{"op": ..., "args": {...}}`` ->
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "one line"}``.
"""

from netoffload.control._client import (
    ProcessInfo,
    ProcessState,
    clean_sockets,
    list_processes,
    request,
    resolve,
)
from netoffload.control._devices import caps_op, enable_op, register_device_ops, rules_op
from netoffload.control._paths import (
    ENV_RUN_DIR,
    find_run_directory,
    make_run_directory,
    parse_socket_name,
)
from netoffload.control._protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ControlError,
    NotAnswering,
    RemoteError,
)
from netoffload.control._server import BUILTIN_OPS, ControlServer, Handler, attach_to_loop

__all__ = [
    "BUILTIN_OPS",
    "ENV_RUN_DIR",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "ControlError",
    "ControlServer",
    "Handler",
    "NotAnswering",
    "ProcessInfo",
    "ProcessState",
    "RemoteError",
    "attach_to_loop",
    "caps_op",
    "clean_sockets",
    "enable_op",
    "find_run_directory",
    "list_processes",
    "make_run_directory",
    "parse_socket_name",
    "register_device_ops",
    "request",
    "resolve",
    "rules_op",
]
