"""ControlServer in this process: the protocol, hostile clients, and its socket's lifetime.

The test is the client and calls ``service()`` itself, so every exchange is
deterministic: AF_UNIX delivers a message to the peer's queue before ``send``
returns.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netoffload import __version__
from netoffload.control import (
    MAX_MESSAGE_BYTES,
    ControlError,
    ControlServer,
    attach_to_loop,
    request,
)
from tests.control.child import dead_pid, leave_stale_socket


@pytest.fixture
def server() -> Iterator[ControlServer]:
    with ControlServer("testproc", "unit") as srv:
        srv.register("echo", lambda args: args)
        yield srv


def connect(server: ControlServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(10)
    sock.connect(server.path)
    return sock


def exchange(server: ControlServer, sock: socket.socket, message: bytes) -> dict[str, Any]:
    sock.send(message)
    server.service()
    reply = json.loads(sock.recv(MAX_MESSAGE_BYTES + 1))
    assert isinstance(reply, dict)
    return reply


def ask(server: ControlServer, sock: socket.socket, op: str, **args: Any) -> dict[str, Any]:
    return exchange(server, sock, json.dumps({"op": op, "args": args}).encode())


# -- the protocol ---------------------------------------------------------------------------


def test_hello_says_who_and_what(server: ControlServer) -> None:
    with connect(server) as sock:
        reply = ask(server, sock, "hello")
    assert reply["ok"] is True
    hello = reply["result"]
    assert (hello["name"], hello["kind"], hello["pid"]) == ("unit", "testproc", os.getpid())
    assert hello["ops"] == ["echo", "hello", "ops"]
    assert hello["version"] == __version__
    assert hello["protocol"] == 1
    assert hello["started"] == server.started
    assert hello["uptime_s"] >= 0


def test_ops_and_args_reach_the_handler(server: ControlServer) -> None:
    with connect(server) as sock:
        assert ask(server, sock, "ops") == {"ok": True, "result": ["echo", "hello", "ops"]}
        assert ask(server, sock, "echo", a=1, b={"c": [1, 2]}) == {
            "ok": True,
            "result": {"a": 1, "b": {"c": [1, 2]}},
        }
        # "args" may be left out or null; keys a later client adds are ignored.
        for message in (b'{"op": "echo"}', b'{"op": "echo", "args": null, "id": 7}'):
            assert exchange(server, sock, message) == {"ok": True, "result": {}}


def test_a_handler_that_raises_is_a_one_line_error(server: ControlServer) -> None:
    def broken(args: dict[str, Any]) -> None:
        raise ValueError("counter table\nis gone")

    def missing(args: dict[str, Any]) -> object:
        return args["nothing"]

    server.register("broken", broken)
    server.register("missing", missing)
    with connect(server) as sock:
        assert ask(server, sock, "broken") == {"ok": False, "error": "counter table is gone"}
        assert ask(server, sock, "missing") == {"ok": False, "error": "KeyError: 'nothing'"}
        assert ask(server, sock, "echo", still="here")["result"] == {"still": "here"}


def test_an_unknown_op_names_those_served(server: ControlServer) -> None:
    with connect(server) as sock:
        reply = ask(server, sock, "reboot")
    assert reply == {"ok": False, "error": "unknown op 'reboot'; unit serves: echo, hello, ops"}


def test_a_result_that_is_not_json_or_too_big_is_an_error(server: ControlServer) -> None:
    server.register("thing", lambda args: object())
    server.register("nan", lambda args: float("nan"))
    server.register("huge", lambda args: "x" * MAX_MESSAGE_BYTES)
    with connect(server) as sock:
        assert "'thing' returned something that is not JSON" in ask(server, sock, "thing")["error"]
        assert "'nan' returned something that is not JSON" in ask(server, sock, "nan")["error"]
        error = ask(server, sock, "huge")["error"]
        assert error.startswith("the reply to 'huge' is ") and str(MAX_MESSAGE_BYTES) in error


def test_register_refuses_bad_names_and_built_ins(server: ControlServer) -> None:
    for op in ("hello", "ops", "echo"):
        with pytest.raises(ValueError, match="already served"):
            server.register(op, lambda args: None)
    for op in ("", "Stats", "with space", "x" * 33):
        with pytest.raises(ValueError, match="bad op name"):
            server.register(op, lambda args: None)


# -- hostile clients ------------------------------------------------------------------------

GARBAGE = [
    b"\xff\xfe\x00garbage",
    b"not json",
    b"[1, 2, 3]",
    b'"hello"',
    b'{"args": {}}',
    b'{"op": 5}',
    b'{"op": "echo", "args": [1]}',
    b"[" * 50_000,  # deeper than the JSON parser recurses
    b'{"op": "echo", "args": {"n": ' + b"9" * 50_000 + b"}}",  # an integer too long to read
]


@pytest.mark.parametrize("message", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_gets_an_error_reply_and_the_connection_goes_on(
    server: ControlServer, message: bytes
) -> None:
    with connect(server) as sock:
        reply = exchange(server, sock, message)
        assert reply["ok"] is False
        assert "\n" not in reply["error"] and len(reply["error"]) <= 300
        assert ask(server, sock, "echo", after="garbage")["result"] == {"after": "garbage"}


def test_a_message_over_the_limit_is_refused_whole(server: ControlServer) -> None:
    with connect(server) as sock:
        huge = json.dumps({"op": "echo", "args": {"x": "y" * MAX_MESSAGE_BYTES}}).encode()
        reply = exchange(server, sock, huge)
        assert reply == {
            "ok": False,
            "error": f"request is larger than the {MAX_MESSAGE_BYTES} bytes a message may hold",
        }
        # The rest of the big message was discarded with it: the next one reads cleanly.
        assert ask(server, sock, "echo", n=1)["result"] == {"n": 1}


def test_clients_that_never_write_cannot_crowd_out_one_that_does() -> None:
    with ControlServer("testproc", "crowded", max_clients=2) as server:
        silent = []
        for _ in range(6):
            silent.append(connect(server))
            server.service()
            assert server.client_count <= 2
        with connect(server) as sock:
            assert ask(server, sock, "hello")["ok"] is True
        assert server.client_count <= 2
        for sock in silent:
            sock.close()
        server.service()
        assert server.client_count == 0


def test_a_client_that_never_reads_its_replies_is_dropped(server: ControlServer) -> None:
    server.register("page", lambda args: "z" * 16_000)
    flood = connect(server)
    flood.setblocking(False)
    request_bytes = b'{"op": "page"}'
    for _ in range(1000):
        try:
            flood.send(request_bytes)
        except OSError:
            break  # the server hung up on it
        server.service()
    server.service()
    assert server.client_count == 0
    flood.close()
    with connect(server) as sock:
        assert ask(server, sock, "echo", fine=True)["result"] == {"fine": True}


def test_one_service_call_does_bounded_work(server: ControlServer) -> None:
    with connect(server) as sock:
        for n in range(20):
            sock.send(json.dumps({"op": "echo", "args": {"n": n}}).encode())
        first = server.service()
        assert 0 < first < 20
        answered = first
        for _ in range(20):
            answered += server.service()
        assert answered == 20
        replies = [json.loads(sock.recv(MAX_MESSAGE_BYTES))["result"]["n"] for _ in range(20)]
        assert replies == list(range(20))


def test_a_client_that_hangs_up_is_dropped(server: ControlServer) -> None:
    sock = connect(server)
    server.service()
    assert server.client_count == 1
    sock.close()
    server.service()
    assert server.client_count == 0


def test_service_with_nothing_to_do_returns_at_once(server: ControlServer) -> None:
    assert server.service() == 0
    assert server.filenos() == [server.fileno()]


# -- the socket file --------------------------------------------------------------------------


def test_socket_is_0600_in_a_0700_directory_it_made(run_dir: Path, server: ControlServer) -> None:
    assert not os.path.exists(run_dir.parent / "elsewhere")
    assert Path(server.path).parent == run_dir
    assert Path(server.path).name == f"testproc-unit-{os.getpid()}.sock"
    assert stat.S_ISSOCK(os.lstat(server.path).st_mode)
    assert stat.S_IMODE(os.lstat(server.path).st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(run_dir).st_mode) == 0o700


def test_a_directory_others_may_write_is_refused(run_dir: Path) -> None:
    run_dir.mkdir(mode=0o700)
    run_dir.chmod(0o777)
    with pytest.raises(ControlError, match="writable by others"):
        ControlServer("testproc", "unit")


def test_a_path_too_long_for_af_unix_is_one_clear_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    with pytest.raises(ControlError, match="longer than AF_UNIX allows"):
        ControlServer("testproc", "unit", directory=str(deep))


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("Demo", "x"),
        ("demo-x", "x"),
        ("demo", "a/b"),
        ("demo", "a:b"),
        ("demo", "123"),
        ("demo", ".x"),
    ],
)
def test_bad_kinds_and_names_are_refused(kind: str, name: str) -> None:
    with pytest.raises(ValueError, match="bad process"):
        ControlServer(kind, name)


def test_close_removes_the_socket_and_is_idempotent(server: ControlServer) -> None:
    path = server.path
    server.close()
    server.close()
    assert server.closed
    assert not os.path.exists(path)
    assert server.service() == 0
    with pytest.raises(ValueError, match="closed"):
        server.fileno()


def test_a_garbage_collected_server_removes_its_socket() -> None:
    server = ControlServer("testproc", "dropped")
    path = server.path
    del server
    gc.collect()
    assert not os.path.exists(path)


def test_a_process_that_exits_without_closing_removes_its_socket(run_dir: Path) -> None:
    code = (
        "from netoffload.control import ControlServer\n"
        "server = ControlServer('testproc', 'leaver')\n"
        "print(server.path)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    path = out.stdout.strip()
    assert path.startswith(str(run_dir))
    assert not os.path.exists(path)


def test_a_forked_child_leaves_its_parents_socket_alone(server: ControlServer) -> None:
    pid = os.fork()
    if pid == 0:  # the child: closing its copy must not unlink the parent's socket
        server.close()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.path.exists(server.path)
    with connect(server) as sock:
        assert ask(server, sock, "hello")["ok"] is True


def test_a_dead_processs_socket_with_the_same_name_is_replaced(run_dir: Path) -> None:
    old = leave_stale_socket(run_dir, f"testproc-again-{dead_pid()}.sock")
    same_pid = leave_stale_socket(run_dir, f"testproc-again2-{os.getpid()}.sock")
    other = leave_stale_socket(run_dir, f"testproc-someone-{dead_pid()}.sock")
    with ControlServer("testproc", "again") as server, ControlServer("testproc", "again2") as two:
        assert not old.exists()
        assert os.path.exists(server.path)
        assert two.path == str(same_pid) and stat.S_IMODE(os.lstat(two.path).st_mode) == 0o600
        assert other.exists()  # another name: `netoffload clean` decides about it
        with connect(two) as sock:
            assert ask(two, sock, "hello")["result"]["name"] == "again2"


def test_the_same_kind_and_name_twice_in_one_process_is_refused(server: ControlServer) -> None:
    with pytest.raises(ControlError, match="already being served"):
        ControlServer("testproc", "unit")
    assert os.path.exists(server.path)  # the refused one did not remove the first one's socket


# -- asyncio ------------------------------------------------------------------------------------


def test_attach_to_loop_answers_while_the_loop_runs(server: ControlServer) -> None:
    calls: list[dict[str, Any]] = []

    def stats(args: dict[str, Any]) -> dict[str, int]:
        calls.append(args)
        asyncio.get_running_loop()  # handlers run on the loop's own thread
        return {"packets": len(calls)}

    server.register("stats", stats)

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        detach = attach_to_loop(server)
        try:
            results = []
            for n in range(3):
                results.append(
                    await loop.run_in_executor(None, request, server.path, "stats", {"n": n})
                )
            return results
        finally:
            detach()

    assert asyncio.run(main()) == [{"packets": 1}, {"packets": 2}, {"packets": 3}]
    assert calls == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_closing_an_attached_server_detaches_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = ControlServer("testproc", "attached")
        fd = server.fileno()
        attach_to_loop(server, loop)
        server.close()
        assert not loop.remove_reader(fd)  # nothing left registered

    asyncio.run(main())


def test_a_client_silent_past_the_idle_limit_is_dropped_on_the_next_turn() -> None:
    with ControlServer("testproc", "impatient", idle_timeout_s=0.0) as server:
        sock = connect(server)
        for _ in range(1000):
            server.service()
            if server.client_count == 0:
                break
        assert server.client_count == 0
        assert sock.recv(16) == b""  # the server hung up
        sock.close()
