"""The scripts in examples/ run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_softnic_tso_example() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "softnic_tso.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "45 segments on the wire, sizes 1502..1502" in done.stdout
    assert "'tcp_segmentation': 1" in done.stdout


def test_tcp_echo_asyncio_example() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "tcp_echo_asyncio.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "echoed 1,048,576 bytes, intact: True" in done.stdout
    assert "client policy decisions: {'device':" in done.stdout
