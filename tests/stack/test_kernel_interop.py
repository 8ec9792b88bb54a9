"""Our stack against the Linux kernel's TCP, over a TAP and over a veth through AF_PACKET.

Client and server, IPv4 and IPv6, offloads on and off; transfers byte-exact in
both directions; graceful close both ways, resets, a closed port; the kernel's
ping answered. Everything in a private namespace, 198.18.0.0/15 and fd00::/8.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from netoffload.stack.tcp import Refused, Reset, TcpState
from netoffload.stack.tcp_layer import TcpHandle
from tests.stack.kernel_peer import (
    Rig,
    exchange,
    finish_kernel_side,
    kernel_client,
    kernel_server,
    payload,
    rig,
)

pytestmark = pytest.mark.privileged

KINDS = ["tap", "veth"]
VERSIONS = [4, 6]
POLICIES = ["always", "never"]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_our_client_to_a_kernel_server(kind: str, version: int, policy: str) -> None:
    up, down = payload(3_000_000, 1), payload(1_000_000, 2)
    with rig(kind, version, policy=policy) as r:
        side = kernel_server(r, 5001, send=down)
        handle = r.stack.tcp_connect(r.kernel, 5001, time.monotonic_ns())
        got = exchange(r, handle, up)
        finish_kernel_side(side)
        assert got == down
        assert bytes(side.received) == up
        _check_path(r, policy)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_kernel_client_to_our_server(kind: str, version: int, policy: str) -> None:
    up, down = payload(3_000_000, 3), payload(1_000_000, 4)
    with rig(kind, version, policy=policy) as r:
        listeners = r.stack.tcp_listen(5002)
        side = kernel_client(r, 5002, send=up)
        accepted: list[TcpHandle] = []

        def accept() -> bool:
            handle = r.stack.tcp_accept(listeners)
            if handle is not None:
                accepted.append(handle)
            return bool(accepted)

        assert r.loop.run_until(accept, timeout_s=20)
        got = exchange(r, accepted[0], down)
        finish_kernel_side(side)
        assert got == up
        assert bytes(side.received) == down


def _check_path(r: Rig, policy: str) -> None:
    """Which side did the work, so a result cannot come from a mislabelled run."""
    stats = r.stack.as_dict()
    decisions = stats["policy"]["decisions"]  # type: ignore[index]
    assert set(decisions) == {"device" if policy == "always" else "host"}
    host_tasks = r.stack.interfaces[0].host.stats.tasks
    if policy == "never":
        assert host_tasks["checksum"] > 0
    tcp = stats["tcp"]
    assert isinstance(tcp, dict)
    if policy == "always":
        assert tcp["super_packets_out"] > 0
    else:
        assert tcp["super_packets_out"] == 0


@pytest.mark.parametrize("direction", ["ours_sends", "ours_receives"])
def test_100_mb_arrive_byte_exact(direction: str) -> None:
    data = payload(100_000_000)
    with rig("tap", 4) as r:
        if direction == "ours_sends":
            side = kernel_server(r, 5003)
            handle = r.stack.tcp_connect(r.kernel, 5003, time.monotonic_ns())
            exchange(r, handle, data, timeout_s=240)
            finish_kernel_side(side, 60)
            assert len(side.received) == len(data) and side.received == data
        else:
            listeners = r.stack.tcp_listen(5003)
            side = kernel_client(r, 5003, send=data)
            holder: list[TcpHandle] = []

            def accept() -> bool:
                h = r.stack.tcp_accept(listeners)
                if h is not None:
                    holder.append(h)
                return bool(holder)

            assert r.loop.run_until(accept, timeout_s=20)
            got = exchange(r, holder[0], b"", timeout_s=240)
            finish_kernel_side(side, 60)
            assert len(got) == len(data) and got == data


def test_a_closed_port_is_refused() -> None:
    with rig("tap", 4) as r:
        handle = r.stack.tcp_connect(r.kernel, 5999, time.monotonic_ns())
        assert r.loop.run_until(lambda: bool(handle.events), timeout_s=10)
        assert isinstance(handle.events[0], Refused)
        assert handle.state is TcpState.CLOSED


def test_our_closed_port_answers_the_kernel_with_a_reset() -> None:
    with rig("tap", 4) as r:
        sock = r.kernel_socket()
        sock.settimeout(10)
        outcome: list[BaseException] = []

        def connect() -> None:
            try:
                sock.connect((str(r.ours), 6000))
            except OSError as exc:
                outcome.append(exc)

        import threading

        thread = threading.Thread(target=connect)
        thread.start()
        r.loop.run_until(lambda: not thread.is_alive(), timeout_s=10)
        thread.join()
        sock.close()
        assert outcome and isinstance(outcome[0], ConnectionRefusedError)


def test_a_reset_from_the_kernel_reaches_the_application() -> None:
    with rig("tap", 4) as r:
        srv = r.kernel_socket()
        srv.bind((str(r.kernel), 5004))
        srv.listen(1)
        srv.settimeout(10)
        handle = r.stack.tcp_connect(r.kernel, 5004, time.monotonic_ns())
        assert r.loop.run_until(lambda: handle.state is TcpState.ESTABLISHED, timeout_s=10)
        conn, _ = srv.accept()
        # SO_LINGER 0: close sends a RST instead of a FIN.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()
        srv.close()
        assert r.loop.run_until(
            lambda: any(isinstance(e, Reset) for e in handle.events), timeout_s=10
        )
        assert handle.state is TcpState.CLOSED


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_the_kernels_ping_is_answered(kind: str, version: int) -> None:
    if shutil.which("ping") is None:
        pytest.skip("needs the kernel's ping (Debian iputils-ping; make test installs it as root)")
    with rig(kind, version) as r:
        proc = r.ns.popen(
            ["ping", "-c", "3", "-i", "0.2", "-W", "2", str(r.ours)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        r.loop.run_until(lambda: proc.poll() is not None, timeout_s=20)
        out = proc.communicate(timeout=5)[0].decode()
        assert proc.returncode == 0, out
        assert "3 received" in out
        assert r.stack.icmp.stats.sent  # the replies were ours
