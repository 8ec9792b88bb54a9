"""`netoffload vswitch run|stats` and `netoffload bench vswitch` as a user runs them."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from rich.console import Console

from netoffload.bench.vswitch import render
from netoffload.netns import Netns
from tests.cli.helpers import one_line_error, run_cli

ADDRESSES = ("198.18.0.10", "198.18.0.11")


@contextmanager
def running_switch(*args: str, ns: Netns | None = None) -> Iterator[subprocess.Popen[bytes]]:
    command = [sys.executable, "-m", "netoffload.cli", "vswitch", "run", *args]
    pipes: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = subprocess.Popen(command, **pipes) if ns is None else ns.popen(command, **pipes)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _stats_when(
    name: str, ready: Any, proc: subprocess.Popen[bytes], timeout_s: float = 30
) -> dict[str, Any]:
    """The switch's stats once ``ready(stats)`` holds (asked until then, bounded)."""
    end = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.communicate()
        code, out, _ = run_cli("vswitch", "stats", name, "--json")
        if code == 0:
            stats = json.loads(out)
            if ready(stats):
                return stats  # type: ignore[no-any-return]
        assert time.monotonic() < end, f"never ready: {out}"
        time.sleep(0.1)


def _attached(count: int) -> Any:
    return lambda s: sum(g["state"] == "attached" for g in s["guests"]) == count


def test_run_then_stats_shows_every_guest_and_stops_cleanly() -> None:
    with running_switch("--guests", "2", "--name", "clisw", "--vlan", "10") as proc:
        stats = _stats_when("clisw", _attached(2), proc)
        assert [g["name"] for g in stats["guests"]] == ["g0", "g1"]
        assert {g["vlans"] for g in stats["guests"]} == {"access:10"}
        assert stats["uplink"]["kind"] == "softnic"
        assert stats["uplink"]["maps_guest_windows"] is False
        assert all(g["buffers"]["posted"] == 64 for g in stats["guests"])
        code, out, err = run_cli("vswitch", "stats")  # the only one running: no name needed
        assert code == 0, err
        assert "g0" in out and "g1" in out and "maps no guest window" in out
        assert "payload bytes copied on unicast receive: 0" in out
        proc.send_signal(signal.SIGINT)
        raw_out, raw_err = proc.communicate(timeout=30)
    out, err = raw_out.decode(), raw_err.decode()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("clisw: uplink softnic") and "2 guests" in lines[0]
    assert sum(line.startswith("guest g") for line in lines) == 2
    assert lines[-1].startswith("clisw: stopped;")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["vswitch", "stats"], "no virtual switch is running"),
        (["vswitch", "stats", "nosuch"], "no netoffload process named 'nosuch'"),
        (["vswitch", "run", "--uplink", "bogus:x"], "unknown device 'bogus:x'"),
        (["vswitch", "run", "--uplink", "tap"], "'tap' needs an interface name"),
        (["vswitch", "run", "--vlan", "trunk:"], "a port must be in at least one VLAN"),
        (["vswitch", "run", "--vlan", "9999"], "VLAN 9999 not in 0..4094"),
        (["vswitch", "run", "--subnet", "nonsense"], "not a subnet: 'nonsense'"),
        (
            ["vswitch", "run", "--subnet", "198.18.0.0/24", "--vlan", "trunk:10"],
            "a guest with a stack needs untagged frames",
        ),
        (["vswitch", "run", "--rule", "flow-type tcp4 nonsense"], "bad classification rule"),
    ],
)
def test_errors_are_one_line(args: list[str], message: str) -> None:
    err = one_line_error(*run_cli(*args))
    assert message in err


@pytest.fixture(scope="module")
def bench_result() -> dict[str, Any]:
    """One quick run of the benchmark, shared by the tests that read it."""
    code, out, err = run_cli("bench", "vswitch", "--quick", "--json")
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def test_bench_vswitch_json_has_the_figures_the_issue_asks_for(
    bench_result: dict[str, Any],
) -> None:
    result = bench_result
    for key in (
        "zero_copy_gbit_per_s_64k",
        "copy_gbit_per_s_64k",
        "zero_copy_mpps_1500",
        "copy_mpps_1500",
        "payload_bytes_copied_zero_copy_path",
    ):
        assert key in result, key
    assert result["payload_bytes_copied_zero_copy_path"] == 0
    assert result["payload_bytes_copied_copy_path"] > 0  # the copy path did copy, and said so
    assert result["zero_copy_gbit_per_s_64k"] > 0 and result["copy_gbit_per_s_64k"] > 0
    cases = result["cases"]
    assert set(cases) == {"zero_copy_1500", "copy_1500", "zero_copy_64k", "copy_64k"}
    assert all(c["packets"] > 0 for c in cases.values())


def test_bench_vswitch_renders_a_table(bench_result: dict[str, Any]) -> None:
    out = io.StringIO()
    render(bench_result, Console(file=out, width=120))
    text = out.getvalue()
    assert "64 KiB" in text and "1500 B" in text and "zero-copy path 0" in text
    ratio = f"{bench_result['ratio_64k']:.1f}x"
    assert ratio in text


@pytest.mark.privileged
def test_the_kernel_pings_guests_behind_a_tap_uplink() -> None:
    with Netns() as ns:
        args = ("--guests", "2", "--uplink", "tap:nsovsw1", "--subnet", "198.18.0.0/24")
        with running_switch(*args, "--name", "tapsw", ns=ns) as proc:
            end = time.monotonic() + 30
            while "nsovsw1" not in ns.link_names():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < end, "the TAP never appeared"
                time.sleep(0.05)
            ns.add_address("nsovsw1", "198.18.0.1/24")
            _stats_when("tapsw", _attached(2), proc)
            for address in ADDRESSES:
                out = ns.exec("ping", "-c", "2", "-i", "0.2", "-W", "5", address)
                assert " 0% packet loss" in out, out
            stats = _stats_when("tapsw", lambda s: True, proc)
    assert stats["uplink"]["kind"] == "tap" and stats["uplink"]["maps_guest_windows"] is True
    for guest in stats["guests"]:
        assert guest["rx_packets"] >= 3  # an ARP request and two echo requests at least
        assert guest["tx_packets"] >= 3
    # Copied once from the TAP's buffer into each guest, and counted.
    assert stats["payload_bytes_copied_unicast_rx"] > 0
