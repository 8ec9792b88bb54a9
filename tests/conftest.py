"""Shared test set-up: the `privileged` marker's skip-or-fail rule."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


def privileged_missing() -> str | None:
    """Why privileged tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2's ip command"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is None:
        return
    reason = privileged_missing()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"privileged test cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"privileged: {reason}")


@pytest.fixture(autouse=True)
def run_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Tests never see the machine's real control sockets: ``$NETOFFLOAD_RUN_DIR`` is private
    (``netoffload clean --all`` in a test must not remove anyone else's sockets)."""
    from tests.control.child import private_run_dir

    with private_run_dir(monkeypatch) as run:
        yield run
