"""`netoffload bench sockets`: one Python app on netoffload sockets and on the OS's, side by side.

The app is the same function in both runs, given a different socket class:

* **ours**: ``netoffload.sockets.Socket`` on a runtime in this process, whose
  stack sits on a TAP in a private namespace (offloads on, policy
  ``always``), the stack's thread beside the app's;
* **os**: the standard library's ``socket.socket`` in the same namespace.

Both talk to the same kernel server at 198.18.0.1, a process of its own in
the namespace (on the other CPU when there are two): ours reaches it through
the TAP, the OS over its loopback. The app does two things:

* **request/response**: 64-byte requests, each answered with 64 bytes before
  the next goes (TCP_NODELAY), for a fixed count: round trips per second;
* **bulk**: ``sendall`` of 256 KiB blocks for a fixed number of bytes, then
  the server's count of what arrived (which must match): Gbit/s.

``user_level_bytes_fraction`` is, over the "ours" runs, the bytes the
user-level path carried over all the IP bytes the app's sockets moved: 1.0
means no byte went through the OS, so a fallback cannot pass for speed. Each
figure is the best of its rounds.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

from netoffload.bench.tcp import ratio, times
from netoffload.device.base import DeviceError
from netoffload.device.tap import TapDevice
from netoffload.netns import Netns
from netoffload.progress import NO_PROGRESS, Progress
from netoffload.sockets import Runtime, Socket
from netoffload.stack.stack import Stack

KERNEL_ADDR = "198.18.0.1"
OURS_ADDR = "198.18.0.2"
PORT = 5002
MESSAGE = 64
BLOCK = 1 << 18
_COUNT = struct.Struct("!Q")

# The kernel's server: per connection, one byte says what to do. "r": echo MESSAGE-byte
# messages until EOF; "b": read until EOF, then answer the byte count (8 bytes).
_SERVER = r"""
import socket, struct, sys, threading
port, message = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(8)
print("ready", flush=True)

def serve(conn):
    with conn:
        conn.settimeout(120)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = conn.recv(1)
        if mode == b"r":
            buf = bytearray(message)
            view = memoryview(buf)
            while True:
                got = 0
                while got < message:
                    k = conn.recv_into(view[got:])
                    if not k:
                        return
                    got += k
                conn.sendall(buf)
        elif mode == b"b":
            buf = bytearray(1 << 20)
            total = 0
            while k := conn.recv_into(buf):
                total += k
            conn.sendall(struct.pack("!Q", total))

while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

SocketMaker = Callable[[], socket.socket]


def _require_privileges() -> None:
    if os.geteuid() != 0:
        raise DeviceError("bench sockets needs root (CAP_NET_ADMIN) to create namespaces and TAPs")
    if not os.path.exists("/dev/net/tun"):
        raise DeviceError("bench sockets needs /dev/net/tun")


