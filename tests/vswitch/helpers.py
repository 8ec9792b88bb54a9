"""Shared pieces of the switch tests: a switch on a SoftNic uplink, guests, frames, maps."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from netoffload.device.cable import NO_IMPAIRMENTS, Cable, CableEnd
from netoffload.device.softnic.pool_nic import PoolSoftNic
from netoffload.device.vmdq.steer import NATIVE
from netoffload.vswitch import Guest, GuestConfig, SoftNicUplink, SwitchConfig, VSwitch
from netoffload.vswitch.load import LoadPlan, Template
from netoffload.wire import MacAddress
from netoffload.wire.ethernet import EthernetRepr, VlanTag

GUEST_CHILD = Path(__file__).with_name("guest_child.py")
SOURCE = MacAddress(b"\x02\x00\x5e\x10\x00\x09")
EXPERIMENTAL = 0x88B5


@dataclass
class Rig:
    switch: VSwitch
    nic: PoolSoftNic
    peer: CableEnd  # the far end of the uplink's cable: what "the network" sends


@contextmanager
def softnic_switch(config: SwitchConfig | None = None, name: str = "sw") -> Iterator[Rig]:
    """A switch whose uplink is a SoftNic with pools; everything closed afterwards."""
    with Cable(NO_IMPAIRMENTS) as cable:
        nic = PoolSoftNic(cable=cable.a, name=f"{name}-up")
        switch = VSwitch(SoftNicUplink(nic), name=name, config=config)
        try:
            yield Rig(switch, nic, cable.b)
        finally:
            switch.close()


def guest_program(name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "netoffload.vswitch.guest", "--name", name, *extra]


def sink(name: str, *extra: str) -> list[str]:
    """A sink guest that sends nothing (its MAC is a static entry): exact counts."""
    return guest_program(name, "--quiet", *extra)


def announcing_sink(name: str, *extra: str) -> list[str]:
    """A sink guest that announces itself, so the switch can learn its MAC."""
    return guest_program(name, *extra)


def stack_guest(name: str, *extra: str) -> list[str]:
    return guest_program(name, "--mode", "stack", *extra)


def child(scenario: str, name: str) -> list[str]:
    return [sys.executable, str(GUEST_CHILD), scenario, name]


def wait_attached(switch: VSwitch, *names: str, timeout_s: float = 30.0) -> None:
    """Until every named guest has attached and sent a first report."""
    ok = switch.run_until(
        lambda: all(switch.guest(n).attached and switch.guest(n).report for n in names),
        timeout_s,
    )
    states = {n: (switch.guest(n).state.value, switch.guest(n).gone_reason) for n in names}
    assert ok, f"guests did not attach: {states}"


def frame_to(guest: Guest | MacAddress, vlan: int = NATIVE, size: int = 200) -> bytes:
    """A frame from the network to ``guest``'s MAC on ``vlan`` (tagged unless native)."""
    mac = guest if isinstance(guest, MacAddress) else guest.mac
    tags = () if vlan == NATIVE else (VlanTag(0, False, vlan),)
    header = EthernetRepr(mac, SOURCE, EXPERIMENTAL, tags)
    return header.to_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))[:size]


def report_of(switch: VSwitch, name: str) -> dict[str, object]:
    report = switch.guest(name).report
    assert report is not None, f"{name} never reported"
    return report


def memfd_maps(pid: int) -> list[tuple[str, str]]:
    """(permissions, memfd name) of every memfd mapping of ``pid``."""
    out = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        found = re.search(r"/memfd:(\S+)", line)
        if found:
            out.append((line.split()[1], found.group(1)))
    return out


def memfd_fds(pid: int) -> list[str]:
    """The memfd names among ``pid``'s open descriptors."""
    names = []
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("/memfd:"):
            names.append(target.split(":", 1)[1].split(" ")[0])
    return names


def windows(names: list[tuple[str, str]] | list[str]) -> set[str]:
    """The guest windows among memfd names (``vswitch-window-NAME``)."""
    out = set()
    for item in names:
        name = item[1] if isinstance(item, tuple) else item
        if name.startswith("vswitch-window-"):
            out.add(name.removeprefix("vswitch-window-"))
    return out


def configs(*names: str) -> list[GuestConfig]:
    return [GuestConfig(n) for n in names]


class Pump:
    """Sends a ``LoadPlan`` into the uplink's cable as fast as the guests take it, and no
    faster: a frame goes out only when every guest it is for has a buffer posted for it
    (frames in flight to a guest < its posted buffers), so nothing is lost for want of a
    buffer and every count is exact. Driven from the switch's loop, one ``pump()`` a turn.
    """

    def __init__(self, rig: Rig, plan: LoadPlan, *, flood_unknown: bool = False) -> None:
        self.rig = rig
        self.plan = plan
        self.flood = flood_unknown
        self.frames = plan.frames()
        self.pending: Template | None = None
        self.sent: dict[str, int] = {t.name: 0 for t in plan.targets}
        self.base = {n: rig.switch.guest(n).counters.rx_packets for n in self.sent}
        self.finished = False

    def delivered(self, name: str) -> int:
        return self.rig.switch.guest(name).counters.rx_packets - self.base[name]

    def _room(self, receivers: tuple[str, ...]) -> bool:
        switch = self.rig.switch
        for name in receivers:
            table = switch.guest(name).table
            assert table is not None
            if self.sent[name] - self.delivered(name) >= table.posted:
                return False
        return True

    def pump(self) -> None:
        peer = self.rig.peer
        batch = []
        while peer.pending_bytes < (2 << 20):
            if self.pending is None:
                self.pending = next(self.frames, None)
                if self.pending is None:
                    self.finished = True
                    break
            receivers = self.plan.receivers(self.pending, flood_unknown=self.flood)
            if not self._room(receivers):
                break
            for name in receivers:
                self.sent[name] += 1
            batch.append(self.pending.frame)
            self.pending = None
        if batch:
            peer.send_batch(batch)
        else:
            peer.flush()

    def run(self, timeout_s: float) -> bool:
        """Pump the whole plan and wait until every guest has had all of it."""
        switch = self.rig.switch
        expected = self.plan.expected(flood_unknown=self.flood)

        def done() -> bool:
            if not self.finished or self.rig.peer.pending_bytes:
                self.pump()
                return False
            return all(self.delivered(n) >= expected[n]["frames"] for n in expected)

        return switch.run_until(done, timeout_s)
