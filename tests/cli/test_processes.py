"""`netoffload list`, `stats`, `enable --process` and `clean` against a running process.

The process is ``tests/control/control_child.py``: a real netoffload process
serving a control socket in ``$NETOFFLOAD_RUN_DIR`` (a private directory).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from netoffload.cli.processes import flatten, format_uptime
from netoffload.control import MAX_MESSAGE_BYTES, request
from tests.cli.helpers import one_line_error, run_cli
from tests.control.child import running_child


def test_list_shows_a_running_process() -> None:
    with running_child("alpha") as child:
        code, out, err = run_cli("list")
        assert code == 0, err
        row = next(line for line in out.splitlines() if "alpha" in line)
        for cell in ("testproc", str(child.pid), "running"):
            assert cell in row
        assert "fail, stats, stop" in out  # the built-ins are left out of the table

        code, out, err = run_cli("list", "--json")
        assert code == 0, err
        (process,) = json.loads(out)
        assert {k: process[k] for k in ("name", "kind", "pid", "state", "path")} == {
            "name": "alpha",
            "kind": "testproc",
            "pid": child.pid,
            "state": "running",
            "path": child.path,
        }
        assert process["ops"] == ["fail", "hello", "ops", "stats", "stop"]
        assert process["uptime_s"] >= 0 and process["version"]


def test_list_with_nothing_running() -> None:
    assert run_cli("list") == (0, "no netoffload process is running\n", "")
    assert run_cli("list", "--json") == (0, "[]\n", "")


def test_stats_prints_the_counters_flattened() -> None:
    with running_child("beta") as child:
        code, out, err = run_cli("stats", "beta")
        assert code == 0, err
        rows = {}
        for line in out.splitlines():
            cells = [c.strip() for c in line.strip("│ ").split("│")]
            if len(cells) == 2:
                rows[cells[0]] = cells[1]
        assert rows["rx.packets"] == "1234"
        assert rows["rx.bytes"] == "1500000"
        assert rows["queues.0.depth"] == "3"
        assert rows["queues.1.depth"] == "0"
        assert rows["errors"] == "{}"
        assert rows["calls.stats"] == "1"

        for target in ("testproc:beta", str(child.pid), child.path):
            code, out, err = run_cli("stats", target, "--json")
            assert code == 0, err
            stats = json.loads(out)
            assert stats["rx"] == {"packets": 1234, "bytes": 1500000}
            assert list(stats) == ["calls", "rx", "queues", "errors"]  # as the process sent it


def test_stats_errors_are_one_line() -> None:
    err = one_line_error(*run_cli("stats", "nobody"))
    assert err == "Error: no netoffload process named 'nobody'"
    with running_child("gamma"):
        err = one_line_error(*run_cli("enable", "--process", "gamma", "softnic0", "checksum", "on"))
        assert err.startswith("Error: gamma: unknown op 'enable'; gamma serves: fail, hello")


def test_enable_process_changes_the_device_inside_the_process() -> None:
    with running_child("delta", softnic=True):
        code, out, err = run_cli(
            "enable", "--process", "delta", "softnic0", "tcp_segmentation", "off"
        )
        assert code == 0, err
        assert "softnic0 in delta: offload capabilities" in out
        row = next(line for line in out.splitlines() if "tcp_segmentation" in line)
        assert " off " in row

        code, out, err = run_cli("caps", "--process", "delta", "softnic0", "--json")
        assert code == 0, err
        by_task = {r["task"]: r for r in json.loads(out)}
        assert by_task["tcp_segmentation"]["enabled"] is False
        assert by_task["checksum"]["enabled"] is True

        code, out, err = run_cli(
            "enable", "--process", "delta", "softnic0", "tcp-segmentation", "on", "--json"
        )
        assert code == 0, err
        by_task = {r["task"]: r for r in json.loads(out)}
        assert by_task["tcp_segmentation"]["enabled"] is True

        err = one_line_error(*run_cli("enable", "--process", "delta", "eth9", "checksum", "on"))
        assert err == "Error: delta: no device 'eth9' in this process (devices: softnic0)"
        err = one_line_error(*run_cli("enable", "--process", "delta", "softnic0", "warp", "on"))
        assert "unknown task 'warp'" in err


def test_misbehaving_clients_do_not_stop_it_answering() -> None:
    with running_child("epsilon") as child:
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        silent.connect(child.path)  # and never writes
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as rude:
            rude.settimeout(10)
            rude.connect(child.path)
            rude.send(b"\x00\xffnot json at all")
            assert json.loads(rude.recv(MAX_MESSAGE_BYTES))["ok"] is False
            rude.send(b"{" * (MAX_MESSAGE_BYTES + 1000))
            reply = json.loads(rude.recv(MAX_MESSAGE_BYTES))
            assert reply["ok"] is False and "larger than" in reply["error"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as gone:
            gone.connect(child.path)
            gone.send(b'{"op": "stats"}')  # and hangs up before the reply
        code, out, err = run_cli("stats", "epsilon", "--json")
        assert code == 0, err
        assert json.loads(out)["rx"]["packets"] == 1234
        code, out, err = run_cli("stats", "epsilon", "--timeout", "5")
        assert code == 0, err
        assert "rx.packets" in out
        silent.close()


def test_a_killed_process_is_listed_stale_and_cleaned(run_dir: Path) -> None:
    with running_child("zeta") as killed, running_child("eta") as running:
        killed.kill()
        assert os.path.exists(killed.path)

        code, out, err = run_cli("list", "--json")
        assert code == 0, err
        states = {p["name"]: p["state"] for p in json.loads(out)}
        assert states == {"zeta": "stale", "eta": "running"}
        code, out, _ = run_cli("list")
        assert "stale" in next(line for line in out.splitlines() if "zeta" in line)

        err = one_line_error(*run_cli("stats", "zeta"))
        assert "zeta is not running (stale socket" in err

        name = Path(killed.path).name
        code, out, err = run_cli("clean", "--dry-run")
        assert code == 0, err
        assert f"would remove control socket {name} (creator pid {killed.pid} gone)" in out
        assert os.path.exists(killed.path)

        code, out, err = run_cli("clean", "--json")
        assert code == 0, err
        result = json.loads(out)
        assert [i["name"] for i in result["removed"] if i["kind"] == "socket"] == [name]
        assert [i["name"] for i in result["kept"] if i["kind"] == "socket"] == [
            Path(running.path).name
        ]
        assert not os.path.exists(killed.path)
        assert os.path.exists(running.path)

        code, out, err = run_cli("clean", "--all", "--dry-run")
        assert code == 0, err
        assert f"would remove control socket {Path(running.path).name}" in out
        assert os.path.exists(running.path)
        assert request("eta", "stats")["rx"]["packets"] == 1234


def test_a_process_that_stops_removes_its_socket() -> None:
    with running_child("theta") as child:
        assert request("theta", "stop") == "stopping"
        assert child.proc.wait(timeout=30) == 0
        assert not os.path.exists(child.path)
    with running_child("iota") as child:
        child.proc.terminate()
        assert child.proc.wait(timeout=30) == 0
        assert not os.path.exists(child.path)


def test_flatten_and_uptime() -> None:
    assert flatten({"a": {"b": {"c": 1}}, "l": [1, "x", None], "e": [], "t": True}) == [
        ("a.b.c", "1"),
        ("l", "1, x, null"),
        ("e", "[]"),
        ("t", "true"),
    ]
    assert flatten([{"n": 1}, {"n": 2.5}]) == [("0.n", "1"), ("1.n", "2.5")]
    assert flatten(42) == [("", "42")]
    assert [format_uptime(s) for s in (0, 59.9, 61, 3600 * 3 + 420, 86400 * 2 + 3600 * 4)] == [
        "0s",
        "59s",
        "1m 01s",
        "3h 07m",
        "2d 04h",
    ]