def _connect(make: SocketMaker, mode: bytes) -> socket.socket:
    sock = make()
    sock.settimeout(60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.connect((KERNEL_ADDR, PORT))
    sock.sendall(mode)
    return sock


def request_response(make: SocketMaker, count: int) -> float:
    """Round trips per second: ``count`` MESSAGE-byte requests, each answered in full."""
    request = bytes(MESSAGE)
    reply = bytearray(MESSAGE)
    view = memoryview(reply)
    with _connect(make, b"r") as sock:
        start = time.perf_counter()
        for _ in range(count):
            sock.sendall(request)
            got = 0
            while got < MESSAGE:
                k = sock.recv_into(view[got:])
                if not k:
                    raise DeviceError("the server closed during request/response")
                got += k
        return count / (time.perf_counter() - start)


def bulk(make: SocketMaker, total: int) -> float:
    """Gbit/s of ``total`` bytes sent in BLOCK-byte ``sendall`` calls, counted by the server."""
    block = random.Random(1).randbytes(BLOCK)
    with _connect(make, b"b") as sock:
        start = time.perf_counter()
        sent = 0
        while sent < total:
            sock.sendall(block)
            sent += BLOCK
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while len(answer) < _COUNT.size:
            chunk = sock.recv(_COUNT.size - len(answer))
            if not chunk:
                break
            answer += chunk
        elapsed = time.perf_counter() - start
    if len(answer) != _COUNT.size or _COUNT.unpack(answer)[0] != sent:
        raise DeviceError("the server did not receive every byte the app sent")
    return sent * 8 / elapsed / 1e9


@contextlib.contextmanager
def _server(ns: Netns) -> Iterator[None]:
    original = os.sched_getaffinity(0)
    cpus = sorted(original)
    try:
        if len(cpus) > 1:
            os.sched_setaffinity(0, {cpus[1]})  # inherited by the child
        proc = ns.popen(
            [sys.executable, "-c", _SERVER, str(PORT), str(MESSAGE)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    finally:
        os.sched_setaffinity(0, original)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            proc.kill()
            err = proc.communicate(timeout=5)[1].decode(errors="replace").strip()
            raise DeviceError(f"the kernel's server did not start: {err or 'no output'}")
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@contextlib.contextmanager
def _pinned() -> Iterator[None]:
    """This process (the app and the stack's thread) on the first CPU."""
    original = os.sched_getaffinity(0)
    if len(original) > 1:
        os.sched_setaffinity(0, {min(original)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, original)


def run(quick: bool, progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """Request/response and bulk, ours and the OS's, in one namespace; the JSON result."""
    _require_privileges()
    rounds = 1 if quick else 3
    rr_count = 2_000 if quick else 10_000
    bulk_bytes = (64 if quick else 512) << 20
    best: dict[str, float] = {}
    plan = [
        (what, path) for _ in range(rounds) for what in ("rr", "bulk") for path in ("ours", "os")
    ]
    progress.stage("sockets: ours and the OS's", len(plan))
    with Netns("nsobench") as ns:
        with ns.entered():
            device = TapDevice("nsotap0")
        ns.add_address("nsotap0", f"{KERNEL_ADDR}/24")
        stack = Stack(rng=random.Random(1))
        stack.add_interface(device, [f"{OURS_ADDR}/24"])
        runtime = Runtime(stack, devices=[device], kind="bench").start()
        try:

            def ours() -> socket.socket:
                return Socket(socket.AF_INET, socket.SOCK_STREAM, runtime=runtime)

            def kernel() -> socket.socket:
                with ns.entered():
                    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

            makers = {"ours": ours, "os": kernel}
            with _server(ns), _pinned():
                for done, (what, path) in enumerate(plan, 1):
                    make = makers[path]
                    if what == "rr":
                        value = request_response(make, rr_count)
                    else:
                        value = bulk(make, bulk_bytes)
                    key = f"{path}_{what}"
                    best[key] = max(best.get(key, 0.0), value)
                    progress.update(done)
            counters = runtime.counters.as_dict()
        finally:
            runtime.close()
    paths = counters["paths"]
    user, osp = paths["user_level"], paths["os"]
    return {
        "benchmark": "sockets",
        "quick": quick,
        "kernel": platform.release(),
        "rounds": rounds,
        "cpus": len(os.sched_getaffinity(0)),
        "rr_requests": rr_count,
        "rr_message_bytes": MESSAGE,
        "bulk_bytes": bulk_bytes,
        "bulk_block_bytes": BLOCK,
        "ours_rr_per_s": round(best["ours_rr"], 1),
        "os_rr_per_s": round(best["os_rr"], 1),
        "ours_bulk_gbit_per_s": round(best["ours_bulk"], 3),
        "os_bulk_gbit_per_s": round(best["os_bulk"], 3),
        "ratio_rr_ours_over_os": ratio(best["ours_rr"], best["os_rr"]),
        "ratio_bulk_ours_over_os": ratio(best["ours_bulk"], best["os_bulk"]),
        "user_level_bytes_fraction": counters["user_level_bytes_fraction"],
        "ours_user_level_bytes": user["bytes_sent"] + user["bytes_received"],
        "ours_os_ip_bytes": osp["inet_bytes_sent"] + osp["inet_bytes_received"],
        "ours_selections": counters["selections"],
    }


def render(result: dict[str, Any], console: Console) -> None:
    """The side-by-side table."""
    table = Table(
        title=(
            f"A Python app on netoffload sockets vs OS sockets (kernel {result['kernel']}, "
            f"best of {result['rounds']})"
        ),
        title_justify="left",
    )
    table.add_column("")
    table.add_column("netoffload", justify="right")
    table.add_column("OS", justify="right")
    table.add_column("ours/OS", justify="right")
    table.add_row(
        f"request/response ({result['rr_message_bytes']} B), per s",
        f"{result['ours_rr_per_s']:,.0f}",
        f"{result['os_rr_per_s']:,.0f}",
        times(result["ratio_rr_ours_over_os"], 2),
    )
    table.add_row(
        f"bulk ({result['bulk_bytes'] >> 20} MiB in {result['bulk_block_bytes'] >> 10} KiB "
        "sendall), Gbit/s",
        f"{result['ours_bulk_gbit_per_s']:.2f}",
        f"{result['os_bulk_gbit_per_s']:.2f}",
        times(result["ratio_bulk_ours_over_os"], 2),
    )
    console.print(table)
    console.print(
        f"user_level_bytes_fraction (ours): {result['user_level_bytes_fraction']}; "
        f"selections: {result['ours_selections']}\n"
        "ours: the user-level stack on a TAP, in this process; OS: the kernel's sockets, "
        "which reach the same kernel server over loopback."
    )
