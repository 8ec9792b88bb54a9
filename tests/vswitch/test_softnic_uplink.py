"""Four guest processes behind a SoftNic uplink: each gets only its own traffic, by MAC and
VLAN, under a mixed 1 GiB load, with no payload byte copied by the switch on the unicast
receive path, and every buffer back in its guest's posted pool at the end. The zero-copy
claim is checked in the processes' maps and descriptors, not only by a counter.

``NETOFFLOAD_VSWITCH_LOAD_BYTES`` changes the load's size (default 1 GiB, about 6 s here).
"""

from __future__ import annotations

import os
import time

from netoffload.vswitch import GuestConfig, PortVlans, SwitchConfig
from netoffload.vswitch.load import LoadKind, LoadPlan, Target
from netoffload.wire import MacAddress
from tests.vswitch.helpers import (
    Pump,
    announcing_sink,
    frame_to,
    memfd_fds,
    memfd_maps,
    report_of,
    sink,
    softnic_switch,
    stack_guest,
    wait_attached,
    windows,
)

LOAD_BYTES = int(os.environ.get("NETOFFLOAD_VSWITCH_LOAD_BYTES", str(1 << 30)))
SHARED = MacAddress.parse("02:00:00:00:00:aa")
#: g0 and g1 have the same MAC on two VLANs: only the VLAN tells their traffic apart.
GUESTS = [
    GuestConfig("g0", mac=SHARED, vlans=PortVlans.access(10)),
    GuestConfig("g1", mac=SHARED, vlans=PortVlans.access(20)),
    GuestConfig("g2", vlans=PortVlans.trunk([10, 20])),
    GuestConfig("g3", vlans=PortVlans.access(0)),
]
BUFFERS = 64


def test_four_guests_get_only_their_own_traffic_with_nothing_copied() -> None:
    # MACs are learned from the guests' own announcements, not configured.
    with softnic_switch(SwitchConfig(static_guest_macs=False)) as rig:
        sw = rig.switch
        for config in GUESTS:
            sw.spawn_guest(config, announcing_sink(config.name, "--rx-buffers", str(BUFFERS)))
        names = [c.name for c in GUESTS]
        wait_attached(sw, *names)
        assert sw.run_until(lambda: len(sw.demux.entries()) == 5, 20), sw.demux.entries()
        for _ in range(3):
            sw.step(0.0)  # a learned frame's copies to the others are delivered by now
        # What each got of the others' announcements (those sent before it attached, or
        # before its buffers were posted, are lost: counted as no_buffer).
        announced = {n: sw.guest(n).counters.rx_packets for n in names}
        early = {g["name"]: g["drops"] for g in sw.stats()["guests"]}
        assert all(set(drops) <= {"no_buffer"} for drops in early.values()), early
        learned = {(e["vlan"], e["mac"], e["pool"]) for e in sw.demux.entries()}
        assert all(not e["static"] for e in sw.demux.entries())
        pool = {n: sw.guest(n).pool for n in names}
        mac2 = str(sw.guest("g2").mac)
        assert learned == {
            (10, str(SHARED), pool["g0"]),
            (20, str(SHARED), pool["g1"]),
            (10, mac2, pool["g2"]),
            (20, mac2, pool["g2"]),
            (0, str(sw.guest("g3").mac), pool["g3"]),
        }

        # Structural: every process maps what it should and nothing else.
        firmware = rig.nic.firmware_pid
        assert windows(memfd_maps(firmware)) == set(names)
        assert all(perm.startswith("rw") for perm, _ in memfd_maps(firmware))
        assert windows(memfd_maps(os.getpid())) == set()  # the switch maps no window
        assert windows(memfd_fds(os.getpid())) == set()  # nor keeps one open
        for name in names:
            pid = sw.guest(name).pid
            assert pid is not None
            assert windows(memfd_maps(pid)) == {name}
            assert windows(memfd_fds(pid)) == {name}

        targets = [Target(g.name, g.mac, g.config.vlans) for g in sw.guests.values()]
        plan = LoadPlan(targets, LOAD_BYTES)
        expected = plan.expected()
        pump = Pump(rig, plan)
        started = time.monotonic()
        assert pump.run(timeout_s=240), {n: pump.delivered(n) for n in names}
        elapsed = time.monotonic() - started
        for name in names:  # still so after the load: nothing was mapped on the way
            assert windows(memfd_maps(sw.guest(name).pid or 0)) == {name}
        assert windows(memfd_maps(os.getpid())) == set()

        # Every buffer back in its guest's posted pool.
        assert sw.run_until(
            lambda: all(
                sw.guest(n).table.posted == BUFFERS  # type: ignore[union-attr]
                for n in names
            ),
            20,
        )
        stats = sw.stats()
        sw.stop_guests()

    assert stats["payload_bytes_copied_unicast_rx"] == 0
    assert stats["uplink"]["maps_guest_windows"] is False
    sent = {kind: 0 for kind in LoadKind}
    for template in plan.frames():
        sent[template.kind] += 1
    switching = stats["switching"]
    assert switching["drop_unknown"] == sent[LoadKind.UNKNOWN]
    assert switching["drop_vlan"] == sent[LoadKind.NO_VLAN]
    for g in stats["guests"]:
        name = g["name"]
        want = expected[name]
        assert g["buffers"]["posted"] == BUFFERS and g["buffers"]["held"] == 0, g
        assert g["rx_packets"] == want["frames"] + announced[name]
        assert g["drops"] == early[name] and g["refused"] == {}  # none under the load
        # Copies only where a frame had to be in several guests at once (the load's
        # broadcasts and multicasts, and the others' announcements, also broadcasts).
        group = want["broadcast"] + want["multicast"]
        assert g["copies"] == {"group": group + announced[name]}
        report = report_of(sw, name)
        assert report["final"] is True
        assert report["ok"] == want["frames"], (name, report, want)
        for kind in ("unicast", "broadcast", "multicast"):
            assert report.get(kind, 0) == want[kind], (name, kind, report)
        for wrong in ("foreign_vlan", "foreign_mac", "tag_mismatch", "truncated", "flooded"):
            assert wrong not in report, (name, report)
        # The guest saw the copy flag exactly on the replicas, never on a unicast frame.
        assert report["copied"] == group + announced[name]
    assert plan.bytes >= LOAD_BYTES
    print(f"\n{plan.bytes / 2**20:.0f} MiB to 4 guests in {elapsed:.1f} s")


