"""`netoffload demo`: both modes deliver every byte; the JSON has the promised keys."""

from __future__ import annotations

import json

from click.testing import CliRunner

from netoffload.cli import main


def test_demo_json_small_run() -> None:
    result = CliRunner().invoke(main, ["demo", "--json", "--bytes", str(2 * 1024 * 1024)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["bytes_sent"] == 2 * 2 * 1024 * 1024
    assert data["bytes_verified"] == data["bytes_sent"]
    for mode in ("offload_on", "offload_off"):
        assert data[mode]["gbit_per_s"] > 0
        assert data[mode]["host_cpu_s_per_gb"] > 0
        assert data[mode]["sender_stats"]["drops"] == {}
    # With offload on the NICs did the work; with it off the host did.
    assert data["offload_on"]["sender_stats"]["tasks"]["tcp_segmentation"] > 0
    assert data["offload_on"]["receiver_stats"]["tasks"]["tcp_assembly"] > 0
    assert data["offload_off"]["host_stats"]["tasks"]["tcp_segmentation"] > 0
    assert data["offload_off"]["sender_stats"]["tasks"] == {}
    assert data["enabled"]["offload_off"] == []
    assert "tcp_segmentation" in data["enabled"]["offload_on"]
    records = data["capabilities"]["nic-a"]["records"]
    assert {r["task"] for r in records} >= {"checksum", "tcp_segmentation", "udp_assembly"}


def test_demo_table() -> None:
    result = CliRunner().invoke(main, ["demo", "--bytes", str(1024 * 1024)])
    assert result.exit_code == 0, result.output
    assert "capability chain" in result.output
    assert "host CPU s per GB" in result.output
    assert "arrived intact in both modes" in result.output


def test_demo_reports_the_throughput_ratio() -> None:
    result = CliRunner().invoke(main, ["demo", "--json", "--bytes", str(1024 * 1024)])
    data = json.loads(result.output)
    on, off = data["offload_on"]["gbit_per_s"], data["offload_off"]["gbit_per_s"]
    assert data["throughput_ratio_on_over_off"] == on / off


def test_demo_size_is_bounded() -> None:
    result = CliRunner().invoke(main, ["demo", "--bytes", str(2**31)])
    assert result.exit_code != 0
    assert "1073741824" in result.output and "Traceback" not in result.output
