"""`netoffload clean`: leftovers of killed runs go, those of running processes stay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pyroute2 import netns as pyroute2_netns

from netoffload import netns
from netoffload.cli import main


def _clean(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["clean", *args])
    return result.exit_code, result.stdout, result.stderr


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def netns_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /var/run/netns holding plain files (unlink is all a delete needs)."""
    monkeypatch.setattr(netns, "NETNS_DIR", str(tmp_path))
    return tmp_path


def test_one_line_per_removal_and_a_summary(netns_dir: Path) -> None:
    dead = _dead_pid()
    gone, running = f"nso-{dead}-0000000b", f"nso-{os.getpid()}-0000000c"
    for name in (gone, running, "somebody-elses"):
        (netns_dir / name).touch()

    code, out, err = _clean("--dry-run")
    assert code == 0, err
    assert out.splitlines() == [
        f"would remove network namespace {gone} (creator pid {dead} gone)",
        "would remove 1 leftover; left 1 alone (creator still running; --all removes them)",
    ]
    assert (netns_dir / gone).exists()

    code, out, err = _clean()
    assert code == 0, err
    assert out.splitlines()[0] == f"removed network namespace {gone} (creator pid {dead} gone)"
    assert sorted(p.name for p in netns_dir.iterdir()) == sorted([running, "somebody-elses"])

    code, out, _ = _clean()
    assert out.splitlines() == [
        "removed 0 leftovers; left 1 alone (creator still running; --all removes them)"
    ]
    code, out, _ = _clean("--all")
    assert out.splitlines() == [
        f"removed network namespace {running} (creator pid {os.getpid()} still running)",
        "removed 1 leftover",
    ]
    code, out, _ = _clean()
    assert (code, out) == (0, "nothing to clean up\n")


def test_json(netns_dir: Path) -> None:
    dead = _dead_pid()
    (netns_dir / f"nso-{dead}-0000000d").touch()
    code, out, _ = _clean("--json", "--dry-run")
    assert code == 0
    assert json.loads(out) == {
        "dry_run": True,
        "all": False,
        "removed": [
            {
                "kind": "netns",
                "name": f"nso-{dead}-0000000d",
                "creator_pid": dead,
                "creator_alive": False,
            }
        ],
        "kept": [],
        "errors": [],
    }


def test_a_namespace_that_will_not_go_is_an_error_line_and_exit_1(netns_dir: Path) -> None:
    dead = _dead_pid()
    stuck, fine = f"nso-{dead}-0000000e", f"nso-{dead}-0000000f"
    (netns_dir / stuck).mkdir()
    (netns_dir / fine).touch()
    code, out, err = _clean()
    assert code == 1
    assert f"removed network namespace {fine}" in out  # the others are still removed
    assert err.splitlines() == [
        f"Error: cannot remove network namespace {stuck} (creator pid {dead} gone): Is a directory"
    ]
    assert "Traceback" not in out + err


def test_without_privileges_one_line(netns_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (netns_dir / f"nso-{_dead_pid()}-00000010").touch()

    def refuse(path: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(netns, "_delete", refuse)
    code, out, err = _clean()
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("Error: cannot remove network namespace nso-")
    assert err.rstrip().endswith("Operation not permitted (removing namespaces needs root)")
    assert "Traceback" not in out + err


# -- against the kernel -------------------------------------------------------------

_CREATOR = (
    "import time\n"
    "from netoffload.netns import Netns\n"
    "ns = Netns()\n"
    "print(ns.name, flush=True)\n"
    "time.sleep(120)\n"
)


def _creator() -> tuple[subprocess.Popen[str], str]:
    """A process that made a namespace and is now waiting."""
    child = subprocess.Popen([sys.executable, "-c", _CREATOR], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, child.stdout.readline().strip()


@pytest.fixture
def creators() -> Iterator[list[tuple[subprocess.Popen[str], str]]]:
    """Started creators; afterwards every one is killed and its namespace removed."""
    made: list[tuple[subprocess.Popen[str], str]] = []
    try:
        yield made
    finally:
        for child, name in made:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
            if name in pyroute2_netns.listnetns():
                pyroute2_netns.remove(name)


@pytest.mark.privileged
def test_a_killed_runs_namespace_is_cleaned_a_running_ones_is_not(
    creators: list[tuple[subprocess.Popen[str], str]],
) -> None:
    killed, killed_name = _creator()
    creators.append((killed, killed_name))
    running, running_name = _creator()
    creators.append((running, running_name))
    assert netns.creator_of(killed_name) == killed.pid
    assert {killed_name, running_name} <= set(pyroute2_netns.listnetns())

    killed.send_signal(signal.SIGKILL)
    killed.wait()

    code, out, err = _clean("--json")
    assert code == 0, err
    result = json.loads(out)
    assert killed_name in {item["name"] for item in result["removed"]}
    assert running_name in {item["name"] for item in result["kept"]}
    assert running_name not in {item["name"] for item in result["removed"]}
    namespaces = set(pyroute2_netns.listnetns())
    assert killed_name not in namespaces
    assert running_name in namespaces

    # --all names the running one too; --dry-run leaves it where it is.
    code, out, err = _clean("--all", "--dry-run", "--json")
    assert code == 0, err
    assert running_name in {item["name"] for item in json.loads(out)["removed"]}
    assert running_name in pyroute2_netns.listnetns()
    assert running.poll() is None
