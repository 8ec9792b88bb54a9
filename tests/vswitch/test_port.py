"""``GuestPort`` keeps the device contract (views valid until released, every packet taken is
sent or dropped, capabilities as data), with the guest in this process; and what a guest and
the switch see when the other side goes away."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from netoffload.device.base import DeviceError
from netoffload.device.vmdq.queue import Status, descs
from netoffload.device.vmdq.window import HEADROOM, WindowGeometry
from netoffload.offload import Packet, Selection, SelectionError, Task
from netoffload.vswitch import GuestConfig, GuestPort, VSwitch
from netoffload.wire import MacAddress
from netoffload.wire.ethernet import EthernetRepr
from tests.vswitch.helpers import Rig, frame_to, softnic_switch

OUTSIDE = MacAddress.parse("02:00:00:00:99:99")


@contextmanager
def guest_here(rig: Rig, name: str = "here", *, ring_entries: int = 256) -> Iterator[GuestPort]:
    """A guest in this process, attached while the switch runs here too."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rig.switch.add_guest(GuestConfig(name), ours)
    made: list[GuestPort | BaseException] = []

    def attach() -> None:
        try:
            geometry = WindowGeometry(8, 4, 8192)
            made.append(GuestPort(theirs, name=name, geometry=geometry, ring_entries=ring_entries))
        except BaseException as exc:
            made.append(exc)

    thread = threading.Thread(target=attach)
    thread.start()
    assert rig.switch.run_until(lambda: bool(made), 20)
    thread.join(10)
    port = made[0]
    if isinstance(port, BaseException):
        raise port
    rig.switch.run_until(lambda: rig.switch.guest(name).table.posted == 8, 10)  # type: ignore[union-attr]
    try:
        yield port
    finally:
        port.close()


def _recv(sw: VSwitch, port: GuestPort, count: int) -> list[Packet]:
    got: list[Packet] = []
    assert sw.run_until(lambda: bool(got.extend(port.recv()) or len(got) >= count), 20)
    return got


def test_received_views_stay_put_until_released_and_then_go_back() -> None:
    with softnic_switch() as rig, guest_here(rig) as port:
        sw = rig.switch
        table = sw.guest("here").table
        assert table is not None
        frames = [frame_to(port.mac, size=100 + i) for i in range(3)]
        for frame in frames:
            rig.peer.send(frame)
        got = _recv(sw, port, 3)
        assert [bytes(p.data) for p in got] == frames
        assert port.rx_held == 3 and table.held == 3
        where = port.location(got[0])
        assert where is not None and where[1] == table.gen[where[0]]
        for _ in range(5):
            sw.step(0.0)
        assert [bytes(p.data) for p in got] == frames  # nothing wrote into held buffers
        port.release(got[:1])
        port.release(got[:1])  # a second time: not handed out any more, ignored
        assert sw.run_until(lambda: table.held == 2 and table.posted == 6, 10)
        port.release()
        assert sw.run_until(lambda: table.held == 0 and table.posted == 8, 10)
        assert port.take_errors() == []


def test_every_frame_sent_goes_out_or_is_dropped_and_its_buffer_comes_back() -> None:
    with softnic_switch() as rig, guest_here(rig) as port:
        sw = rig.switch
        out = [EthernetRepr(OUTSIDE, port.mac, 0x88B5).to_bytes(bytes([i]) * 50) for i in range(3)]
        to_itself = EthernetRepr(port.mac, port.mac, 0x88B5).to_bytes(bytes(50))
        batch = [Packet(f) for f in out] + [Packet(to_itself), Packet(bytes(9000))]
        assert port.send(batch) == 5  # 4 transmit buffers; the one too large needs none
        stats = port.stats()
        assert stats.drops == {"too_large": 1}
        # Each frame taken was built once in a transmit buffer of the window.
        assert (stats.tx_copies, stats.tx_copy_bytes) == (4, 3 * 64 + 64)
        got: list[bytes] = []
        assert sw.run_until(
            lambda: bool(got.extend(bytes(f) for f in rig.peer.recv_batch())) or len(got) >= 3,
            20,
        )
        assert got == out
        assert sw.run_until(lambda: port.tx_free == 4, 10)  # every buffer back, the hairpin's too
        counters = sw.guest("here").counters
        assert counters.tx_packets == 3
        assert counters.drops == {"tx_dropped": 1}
        assert port.send([Packet(out[0])] * 5) == 4  # no buffer for the fifth: still ours


