"""`netoffload bench tcp`: our TCP stack against the kernel's, offloads on and off.

Every measurement has a private network namespace made for it (and always
deleted), with addresses from 198.18.0.0/15 only:

* **ours, on**: our stack in this process on a TAP with its offloads on and
  the policy ``always``: TCP sends 64 KiB super-packets that the kernel
  segments, and takes the kernel's GSO super-packets whole.
* **ours, off**: the same stack on a TAP whose offloads are cleared
  (TUNSETOFFLOAD 0) with the policy ``never``: MSS-sized frames, one per
  write, checksums computed and verified on the host.
* **kernel**: a kernel socket to a kernel socket over a veth pair between two
  namespaces, as the reference.

In each of ``tx`` (our stack sends) and ``rx`` (our stack receives) the
peer is a kernel socket in a process of its own inside the namespace. A
measurement runs for a fixed time after a short warm-up and counts the bytes
delivered to the receiving application; on and off alternate, and each
figure is the best of its rounds. When there are two CPUs or more, our
stack runs on one and the kernel's peer on another.

CPU seconds per GB are this process's (user + system: the kernel's work in
our system calls counts) per GB moved; ``host_cpu_s_per_gb`` is every CPU of
the machine over the same window. ``offload_decisions`` are the policy's
counts in each run, so a ratio cannot come from a mislabelled run.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from netoffload.device.base import DeviceError
from netoffload.device.tap import TapDevice
from netoffload.loop import StackLoop
from netoffload.netns import Netns
from netoffload.policy import OffloadPolicy
from netoffload.progress import NO_PROGRESS, Progress
from netoffload.stack.stack import Stack
from netoffload.stack.tcp import TcpState

KERNEL_ADDR = "198.18.0.1"
OURS_ADDR = "198.18.0.2"
PORT = 5001
WARMUP_S = 0.3
CHUNK = 1 << 22

# The kernel's side: listen (or connect), then sink or source for a bounded time.
# It prints "ready" once it can be reached, and "<bytes> <seconds>" at the end,
# the seconds running from the first byte to the last (a sink) or over the sending.
_PEER = r"""
import socket, sys, time
role, addr, port, action, seconds = sys.argv[1:6]
port, seconds = int(port), float(seconds)
if role == "listen":
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(1)
    print("ready", flush=True)
    srv.settimeout(seconds + 30)
    conn, _ = srv.accept()
else:
    conn = socket.create_connection((addr, port), timeout=10)
    print("ready", flush=True)
conn.settimeout(seconds + 30)
n = 0
first = None
end_t = time.perf_counter()
try:
    if action == "sink":
        buf = bytearray(1 << 20)
        while True:
            k = conn.recv_into(buf)
            if not k:
                break
            if first is None:
                first = time.perf_counter()
            n += k
        end_t = time.perf_counter()
    else:
        data = bytes(1 << 20)
        first = time.perf_counter()
        deadline = first + seconds
        while time.perf_counter() < deadline:
            n += conn.send(data)
        end_t = time.perf_counter()
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(1 << 16):
            pass
except OSError:
    end_t = time.perf_counter()
