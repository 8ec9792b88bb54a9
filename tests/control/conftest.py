"""Every control test gets its own run directory (``$NETOFFLOAD_RUN_DIR``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.control.child import private_run_dir


@pytest.fixture(autouse=True)
def run_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with private_run_dir(monkeypatch) as run:
        yield run
