"""``netoffload.sockets.Socket`` against the kernel over a TAP: the standard library's API,
its errno values (the kernel's own sockets, doing the same thing, are the oracle), the
readiness descriptor under ``select`` and ``selectors``, dual-stack sockets, UDP, and
``create_connection`` / ``create_server``."""

from __future__ import annotations

import errno
import hashlib
import logging
import select
import selectors
import socket
import struct
import time
from collections.abc import Callable

import pytest

from netoffload.sockets import Socket, create_connection, create_server
from tests.sockets.rig import FAMILY, KERNEL, OURS, SocketRig, in_thread, result, socket_rig

pytestmark = pytest.mark.privileged


@pytest.fixture
def rig() -> SocketRig:  # type: ignore[misc]
    with socket_rig() as r:
        yield r


def _errno_of(call: Callable[[], object]) -> int | None:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return None


def _sink(server: socket.socket) -> tuple[object, list[object]]:
    """Accept one connection; return the SHA-256 and length of everything it receives."""

    def work() -> tuple[str, int]:
        conn, _ = server.accept()
        digest, total = hashlib.sha256(), 0
        with conn:
            conn.settimeout(30)
            while data := conn.recv(1 << 20):
                digest.update(data)
                total += len(data)
        return digest.hexdigest(), total

    return in_thread(work)


@pytest.mark.parametrize("version", [4, 6])
def test_both_ways_with_the_kernel_byte_exact(rig: SocketRig, version: int) -> None:
    data = bytes(range(256)) * 40_000  # 10 MB
    server = rig.kernel_listener(version)
    port = server.getsockname()[1]

    def serve() -> bytes:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30)
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            got = bytearray()
            while chunk := conn.recv(1 << 20):
                got += chunk
        return bytes(got)

    thread, out = in_thread(serve)
    with rig.ours(FAMILY[version]) as sock:
        sock.connect((KERNEL[version], port))
        assert sock.path == "user_level"
        assert sock.getpeername()[:2] == (KERNEL[version], port)
        assert sock.getsockname()[0] == OURS[version]
        got = bytearray()
        while len(got) < len(data):
            chunk = sock.recv(1 << 20)
            assert chunk, "the kernel's FIN came before its data"
            got += chunk
        assert sock.recv(100) == b""  # the kernel's FIN
        sock.sendall(data[::-1])
        sock.shutdown(socket.SHUT_WR)
        assert result(thread, out) == data[::-1]
    assert bytes(got) == data
    totals = rig.runtime.counters.totals()
    assert totals["user_level"]["bytes_received"] == len(data)
    assert totals["user_level"]["bytes_sent"] == len(data)


def test_makefile_reads_lines(rig: SocketRig) -> None:
    server = rig.kernel_listener()

    def serve() -> bytes:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"first line\nsecond line\n")
            return conn.recv(100)

    thread, out = in_thread(serve)
    with rig.ours() as sock:
        sock.connect((KERNEL[4], server.getsockname()[1]))
        with sock.makefile("rwb") as f:
            assert f.readline() == b"first line\n"
            assert f.readline() == b"second line\n"
            f.write(b"thanks")
            f.flush()
        assert result(thread, out) == b"thanks"


# -- errno: the kernel's socket is the oracle ------------------------------------------------


def test_refused_connect_is_econnrefused_as_the_kernels(rig: SocketRig) -> None:
    probe = rig.kernel_listener()
    port = probe.getsockname()[1]
    probe.close()  # a port nobody listens on: the kernel answers RST
    kernel = rig.kernel()
    expected = _errno_of(lambda: kernel.connect((KERNEL[4], port)))
    assert expected == errno.ECONNREFUSED
    ours = rig.ours()
    assert _errno_of(lambda: ours.connect((KERNEL[4], port))) == expected
    assert ours.connect_ex((KERNEL[4], port)) == expected
    with pytest.raises(ConnectionRefusedError):
        rig.ours().connect((KERNEL[4], port))


def _reset_by_peer(rig: SocketRig, client: socket.socket) -> int | None:
    """Connect ``client`` to a kernel server that closes with SO_LINGER 0 (an RST); the
    errno of the client's next recv."""
    server = rig.kernel_listener()
    client.connect((KERNEL[4], server.getsockname()[1]))
    conn, _ = server.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    server.close()
    return _errno_of(lambda: client.recv(10))


def test_reset_is_econnreset_as_the_kernels(rig: SocketRig) -> None:
    expected = _reset_by_peer(rig, rig.kernel())
    assert expected == errno.ECONNRESET
    assert _reset_by_peer(rig, rig.ours()) == expected


