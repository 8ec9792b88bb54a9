"""Isolation between guests: stale descriptors, a killed guest, quotas, a guest that stops
releasing, a guest that breaks its rings. Guests are real processes (``guest_child.py``
misbehaves on purpose); no test sleeps: every wait is for a condition, and bounded."""

from __future__ import annotations

import os
import signal

from netoffload.device.base import poll_fds
from netoffload.vswitch import GuestConfig, GuestState, Quota, SwitchConfig
from tests.vswitch.helpers import (
    child,
    frame_to,
    memfd_maps,
    report_of,
    sink,
    softnic_switch,
    wait_attached,
    windows,
)


def _report_phase(sw: object, name: str, phase: str, timeout_s: float = 20.0) -> dict[str, object]:
    from netoffload.vswitch import VSwitch

    assert isinstance(sw, VSwitch)
    assert sw.run_until(lambda: (sw.guest(name).report or {}).get("phase") == phase, timeout_s), (
        sw.guest(name).report
    )
    return report_of(sw, name)


def test_a_stale_descriptor_is_an_error_and_changes_nothing() -> None:
    with softnic_switch() as rig:
        sw = rig.switch
        sw.spawn_guest(GuestConfig("s"), child("stale", "s"))
        wait_attached(sw, "s")
        guest = sw.guest("s")
        table = guest.table
        assert table is not None
        rig.peer.send(frame_to(guest))
        report = _report_phase(sw, "s", "done")
        buffer, gen = report["descriptor"]  # type: ignore[misc]
        # The error names the buffer and its generation now: one past the stale one (the
        # right release bumped it).
        assert table.gen[buffer] == gen + 1
        assert report["errors"] == [
            {"ring": "post", "buffer": buffer, "gen": gen + 1, "status": "stale"}
        ]
        assert guest.counters.refused == {"stale": 1}
        # The buffer was posted once (by the right release), not twice.
        assert table.posted == table.quota.rx_buffers
        assert table.consistent()
        # And the guest still gets its traffic.
        before = guest.counters.rx_packets
        rig.peer.send(frame_to(guest))
        assert sw.run_until(lambda: guest.counters.rx_packets == before + 1, 20)
        sw.stop_guests()


def test_a_killed_guest_is_reclaimed_before_anything_more_is_delivered_to_it() -> None:
    with softnic_switch() as rig:
        sw = rig.switch
        for name in ("k0", "k1"):
            sw.spawn_guest(GuestConfig(name), sink(name))
        wait_attached(sw, "k0", "k1")
        k0, k1 = sw.guest("k0"), sw.guest("k1")
        for guest in (k0, k1):
            rig.peer.send(frame_to(guest))
        assert sw.run_until(lambda: k0.counters.rx_packets == k1.counters.rx_packets == 1, 20)
        assert "k0" in windows(memfd_maps(rig.nic.firmware_pid))

        proc = k0.proc
        assert proc is not None
        pidfd = os.pidfd_open(proc.pid)
        try:
            os.kill(proc.pid, signal.SIGKILL)
            assert poll_fds([pidfd], 10.0) == [pidfd]  # dead (a bounded wait, not a sleep)
        finally:
            os.close(pidfd)
        # The next frames: one for the dead guest (sent before the switch ran again), one
        # for the other.
        rig.peer.send(frame_to(k0))
        rig.peer.send(frame_to(k1))
        assert sw.run_until(lambda: k1.counters.rx_packets == 2, 20)

        assert k0.state is GuestState.GONE and k0.gone_reason == "exited with signal SIGKILL"
        assert k0.counters.rx_packets == 1  # nothing was delivered to it after it died
        switching = sw.stats()["switching"]
        # The firmware wrote it into k0's window before the switch detached the pool (then
        # the switch dropped the descriptor), or found the pool gone, or (once the new MAC
        # table was in) did not know the MAC any more. Which one depends on the timing.
        lost = (
            sw.counters["drop_guest_gone"]
            + switching.get("drop_pool_gone", 0)
            + switching.get("drop_unknown", 0)
        )
        assert lost == 1
        # The NIC side unmapped the window, the switch the rings; the MAC table forgot it.
        assert windows(memfd_maps(rig.nic.firmware_pid)) == {"k1"}
        rings = {name for _, name in memfd_maps(os.getpid()) if name.startswith("vswitch-rings")}
        assert rings == {"vswitch-rings-k1"}
        assert all(e["pool"] != k0.pool for e in sw.demux.entries())
        assert k0.pool not in sw.stats()["uplink"]["nic"]["posted"]
        sw.stop_guests()


