"""Every switch test ends with no guest, firmware or other child process left running."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import psutil
import pytest


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    yield
    gc.collect()
    children = psutil.Process().children(recursive=True)
    assert children == [], f"left running: {children}"
