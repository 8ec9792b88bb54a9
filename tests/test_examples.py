"""The scripts in examples/ run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("softnic_tso.py", ["45 segments on the wire, sizes 1502..1502", "'tcp_segmentation': 1"]),
        (
            "tcp_echo_asyncio.py",
            ["echoed 1,048,576 bytes, intact: True", "client policy decisions: {'device':"],
        ),
        (
            "vswitch_tcp.py",
            ["echoed 4,194,304 bytes, intact: True", "unicast receive from the wire: 0"],
        ),
    ],
)
def test_example_runs(script: str, expected: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for line in expected:
        assert line in done.stdout