def test_a_guest_over_its_quota_is_refused_while_the_others_carry_on() -> None:
    quota = Quota(rx_buffers=32, tx_in_flight=8)
    with softnic_switch() as rig:
        sw = rig.switch
        sw.spawn_guest(GuestConfig("greedy", quota=quota), child("greedy", "greedy"))
        sw.spawn_guest(GuestConfig("flood", quota=quota), child("flood", "flood"))
        sw.spawn_guest(GuestConfig("fair"), sink("fair"))
        wait_attached(sw, "greedy", "flood", "fair")
        greedy = _report_phase(sw, "greedy", "done")
        flood = _report_phase(sw, "flood", "done")
        # 128 buffers posted against a quota of 32: 96 refused, 32 taken.
        errors = greedy["errors"]
        assert isinstance(errors, list) and len(errors) == 128 - 32
        assert {e["status"] for e in errors} == {"over_quota"}
        assert sw.guest("greedy").table.posted == 32  # type: ignore[union-attr]
        # 32 frames in one go against 8 in flight: 24 refused.
        errors = flood["errors"]
        assert isinstance(errors, list) and len(errors) == 32 - 8
        assert {(e["ring"], e["status"]) for e in errors} == {("tx", "over_quota")}
        # Everyone still gets traffic, the well-behaved guest all of it.
        fair, first = sw.guest("fair"), sw.guest("greedy")
        for _ in range(20):
            rig.peer.send(frame_to(fair))
            rig.peer.send(frame_to(first))
        assert sw.run_until(
            lambda: fair.counters.rx_packets >= 20 and first.counters.rx_packets >= 20, 20
        )
        assert sw.guest("fair").counters.refused == {}
        assert sw.guest("greedy").counters.refused == {"over_quota": 96}
        assert sw.guest("flood").counters.refused == {"over_quota": 24}
        sw.stop_guests()


def test_a_guest_that_stops_releasing_is_detected_and_costs_the_others_nothing() -> None:
    with softnic_switch() as rig:
        sw = rig.switch
        sw.spawn_guest(GuestConfig("hog"), child("hold", "hog"))
        sw.spawn_guest(GuestConfig("ok"), sink("ok"))
        wait_attached(sw, "hog", "ok")
        hog, ok = sw.guest("hog"), sw.guest("ok")
        table = hog.table
        assert table is not None
        frames = table.quota.rx_buffers + 40  # a multiple of 8
        for sent in range(8, frames + 1, 8):  # in rounds the sink keeps up with
            for _ in range(8):
                rig.peer.send(frame_to(hog, size=100))
                rig.peer.send(frame_to(ok, size=100))
            assert sw.run_until(lambda n=sent: ok.counters.rx_packets == n, 30)  # type: ignore[misc]
        assert sw.run_until(lambda: sw.stats()["guests"][0]["stalled"], 10)
        stats = {g["name"]: g for g in sw.stats()["guests"]}
        assert stats["hog"]["rx_packets"] == table.quota.rx_buffers
        assert stats["hog"]["buffers"]["held"] == table.quota.rx_buffers
        assert stats["hog"]["drops"] == {"no_buffer": 40}
        assert stats["ok"]["drops"] == {} and not stats["ok"]["stalled"]
        sw.stop_guests()


def test_a_stalled_guest_is_evicted_after_the_stall_timeout() -> None:
    with softnic_switch(SwitchConfig(stall_timeout_s=0.5)) as rig:
        sw = rig.switch
        sw.spawn_guest(GuestConfig("hog"), child("hold", "hog"))
        wait_attached(sw, "hog")
        hog = sw.guest("hog")
        for _ in range(hog.config.quota.rx_buffers):
            rig.peer.send(frame_to(hog, size=100))
        assert sw.run_until(lambda: hog.state is GuestState.GONE, 20)
        assert hog.gone_reason == "stalled: held every buffer"
        assert windows(memfd_maps(rig.nic.firmware_pid)) == set()
        assert hog.proc is not None and hog.proc.returncode == -signal.SIGKILL


def test_a_guest_that_breaks_its_rings_is_evicted() -> None:
    with softnic_switch() as rig:
        sw = rig.switch
        sw.spawn_guest(GuestConfig("c"), sink("c"))
        wait_attached(sw, "c")
        sw.spawn_guest(GuestConfig("b"), child("break", "b"))
        b = sw.guest("b")
        assert sw.run_until(lambda: b.state is GuestState.GONE, 20)
        assert b.gone_reason == "broke its rings"
        c = sw.guest("c")
        rig.peer.send(frame_to(c))
        assert sw.run_until(lambda: c.counters.rx_packets == 1, 20)
        sw.stop_guests()