print(n, end_t - (first or end_t), flush=True)
"""


@dataclass
class Measured:
    """One run: goodput, CPU per GB, and which path the policy chose."""

    gbit_per_s: float
    cpu_s_per_gb: float
    host_cpu_s_per_gb: float
    decisions: dict[str, int]
    packets: int = 0

    def better_than(self, other: Measured | None) -> bool:
        return other is None or self.gbit_per_s > other.gbit_per_s


def _require_privileges() -> None:
    if os.geteuid() != 0:
        raise DeviceError("bench tcp needs root (CAP_NET_ADMIN) to create namespaces and TAPs")
    if not os.path.exists("/dev/net/tun"):
        raise DeviceError("bench tcp needs /dev/net/tun")


def _cpu_split() -> tuple[set[int], set[int]] | None:
    """(our CPUs, the peer's CPUs), or None with a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, {cpus[1]}


def _start_peer(
    ns: Netns, role: str, addr: str, action: str, seconds: float, *, cpu: int = 1
) -> subprocess.Popen[bytes]:
    """A kernel socket's side in ``ns``, pinned to the peer's CPU (``cpu=1``) or to ours
    (``cpu=0``); returns once it is ready."""
    original = os.sched_getaffinity(0)
    split = _cpu_split()
    try:
        if split is not None:
            os.sched_setaffinity(0, split[cpu])  # inherited by the child
        proc = ns.popen(
            [sys.executable, "-c", _PEER, role, addr, str(PORT), action, str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    finally:
        os.sched_setaffinity(0, original)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        err = proc.communicate(timeout=5)[1].decode(errors="replace").strip()
        raise DeviceError(f"the kernel's peer did not start: {err or 'no output'}")
    return proc


def _peer_result(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, float]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise DeviceError("the kernel's peer did not finish in time") from None
    fields = out.decode(errors="replace").split()
    if proc.returncode != 0 or len(fields) != 2:
        message = err.decode(errors="replace").strip()
        raise DeviceError(f"the kernel's peer failed: {message or 'no output'}")
    return int(fields[0]), float(fields[1])


@contextlib.contextmanager
def _stopped(proc: subprocess.Popen[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@contextlib.contextmanager
def _pinned() -> Iterator[None]:
    """This process on our CPU for the duration."""
    original = os.sched_getaffinity(0)
    split = _cpu_split()
    if split is not None:
        os.sched_setaffinity(0, split[0])
    try:
        yield
    finally:
        os.sched_setaffinity(0, original)


def _cpu_now() -> tuple[float, float]:
    """(this process's CPU seconds, every CPU's busy seconds)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = psutil.cpu_times()
    busy = sum(cpu) - cpu.idle - getattr(cpu, "iowait", 0.0)
    return usage.ru_utime + usage.ru_stime, busy


def _ours(direction: str, on: bool, seconds: float) -> Measured:
    """Our stack on a TAP against a kernel socket, for ``seconds`` after the warm-up."""
    policy = "always" if on else "never"
    with Netns("nsobench") as ns:
        with ns.entered():
            tap = TapDevice("nsotap0")
        with tap:
            ns.add_address("nsotap0", f"{KERNEL_ADDR}/24")
            stack = Stack(rng=random.Random(1), policy=OffloadPolicy(policy))
            stack.add_interface(tap, [f"{OURS_ADDR}/24"])
            loop = StackLoop(stack)
            action = "sink" if direction == "tx" else "source"
            peer = _start_peer(ns, "listen", KERNEL_ADDR, action, seconds + WARMUP_S + 5.0)
            with _stopped(peer), _pinned():
                measured = _transfer(stack, loop, direction, seconds)
            tap.close()
    return measured


def _transfer(stack: Stack, loop: StackLoop, direction: str, seconds: float) -> Measured:
    handle = stack.tcp_connect(IPv4Address(KERNEL_ADDR), PORT, time.monotonic_ns())
    conn = handle.conn
    if not loop.run_until(lambda: conn.state is not TcpState.SYN_SENT, 5.0):
        raise DeviceError("our stack could not connect to the kernel's peer")
    if conn.state is not TcpState.ESTABLISHED:
        raise DeviceError(f"the connection to the kernel's peer failed ({conn.state.value})")
    data = memoryview(os.urandom(CHUNK))
    sink = bytearray(CHUNK)
    received = 0

    def move() -> None:
        nonlocal received
        if direction == "tx":
            while conn.send(data):
                pass
        else:
            while conn.readable():
                received += conn.recv_into(sink)

    def delivered() -> int:
        return conn.info().bytes_acked if direction == "tx" else received

    start = time.monotonic() + WARMUP_S
    while time.monotonic() < start:
        move()
        loop.step(0.01)
    before = dict(stack.policy.decisions)
    bytes0, (cpu0, host0) = delivered(), _cpu_now()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        move()
        loop.step(0.01)
    elapsed = time.perf_counter() - t0
    cpu1, host1 = _cpu_now()
    moved = delivered() - bytes0
    after = dict(stack.policy.decisions)
    conn.abort()
    loop.step(0.0)
    if moved <= 0:
        raise DeviceError(f"{direction}: nothing was delivered in {seconds} s")
    decisions = {k: v - before.get(k, 0) for k, v in after.items()}
    gb = moved / 1e9
    return Measured(
        gbit_per_s=moved * 8 / elapsed / 1e9,
        cpu_s_per_gb=(cpu1 - cpu0) / gb,
        host_cpu_s_per_gb=(host1 - host0) / gb,
        decisions={k: v for k, v in decisions.items() if v},
    )


def _kernel(seconds: float) -> Measured:
    """A kernel socket to a kernel socket over a veth between two namespaces."""
    with Netns("nsobench") as a, Netns("nsobench") as b:
        a.add_veth("nsova", "nsovb", peer_netns=b)
        a.set_link("nsova", up=True)
        b.set_link("nsovb", up=True)
        a.add_address("nsova", f"{KERNEL_ADDR}/24")
        b.add_address("nsovb", f"{OURS_ADDR}/24")
        sink = _start_peer(a, "listen", KERNEL_ADDR, "sink", seconds + 5.0, cpu=0)
        with _stopped(sink):
            host0 = _cpu_now()[1]
            source = _start_peer(b, "connect", KERNEL_ADDR, "source", seconds)
            with _stopped(source):
                got, elapsed = _peer_result(sink, seconds + 30.0)
            host1 = _cpu_now()[1]
    if got <= 0 or elapsed <= 0:
        raise DeviceError("kernel to kernel: nothing was delivered")
    return Measured(
        gbit_per_s=got * 8 / elapsed / 1e9,
        cpu_s_per_gb=float("nan"),
        host_cpu_s_per_gb=(host1 - host0) / (got / 1e9),
        decisions={},
    )


def ratio(a: float, b: float) -> float | None:
    """``a / b`` to two decimals (``None`` when ``b`` is 0): a bench's side-by-side ratio."""
    return round(a / b, 2) if b > 0 else None


def run(quick: bool, progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """Measure tx and rx, ours on and off and the kernel reference; the JSON result."""
    _require_privileges()
    seconds = 0.5 if quick else 2.0
    rounds = 1 if quick else 2
    best: dict[tuple[str, str], Measured] = {}
    plan = [
        (direction, label)
        for _ in range(rounds)
        for direction in ("tx", "rx")
        for label in ("off", "on", "kernel")
    ]
    progress.stage("TCP: ours on/off and kernel to kernel", len(plan))
    for done, (direction, label) in enumerate(plan, 1):
        if label == "kernel":
            measured = _kernel(seconds)
        else:
            measured = _ours(direction, label == "on", seconds)
        if measured.better_than(best.get((direction, label))):
            best[(direction, label)] = measured
        progress.update(done)
    result: dict[str, Any] = {
        "benchmark": "tcp",
        "quick": quick,
        "kernel": platform.release(),
        "seconds_per_measurement": seconds,
        "rounds": rounds,
        "cpus": len(os.sched_getaffinity(0)),
    }
    for direction in ("tx", "rx"):
        on, off, kernel = (best[(direction, k)] for k in ("on", "off", "kernel"))
        result[direction] = {
            "ours_on_gbit_per_s": round(on.gbit_per_s, 3),
            "ours_off_gbit_per_s": round(off.gbit_per_s, 3),
            "kernel_gbit_per_s": round(kernel.gbit_per_s, 3),
            "ratio_on_over_off": ratio(on.gbit_per_s, off.gbit_per_s),
            "ratio_on_over_kernel": ratio(on.gbit_per_s, kernel.gbit_per_s),
            "ours_on_cpu_s_per_gb": round(on.cpu_s_per_gb, 3),
            "ours_off_cpu_s_per_gb": round(off.cpu_s_per_gb, 3),
            "ratio_cpu_on_over_off": ratio(on.cpu_s_per_gb, off.cpu_s_per_gb),
            "ours_on_host_cpu_s_per_gb": round(on.host_cpu_s_per_gb, 3),
            "ours_off_host_cpu_s_per_gb": round(off.host_cpu_s_per_gb, 3),
            "kernel_host_cpu_s_per_gb": round(kernel.host_cpu_s_per_gb, 3),
            "offload_decisions": {"on": on.decisions, "off": off.decisions},
        }
    return result


def render(result: dict[str, Any], console: Console) -> None:
    """The side-by-side table."""
    table = Table(
        title=(
            f"TCP, our stack vs the kernel's (kernel {result['kernel']}, "
            f"best of {result['rounds']} x {result['seconds_per_measurement']} s)"
        ),
        title_justify="left",
    )
    table.add_column("")
    table.add_column("off Gbit/s", justify="right")
    table.add_column("on Gbit/s", justify="right")
    table.add_column("kernel Gbit/s", justify="right")
    table.add_column("on/off", justify="right")
    table.add_column("on/kernel", justify="right")
    table.add_column("off CPU s/GB", justify="right")
    table.add_column("on CPU s/GB", justify="right")
    for direction in ("tx", "rx"):
        r = result[direction]
        table.add_row(
            direction,
            f"{r['ours_off_gbit_per_s']:.2f}",
            f"{r['ours_on_gbit_per_s']:.2f}",
            f"{r['kernel_gbit_per_s']:.2f}",
            times(r["ratio_on_over_off"]),
            times(r["ratio_on_over_kernel"]),
            f"{r['ours_off_cpu_s_per_gb']:.2f}",
            f"{r['ours_on_cpu_s_per_gb']:.2f}",
        )
    console.print(table)
    for direction in ("tx", "rx"):
        d = result[direction]["offload_decisions"]
        console.print(
            f"{direction} offload decisions: on {_counts(d['on'])}; off {_counts(d['off'])}"
        )
    console.print(
        "tx: our stack sends to a kernel socket; rx: a kernel socket sends to our stack.\n"
        "on: TSO/GRO super-packets, policy always; off: TUNSETOFFLOAD 0, policy never "
        "(MSS-sized frames, host checksums); kernel: socket to socket over a veth.\n"
        "CPU s/GB: this process (user + system) per GB moved."
    )


def plot(result: dict[str, Any], path: str) -> None:
    """The result as a bar chart in ``path`` (PNG); needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DeviceError("--plot needs matplotlib: pip install 'netoffload[plot]'") from None
    labels = ["ours, offloads off", "ours, offloads on", "kernel to kernel"]
    keys = ["ours_off_gbit_per_s", "ours_on_gbit_per_s", "kernel_gbit_per_s"]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.25
    for i, (label, key) in enumerate(zip(labels, keys, strict=True)):
        values = [result[d][key] for d in ("tx", "rx")]
        bars = ax.bar([x + (i - 1) * width for x in (0, 1)], values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks([0, 1], ["tx (ours sends)", "rx (ours receives)"])
    ax.set_ylabel("Gbit/s")
    ax.set_title(f"netoffload bench tcp (kernel {result['kernel']})")
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, format="png")
    except OSError as exc:
        raise DeviceError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)


def times(value: float | None, digits: int = 1) -> str:
    """A ratio as a table shows it: ``31.0x`` (``-`` for none)."""
    return "-" if value is None else f"{value:.{digits}f}x"


def _counts(decisions: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(decisions.items())) or "none"
