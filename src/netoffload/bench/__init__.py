"""Benchmarks behind `netoffload bench`: ratios measured side by side in one run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def number(result: dict[str, object], key: str) -> float:
    """``result[key]``, a figure a benchmark put in its JSON result, as a float."""
    value = result[key]
    assert isinstance(value, int | float)
    return float(value)


@contextmanager
def one_core() -> Iterator[None]:
    """Pin this process to the core it is on for the duration, where Linux allows it."""
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        if before is not None:
            os.sched_setaffinity(0, {min(before)})
    except OSError:
        before = None
    try:
        yield
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)
