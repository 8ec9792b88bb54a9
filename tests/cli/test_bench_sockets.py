"""`netoffload bench sockets`: the keys, the user-level fraction of the "ours" runs, cleanup."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from netoffload.bench import sockets as bench_sockets
from netoffload.cli import main
from tests.netns_helpers import own_namespaces

KEYS = (
    "ours_rr_per_s",
    "os_rr_per_s",
    "ours_bulk_gbit_per_s",
    "os_bulk_gbit_per_s",
)


def test_not_root_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_sockets.os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(main, ["bench", "sockets", "--quick", "--json"])
    assert result.exit_code != 0
    assert result.stderr.strip() == (
        "Error: bench sockets needs root (CAP_NET_ADMIN) to create namespaces and TAPs"
    )


@pytest.mark.privileged
def test_quick_json_has_the_rates_and_every_byte_of_ours_on_the_user_level_path() -> None:
    before = own_namespaces()
    result = CliRunner().invoke(main, ["bench", "sockets", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in KEYS:
        assert math.isfinite(data[key]) and data[key] > 0, key
    assert data["user_level_bytes_fraction"] == 1.0
    assert data["ours_os_ip_bytes"] == 0
    # Both "ours" runs connected on the user-level path, and nothing else was chosen.
    assert data["ours_selections"] == {"user_level/connect": 2}
    assert data["ours_user_level_bytes"] >= data["bulk_bytes"]
    assert own_namespaces() == before


def test_render_prints_both_columns() -> None:
    result = {
        "kernel": "6.x",
        "rounds": 1,
        "rr_message_bytes": 64,
        "bulk_bytes": 64 << 20,
        "bulk_block_bytes": 1 << 18,
        "ours_rr_per_s": 2000.0,
        "os_rr_per_s": 4000.0,
        "ours_bulk_gbit_per_s": 2.5,
        "os_bulk_gbit_per_s": 5.0,
        "ratio_rr_ours_over_os": 0.5,
        "ratio_bulk_ours_over_os": 0.5,
        "user_level_bytes_fraction": 1.0,
        "ours_selections": {"user_level/connect": 2},
    }
    from rich.console import Console

    console = Console(record=True, width=160)
    bench_sockets.render(result, console)
    text = console.export_text()
    assert "request/response" in text and "2,000" in text and "4,000" in text
    assert "2.50" in text and "5.00" in text and "user_level_bytes_fraction (ours): 1.0" in text
