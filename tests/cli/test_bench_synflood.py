"""`netoffload bench synflood --quick`: the JSON it prints and its table (no timing asserts)."""

from __future__ import annotations

import io
import json

from rich.console import Console

from netoffload.bench.synflood import render
from tests.cli.helpers import run_cli as run


def test_quick_flood_reports_its_rate_and_what_got_through() -> None:
    code, out, err = run("bench", "synflood", "--quick", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["syns"] == 20_000 and data["syn_per_s"] > 0
    assert data["transfer_intact"] is True and data["transfer_bytes"] == 1_000_000
    assert data["half_open_max"] <= data["backlog"]
    console = Console(file=io.StringIO(), width=120)
    render(data, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "SYNs a second" in text and "20,000" in text
