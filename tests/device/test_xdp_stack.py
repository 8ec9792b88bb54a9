"""Our stack on an XdpDevice talks TCP to the kernel across a veth pair, frames built in UMEM.

The issue's acceptance: 100 MB from our stack to a kernel socket, byte-exact,
every TCP segment formed in a UMEM chunk (checksummed there by the host,
``HostOffload`` over ``XdpDevice.tx_rows``) and posted where it lies; the
device's copy counter shows that no frame with a payload was copied after
the stack's send ring. Both directions, IPv4 and IPv6, in a smaller exchange.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import pytest

from netoffload.device.xdp import XdpDevice, af_xdp_missing
from netoffload.loop import StackLoop
from netoffload.netns import Netns
from netoffload.policy import OffloadPolicy
from netoffload.stack.stack import Stack
from netoffload.stack.tcp import PeerClosed, Refused, Reset, TcpConfig, TcpState
from netoffload.stack.tcp_layer import TcpHandle
from tests.stack.kernel_peer import (
    KERNEL,
    OURS,
    PREFIX,
    KernelSide,
    Rig,
    cli_popen,
    kernel_client,
    kernel_server,
    kernel_socket,
    payload,
)

pytestmark = pytest.mark.privileged


@pytest.fixture(autouse=True)
def _af_xdp() -> None:
    """Skip, naming the kernel feature, on a machine that cannot run an XdpDevice."""
    if os.geteuid() == 0 and (missing := af_xdp_missing()) is not None:
        pytest.skip(missing)


@contextmanager
def xdp_rig(version: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Rig, list[int]]]:
    """Our stack on ``nsova`` through AF_XDP, the kernel on ``nsovb``; and a list that
    counts the UMEM rows the host was lent."""
    with Netns() as ns:
        if version == 6:
            ns.enable_ipv6()
        ns.add_veth("nsova", "nsovb")
        ns.set_link("nsova", up=True)
        ns.set_link("nsovb", up=True)
        # The kernel's segments must carry whole checksums: a partial one never crosses XDP.
        ns.set_features("nsovb", {"tx-checksum-ip-generic": False})
        with ns.entered():
            device = XdpDevice("nsova")
        lent = [0]
        real = device.tx_rows

        def counted(count: int, width: int) -> npt.NDArray[np.uint8] | None:
            rows = real(count, width)
            lent[0] += 0 if rows is None else count
            return rows

        monkeypatch.setattr(device, "tx_rows", counted)
        try:
            ns.add_address("nsovb", f"{KERNEL[version]}/{PREFIX[version]}")
            stack = Stack(rng=random.Random(1), tcp=TcpConfig(), policy=OffloadPolicy("always"))
            stack.add_interface(device, [f"{OURS[version]}/{PREFIX[version]}"])
            yield Rig(ns, device, stack, StackLoop(stack), version, "nsovb"), lent
        finally:
            device.close()


def _exchange(r: Rig, handle: TcpHandle, data: bytes, timeout_s: float) -> bytes:
    """Send ``data`` then FIN, read until the peer's FIN, until the connection is closed."""
    conn = handle.conn
    sent = 0
    shut = peer_closed = False
    got = bytearray()
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


def _finish(side: KernelSide, timeout_s: float = 30.0) -> None:
    assert side.done.wait(timeout_s), "the kernel's side did not finish"
    if side.error is not None:
        raise side.error


def test_100_mb_from_our_stack_built_in_umem_arrive_byte_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = payload(100_000_000)
    with xdp_rig(4, monkeypatch) as (r, lent):
        side = kernel_server(r, 5003)
        handle = r.stack.tcp_connect(r.kernel, 5003, time.monotonic_ns())
        _exchange(r, handle, data, timeout_s=120)
        _finish(side, 60)
        assert len(side.received) == len(data) and side.received == data
        device = r.device.stats()
        host = r.stack.interfaces[0].host.stats
        segments = r.stack.tcp.stats.segments_out
    # Every TCP segment (data, ACK, SYN, FIN) was formed in a UMEM row the host was lent,
    # its checksum filled there, and posted where it lay: no copy at the device.
    assert segments > len(data) // 1448
    assert host.fallbacks["checksum/not_enabled"] == segments
    assert device.tx_in_place == lent[0] >= segments
    # What the device copied is what the stack handed over whole: ARP, no TCP payload.
    assert device.tx_copies <= 4 and device.tx_copy_bytes <= 60 * device.tx_copies
    assert device.tx_packets == device.tx_in_place + device.tx_copies
    assert not device.drops


@pytest.mark.parametrize("version", [4, 6])
def test_both_ways_with_the_kernel(version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    up, down = payload(3_000_000, 1), payload(2_000_000, 2)
    with xdp_rig(version, monkeypatch) as (r, _):
        side = kernel_server(r, 5001, send=down)
        handle = r.stack.tcp_connect(r.kernel, 5001, time.monotonic_ns())
        got = _exchange(r, handle, up, timeout_s=60)
        _finish(side)
        assert got == down and bytes(side.received) == up
        listeners = r.stack.tcp_listen(5002)
        side = kernel_client(r, 5002, send=up)
        accepted: list[TcpHandle] = []

        def accept() -> bool:
            found = r.stack.tcp_accept(listeners)
            if found is not None:
                accepted.append(found)
            return bool(accepted)

        assert r.loop.run_until(accept, timeout_s=20)
        got = _exchange(r, accepted[0], down, timeout_s=60)
        _finish(side)
        assert got == up and bytes(side.received) == down
        assert r.device.stats().tx_copies <= 4


def test_100_mb_to_our_stack_arrive_byte_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    data = payload(100_000_000)
    with xdp_rig(4, monkeypatch) as (r, _):
        listeners = r.stack.tcp_listen(5004)
        side = kernel_client(r, 5004, send=data)
        accepted: list[TcpHandle] = []

        def accept() -> bool:
            found = r.stack.tcp_accept(listeners)
            if found is not None:
                accepted.append(found)
            return bool(accepted)

        assert r.loop.run_until(accept, timeout_s=20)
        got = _exchange(r, accepted[0], b"", timeout_s=120)
        _finish(side, 60)
        assert len(got) == len(data) and got == data
        assert isinstance(r.device, XdpDevice) and r.device.rx_held == 0  # all given back
        device = r.device.stats()
    assert device.rx_packets > len(data) // 1448 and not device.drops


def test_nc_runs_our_stack_on_an_xdp_device() -> None:
    with Netns() as ns:
        ns.add_veth("nsova", "nsovb")
        ns.set_link("nsova", up=True)
        ns.set_link("nsovb", up=True)
        ns.set_features("nsovb", {"tx-checksum-ip-generic": False})
        ns.add_address("nsovb", "198.18.0.1/24")
        with kernel_socket(ns) as server:
            server.bind(("198.18.0.1", 7000))
            server.listen(1)
            server.settimeout(20)
            proc = cli_popen(
                ns, "nc", "--device", "xdp:nsova", "--address", "198.18.0.2/24", "--stats",
                "198.18.0.1", "7000",
            )  # fmt: skip
            try:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(20)
                    assert proc.stdin is not None
                    proc.stdin.write(b"through the umem\n")
                    proc.stdin.close()
                    got = b""
                    while chunk := conn.recv(1 << 16):
                        got += chunk
                    conn.sendall(b"and back\n")
                assert proc.wait(20) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read().decode()
    assert got == b"through the umem\n" and out == b"and back\n"
    device = json.loads(err.splitlines()[-1])["interfaces"][0]["device"]
    assert device["tx_in_place"] > 0 and device["tx_copy_bytes"] <= 60 * device["tx_copies"]
