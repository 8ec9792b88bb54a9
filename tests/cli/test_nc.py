"""`netoffload nc` and `netoffload ping` as a user runs them.

Argument errors need no privileges (click's runner, a SoftNic). Everything
else runs the command inside a private namespace over ``--device tap:nsotap0``
with the kernel at ``--peer-address 198.18.0.1/24``: a kernel server, a
kernel client, UDP both ways, the kernel's echo replies, a closed port, an
address nobody has, a gateway that drops what it should forward, and the
control socket (``netoffload list``, ``netoffload stats``) while nc runs.
Every failure is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import pytest
from click.testing import CliRunner

from netoffload.cli import main
from netoffload.control import list_processes, request
from netoffload.netns import Netns
from tests.stack.kernel_peer import (
    KernelSide,
    cli_popen,
    connect_when_listening,
    kernel_socket,
    payload,
    run_in_thread,
    serve_once,
    tail,
)

KERNEL, OURS = "198.18.0.1", "198.18.0.2"
TAP = ("--device", "tap:nsotap0", "--address", f"{OURS}/24", "--peer-address", f"{KERNEL}/24")
SOFTNIC = ("--device", "softnic", "--address", f"{OURS}/24")


def _one_error_line(stderr: str, expected: str) -> None:
    """Exactly one line, click's ``Error: ...``, carrying ``expected``; no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ") and expected in lines[0], lines[0]


