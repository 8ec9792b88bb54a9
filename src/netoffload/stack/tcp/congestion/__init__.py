"""Congestion controllers behind one interface: NewReno (RFC 5681/6582), CUBIC (RFC 9438)."""

from __future__ import annotations

from netoffload.stack.tcp.congestion.base import CongestionControl, initial_window
from netoffload.stack.tcp.congestion.cubic import Cubic
from netoffload.stack.tcp.congestion.newreno import NewReno

ALGORITHMS: dict[str, type[CongestionControl]] = {"cubic": Cubic, "newreno": NewReno}


def make_congestion_control(
    name: str, mss: int, initial_window_segments: int = 10
) -> CongestionControl:
    """A fresh controller by name (``KeyError`` for an unknown one; the config checks it)."""
    return ALGORITHMS[name](mss, initial_window_segments)


__all__ = [
    "ALGORITHMS",
    "CongestionControl",
    "Cubic",
    "NewReno",
    "initial_window",
    "make_congestion_control",
]