def test_bind_twice_is_eaddrinuse_as_the_kernels(rig: SocketRig) -> None:
    def twice(make: Callable[[], socket.socket], host: str) -> int | None:
        first, second = make(), make()
        first.bind((host, 0))
        first.listen()
        port = first.getsockname()[1]
        return _errno_of(lambda: second.bind((host, port)))

    expected = twice(rig.kernel, KERNEL[4])
    assert expected == errno.EADDRINUSE
    assert twice(rig.ours, OURS[4]) == expected
    assert twice(rig.ours, "") == expected


def test_the_other_errno_values_are_the_kernels(rig: SocketRig) -> None:
    """ENOTCONN, EISCONN, EINPROGRESS, EAGAIN and EPIPE, call for call."""
    server = rig.kernel_listener()
    port = server.getsockname()[1]

    def sequence(make: Callable[[], socket.socket], host: str) -> list[int | None]:
        seen: list[int | None] = []
        bound = make()
        bound.bind((host, 0))
        seen.append(_errno_of(bound.getpeername))  # ENOTCONN
        sock = make()
        sock.setblocking(False)
        seen.append(_errno_of(lambda: sock.connect((KERNEL[4], port))))  # EINPROGRESS
        select.select([], [sock], [], 10)
        seen.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))  # 0
        conn, _ = server.accept()
        seen.append(_errno_of(lambda: sock.recv(10)))  # EAGAIN
        # Linux: the first connect() after a non-blocking one completed succeeds, then EISCONN.
        seen.append(_errno_of(lambda: sock.connect((KERNEL[4], port))))  # None
        seen.append(_errno_of(lambda: sock.connect((KERNEL[4], port))))  # EISCONN
        sock.shutdown(socket.SHUT_WR)
        seen.append(_errno_of(lambda: sock.send(b"x")))  # EPIPE
        conn.close()
        sock.close()
        return seen

    expected = sequence(rig.kernel, KERNEL[4])
    assert expected == [
        errno.ENOTCONN, errno.EINPROGRESS, 0, errno.EAGAIN, None, errno.EISCONN, errno.EPIPE
    ]  # fmt: skip
    assert sequence(rig.ours, OURS[4]) == expected


def test_a_timeout_raises_timeouterror(rig: SocketRig) -> None:
    server = rig.kernel_listener()
    with rig.ours() as sock:
        sock.connect((KERNEL[4], server.getsockname()[1]))
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError, match="timed out"):
            sock.recv(10)
        assert sock.gettimeout() == pytest.approx(0.2)


# -- readiness ----------------------------------------------------------------------------


def test_select_sees_connect_data_and_eof_without_spinning(rig: SocketRig) -> None:
    server = rig.kernel_listener()
    sock = rig.ours()
    sock.setblocking(False)
    fd = sock.fileno()
    assert sock.connect_ex((KERNEL[4], server.getsockname()[1])) == errno.EINPROGRESS
    _, writable, _ = select.select([], [sock], [], 10)
    assert writable == [sock]
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    assert sock.fileno() == fd  # the number handed out before the choice stays right
    conn, _ = server.accept()
    # Connected, nothing to read: a poll with no timeout says "not readable" every time.
    for _ in range(3):
        assert select.select([sock], [], [], 0)[0] == []
    conn.sendall(b"hello")
    readable, _, _ = select.select([sock], [], [], 10)
    assert readable == [sock]
    assert sock.recv(100) == b"hello"
    assert select.select([sock], [], [], 0)[0] == []  # drained: not readable again
    conn.close()
    assert select.select([sock], [], [], 10)[0] == [sock]
    assert sock.recv(100) == b""
    sock.close()


def test_selectors_see_a_full_send_buffer_apart_from_readability(rig: SocketRig) -> None:
    server = rig.kernel_listener()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # the accepted one's
    with rig.ours() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        sock.connect((KERNEL[4], server.getsockname()[1]))
        conn, _ = server.accept()
        sock.setblocking(False)
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            events = sel.select(5)
            assert [(key.fileobj, mask) for key, mask in events] == [(sock, selectors.EVENT_WRITE)]
            # Fill our send buffer and the kernel's window (it opens while the kernel's
            # buffer takes in what we sent): then the socket is neither readable nor writable.
            for _ in range(100):
                for _ in range(10_000):
                    try:
                        sock.send(b"x" * 65536)
                    except BlockingIOError:
                        break
                if not sel.select(0.2):
                    break
            else:
                pytest.fail("the socket never stopped being writable")
            assert sel.select(0) == []  # an idle event loop sleeps here: nothing to do
            received = 0
            end = time.monotonic() + 30
            while not sel.select(0) and time.monotonic() < end:
                received += len(conn.recv(1 << 20))
            assert sel.select(0)[0][1] == selectors.EVENT_WRITE  # the kernel read: room again
            assert received > 0
            sel.modify(sock, selectors.EVENT_READ)
            assert sel.select(0) == []
            conn.sendall(b"r")
            events = sel.select(5)
            assert events and events[0][1] == selectors.EVENT_READ
            assert sock.recv(10) == b"r"
        conn.close()