def _run(ns: Netns, *args: str, stdin: bytes = b"", timeout_s: float = 30) -> tuple[int, str, str]:
    """``netoffload ARGS`` in ``ns`` with ``stdin``; its exit status, stdout and stderr."""
    proc = cli_popen(ns, *args)
    try:
        out, err = proc.communicate(stdin, timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _finish(side: KernelSide, timeout_s: float = 30) -> None:
    assert side.done.wait(timeout_s), "the kernel's side did not finish"
    if side.error is not None:
        raise side.error


class _Running:
    """A ``netoffload`` command running in the background (see ``_background``)."""

    def __init__(self, proc: subprocess.Popen[bytes], out: IO[bytes], err: IO[bytes]) -> None:
        self.proc = proc
        self._out = out
        self._err = err

    def write(self, data: bytes, *, close: bool = False) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        if close:
            self.proc.stdin.close()

    def output(self) -> bytes:
        """Wait for a clean exit (status 0, no traceback); everything it wrote to stdout."""
        status = self.proc.wait(timeout=30)
        errors = tail(self._err)
        assert status == 0 and "Traceback" not in errors, (status, errors)
        self._out.seek(0)
        return self._out.read()


@contextmanager
def _background(ns: Netns, *args: str) -> Iterator[_Running]:
    """``netoffload ARGS`` in ``ns``, stdin a pipe, stdout and stderr in files (no pipe to
    fill up); killed if still running afterwards."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = cli_popen(ns, *args, stdout=out.fileno(), stderr=err.fileno())
        try:
            yield _Running(proc, out, err)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdin is not None
            proc.stdin.close()


# -- argument errors (no privileges) --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["nc", "--device", "softnic", "--address", "300.1.1.1/24", KERNEL, "5000"],
            "not an address with a prefix length: '300.1.1.1/24'",
        ),
        (
            ["nc", "--device", "softnic", "--address", OURS, KERNEL, "5000"],
            f"'{OURS}' needs a prefix length",
        ),
        (["nc", *SOFTNIC, "198.18.0.300", "5000"], "not an IP address: '198.18.0.300'"),
        (["nc", *SOFTNIC, "host.example", "5000"], "not an IP address: 'host.example'"),
        (["nc", *SOFTNIC, KERNEL, "70000"], "not a port: '70000'"),
        (["nc", "-l", *SOFTNIC, "http"], "not a port: 'http'"),
        (["nc", *SOFTNIC, "--gateway", "198.18.0", KERNEL, "5000"], "not an IP address"),
        (["nc", *SOFTNIC, "--peer-address", f"{KERNEL}/24", KERNEL, "5000"], "TAP only"),
        (["ping", *SOFTNIC, "198.18.0.1.1"], "not an IP address: '198.18.0.1.1'"),
        # No route: the address is on no network of the stack's and there is no gateway.
        (["nc", *SOFTNIC, "198.19.0.1", "5000"], "198.19.0.1 port 5000: no route to 198.19.0.1"),
        (["ping", *SOFTNIC, "198.19.0.1"], "198.19.0.1: no route to 198.19.0.1"),
        (["nc", *SOFTNIC, "fd00::1", "5000"], "no route to fd00::1"),
    ],
)
def test_a_bad_argument_or_no_route_is_one_line_on_stderr(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash
    assert result.stdout == ""
    _one_error_line(result.stderr, message)


def test_udp_without_a_route_fails_at_once_as_a_connected_socket_would() -> None:
    # A subprocess with its own standard input: nc -u reads file descriptor 0.
    done = subprocess.run(
        [sys.executable, "-m", "netoffload.cli", "nc", "-u", *SOFTNIC, "198.19.0.1", "5000"],
        input=b"x",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and done.stdout == b""
    _one_error_line(done.stderr.decode(), "198.19.0.1 port 5000: no route to 198.19.0.1")


def test_a_usage_error_names_what_is_missing() -> None:
    result = CliRunner().invoke(main, ["nc", *SOFTNIC, KERNEL])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == "Error: give HOST PORT"
    result = CliRunner().invoke(main, ["nc", "-l", *SOFTNIC, KERNEL, "5000"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == "Error: with -l give only PORT"


# -- failures against the kernel ------------------------------------------------------


@pytest.mark.privileged
def test_a_closed_port_is_refused() -> None:
    with Netns() as ns:
        status, out, err = _run(ns, "nc", *TAP, KERNEL, "5999")
    assert status == 1 and out == ""
    _one_error_line(err, f"{KERNEL} port 5999: connection refused")


@pytest.mark.privileged
def test_an_address_nobody_has_is_unreachable() -> None:
    with Netns() as ns:
        status, out, err = _run(ns, "nc", *TAP, "198.18.0.9", "5000")
        assert status == 1 and out == ""
        _one_error_line(err, "198.18.0.9 port 5000: no route to host")
        # ping, as Linux's does, reports the missing answers on stdout and exits 1.
        status, out, err = _run(ns, "ping", "-c", "2", "-i", "0.2", "-W", "0.5", *TAP, "198.18.0.9")
    assert status == 1 and err == "", err
    assert "2 packets transmitted, 0 received, 100% packet loss" in out


@pytest.mark.privileged
def test_a_peer_that_never_answers_times_out() -> None:
    # The kernel answers ARP for the gateway, but does not forward (a new namespace has
    # ip_forward 0) and then drops without an ICMP error: the SYN goes unanswered.
    with Netns() as ns:
        args = ("nc", "--timeout", "1", *TAP, "--gateway", KERNEL, "198.19.0.9", "5000")
        status, out, err = _run(ns, *args)
    assert status == 1 and out == ""
    _one_error_line(err, "198.19.0.9 port 5000: connection timed out")


@pytest.mark.privileged
def test_a_tap_deleted_under_a_running_nc_is_one_line() -> None:
    with Netns() as ns:
        proc = cli_popen(ns, "nc", "-l", "--name", "ncgone", *TAP, "5004")
        try:
            _wait_for_process("ncgone", proc)  # set up: its control socket serves
            ns.exec("ip", "link", "del", "nsotap0")
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 1 and out == b""
    _one_error_line(err.decode(), "TAP 'nsotap0'")


# -- successful runs ------------------------------------------------------------------


@pytest.mark.privileged
def test_nc_sends_stdin_to_a_kernel_server_and_prints_its_reply() -> None:
    up, down = payload(300_000, 21), payload(100_000, 22)
    with Netns() as ns:
        # Bound to the wildcard before nc gives the kernel its address.
        sock = kernel_socket(ns)
        sock.bind(("0.0.0.0", 5001))
        side = serve_once(sock, send=down)
        args = ("nc", *TAP, "--policy", "adaptive", "--stats", KERNEL, "5001")
        proc = cli_popen(ns, *args)
        try:
            out, err = proc.communicate(up, timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _finish(side)
    assert proc.returncode == 0, err[-2000:]
    assert out == down
    assert bytes(side.received) == up
    # --stats: the stack's counters as one JSON line on stderr, the policy's among them.
    stats = json.loads(err.decode().splitlines()[-1])
    policy = stats["policy"]
    assert policy["mode"] == "adaptive"
    assert sum(policy["decisions"].values()) > 0
    assert set(policy["decisions"]) <= {"device", "host"}
    assert policy["last_sample"] is not None  # the loop sampled the load for it
    assert stats["tcp"]["segments_out"] > 0


@pytest.mark.privileged
def test_nc_listen_accepts_a_kernel_client() -> None:
    up, down = payload(500_000, 23), b"goodbye\n"
    with Netns() as ns, _background(ns, "nc", "-l", *TAP, "5002") as nc:
        sock = connect_when_listening(ns, OURS, 5002)
        with sock:
            sock.settimeout(30)
            sock.sendall(up)
            sock.shutdown(socket.SHUT_WR)
            nc.write(down, close=True)
            got = _recv_all(sock)
        received = nc.output()
    assert got == down
    assert received == up


def _recv_all(sock: socket.socket) -> bytes:
    got = bytearray()
    while chunk := sock.recv(1 << 16):
        got += chunk
    return bytes(got)


@pytest.mark.privileged
def test_udp_nc_to_a_kernel_socket_and_back() -> None:
    with Netns() as ns:
        sock = kernel_socket(ns, kind=socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", 5301))
        sock.settimeout(20)

        def echo(side: KernelSide) -> None:
            with sock:
                data, sender = sock.recvfrom(65535)
                side.received += data
                sock.sendto(b"pong:" + data, sender)

        side = run_in_thread(echo)
        args = ("nc", "-u", "--idle-timeout", "1", "--policy", "adaptive", "--stats")
        status, out, err = _run(ns, *args, *TAP, KERNEL, "5301", stdin=b"ping")
        _finish(side)
    assert status == 0, err
    assert bytes(side.received) == b"ping"
    assert out == "pong:ping"
    stats = json.loads(err.splitlines()[-1])
    assert stats["udp"]["out_datagrams"] == 1 and stats["udp"]["in_datagrams"] == 1
    assert stats["policy"]["mode"] == "adaptive"
    assert stats["policy"]["last_sample"] is not None  # UDP samples the load too


@pytest.mark.privileged
def test_udp_nc_listen_answers_a_kernel_client() -> None:
    args = ("nc", "-u", "-l", "--idle-timeout", "1", *TAP, "5302")
    with Netns() as ns, _background(ns, *args) as nc:
        # Standard input is there before any peer: it must wait for the first datagram.
        nc.write(b"pong", close=True)
        sock = kernel_socket(ns, kind=socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(0.2)
            reply, sent = _ask_until_answered(sock, (OURS, 5302), b"ping")
        received = nc.output()
    assert reply == b"pong"
    assert sent >= 1 and received and received == b"ping" * (len(received) // 4)


def _ask_until_answered(
    sock: socket.socket, address: tuple[str, int], data: bytes
) -> tuple[bytes, int]:
    """Send ``data`` every 0.2 s until an answer comes (nc may not be listening yet)."""
    end = time.monotonic() + 20
    sent = 0
    while time.monotonic() < end:
        try:
            sock.sendto(data, address)
            sent += 1
        except OSError:
            pass  # no route yet: nc has not given the kernel its address
        try:
            return sock.recv(65535), sent
        except OSError:
            continue
    raise AssertionError("nc -u -l never answered")


@pytest.mark.privileged
def test_ping_the_kernel() -> None:
    with Netns() as ns:
        args = ("ping", "-c", "3", "-i", "0.2", "--policy", "adaptive", "--stats")
        status, out, err = _run(ns, *args, *TAP, KERNEL)
    assert status == 0, err
    stats = json.loads(err.splitlines()[-1])
    assert stats["icmp"] and stats["policy"]["last_sample"] is not None
    lines = out.splitlines()
    assert lines[0] == f"PING {KERNEL} from {OURS}: 56 data bytes"
    replies = [line for line in lines if line.startswith(f"64 bytes from {KERNEL}: icmp_seq=")]
    seqs = [
        int(m.group(1)) for m in (re.search(r"icmp_seq=(\d+) ttl=64 ", r) for r in replies) if m
    ]
    assert seqs == [1, 2, 3]  # iputils numbers from 1
    assert "3 packets transmitted, 3 received, 0% packet loss" in lines
    assert lines[-1].startswith("rtt min/avg/max/mdev = ")


# -- the control socket while nc runs --------------------------------------------------


@pytest.mark.privileged
def test_list_and_stats_show_a_running_nc() -> None:
    data = payload(200_000, 24)
    args = ("nc", "-l", "--name", "ncunder", *TAP, "5003")
    with Netns() as ns, _background(ns, *args) as nc:
        _wait_for_process("ncunder", nc.proc)
        sock = connect_when_listening(ns, OURS, 5003)
        with sock:
            sock.settimeout(30)
            sock.sendall(data)
            nc.write(b"hello\n")
            assert _recv_exactly(sock, 6) == b"hello\n"
            # Traffic has gone both ways; ask while the connection is still open.
            listed = CliRunner().invoke(main, ["list", "--json"])
            shown = CliRunner().invoke(main, ["stats", "ncunder", "--json"])
            asked = request("ncunder", "stats")
            sock.shutdown(socket.SHUT_WR)
            nc.write(b"", close=True)
            assert _recv_all(sock) == b""
        assert nc.output() == data
    assert listed.exit_code == 0, listed.output
    entries = [e for e in json.loads(listed.stdout) if e["name"] == "ncunder"]
    assert len(entries) == 1, listed.stdout
    assert entries[0]["kind"] == "nc" and entries[0]["state"] == "running", entries
    assert shown.exit_code == 0, shown.output
    stats: dict[str, Any] = json.loads(shown.stdout)
    for answer in (stats, asked):
        decisions = answer["policy"]["decisions"]
        assert answer["policy"]["mode"] == "always"
        assert decisions.get("device", 0) > 0 and "host" not in decisions
        assert answer["tcp"]["segments_in"] > 0


def _wait_for_process(name: str, proc: subprocess.Popen[bytes]) -> None:
    end = time.monotonic() + 20
    while not any(p.name == name for p in list_processes()):
        assert proc.poll() is None, "nc exited early"
        assert time.monotonic() < end, f"{name} never served a control socket"
        time.sleep(0.05)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = sock.recv(size - len(got))
        assert chunk, f"EOF after {len(got)} of {size} bytes"
        got += chunk
    return bytes(got)
