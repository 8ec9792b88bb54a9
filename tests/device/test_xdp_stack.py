"""Our stack on an XdpDevice talks TCP to the kernel across a veth pair, frames built in UMEM.

The issue's acceptance: 100 MB from our stack to a kernel socket, byte-exact,
the connection's send buffer in the UMEM, its super-packets cut by the host
around their payload, and every segment posted as AF_XDP multi-buffer: its
headers (checksummed by the host over headers and payload) in a chunk of
their own, its payload where the application's bytes were written. The
counters show that no payload byte was copied after that one copy, by the
host or the device. Both directions, IPv4 and IPv6, in a smaller exchange.
Through loss, a ring of descriptors watched from outside shows that no
byte under a descriptor changed before the kernel completed it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import pytest

from netoffload.device.xdp import XdpDevice, af_xdp_missing
from netoffload.loop import StackLoop
from netoffload.netns import Netns
from netoffload.offload import Packet
from netoffload.policy import OffloadPolicy
from netoffload.stack.stack import Stack
from netoffload.stack.tcp import TcpConfig
from netoffload.stack.tcp_layer import TcpHandle
from tests.stack.kernel_peer import (
    KERNEL,
    OURS,
    PREFIX,
    Rig,
    cli_popen,
    exchange,
    finish_kernel_side,
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


def test_100_mb_from_our_stack_built_in_umem_arrive_byte_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = payload(100_000_000)
    with xdp_rig(4, monkeypatch) as (r, lent):
        side = kernel_server(r, 5003)
        handle = r.stack.tcp_connect(r.kernel, 5003, time.monotonic_ns())
        exchange(r, handle, data, timeout_s=120)
        finish_kernel_side(side, 60)
        assert len(side.received) == len(data) and side.received == data
        device = r.device.stats()
        host = r.stack.interfaces[0].host.stats
        tcp = r.stack.tcp.stats
        info = handle.conn.info()
        sent, resent = info.bytes_sent, info.bytes_retransmitted
    assert tcp.send_buffers_in_device == 1 and tcp.send_buffers_in_host == 0
    # The stack handed over super-packets, which the host cut around their payload: each
    # segment its own headers (checksums filled by the host) before the send buffer's
    # bytes, posted where they lay; control segments (SYN, ACK-only, FIN) were built in
    # a UMEM row the host was lent.
    assert tcp.segments_out > len(data) // 1448
    assert host.tasks["tcp_segmentation"] == tcp.super_packets_out > len(data) // 65536
    assert device.tx_in_place == tcp.segments_out > lent[0]
    # The payload: the application's bytes were copied into the send buffer, and then
    # neither the host nor the device copied a byte of it again.
    assert host.tx_payload_copy_bytes == 0 and device.tx_payload_copy_bytes == 0
    # Posted in place: every payload byte sent (and sent again), and the control segments.
    assert sent == len(data)
    assert 0 <= device.tx_in_place_bytes - (sent + resent) <= 100 * lent[0]
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
        got = exchange(r, handle, up, timeout_s=60)
        finish_kernel_side(side)
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
        got = exchange(r, accepted[0], down, timeout_s=60)
        finish_kernel_side(side)
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
        got = exchange(r, accepted[0], b"", timeout_s=120)
        finish_kernel_side(side, 60)
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


LOSS_RULES = """
table netdev nsoloss {{
    chain ingress {{
        type filter hook ingress device "{dev}" priority 0; policy accept;
        meta protocol ip tcp dport {port} numgen random mod 1000 < 20 counter drop
    }}
}}
"""


class DescriptorWatch:
    """Watches the rings, not the device's books: the bytes of every descriptor posted into
    send memory, as they were when posted, compared with the memory when the kernel
    reports the descriptor completed.

    On veth the kernel completes a frame before the peer can acknowledge it, so the
    device is made to read its completion ring late (four times in five it does not
    look): acknowledged bytes are then still under descriptors, as they are on a NIC
    whose completions lag, and the send buffer must wait for them.
    """

    def __init__(self, device: XdpDevice, monkeypatch: pytest.MonkeyPatch) -> None:
        xsk = device._xsk
        assert xsk is not None
        self.xsk = xsk
        self.lent_from = device.frames * device.frame_size
        self.posted: dict[int, list[bytes]] = {}
        self.checked = 0
        self.changed: list[int] = []
        send, reap = device.send, device._reap

        def watched_send(batch: Sequence[Packet]) -> int:
            before = xsk.tx.cached_prod
            taken = send(batch)
            self._posted(before, (xsk.tx.cached_prod - before) & 0xFFFFFFFF)
            return taken

        late = random.Random(7)

        def watched_reap() -> None:
            if late.random() < 0.8:
                return
            comp = xsk.comp
            before = comp.cached_cons
            ready = comp.available()
            self._completed(before, ready)  # read before they are given back
            reap()
            more = ((comp.cached_cons - before) & 0xFFFFFFFF) - ready
            self._completed(before + ready, more)  # arrived in between

        monkeypatch.setattr(device, "send", watched_send)
        monkeypatch.setattr(device, "_reap", watched_reap)

    def _posted(self, start: int, count: int) -> None:
        tx, umem = self.xsk.tx, self.xsk.umem
        for k in range(count):
            slot = (start + k) & tx.mask
            addr, length = int(tx.addr[slot]), int(tx.len[slot])
            if addr >= self.lent_from:
                self.posted.setdefault(addr, []).append(umem[addr : addr + length].tobytes())

    def _completed(self, start: int, count: int) -> None:
        comp, umem = self.xsk.comp, self.xsk.umem
        for k in range(count):
            addr = int(comp.addr[(start + k) & comp.mask])
            snapshots = self.posted.get(addr)
            if not snapshots:
                continue
            for snapshot in snapshots:  # each still posted: none may have changed
                if umem[addr : addr + len(snapshot)].tobytes() != snapshot:
                    self.changed.append(addr)
            snapshots.remove(min(snapshots, key=len))
            self.checked += 1


def test_send_memory_is_not_overwritten_while_the_kernel_holds_descriptors_through_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = payload(20_000_000, 5)
    with xdp_rig(4, monkeypatch) as (r, _):
        with r.ns.entered():
            rules = LOSS_RULES.format(dev="nsovb", port=5005)
            subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)
        assert isinstance(r.device, XdpDevice)
        watch = DescriptorWatch(r.device, monkeypatch)
        side = kernel_server(r, 5005)
        # A small send buffer: the ring wraps every 256 KiB, close behind the ACKs.
        config = TcpConfig(send_buffer_bytes=256 * 1024)
        handle = r.stack.tcp.connect(r.kernel, 5005, time.monotonic_ns(), config=config)
        exchange(r, handle, data, timeout_s=120)
        finish_kernel_side(side, 60)
        assert len(side.received) == len(data) and side.received == data
        dropped = r.ns.exec("nft", "list", "table", "netdev", "nsoloss")
        info = handle.conn.info()
        device = r.device.stats()
        host = r.stack.interfaces[0].host.stats
        tcp = r.stack.tcp.stats
    assert "counter packets 0 " not in dropped and info.bytes_retransmitted > 0
    assert tcp.send_buffers_in_device == 1 and info.send_buffer_in_device
    # Writes waited for completions (acknowledged bytes still under descriptors).
    assert info.send_buffer_held_bytes > 0
    # Retransmissions pointed at the same bytes again; no descriptor's bytes changed
    # before the kernel gave it back, and no payload byte was copied on the way.
    assert watch.checked > len(data) // 4096 and watch.changed == []
    assert host.tx_payload_copy_bytes == 0 and device.tx_payload_copy_bytes == 0
    assert device.tx_in_place_bytes >= len(data) + info.bytes_retransmitted