# -- dual stack, UDP, helpers ----------------------------------------------------------------


def test_a_dual_stack_listener_accepts_ipv4_and_ipv6(rig: SocketRig) -> None:
    listener = rig.ours(socket.AF_INET6)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.bind(("::", 0))
    listener.listen()
    port = listener.getsockname()[1]
    assert listener.path == "user_level"
    peers = []
    for version in (4, 6):
        client = rig.kernel(FAMILY[version])
        client.connect((OURS[version], port))
        conn, peer = listener.accept()
        peers.append(peer[0])
        conn.sendall(b"v%d" % version)
        assert client.recv(10) == b"v%d" % version
        client.close()
        conn.close()
    assert peers == [f"::ffff:{KERNEL[4]}", KERNEL[6]]
    listener.close()


def test_udp_both_ways(rig: SocketRig) -> None:
    kernel = rig.kernel(kind=socket.SOCK_DGRAM)
    kernel.bind((KERNEL[4], 0))
    ours = rig.ours(kind=socket.SOCK_DGRAM)
    ours.sendto(b"ping", kernel.getsockname())
    assert ours.path == "user_level"
    data, peer = kernel.recvfrom(100)
    # As Linux: a UDP socket bound by its first sendto has the wildcard address.
    assert data == b"ping" and ours.getsockname() == ("0.0.0.0", peer[1])
    kernel.sendto(b"pong", peer)
    assert ours.recvfrom(100) == (b"pong", kernel.getsockname())


def test_create_connection_and_create_server(rig: SocketRig) -> None:
    server = create_server((OURS[4], 0), runtime=rig.runtime)
    assert isinstance(server, Socket) and server.path == "user_level"
    client = rig.kernel()
    client.connect(server.getsockname())
    conn, _ = server.accept()
    conn.sendall(b"from ours")
    assert client.recv(100) == b"from ours"
    kernel_server = rig.kernel_listener()
    ours = create_connection(kernel_server.getsockname(), timeout=10, runtime=rig.runtime)
    assert ours.path == "user_level"
    accepted, _ = kernel_server.accept()
    accepted.sendall(b"from the kernel")
    assert ours.recv(100) == b"from the kernel"
    for s in (server, client, conn, kernel_server, ours, accepted):
        s.close()


def test_loopback_and_unix_sockets_go_to_the_os(
    rig: SocketRig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="netoffload.sockets")
    with rig.ns.entered():
        local = socket.socket()
    local.bind(("127.0.0.1", 0))
    local.listen()
    with rig.ns.entered():
        ours = rig.ours()
        ours.connect(local.getsockname())
    assert ours.path == "os"
    conn, _ = local.accept()
    ours.sendall(b"over lo")
    assert conn.recv(100) == b"over lo"
    a = Socket(socket.AF_UNIX, socket.SOCK_STREAM, runtime=rig.runtime)
    assert a.path == "os"
    selections = rig.runtime.counters.selections
    assert selections["os/loopback"] == 1 and selections["os/af_unix"] == 1
    chosen = [r.getMessage() for r in caplog.records if r.name == "netoffload.sockets"]
    assert any("the OS (loopback)" in m for m in chosen), chosen
    assert any("the OS (af_unix)" in m for m in chosen), chosen
    for s in (local, ours, conn, a):
        s.close()


def test_an_address_nobody_answers_for_is_ehostunreach_as_the_kernels(rig: SocketRig) -> None:
    """No ARP answer for 198.18.0.9: both give up after about three seconds."""
    kernel, ours = rig.kernel(), rig.ours()
    results: dict[str, int | None] = {}

    def attempt(name: str, sock: socket.socket) -> None:
        results[name] = _errno_of(lambda: sock.connect(("198.18.0.9", 80)))

    thread, out = in_thread(lambda: attempt("kernel", kernel))
    attempt("ours", ours)
    result(thread, out)
    assert results["kernel"] == errno.EHOSTUNREACH
    assert results["ours"] == results["kernel"]
