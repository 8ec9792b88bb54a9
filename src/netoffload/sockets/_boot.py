"""What `netoffload run` does inside the program it runs: the program's own command line
read as ``python`` reads it, the program run in this interpreter with ``socket``
served by a runtime, and a summary of the paths its sockets took.

The program runs in the main thread, as it would under ``python``; the stack
runs in the runtime's thread. ``sys.argv``, ``sys.path[0]`` and ``__main__`` are
what ``python`` would have made them.
"""

from __future__ import annotations

import os
import re
import runpy
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from netoffload.device.base import DeviceError
from netoffload.sockets._install import install, uninstall
from netoffload.sockets._runtime import Runtime

#: What the first word of the command may be: an interpreter this one stands in for.
_PYTHON = re.compile(r"python(3(\.\d+)?)?")
#: Interpreter flags taken and ignored: they change nothing a program relies on here.
_IGNORED_FLAGS = frozenset({"-u", "-B", "-E", "-s", "-q", "-b", "-bb", "-d", "-v"})


class CommandError(Exception):
    """The command is not a Python program this interpreter can run (one line)."""


@dataclass(frozen=True, slots=True)
class Program:
    """A Python program as ``python ARGS`` names it: a module, a script or a string."""

    kind: str  # "module", "script" or "code"
    target: str
    argv: tuple[str, ...]  # sys.argv as the program sees it


def parse_command(words: Sequence[str]) -> Program:
    """``python [-u ...] (-m MODULE | -c CODE | SCRIPT) ARGS``, or ``SCRIPT.py ARGS``."""
    if not words:
        raise CommandError("give the program to run after --: python app.py ...")
    first = words[0]
    rest = list(words[1:])
    if first.endswith(".py"):
        return Program("script", first, (first, *rest))
    if not (_PYTHON.fullmatch(os.path.basename(first)) or first == sys.executable):
        raise CommandError(f"{first!r} is not a Python interpreter: run python PROGRAM ...")
    while rest and rest[0] in _IGNORED_FLAGS:
        rest.pop(0)
    if not rest:
        raise CommandError("no program: give python a script, -m MODULE or -c CODE")
    head = rest[0]
    if head in ("-m", "-c"):
        if len(rest) < 2:
            raise CommandError(f"python {head} needs an argument")
        if head == "-m":
            return Program("module", rest[1], (rest[1], *rest[2:]))
        return Program("code", rest[1], ("-c", *rest[2:]))
    if head.startswith("-"):
        raise CommandError(f"python option {head} is not supported under netoffload run")
    return Program("script", head, tuple(rest))


def run_program(program: Program) -> int:
    """Run ``program`` here as ``__main__``; its exit status."""
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = list(program.argv)
    try:
        if program.kind == "module":
            sys.path[0] = os.getcwd()
            runpy.run_module(program.target, run_name="__main__", alter_sys=True)
        elif program.kind == "script":
            if not os.path.exists(program.target):
                raise CommandError(f"can't open file {program.target!r}: no such file")
            sys.path[0] = os.path.dirname(os.path.abspath(program.target))
            runpy.run_path(program.target, run_name="__main__")
        else:
            sys.path[0] = ""
            code = compile(program.target, "<string>", "exec")
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as exc:
        return _status(exc.code)
    except (KeyboardInterrupt, CommandError):
        raise
    except BaseException as exc:  # the program's own error: reported as python reports it
        traceback.print_exception(
            exc.with_traceback(exc.__traceback__.tb_next if exc.__traceback__ else None)
        )
        return 1
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None:
            sys.path[0] = saved_path0
    return 0


def _status(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def serve(
    runtime: Runtime, program: Program, *, linger_s: float = 2.0
) -> tuple[int, dict[str, Any]]:
    """Run ``program`` with its sockets served by ``runtime`` (started here, closed after:
    its connections get ``linger_s`` to deliver what the program sent). Returns the exit
    status and the runtime's counters at the end."""
    runtime.start()
    install(runtime)
    try:
        status = run_program(program)
    except KeyboardInterrupt:
        status = 130
    finally:
        uninstall()
        runtime.close_sockets()
        try:
            stats = runtime.as_dict()
        except DeviceError as exc:  # the device's own counters went with it
            stats = runtime.counters.as_dict()
            stats["stack"] = {"error": str(exc)}
        runtime.close(linger_s=linger_s)
    return status, stats


def summary(stats: dict[str, Any]) -> str:
    """One line: sockets and bytes per path, the choices made, the user-level fraction."""
    paths = stats["paths"]
    user, osp = paths["user_level"], paths["os"]

    def count(entry: dict[str, int]) -> int:
        return entry["sockets_open"] + entry["sockets_closed"]

    user_bytes = user["bytes_sent"] + user["bytes_received"]
    os_ip = osp["inet_bytes_sent"] + osp["inet_bytes_received"]
    os_other = osp["bytes_sent"] + osp["bytes_received"] - os_ip
    fraction = stats["user_level_bytes_fraction"]
    shown = "-" if fraction is None else f"{fraction:.4f}"
    return (
        f"netoffload run: user-level {count(user)} sockets {user_bytes} bytes; "
        f"OS {count(osp)} sockets {os_ip} IP bytes {os_other} other bytes; "
        f"user_level_bytes_fraction {shown}"
    )