def test_unknown_unicast_is_flooded_to_the_vlan_when_configured() -> None:
    configs = [
        GuestConfig("f0", vlans=PortVlans.access(10)),
        GuestConfig("f1", vlans=PortVlans.access(10)),
        GuestConfig("f2", vlans=PortVlans.access(30)),
    ]
    with softnic_switch(SwitchConfig(flood_unknown=True)) as rig:
        sw = rig.switch
        for config in configs:
            sw.spawn_guest(config, sink(config.name, "--rx-buffers", "32"))
        wait_attached(sw, "f0", "f1", "f2")
        plan = LoadPlan(
            [Target(c.name, sw.guest(c.name).mac, c.vlans) for c in configs],
            8 << 20,
            sizes=(60, 1500),
        )
        pump = Pump(rig, plan, flood_unknown=True)
        assert pump.run(timeout_s=60)
        stats = sw.stats()
        sw.stop_guests()
    unknown = {10: 0, 30: 0}
    for template in plan.frames():
        if template.kind is LoadKind.UNKNOWN:
            unknown[template.vlan] += 1
    assert unknown[10] and unknown[30]
    assert stats["switching"]["flood"] == unknown[10] + unknown[30]
    assert "drop_unknown" not in stats["switching"]
    for g in stats["guests"]:
        report = report_of(sw, g["name"])
        vlan = 30 if g["name"] == "f2" else 10
        assert report["flooded"] == unknown[vlan]
        assert report.get("foreign_vlan", 0) == 0


