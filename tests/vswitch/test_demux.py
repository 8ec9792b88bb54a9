"""The switch's MAC table and VLANs: learning, static entries, moves, quota, ageing, and
where frames go from the uplink and from guests (access and trunk ports, groups,
unknown unicast, classification rules)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.device.vmdq.steer import Kind, PortVlans, SteerError
from netoffload.vswitch.demux import Demux
from netoffload.wire import MacAddress
from netoffload.wire.ethernet import BROADCAST, EthernetRepr, VlanTag

A = MacAddress.parse("02:00:00:00:00:0a")
B = MacAddress.parse("02:00:00:00:00:0b")
OUTSIDE = MacAddress.parse("02:00:00:00:00:99")
GROUP = MacAddress.parse("33:33:00:00:00:01")
S = 1_000_000_000


def frame(dst: MacAddress, src: MacAddress = OUTSIDE, vlan: int | None = None) -> bytes:
    tags = () if vlan is None else (VlanTag(0, False, vlan),)
    return EthernetRepr(dst, src, 0x0800, tags).to_bytes(bytes(46))


def demux(**kwargs: object) -> Demux:
    d = Demux(**kwargs)  # type: ignore[arg-type]
    d.add_port(1, PortVlans.access(10))
    d.add_port(2, PortVlans.trunk([10, 20]))
    d.add_port(3, PortVlans.access(20))
    return d


def test_addresses_are_learned_per_vlan_and_frames_follow_them() -> None:
    d = demux()
    assert d.learn(10, A.octets, 1, 0, limit=8)
    assert d.learn(20, A.octets, 3, 0, limit=8)  # the same MAC on another VLAN: another entry
    assert not d.learn(10, A.octets, 1, 5 * S, limit=8)  # seen again: no change
    assert d.lookup(frame(A, vlan=10)).pools == (1,)
    assert d.lookup(frame(A, vlan=20)).pools == (3,)
    assert d.lookup(frame(A, vlan=30)).kind is Kind.DROP_VLAN  # nobody is in VLAN 30
    assert d.counters["learned"] == 2


def test_group_and_own_frames_never_teach_the_table() -> None:
    d = demux()
    assert not d.learn(10, BROADCAST.octets, 1, 0, limit=8)
    assert not d.learn(10, GROUP.octets, 1, 0, limit=8)
    assert not d.learn(10, bytes(6), 1, 0, limit=8)
    assert not d.learn(10, A.octets, 9, 0, limit=8)  # no such port
    assert d.entries() == []


def test_a_mac_moves_to_the_guest_it_is_seen_from_but_a_static_one_stays() -> None:
    d = demux()
    d.learn(10, A.octets, 1, 0, limit=8)
    assert d.learn(10, A.octets, 2, 1, limit=8)
    assert d.pool_of(10, A) == 2 and d.counters["moved"] == 1
    d.add_static(10, B, 1)
    assert not d.learn(10, B.octets, 2, 2, limit=8)
    assert d.pool_of(10, B) == 1
    with pytest.raises(SteerError):
        d.add_static(10, GROUP, 1)


def test_a_guest_learns_no_more_macs_than_its_quota() -> None:
    d = demux()
    macs = [MacAddress(bytes([2, 0, 0, 0, 1, i])) for i in range(5)]
    learned = [d.learn(10, m.octets, 1, 0, limit=3) for m in macs]
    assert learned == [True, True, True, False, False]
    assert d.counters["learn_over_quota"] == 2
    assert d.learn(10, macs[3].octets, 2, 0, limit=3)  # another guest's quota is its own


def test_learned_entries_age_out_and_a_removed_port_takes_its_entries() -> None:
    d = demux(ageing_s=10)
    d.learn(10, A.octets, 1, 0, limit=8)
    d.learn(20, B.octets, 3, 8 * S, limit=8)
    d.add_static(10, B, 1)
    assert d.age(12 * S) == 1  # A, not seen for 12 s
    assert {(e["vlan"], e["mac"]) for e in d.entries()} == {(20, str(B)), (10, str(B))}
    version = d.version
    assert d.remove_port(1) == 1  # the static entry went with it
    assert d.version > version
    assert d.lookup(frame(B, vlan=10)).kind is Kind.DROP_UNKNOWN


def test_the_table_is_made_again_only_when_something_changed() -> None:
    d = demux()
    first = d.table()
    assert d.table() is first
    d.learn(10, A.octets, 1, 0, limit=8)
    assert d.table() is not first


def test_from_the_uplink_groups_go_to_the_vlan_and_unknown_unicast_by_policy() -> None:
    d = demux()
    assert d.lookup(frame(BROADCAST, vlan=10)).pools == (1, 2)
    assert d.lookup(frame(GROUP, vlan=20)).pools == (2, 3)
    assert d.lookup(frame(BROADCAST)).kind is Kind.DROP_VLAN  # untagged: VLAN 0, nobody
    assert d.lookup(frame(OUTSIDE, vlan=10)).kind is Kind.DROP_UNKNOWN
    d.set_flooding(True)
    flooded = d.lookup(frame(OUTSIDE, vlan=10))
    assert flooded.kind is Kind.FLOOD and flooded.pools == (1, 2)


def test_from_a_guest_frames_go_to_guests_in_its_vlan_and_out_of_the_uplink() -> None:
    d = demux()
    d.learn(10, A.octets, 1, 0, limit=8)
    d.learn(20, B.octets, 3, 0, limit=8)
    to_a = d.lookup(frame(A, src=B, vlan=10), source=2)  # the trunk sends tagged
    assert (to_a.kind, to_a.pools, to_a.uplink) == (Kind.UNICAST, (1,), False)
    out = d.lookup(frame(OUTSIDE, src=A), source=1)  # an access port sends untagged
    assert (out.kind, out.vlan, out.pools, out.uplink) == (Kind.UPLINK, 10, (), True)
    group = d.lookup(frame(BROADCAST, src=A), source=1)
    assert (group.pools, group.uplink) == ((2,), True)  # not back to the sender
    assert d.lookup(frame(A, src=A), source=1).kind is Kind.DROP_HAIRPIN
    assert d.lookup(frame(B, vlan=20), source=1).kind is Kind.DROP_VLAN  # tag on access
    assert d.lookup(frame(B), source=2).kind is Kind.DROP_VLAN  # untagged on a pure trunk
    assert d.lookup(frame(B, vlan=30), source=2).kind is Kind.DROP_VLAN  # not its VLAN


def test_classification_rules_come_before_the_mac_table() -> None:
    d = demux(rules=["flow-type udp4 dst-port 53 action 3", "flow-type tcp4 dst-port 22 drop"])
    udp = EthernetRepr(OUTSIDE, B, 0x0800, (VlanTag(0, False, 20),))
    from scapy.layers.inet import IP, TCP, UDP

    dns = udp.to_bytes(bytes(IP(src="198.18.0.1", dst="198.18.0.2") / UDP(dport=53)))
    ssh = udp.to_bytes(bytes(IP(src="198.18.0.1", dst="198.18.0.2") / TCP(dport=22)))
    assert d.lookup(dns).kind is Kind.RULE and d.lookup(dns).pools == (3,)
    assert d.lookup(ssh).kind is Kind.DROP_RULE
    with pytest.raises(SteerError):
        d.set_rules(["flow-type tcp4 bogus 1"])


@given(
    st.one_of(
        st.builds(PortVlans.access, st.integers(0, 4094)),
        st.builds(
            PortVlans.trunk,
            st.frozensets(st.integers(1, 4094), min_size=1, max_size=6),
            st.none() | st.just(0),
        ),
    )
)
def test_vlan_specs_read_back_as_written(vlans: PortVlans) -> None:
    assert PortVlans.parse(str(vlans)) == vlans
    assert PortVlans.from_dict(vlans.as_dict()) == vlans


@pytest.mark.parametrize("text", ["trunk:", "access:x", "5000", "trunk:0", "trunk:5+5", "vlan:3"])
def test_bad_vlan_specs_are_one_line_errors(text: str) -> None:
    with pytest.raises(SteerError) as info:
        PortVlans.parse(text)
    assert "\n" not in str(info.value)
