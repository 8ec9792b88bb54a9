"""The Linux kernel as the peer of our stack, in a private namespace (TAP or veth).

The kernel's side runs in a thread with blocking sockets (they release the
GIL); our stack runs in the test's thread through a ``StackLoop``, or in a
``netoffload`` command started inside the namespace (``cli_popen``). Two
stacks over a SoftNic cable (``stack_pair``) need no privileges.
Addresses are 198.18.0.0/15 and fd00::/8 only.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

from netoffload.device.base import Device
from netoffload.device.cable import Impairments
from netoffload.device.packet import PacketDevice
from netoffload.device.softnic import softnic_pair
from netoffload.device.tap import TapDevice
from netoffload.loop import StackLoop
from netoffload.netns import Netns
from netoffload.policy import OffloadPolicy
from netoffload.stack._netaddr import IpAddress
from netoffload.stack.stack import Stack
from netoffload.stack.tcp import PeerClosed, Refused, Reset, TcpConfig, TcpState
from netoffload.stack.tcp_layer import TcpHandle

KERNEL = {4: "198.18.0.1", 6: "fd00::1"}
OURS = {4: "198.18.0.2", 6: "fd00::2"}
PREFIX = {4: 24, 6: 64}
#: The two ends of ``stack_pair``.
OURS_A, OURS_B = "198.18.0.1", "198.18.0.2"


@dataclass
class Rig:
    """A namespace, our stack on a device in it, and the kernel's addresses there."""

    ns: Netns
    device: Device
    stack: Stack
    loop: StackLoop
    version: int
    kernel_ifname: str

    @property
    def kernel(self) -> IpAddress:
        return ip_address(KERNEL[self.version])

    @property
    def ours(self) -> IpAddress:
        return ip_address(OURS[self.version])

    @property
    def family(self) -> int:
        return socket.AF_INET if self.version == 4 else socket.AF_INET6

    def kernel_socket(self, kind: int = socket.SOCK_STREAM) -> socket.socket:
        return kernel_socket(self.ns, self.family, kind)


