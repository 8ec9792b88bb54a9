"""A runtime on a TAP in a private namespace, with the kernel as the peer (IPv4 and IPv6).

The kernel has 198.18.0.1 and fd00::1 on the TAP, our stack 198.18.0.2 and
fd00::2. Kernel sockets made with ``kernel`` live in the namespace; sockets
made with ``ours`` are ``netoffload.sockets.Socket`` on the runtime.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from netoffload.device.tap import TapDevice
from netoffload.netns import Netns
from netoffload.sockets import Runtime, Socket
from netoffload.stack.stack import Stack

KERNEL = {4: "198.18.0.1", 6: "fd00::1"}
OURS = {4: "198.18.0.2", 6: "fd00::2"}
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


@dataclass
class SocketRig:
    ns: Netns
    runtime: Runtime

    def kernel(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        with self.ns.entered():
            sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(10)
        return sock

    def ours(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> Socket:
        sock = Socket(family, kind, runtime=self.runtime)
        sock.settimeout(10)
        return sock

    def kernel_listener(self, version: int = 4, port: int = 0) -> socket.socket:
        sock = self.kernel(FAMILY[version])
        sock.bind((KERNEL[version], port))
        sock.listen(16)
        return sock


@contextmanager
def socket_rig() -> Iterator[SocketRig]:
    with Netns() as ns:
        ns.enable_ipv6()
        with ns.entered():
            device = TapDevice("nsotap0")
        ns.add_address("nsotap0", f"{KERNEL[4]}/24")
        ns.add_address("nsotap0", f"{KERNEL[6]}/64")
        stack = Stack(rng=random.Random(3))
        stack.add_interface(device, [f"{OURS[4]}/24", f"{OURS[6]}/64"])
        runtime = Runtime(stack, devices=[device]).start()
        try:
            yield SocketRig(ns, runtime)
        finally:
            runtime.close()


def in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``work`` in a daemon thread; the list gets its result or its exception."""
    out: list[object] = []

    def main() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # reported by the test
            out.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, out


def result(thread: threading.Thread, out: list[object], timeout_s: float = 30) -> object:
    thread.join(timeout_s)
    assert not thread.is_alive(), "the kernel's side did not finish"
    assert out, "the kernel's side gave nothing"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]
