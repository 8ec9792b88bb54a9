"""`netoffload bench tap`: result keys, cleanup, and a one-line error without privileges."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from netoffload.bench import tap as bench_tap
from netoffload.cli import main
from netoffload.device.base import DeviceError
from tests.netns_helpers import own_namespaces


def test_not_root_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_tap.os, "geteuid", lambda: 1000)
    with pytest.raises(DeviceError, match="needs root"):
        bench_tap.run(quick=True)
    result = CliRunner().invoke(main, ["bench", "tap", "--quick"])
    assert result.exit_code != 0
    assert result.stderr.strip().startswith("Error: bench tap needs root")
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.privileged
def test_quick_run_reports_both_directions_and_cleans_up() -> None:
    before = own_namespaces()
    result = CliRunner().invoke(main, ["bench", "tap", "--quick", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    for direction in ("write", "read"):
        for state in ("on", "off"):
            assert data[f"{direction}_gbit_per_s_{state}"] > 0
            assert data[f"{direction}_frames_per_s_{state}"] > 0
        assert data[f"{direction}_ratio"] > 0
        # With offloads on, each frame carries a super-packet: far fewer frames per byte.
        fps_off = data[f"{direction}_frames_per_s_off"] / data[f"{direction}_gbit_per_s_off"]
        fps_on = data[f"{direction}_frames_per_s_on"] / data[f"{direction}_gbit_per_s_on"]
        assert fps_on * 10 < fps_off
    assert own_namespaces() == before


@pytest.mark.privileged
def test_table_output() -> None:
    result = CliRunner().invoke(main, ["bench", "tap", "--quick"])
    assert result.exit_code == 0, result.stderr
    assert "write (host" in result.stdout and "read (kernel" in result.stdout
    assert "on / off" in result.stdout