def kernel_socket(
    ns: Netns, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A kernel socket in ``ns`` (it stays there after the thread has left)."""
    with ns.entered():
        sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


@contextmanager
def rig(
    kind: str,
    version: int,
    *,
    policy: str = "always",
    tcp: TcpConfig | None = None,
    seed: int = 1,
) -> Iterator[Rig]:
    """Our stack on a TAP (``kind="tap"``) or on one end of a veth pair through AF_PACKET
    (``"veth"``), the kernel at the other side; every resource removed afterwards."""
    with Netns() as ns:
        if version == 6:
            ns.enable_ipv6()
        device: Device
        if kind == "tap":
            with ns.entered():
                device = TapDevice("nsotap0")
            kernel_ifname = "nsotap0"
        else:
            ns.add_veth("nsova", "nsovb")
            ns.set_link("nsova", up=True)
            ns.set_link("nsovb", up=True)
            with ns.entered():
                device = PacketDevice("nsova", ring_frames=256)
            kernel_ifname = "nsovb"
        try:
            ns.add_address(kernel_ifname, f"{KERNEL[version]}/{PREFIX[version]}")
            stack = Stack(
                rng=random.Random(seed), tcp=tcp or TcpConfig(), policy=OffloadPolicy(policy)
            )
            stack.add_interface(device, [f"{OURS[version]}/{PREFIX[version]}"])
            yield Rig(ns, device, stack, StackLoop(stack), version, kernel_ifname)
        finally:
            device.close()


@dataclass
class KernelSide:
    """What the kernel's thread did: bytes received, errors, whether it finished."""

    received: bytearray = field(default_factory=bytearray)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    port: int = 0


def run_in_thread(work: Callable[[KernelSide], None]) -> KernelSide:
    side = KernelSide()

    def main() -> None:
        try:
            work(side)
        except BaseException as exc:  # reported by the test
            side.error = exc
        finally:
            side.done.set()

    threading.Thread(target=main, daemon=True).start()
    return side


def kernel_server(
    r: Rig, port: int, *, send: bytes = b"", close_after_send: bool = True
) -> KernelSide:
    """A kernel TCP server on ``port``: receives everything, sends ``send`` back."""
    sock = r.kernel_socket()
    sock.bind((KERNEL[r.version], port))
    return serve_once(sock, send=send, close_after_send=close_after_send)


def serve_once(
    sock: socket.socket, *, send: bytes = b"", close_after_send: bool = True
) -> KernelSide:
    """Accept one connection on the bound ``sock`` (in a thread): send ``send`` (then FIN),
    receive until the peer's FIN."""
    sock.listen(4)
    sock.settimeout(60)

    def work(side: KernelSide) -> None:
        with sock:
            conn, _ = sock.accept()
        with conn:
            conn.settimeout(60)
            if send:
                conn.sendall(send)
                if close_after_send:
                    conn.shutdown(socket.SHUT_WR)
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                side.received += chunk

    return run_in_thread(work)


def kernel_client(r: Rig, port: int, *, send: bytes = b"") -> KernelSide:
    """A kernel TCP client to our stack: sends ``send``, shuts down, receives until EOF."""
    sock = r.kernel_socket()
    sock.settimeout(60)

    def work(side: KernelSide) -> None:
        with sock:
            sock.connect((OURS[r.version], port))
            if send:
                sock.sendall(send)
            sock.shutdown(socket.SHUT_WR)
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                side.received += chunk

    return run_in_thread(work)


def cli_popen(
    ns: Netns,
    *args: str,
    stdin: int | None = subprocess.PIPE,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """``netoffload ARGS`` run inside ``ns`` as a user would run it (``$NETOFFLOAD_RUN_DIR``
    and the rest of the environment inherited)."""
    return ns.popen(
        [sys.executable, "-m", "netoffload.cli", *args], stdin=stdin, stdout=stdout, stderr=stderr
    )


def wait_for_link(ns: Netns, name: str, proc: subprocess.Popen[bytes]) -> None:
    """Until ``name`` exists in ``ns`` (the TAP a ``netoffload`` command creates)."""
    end = time.monotonic() + 20
    while name not in ns.link_names():
        assert proc.poll() is None, "the command exited early"
        assert time.monotonic() < end, f"{name} never appeared"
        time.sleep(0.05)


def connect_when_listening(
    ns: Netns, address: str, port: int, family: int = socket.AF_INET
) -> socket.socket:
    """A kernel TCP socket in ``ns`` connected to ``address`` once something listens there."""
    end = time.monotonic() + 20
    while True:
        sock = kernel_socket(ns, family)
        sock.settimeout(5)
        try:
            sock.connect((address, port))
            return sock
        except OSError:
            sock.close()
            assert time.monotonic() < end, f"nothing ever listened on {address} port {port}"
            time.sleep(0.1)


def tail(stream: object, limit: int = 2000) -> str:
    """The end of a captured output file (for assertion messages)."""
    assert hasattr(stream, "seek") and hasattr(stream, "read")
    stream.seek(0)
    return str(stream.read()[-limit:])


@contextmanager
def stack_pair(
    seed: int,
    impairments: Impairments | None = None,
    *,
    policies: tuple[str, str] = ("always", "always"),
    tcp: TcpConfig | None = None,
) -> Iterator[tuple[Stack, Stack]]:
    """Two stacks, 198.18.0.1 and 198.18.0.2, over SoftNics on one ``Cable``."""
    names = (f"pair-a-{seed}", f"pair-b-{seed}")
    with softnic_pair(impairments, seed=seed, names=names) as (a, b):
        config = tcp or TcpConfig()
        sa = Stack(rng=random.Random(seed), tcp=config, policy=OffloadPolicy(policies[0]))
        sb = Stack(rng=random.Random(seed + 1000), tcp=config, policy=OffloadPolicy(policies[1]))
        sa.add_interface(a, [f"{OURS_A}/24"])
        sb.add_interface(b, [f"{OURS_B}/24"])
        yield sa, sb


def payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size) if size < 1 << 20 else os.urandom(size)


def deadline(seconds: float) -> Callable[[], bool]:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() > end


def address(text: str) -> IpAddress:
    value = ip_address(text)
    assert isinstance(value, IPv4Address | IPv6Address)
    return value


def two_way_transfer(
    sa: Stack, sb: Stack, up: bytes, down: bytes, *, port: int = 5200, timeout_s: float = 240
) -> tuple[bytes, bytes, TcpHandle, TcpHandle]:
    """A connects to B on ``port``; A sends ``up`` and B sends ``down`` at the same time, each
    closing its side when done; returns (what B got, what A got, A's handle, B's handle)."""
    loop_a, loop_b = StackLoop(sa), StackLoop(sb)
    listeners = sb.tcp_listen(port)
    client = sa.tcp_connect(ip_address(OURS_B), port, time.monotonic_ns())
    server: list[TcpHandle] = []
    got_a, got_b = bytearray(), bytearray()
    sent = {"a": 0, "b": 0}
    end = time.monotonic() + timeout_s

    def pump(handle: TcpHandle, data: bytes, key: str, got: bytearray) -> bool:
        conn = handle.conn
        while conn.readable():
            got.extend(conn.recv(1 << 20))
        n = sent[key]
        if n <= len(data) and conn.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            n += conn.send(memoryview(data)[n : n + (1 << 20)])
            if n == len(data):
                conn.shutdown_write()
                n += 1  # sent and shut
            sent[key] = n
        return any(isinstance(e, PeerClosed) for e in handle.events) and n > len(data)

    def done() -> bool:
        assert time.monotonic() < end, (len(got_a), len(got_b), client.state)
        loop_b.step(0.0)
        if not server:
            h = sb.tcp_accept(listeners)
            if h is not None:
                server.append(h)
        a_done = pump(client, up, "a", got_a)
        b_done = bool(server) and pump(server[0], down, "b", got_b)
        return a_done and b_done and len(got_a) == len(down) and len(got_b) == len(up)

    loop_a.run_until(done, max_wait_s=0.002)
    return bytes(got_b), bytes(got_a), client, server[0]


def exchange(r: Rig, handle: TcpHandle, data: bytes, timeout_s: float = 60.0) -> bytes:
    """Send ``data`` on ``handle`` then FIN; read until the peer's FIN; wait for the close
    (the peer neither resets nor refuses). What was read."""
    conn = handle.conn
    sent = 0
    shut = False
    got = bytearray()
    peer_closed = False
    end = time.monotonic() + timeout_s

    def done() -> bool:
        nonlocal sent, shut, peer_closed
        assert time.monotonic() < end, f"stuck in {conn.state}, sent {sent}, got {len(got)}"
        while conn.readable():
            got.extend(conn.recv(1 << 20))
        event = handle.next_event()
        while event is not None:
            assert not isinstance(event, Reset | Refused), event
            peer_closed |= isinstance(event, PeerClosed)
            event = handle.next_event()
        if sent < len(data) and conn.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            sent += conn.send(memoryview(data)[sent : sent + (1 << 20)])
        if sent == len(data) and not shut and conn.state is not TcpState.SYN_SENT:
            conn.shutdown_write()
            shut = True
        return shut and peer_closed and conn.state in (TcpState.TIME_WAIT, TcpState.CLOSED)

    r.loop.run_until(done)
    return bytes(got)


def finish_kernel_side(side: KernelSide, timeout_s: float = 30.0) -> None:
    assert side.done.wait(timeout_s), "the kernel's side did not finish"
    if side.error is not None:
        raise side.error
