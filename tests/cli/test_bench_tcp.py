"""`netoffload bench tcp`: result keys, which path each run took, the chart, cleanup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from netoffload.bench import tcp as bench_tcp
from netoffload.cli import main
from netoffload.device.base import DeviceError
from tests.netns_helpers import own_namespaces

KEYS = (
    "ours_on_gbit_per_s",
    "ours_off_gbit_per_s",
    "kernel_gbit_per_s",
    "ratio_on_over_off",
    "ratio_on_over_kernel",
    "ours_on_cpu_s_per_gb",
    "ours_off_cpu_s_per_gb",
)


def test_not_root_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_tcp.os, "geteuid", lambda: 1000)
    with pytest.raises(DeviceError, match="needs root"):
        bench_tcp.run(quick=True)
    result = CliRunner().invoke(main, ["bench", "tcp", "--quick"])
    assert result.exit_code != 0
    assert result.stderr.strip() == (
        "Error: bench tcp needs root (CAP_NET_ADMIN) to create namespaces and TAPs"
    )


def test_plot_to_an_unwritable_place_is_a_one_line_error(tmp_path: Path) -> None:
    result = {
        "kernel": "x",
        "tx": {k: 1.0 for k in KEYS},
        "rx": {k: 2.0 for k in KEYS},
    }
    with pytest.raises(DeviceError, match="cannot write"):
        bench_tcp.plot(result, str(tmp_path / "missing" / "chart.png"))


@pytest.mark.privileged
def test_quick_run_reports_both_directions_the_paths_taken_and_a_chart(tmp_path: Path) -> None:
    before = own_namespaces()
    chart = tmp_path / "tcp.png"
    result = CliRunner().invoke(main, ["bench", "tcp", "--quick", "--json", "--plot", str(chart)])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= {"tx", "rx"}
    for direction in ("tx", "rx"):
        r = data[direction]
        for key in KEYS:
            assert r[key] > 0, (direction, key)
        assert r["ratio_on_over_off"] == pytest.approx(
            r["ours_on_gbit_per_s"] / r["ours_off_gbit_per_s"], rel=0.02
        )
        # Each run took the path its label says, and only that one.
        decisions = r["offload_decisions"]
        assert set(decisions["on"]) == {"device"} and decisions["on"]["device"] > 0
        assert set(decisions["off"]) == {"host"} and decisions["off"]["host"] > 0
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert own_namespaces() == before
