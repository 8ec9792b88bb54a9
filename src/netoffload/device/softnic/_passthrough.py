"""Temporary stand-in for engine.pipeline: moves packets that ask for nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from netoffload.offload import DropReason, Packet, Task


@dataclass
class _Outcome:
    packets: list[Packet] = field(default_factory=list)
    drops: list[tuple[int, DropReason]] = field(default_factory=list)
    tasks: Counter[Task] = field(default_factory=Counter)


class pipeline:  # noqa: N801
    @staticmethod
    def transmit(packets: Sequence[Packet], tasks: Set[Task]) -> Any:
        return _Outcome(list(packets))

    @staticmethod
    def receive(frames: Sequence[Any], tasks: Set[Task]) -> Any:
        return _Outcome([Packet(f) for f in frames])
