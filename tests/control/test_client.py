"""Finding processes, asking them, and cleaning up after dead ones, in this process.

A server here is served from a thread that polls it the way an owner's loop
would; a server nobody services stands for a process too busy to answer.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from netoffload.control import (
    ControlError,
    ControlServer,
    NotAnswering,
    ProcessState,
    RemoteError,
    clean_sockets,
    list_processes,
    parse_socket_name,
    request,
    resolve,
)
from tests.control.child import dead_pid, leave_stale_socket


@contextmanager
def serving(server: ControlServer) -> Iterator[ControlServer]:
    """``server`` answered from a thread running a poll loop, until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        poller = select.poll()
        poller.register(server.fileno(), select.POLLIN)
        while not stop.is_set():
            if poller.poll(50):
                server.service()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join()


@pytest.fixture
def stats_server() -> Iterator[ControlServer]:
    with ControlServer("testproc", "counter") as server:
        server.register("stats", lambda args: {"rx": {"packets": 7}, "asked": args})
        with serving(server):
            yield server


def test_socket_names_parse_back() -> None:
    assert parse_socket_name("nc-peer-a.b-1234.sock") == ("nc", "peer-a.b", 1234)
    assert parse_socket_name("demo-demo-1.sock") == ("demo", "demo", 1)
    for other in ("nc-1234.sock", "nc-x-0.sock", "nc-x-12.socket", "NC-x-1.sock", "nso-1-abc"):
        assert parse_socket_name(other) is None


def test_request_by_name_kind_name_pid_and_path(stats_server: ControlServer) -> None:
    pid = str(os.getpid())
    for target in ("counter", "testproc:counter", pid, stats_server.path):
        assert resolve(target) == stats_server.path
        assert request(target, "stats", {"n": 1}) == {"rx": {"packets": 7}, "asked": {"n": 1}}


def test_one_line_errors(stats_server: ControlServer) -> None:
    with pytest.raises(ControlError, match=r"^no netoffload process named 'x'$"):
        request("x", "stats")
    with pytest.raises(ControlError, match=r"^no netoffload process 'nc:counter'$"):
        request("nc:counter", "stats")
    with pytest.raises(ControlError, match=r"^no netoffload process with pid 1$"):
        request("1", "stats")
    with pytest.raises(RemoteError, match=r"^counter: unknown op 'enable'") as info:
        request("counter", "enable")
    assert (info.value.op, info.value.target) == ("enable", "counter")
    with pytest.raises(ControlError, match="not JSON"):
        request("counter", "stats", {"x": object()})


def test_two_running_processes_with_one_name_are_ambiguous(stats_server: ControlServer) -> None:
    pid = os.getpid()
    with ControlServer("other", "counter"), pytest.raises(ControlError) as info:
        resolve("counter")
    assert str(info.value) == (
        f"2 netoffload processes match 'counter' (other:counter pid {pid}, "
        f"testproc:counter pid {pid}): give kind:name or a pid"
    )
    assert request("testproc:counter", "stats")["rx"] == {"packets": 7}


def test_a_process_that_does_not_answer_in_time(run_dir: Path) -> None:
    with ControlServer("testproc", "busy") as busy:  # nobody calls service()
        with pytest.raises(NotAnswering, match=r"^busy did not answer within 0\.2s$"):
            request("busy", "stats", timeout_s=0.2)
        (info,) = list_processes(timeout_s=0.2)
        assert info.state is ProcessState.NOT_ANSWERING
        assert info.error == "it did not answer within 0.2s"
        assert (info.name, info.kind, info.pid, info.path) == (
            "busy",
            "testproc",
            os.getpid(),
            busy.path,
        )


def test_a_stale_socket_is_not_running(run_dir: Path) -> None:
    dead = dead_pid()
    leave_stale_socket(run_dir, f"testproc-ghost-{dead}.sock")
    with pytest.raises(
        ControlError, match=r"^ghost is not running \(stale socket .*netoffload clean"
    ):
        request("ghost", "stats")


def test_list_processes_reports_running_stale_and_silent(
    run_dir: Path, stats_server: ControlServer
) -> None:
    dead = dead_pid()
    leave_stale_socket(run_dir, f"testproc-ghost-{dead}.sock")
    leave_stale_socket(run_dir, f"testproc-orphan-{os.getpid()}.sock")  # alive pid, no listener
    (run_dir / f"testproc-file-{dead}.sock").touch()  # not a socket: not ours
    leave_stale_socket(run_dir, "something-else.sock")
    with ControlServer("testproc", "silent"):
        found = {p.name: p for p in list_processes(timeout_s=0.3)}
    assert set(found) == {"counter", "ghost", "orphan", "silent"}
    counter = found["counter"]
    assert counter.state is ProcessState.RUNNING and not counter.stale
    assert counter.ops == ("hello", "ops", "stats")
    assert counter.uptime_s is not None and counter.started == stats_server.started
    assert found["ghost"].stale and found["ghost"].error == f"process {dead} is gone"
    assert found["orphan"].stale and found["orphan"].error == "nobody listens on its socket"
    assert found["silent"].state is ProcessState.NOT_ANSWERING
    assert counter.as_json()["state"] == "running"
    assert found["ghost"].as_json()["state"] == "stale"


def test_nothing_to_list_when_the_directory_does_not_exist(run_dir: Path) -> None:
    assert not run_dir.exists()
    assert list_processes() == []
    assert clean_sockets().removed == ()


def test_clean_sockets_removes_the_dead_keeps_the_living(
    run_dir: Path, stats_server: ControlServer
) -> None:
    dead = dead_pid()
    ghost = leave_stale_socket(run_dir, f"testproc-ghost-{dead}.sock")

    dry = clean_sockets(dry_run=True)
    assert [(i.kind, i.name, i.creator_pid, i.creator_alive) for i in dry.removed] == [
        ("socket", ghost.name, dead, False)
    ]
    assert [i.name for i in dry.kept] == [Path(stats_server.path).name]
    assert ghost.exists()

    report = clean_sockets()
    assert [i.name for i in report.removed] == [ghost.name]
    assert not ghost.exists()
    assert os.path.exists(stats_server.path)

    everything = clean_sockets(everything=True, dry_run=True)
    assert [i.name for i in everything.removed] == [Path(stats_server.path).name]
    assert os.path.exists(stats_server.path)
