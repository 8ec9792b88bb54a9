"""A guest talks TCP to the Linux kernel through the switch's Linux uplink: a TAP, both ways,
over IPv4 and IPv6; and a veth through AF_PACKET whose offloads are off, so the switch does
the guest's segmentation and checksums itself. In private namespaces (198.18.0.0/15 and
fd00::/8 only)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from netoffload.device.packet import PacketDevice
from netoffload.device.tap import TapDevice
from netoffload.netns import Netns
from netoffload.vswitch import GuestConfig, LinuxUplink, VSwitch
from tests.vswitch.helpers import report_of, stack_guest, wait_attached

pytestmark = pytest.mark.privileged

KERNEL = {4: "198.18.0.1", 6: "fd00::1"}
GUEST = {4: "198.18.0.12", 6: "fd00::12"}
PREFIX = {4: 24, 6: 64}
SIZE = 8 << 20


@dataclass
class Echo:
    """A kernel thread's side of one connection: what it got, what went wrong."""

    received: int = 0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def _echo_loop(conn: socket.socket, side: Echo) -> None:
    with conn:
        conn.settimeout(60)
        while True:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            conn.sendall(chunk)
            side.received += len(chunk)
        conn.shutdown(socket.SHUT_WR)


def _in_thread(work: object, side: Echo) -> None:
    def main() -> None:
        try:
            work()  # type: ignore[operator]
        except BaseException as exc:  # reported by the test
            side.error = exc
        finally:
            side.done.set()

    threading.Thread(target=main, daemon=True).start()


def _kernel_echo(ns: Netns, version: int, port: int) -> Echo:
    """A kernel socket in ``ns`` that echoes one connection, served by a thread."""
    with ns.entered():
        server = socket.socket(_family(version), socket.SOCK_STREAM)
    server.bind((KERNEL[version], port))
    server.listen(1)
    server.settimeout(60)
    side = Echo()

    def serve() -> None:
        with server:
            conn, _ = server.accept()
        _echo_loop(conn, side)

    _in_thread(serve, side)
    return side


@contextmanager
def tap_switch(version: int) -> Iterator[tuple[Netns, VSwitch]]:
    with Netns() as ns:
        if version == 6:
            ns.enable_ipv6()
        with ns.entered():
            tap = TapDevice("nsovsw0")
        ns.add_address("nsovsw0", f"{KERNEL[version]}/{PREFIX[version]}")
        switch = VSwitch(LinuxUplink(tap), name="tapsw")
        try:
            yield ns, switch
        finally:
            switch.close()


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


@pytest.mark.parametrize("version", [4, 6])
def test_a_guest_connects_to_a_kernel_echo_through_a_tap_uplink(version: int) -> None:
    with tap_switch(version) as (ns, sw):
        side = _kernel_echo(ns, version, 5001)
        address = f"{GUEST[version]}/{PREFIX[version]}"
        argv = stack_guest(
            "cli", "--address", address, "--connect", KERNEL[version], "5001", "--bytes", str(SIZE)
        )
        sw.spawn_guest(GuestConfig("cli"), argv)
        assert sw.run_until(lambda: bool((sw.guest("cli").report or {}).get("final")), 120)
        assert side.done.wait(30)
        stats = sw.stats()
        sw.stop_guests()
    assert side.error is None, side.error
    client = report_of(sw, "cli")
    assert client["match"] is True and client["received"] == SIZE, client
    assert side.received == SIZE
    guest = stats["guests"][0]
    # The kernel handed the frames to the switch's memory: each is copied once into the
    # guest's buffer, and counted as that.
    assert stats["uplink"]["maps_guest_windows"] is True
    assert stats["payload_bytes_copied_unicast_rx"] == guest["copied_bytes"]["uplink"]
    assert (
        guest["copied_bytes"]["uplink"] + guest["copied_bytes"].get("group", 0)
        == (guest["rx_bytes"])
    )
    assert guest["rx_bytes"] > SIZE
    # The guest's TSO requests reached the kernel whole: it cut them, not the switch.
    host = stats["uplink"]["host"]
    assert host["fallbacks"] == {}
    assert stats["uplink"]["device"]["tasks"]["tcp_segmentation"] > 0


@pytest.mark.parametrize("version", [4, 6])
def test_the_kernel_connects_to_a_guest_echo_through_a_tap_uplink(version: int) -> None:
    with tap_switch(version) as (ns, sw):
        address = f"{GUEST[version]}/{PREFIX[version]}"
        sw.spawn_guest(GuestConfig("srv"), stack_guest("srv", "--address", address, "--echo", "7"))
        wait_attached(sw, "srv")
        with ns.entered():
            client = socket.socket(_family(version), socket.SOCK_STREAM)
        client.settimeout(60)
        payload = bytes(range(256)) * (SIZE // 256)
        side = Echo()
        got = bytearray()

        def send_all() -> None:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        def talk() -> None:
            with client:
                client.connect((GUEST[version], 7))
                sender = threading.Thread(target=send_all, daemon=True)
                sender.start()
                while True:  # until the guest's FIN, after it echoed everything
                    chunk = client.recv(1 << 20)
                    if not chunk:
                        break
                    got.extend(chunk)
                sender.join(30)
                side.received = len(got)

        _in_thread(talk, side)
        assert sw.run_until(side.done.is_set, 120)
        assert sw.run_until(lambda: bool((sw.guest("srv").report or {}).get("final")), 30)
        sw.stop_guests()
    assert side.error is None, side.error
    assert bytes(got) == payload
    assert report_of(sw, "srv")["echoed"] == SIZE


def test_over_a_veth_without_offloads_the_switch_does_the_guests_segmentation() -> None:
    with Netns() as ns:
        ns.add_veth("nsovsa", "nsovsb")
        for ifname in ("nsovsa", "nsovsb"):
            ns.set_link(ifname, up=True)
        off = ("tx-tcp-segmentation", "tx-tcp6-segmentation", "tx-checksum-ip-generic")
        ns.set_features("nsovsa", dict.fromkeys(off, False))
        ns.add_address("nsovsb", f"{KERNEL[4]}/24")
        with ns.entered():
            device = PacketDevice("nsovsa", ring_frames=256)
        side = _kernel_echo(ns, 4, 5002)
        sw = VSwitch(LinuxUplink(device, enable_offloads=False), name="vethsw")
        try:
            argv = stack_guest(
                "cli", "--address", f"{GUEST[4]}/24", "--connect", KERNEL[4], "5002",
                "--bytes", str(SIZE),
            )  # fmt: skip
            sw.spawn_guest(GuestConfig("cli"), argv)
            assert sw.run_until(lambda: bool((sw.guest("cli").report or {}).get("final")), 120)
            assert side.done.wait(30)
            stats = sw.stats()
            sw.stop_guests()
        finally:
            sw.close()
    assert side.error is None, side.error
    client = report_of(sw, "cli")
    assert client["match"] is True and side.received == SIZE
    assert client["stack"]["super_packets_out"] > 0  # type: ignore[index]
    host = stats["uplink"]["host"]
    # The device took no TSO request: the switch cut the super-packets (and filled the
    # checksums) with the same engine, and said why.
    assert any(key.startswith("tcp_segmentation/") for key in host["fallbacks"]), host
    assert host["tasks"]["tcp_segmentation"] > 0
    assert "tcp_segmentation" not in stats["uplink"]["device"]["tasks"]