def test_two_guests_talk_tcp_through_the_switch_with_one_copy_per_packet() -> None:
    size = 16 << 20
    with softnic_switch() as rig:
        sw = rig.switch
        sw.spawn_guest(
            GuestConfig("srv"), stack_guest("srv", "--address", "198.18.0.11/24", "--echo", "7")
        )
        wait_attached(sw, "srv")
        sw.spawn_guest(
            GuestConfig("cli"),
            stack_guest(
                "cli",
                "--address",
                "198.18.0.12/24",
                "--connect",
                "198.18.0.11",
                "7",
                "--bytes",
                str(size),
            ),
        )
        assert sw.run_until(lambda: bool((sw.guest("cli").report or {}).get("final")), 120)
        sw.run_until(lambda: bool((sw.guest("srv").report or {}).get("final")), 20)
        stats = sw.stats()
        sw.stop_guests()
    client = report_of(sw, "cli")
    assert client["match"] is True and client["sent"] == client["received"] == size
    assert report_of(sw, "srv")["echoed"] == size
    for g in stats["guests"]:
        copies = g["copies"]
        # One copy per packet delivered: from the other guest's buffer, or (ARP) a broadcast.
        assert copies.get("guest", 0) + copies.get("group", 0) == g["rx_packets"]
        assert sum(g["copied_bytes"].values()) == g["rx_bytes"]
        assert g["rx_bytes"] > size
    # The stacks sent super-packets; they crossed whole (one copy each), not cut up.
    assert client["stack"]["super_packets_out"] > 0  # type: ignore[index]
    assert stats["uplink"]["device"]["tx_packets"] <= 2  # nothing went out but an ARP
    assert stats["payload_bytes_copied_unicast_rx"] == 0


def test_a_frame_to_a_guest_arrives_with_nothing_of_earlier_frames_in_its_buffer() -> None:
    with softnic_switch() as rig:
        sw = rig.switch
        sw.spawn_guest(GuestConfig("z"), sink("z", "--rx-buffers", "2", "--check-residue"))
        wait_attached(sw, "z")
        guest = sw.guest("z")
        sizes = [60000, 100, 9000, 64, 30000, 1500, 61, 20000, 70]
        for count, size in enumerate(sizes, 1):  # one at a time: two buffers, reused
            rig.peer.send(frame_to(guest, size=size))
            assert sw.run_until(lambda n=count: guest.counters.rx_packets >= n, 20)  # type: ignore[misc]
            assert sw.run_until(lambda: guest.table.posted == 2, 20)  # type: ignore[union-attr]
        sw.stop_guests()
    report = report_of(sw, "z")
    assert report["frames"] == len(sizes)
    assert "residue" not in report  # every byte after each frame was zero


def test_classification_rules_steer_in_the_firmware_before_the_mac_table() -> None:
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether

    rules = ("flow-type udp4 dst-port 53 action 2", "flow-type tcp4 dst-port 22 action drop")
    with softnic_switch(SwitchConfig(rules=rules)) as rig:
        sw = rig.switch
        for name in ("r1", "r2"):  # pools 1 and 2: numbered in the order guests are added
            sw.spawn_guest(GuestConfig(name), sink(name))
        wait_attached(sw, "r1", "r2")
        r1, r2 = sw.guest("r1"), sw.guest("r2")
        assert (r1.pool, r2.pool) == (1, 2)
        ip = IP(src="198.18.0.1", dst="198.18.0.11")
        to_r1 = Ether(dst=str(r1.mac), src="02:00:00:00:00:01") / ip
        rig.peer.send(bytes(to_r1 / UDP(dport=53) / b"question"))  # a rule: to r2
        rig.peer.send(bytes(to_r1 / TCP(dport=22)))  # a rule: dropped
        rig.peer.send(bytes(to_r1 / UDP(dport=54) / b"other"))  # no rule: the MAC table
        assert sw.run_until(lambda: r1.counters.rx_packets == 1 and r2.counters.rx_packets == 1, 20)
        switching = sw.stats()["switching"]
        sw.stop_guests()
    assert switching["rule"] == 1 and switching["drop_rule"] == 1 and switching["unicast"] == 1


def test_the_softnics_own_requests_still_reach_its_firmware_beside_the_pools() -> None:
    from netoffload.offload import DigestAlgorithm

    with softnic_switch() as rig:
        sw = rig.switch
        sw.spawn_guest(GuestConfig("d0"), sink("d0"))
        wait_attached(sw, "d0")
        d0 = sw.guest("d0")
        # The base firmware's requests (a digest key in, then out) are not pool requests:
        # neither is refused, and the guest's pool stays attached.
        rig.nic.install_digest_key(5, DigestAlgorithm.HMAC_SHA256_128, bytes(range(32)))
        rig.nic.revoke_digest_key(5)
        rig.peer.send(frame_to(d0))
        assert sw.run_until(lambda: d0.counters.rx_packets == 1, 20)
        assert d0.attached and str(d0.pool) in sw.stats()["uplink"]["nic"]["pools"]
        sw.stop_guests()
