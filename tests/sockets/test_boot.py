"""What `netoffload run` reads from a command line, its summary line, and the readiness
descriptor on its own (no privileges)."""

from __future__ import annotations

import select

import pytest

from netoffload.sockets._boot import CommandError, Program, parse_command, summary
from netoffload.sockets._readiness import Readiness, new_pair
from netoffload.sockets._stats import OS, USER_LEVEL, PathCounters


@pytest.mark.parametrize(
    ("words", "program"),
    [
        (["python", "-m", "http.server"], Program("module", "http.server", ("http.server",))),
        (["python3", "-u", "app.py", "x"], Program("script", "app.py", ("app.py", "x"))),
        (["python3.11", "-c", "pass", "a"], Program("code", "pass", ("-c", "a"))),
        (["app.py", "--port", "1"], Program("script", "app.py", ("app.py", "--port", "1"))),
    ],
)
def test_commands_read_as_python_reads_them(words: list[str], program: Program) -> None:
    assert parse_command(words) == program


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([], "give the program"),
        (["node", "app.js"], "not a Python interpreter"),
        (["python"], "no program"),
        (["python", "-m"], "needs an argument"),
        (["python", "-W", "error", "a.py"], "not supported"),
    ],
)
def test_other_commands_are_refused(words: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        parse_command(words)


def test_the_summary_counts_ip_bytes_apart_from_the_rest() -> None:
    counters = PathCounters()
    tcp = counters.open("AF_INET", "SOCK_STREAM", inet=True)
    counters.chose(tcp, USER_LEVEL, "connect")
    tcp.bytes_sent, tcp.bytes_received = 300, 100
    unix = counters.open("AF_UNIX", "SOCK_STREAM", inet=False)
    counters.chose(unix, OS, "af_unix")
    unix.bytes_sent = 50
    counters.close(unix)
    line = summary(counters.as_dict())
    assert line == (
        "netoffload run: user-level 1 sockets 400 bytes; OS 1 sockets 0 IP bytes "
        "50 other bytes; user_level_bytes_fraction 1.0000"
    )
    udp = counters.open("AF_INET", "SOCK_DGRAM", inet=True)
    counters.chose(udp, OS, "loopback")
    udp.bytes_sent = 400
    assert counters.as_dict()["user_level_bytes_fraction"] == 0.5


def _polled(fd: int) -> tuple[bool, bool]:
    readable, writable, _ = select.select([fd], [fd], [], 0)
    return bool(readable), bool(writable)


def test_readiness_shows_all_four_states_on_one_descriptor() -> None:
    a, b = new_pair()
    fd = a.fileno()
    readiness = Readiness(a, b)
    try:
        assert _polled(fd) == (False, True)
        for state in [(True, True), (True, False), (False, False), (False, True), (True, False)]:
            readiness.set(*state)
            assert _polled(fd) == state
    finally:
        readiness.release()
