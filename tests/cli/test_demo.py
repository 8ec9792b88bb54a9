"""`netoffload demo`: both modes deliver every byte; the JSON has the promised keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from netoffload.cli import main
from netoffload.control import ENV_RUN_DIR, NotAnswering, list_processes, request


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
    on, off = data["offload_on"], data["offload_off"]
    # With offload on the NICs did the work; with it off the host did.
    assert on["sender_stats"]["tasks"]["tcp_segmentation"] > 0
    assert on["receiver_stats"]["tasks"]["tcp_assembly"] > 0
    assert on["receiver_stats"]["tasks"]["udp_assembly"] > 0
    assert off["host_stats"]["tasks"]["udp_segmentation"] > 0
    assert off["host_stats"]["tasks"]["checksum"] > 0
    assert off["sender_stats"]["tasks"] == {} and off["receiver_stats"]["tasks"] == {}
    # Each stack's policy chose the path its mode names, and nothing else.
    for side in ("a", "b"):
        assert set(on["offload_decisions"][side]) == {"device"}
        assert set(off["offload_decisions"][side]) == {"host"}
    # Real TCP: the same stream is about bytes / MSS segments either way, but with
    # super-packets the hosts hand their NICs and take from them far fewer packets.
    tcp_bytes = data["flows"]["tcp"]["bytes"]
    for mode in (on, off):
        assert mode["tcp"]["a"]["segments_out"] >= tcp_bytes // data["flows"]["tcp"]["mss"]
    assert on["tcp"]["a"]["super_packets_out"] > 0 and off["tcp"]["a"]["super_packets_out"] == 0
    assert on["packets_received"] * 5 < off["packets_received"]
    assert on["packets_posted"] * 5 < off["packets_posted"]
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


def test_a_running_demo_serves_its_stacks_counters(run_dir: Path) -> None:
    """`netoffload list` shows the demo while it runs and `stats` reads both stacks' counters
    (policy decisions, TCP, drops); the socket is gone once it is interrupted."""
    env = {**os.environ, ENV_RUN_DIR: str(run_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "netoffload.cli", "demo", "--json", "--bytes", str(1 << 29)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        name = f"demo-{proc.pid}"
        stats: dict[str, object] | None = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(p.name == name for p in list_processes()):
                try:
                    reply = request(name, "stats")
                except NotAnswering:
                    continue  # busy making its streams or starting its NICs: not serving yet
                assert isinstance(reply, dict)
                if "stacks" in reply and reply["stacks"]["a"]["policy"]["decisions"]:
                    stats = reply
                    break
            time.sleep(0.05)
        assert stats is not None, "the demo never answered with live counters"
        assert stats["mode"] in ("offload on", "offload off")
        for side in ("a", "b"):
            stack = stats["stacks"][side]  # type: ignore[index]
            assert set(stack) >= {"policy", "tcp", "udp", "interfaces", "ip"}
        decisions = stats["stacks"]["a"]["policy"]["decisions"]  # type: ignore[index]
        expected = "device" if stats["mode"] == "offload on" else "host"
        assert set(decisions) == {expected}
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err.decode()
    assert not list(run_dir.glob("*.sock"))
