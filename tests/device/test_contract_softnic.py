"""The device API a stack needs, on a SoftNic: link facts, poll-based waits past fd 1024,
one descriptor per queue, lent buffers handed back, nothing leaked when start-up fails."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

import pytest

from netoffload.device.base import Device, DeviceError
from netoffload.device.cable import Cable, Impairments
from netoffload.device.softnic import SoftNic
from netoffload.offload import Packet
from netoffload.wire import MacAddress


@contextlib.contextmanager
def _high_descriptors(count: int = 1100) -> Iterator[None]:
    """Occupy the low descriptors, so whatever opens next gets numbers above 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < count + 200:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is below {count + 200}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 200), hard))
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(count)]
    try:
        yield
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def test_link_facts() -> None:
    with Cable(Impairments(mtu=9000)) as cable, SoftNic(cable=cable.a, name="facts") as nic:
        assert nic.mtu == 9000
        assert isinstance(nic.mac, MacAddress)
        assert nic.mac.octets[0] & 0x02 and not nic.mac.octets[0] & 0x01  # local, unicast
        assert nic.link_up
    assert not nic.link_up


def test_mac_is_stable_per_name_and_settable() -> None:
    chosen = MacAddress.parse("02:12:34:56:78:9a")
    with SoftNic(name="one") as a, SoftNic(name="one") as b, SoftNic(name="two") as c:
        assert a.mac == b.mac != c.mac
    with SoftNic(mac=chosen) as d:
        assert d.mac == chosen


def test_wait_works_past_descriptor_1024() -> None:
    with _high_descriptors(), SoftNic(name="high") as nic:
        assert min(nic.filenos()) > 1024
        assert not nic.wait(0.01)  # nothing to receive: a bounded wait, no ValueError
        assert nic.peer is not None
        nic.peer.send(b"\x02" * 60)
        assert nic.wait(5.0)
        got = nic.recv()
        assert [bytes(p.data) for p in got] == [b"\x02" * 60]
        nic.release(got)
        nic.send([Packet(b"\x03" * 60)])
        assert nic.wait(5.0, for_tx=True)


def test_one_descriptor_per_queue_is_the_one_that_polls() -> None:
    with SoftNic() as nic:
        assert nic.filenos() == [nic.fileno()]
        assert isinstance(nic, Device)


def test_lent_buffers_can_be_handed_back_unused() -> None:
    with SoftNic() as nic:
        total = nic.geometry.tx_slots
        lent = nic.tx_buffers(total)
        assert len(lent) == total and nic.tx_free == 0
        assert nic.tx_buffers(1) == []
        nic.return_tx_buffers(lent[:-1])
        assert nic.tx_free == total - 1
        # One still lent: built in place and sent, it comes back after completion.
        last = lent[-1]
        last[:60] = b"\x04" * 60
        assert nic.send([Packet(last[:60])]) == 1
        nic.flush()
        assert nic.tx_free == total
        # Handing back something that was never lent changes nothing.
        nic.return_tx_buffers([memoryview(bytearray(100))])
        assert nic.tx_free == total


def test_garbage_packets_never_hold_a_slot() -> None:
    with SoftNic() as nic:
        total = nic.geometry.tx_slots
        junk = [Packet(12345), Packet(b"\x00" * 60, tx="checksum please")]  # type: ignore[arg-type]
        assert nic.send(junk) == 2
        nic.flush()
        assert nic.tx_free == total
        assert nic.stats().drops["bad_request"] == 2


def test_failed_start_leaves_no_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _open_fds()
    made = 0
    real = os.eventfd

    def failing_eventfd(initval: int, flags: int = 0) -> int:
        nonlocal made
        made += 1
        if made == 3:
            raise OSError(24, "Too many open files")
        return real(initval, flags)

    monkeypatch.setattr(os, "eventfd", failing_eventfd)
    with pytest.raises(OSError):
        SoftNic(name="doomed")
    monkeypatch.undo()
    assert made == 3
    assert _open_fds() <= before


def test_a_closed_device_says_so() -> None:
    nic = SoftNic()
    nic.close()
    with pytest.raises(DeviceError, match="closed"):
        nic.recv()
