"""The process's default runtime: the one new sockets use when none is named."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netoffload.sockets._runtime import Runtime

_default: list[Runtime | None] = [None]


def current_runtime() -> Runtime | None:
    """The default runtime, if one is set and can still serve sockets."""
    runtime = _default[0]
    if runtime is None or not runtime.alive:
        return None
    return runtime


def set_default_runtime(runtime: Runtime | None) -> Runtime | None:
    """Make ``runtime`` the default; returns the one it replaces."""
    previous, _default[0] = _default[0], runtime
    return previous
