"""Progress bars: drawn on a terminal's standard error, never with --json or when piped."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time


def _run_with_terminal_stderr(*args: str) -> tuple[str, str]:
    """(stdout, what the terminal on stderr showed) of ``netoffload ARGS``."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "netoffload.cli", *args],
        stdout=subprocess.PIPE,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(follower)
    shown = bytearray()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    return out, shown.decode(errors="replace")


def test_a_terminal_sees_the_bar_and_the_table_stays_on_stdout() -> None:
    out, shown = _run_with_terminal_stderr("bench", "checksum", "--quick")
    assert "checksum" in shown and "%" in shown
    assert "GB/s" in out and "%" not in out.splitlines()[0]


def test_json_output_has_no_bar() -> None:
    out, shown = _run_with_terminal_stderr("bench", "checksum", "--quick", "--json")
    assert json.loads(out)["gbytes_per_s_64k"] > 0
    assert shown.strip() == ""