def test_a_full_done_ring_holds_back_buffers_given_back_and_costs_only_unreported_refusals() -> (
    None
):
    with softnic_switch() as rig, guest_here(rig, ring_entries=8) as port:
        sw = rig.switch
        guest = sw.guest("here")

        def stale_sends(count: int) -> None:
            # Written straight into the ring, so the guest does not read its done ring.
            rows = descs(count)
            rows["buffer"] = port.geometry.rx_buffers  # a transmit buffer, a wrong generation
            rows["gen"] = 999
            rows["offset"] = HEADROOM
            rows["length"] = 64
            port.rings["tx"].put(rows)
            port.kick()

        out = [EthernetRepr(OUTSIDE, port.mac, 0x88B5).to_bytes(bytes([i]) * 50) for i in range(4)]
        assert port.send([Packet(f) for f in out]) == 4  # every transmit buffer in flight
        stale_sends(4)
        assert sw.run_until(lambda: guest.counters.refused["stale"] == 4, 10)
        stale_sends(8)
        assert sw.run_until(lambda: guest.counters.refused["stale"] == 12, 10)
        got: list[bytes] = []
        assert sw.run_until(
            lambda: bool(got.extend(bytes(f) for f in rig.peer.recv_batch())) or len(got) >= 4,
            20,
        )
        assert got == out
        # 4 buffers and 12 refusals for 8 entries: the guest keeps its place, refusals that
        # found no room are counted, and the buffers wait for room.
        assert guest.attached
        unreported = guest.counters.drops["refusals_unreported"]
        assert unreported >= 4
        errors = port.take_errors()  # reads the done ring: room again
        assert {(e.ring, e.status) for e in errors} == {("tx", Status.STALE)}
        assert len(errors) + unreported == 12
        assert sw.run_until(lambda: port.tx_free == 4, 10)  # every buffer back, none lost
        assert port.send([Packet(out[0])]) == 1


def test_capabilities_are_data_and_assembly_cannot_be_turned_off() -> None:
    with softnic_switch() as rig, guest_here(rig) as port:
        tasks = {r.task for r in port.capabilities()}
        assert tasks == {
            Task.CHECKSUM,
            Task.TCP_SEGMENTATION,
            Task.UDP_SEGMENTATION,
            Task.TCP_ASSEMBLY,
            Task.UDP_ASSEMBLY,
        }
        assert set(port.fixed_selection()) == {Task.TCP_ASSEMBLY, Task.UDP_ASSEMBLY}
        assert port.enable(port.fixed_selection()) == port.fixed_selection()
        with pytest.raises(SelectionError):
            port.enable(Selection())
        assert port.mtu == 1500 and port.link_up


def test_a_guest_sees_its_switch_go_and_says_so_in_one_line() -> None:
    with softnic_switch() as rig, guest_here(rig) as port:
        assert port.link_up
        rig.switch.close()
        with pytest.raises(DeviceError, match=r"^here: the switch is gone$"):
            port.wait(5.0)  # woken by the switch closing its end
        with pytest.raises(DeviceError, match="the switch is gone"):
            port.recv()
        assert not port.link_up


def test_the_switch_sees_its_firmware_die_and_says_so_in_one_line() -> None:
    with softnic_switch() as rig:
        os.kill(rig.nic.firmware_pid, signal.SIGKILL)
        with pytest.raises(DeviceError) as info:
            rig.switch.run_until(lambda: False, 10)
        assert "softnic firmware exited with signal SIGKILL" in str(info.value)
        assert "\n" not in str(info.value)
