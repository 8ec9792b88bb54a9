"""Neighbour cache: ARP and NDP on the wire (scapy builds and parses), NUD states and timers."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether

from netoffload.stack._netaddr import NS_PER_S
from netoffload.stack.neighbor import (
    NeighborCache,
    NeighborConfig,
    NeighborDrop,
    NeighborState,
)
from netoffload.stack.neighbor_frames import multicast_mac, solicited_node_address
from netoffload.wire.ethernet import MacAddress

US = MacAddress.parse("02:00:00:00:00:01")
PEER = MacAddress.parse("02:00:00:00:00:02")
OTHER = MacAddress.parse("02:00:00:00:00:03")
IP4, PEER4 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
IP6, PEER6 = IPv6Address("fd00::1"), IPv6Address("fd00::2")
LL6 = IPv6Address("fe80::1")
S = NS_PER_S


def make(config: NeighborConfig | None = None, seed: int = 1) -> NeighborCache[str]:
    cache: NeighborCache[str] = NeighborCache(US, random.Random(seed), config)
    cache.add_address(IPv4Interface("198.18.0.1/24"))
    cache.add_address(IPv6Interface("fd00::1/64"))
    cache.add_address(IPv6Interface("fe80::1/64"))
    return cache


def state(cache: NeighborCache[str], address: IPv4Address | IPv6Address) -> NeighborState | None:
    entry = cache.entry(address)
    return None if entry is None else entry.state


def icmpv6_checksum_ok(frame: bytes, layer: type) -> bool:
    parsed = Ether(frame)
    sent = parsed[layer].cksum
    del parsed[layer].cksum
    return bool(Ether(bytes(parsed))[layer].cksum == sent)


# --- frames from the peer, built by scapy -----------------------------------------------


def arp_frame(
    op: int,
    psrc: str,
    pdst: str,
    hwsrc: MacAddress = PEER,
    *,
    dst: str = "ff:ff:ff:ff:ff:ff",
    hwdst: str = "00:00:00:00:00:00",
) -> bytes:
    return bytes(
        Ether(src=str(hwsrc), dst=dst)
        / ARP(op=op, hwsrc=str(hwsrc), psrc=psrc, hwdst=hwdst, pdst=pdst)
    )


def ns_frame(
    target: IPv6Address = IP6,
    *,
    src: str = str(PEER6),
    dst: str | None = None,
    lladdr: MacAddress | None = PEER,
    hlim: int = 255,
) -> bytes:
    dst = dst or str(solicited_node_address(target))
    packet = IPv6(src=src, dst=dst, hlim=hlim) / ICMPv6ND_NS(tgt=str(target))
    if lladdr is not None:
        packet = packet / ICMPv6NDOptSrcLLAddr(lladdr=str(lladdr))
    dst_ip = IPv6Address(dst)
    eth_dst = multicast_mac(dst_ip) if dst_ip.is_multicast else US
    return bytes(Ether(src=str(PEER), dst=str(eth_dst)) / packet)


def na_frame(
    *,
    solicited: bool,
    override: bool,
    lladdr: MacAddress | None = PEER,
    target: IPv6Address = PEER6,
    dst: str = str(IP6),
    router: bool = False,
) -> bytes:
    packet = IPv6(src=str(target), dst=dst, hlim=255) / ICMPv6ND_NA(
        tgt=str(target), R=int(router), S=int(solicited), O=int(override)
    )
    if lladdr is not None:
        packet = packet / ICMPv6NDOptDstLLAddr(lladdr=str(lladdr))
    return bytes(Ether(src=str(lladdr or PEER), dst=str(US)) / packet)


# --- ARP -------------------------------------------------------------------------------


def test_arp_resolution_queues_then_releases_in_order() -> None:
    cache = make()
    assert cache.resolve(PEER4, "p1", 0) is None
    assert cache.resolve(PEER4, "p2", 10) is None
    (request,) = cache.take_frames()
    assert len(request) == 60  # padded to the Ethernet minimum
    eth = Ether(request)
    assert eth.dst == "ff:ff:ff:ff:ff:ff" and eth.src == str(US)
    arp = eth[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.pdst) == (1, str(US), str(IP4), str(PEER4))
    assert arp.hwdst == "00:00:00:00:00:00"
    assert state(cache, PEER4) is NeighborState.INCOMPLETE
    assert cache.next_timer_ns() == 1 * S
    cache.receive_arp(arp_frame(2, str(PEER4), str(IP4), dst=str(US), hwdst=str(US)), 500)
    assert [(r.address, r.mac, r.packet) for r in cache.take_resolved()] == [
        (PEER4, PEER, "p1"),
        (PEER4, PEER, "p2"),
    ]
    assert state(cache, PEER4) is NeighborState.REACHABLE
    assert cache.resolve(PEER4, "p3", 600) == PEER
    assert cache.take_frames() == []


def test_arp_retransmits_then_fails_after_mcast_solicit() -> None:
    cache = make()
    cache.resolve(PEER4, "p", 0)
    assert len(cache.take_frames()) == 1
    cache.on_timer(S - 1)
    assert cache.take_frames() == []
    cache.on_timer(S)
    cache.on_timer(2 * S)
    assert len(cache.take_frames()) == 2
    assert cache.next_timer_ns() == 3 * S
    cache.on_timer(3 * S)
    assert cache.take_frames() == []
    (failed,) = cache.take_failed()
    assert (failed.address, failed.packet, failed.reason) == (
        PEER4,
        "p",
        NeighborDrop.RESOLUTION_FAILED,
    )
    assert cache.entry(PEER4) is None
    assert cache.stats.failed == 1 and cache.stats.solicits_sent == 3


def test_arp_request_for_us_is_answered_and_learned() -> None:
    cache = make()
    cache.receive_arp(arp_frame(1, str(PEER4), str(IP4)), 0)
    (reply,) = cache.take_frames()
    eth = Ether(reply)
    assert eth.dst == str(PEER) and eth.src == str(US)
    arp = eth[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc) == (2, str(US), str(IP4))
    assert (arp.hwdst, arp.pdst) == (str(PEER), str(PEER4))
    assert state(cache, PEER4) is NeighborState.STALE
    assert cache.lookup(PEER4) == PEER
    # For someone else: no answer, nothing learned.
    cache.receive_arp(arp_frame(1, "198.18.0.9", "198.18.0.10"), 0)
    assert cache.take_frames() == [] and cache.entry(IPv4Address("198.18.0.9")) is None


def test_arp_probe_for_our_address_is_defended() -> None:
    cache = make()
    cache.receive_arp(arp_frame(1, "0.0.0.0", str(IP4)), 0)
    (reply,) = cache.take_frames()
    arp = Ether(reply)[ARP]
    assert (arp.op, arp.psrc, arp.pdst, arp.hwdst) == (2, str(IP4), "0.0.0.0", str(PEER))
    assert Ether(reply).dst == str(PEER)
    assert len(cache) == 0


def test_gratuitous_arp_updates_only_existing_entries() -> None:
    cache = make()
    cache.receive_arp(arp_frame(1, str(PEER4), str(PEER4), hwsrc=OTHER), 0)
    assert cache.entry(PEER4) is None
    cache.receive_arp(arp_frame(1, str(PEER4), str(IP4)), 0)
    cache.take_frames()
    # Within locktime, but gratuitous: it overrides.
    cache.receive_arp(arp_frame(1, str(PEER4), str(PEER4), hwsrc=OTHER), 100)
    assert cache.lookup(PEER4) == OTHER
    assert state(cache, PEER4) is NeighborState.STALE


def test_arp_locktime_keeps_the_first_reply() -> None:
    cache = make()
    cache.resolve(PEER4, "p", 0)
    cache.receive_arp(arp_frame(2, str(PEER4), str(IP4), dst=str(US)), 0)
    cache.receive_arp(arp_frame(2, str(PEER4), str(IP4), OTHER, dst=str(US)), S // 2)
    assert cache.lookup(PEER4) == PEER
    cache.receive_arp(arp_frame(2, str(PEER4), str(IP4), OTHER, dst=str(US)), S)
    assert cache.lookup(PEER4) == OTHER
    assert state(cache, PEER4) is NeighborState.REACHABLE


def test_broadcast_arp_reply_does_not_prove_reachability() -> None:
    cache = make()
    cache.resolve(PEER4, "p", 0)
    cache.receive_arp(arp_frame(2, str(PEER4), str(IP4)), 0)
    assert [r.packet for r in cache.take_resolved()] == ["p"]
    # STALE, and sending the queued packet started DELAY (RFC 4861 7.3.3).
    entry = cache.entry(PEER4)
    assert entry is not None and entry.state is NeighborState.DELAY
    assert entry.timer_ns == 5 * S


def test_bogus_arp_senders_are_dropped() -> None:
    cache = make()
    cache.receive_arp(arp_frame(1, str(IP4), str(IP4), hwsrc=OTHER), 0)
    cache.receive_arp(arp_frame(1, str(PEER4), str(IP4), MacAddress.parse("01:00:5e:00:00:01")), 0)
    cache.receive_arp(arp_frame(1, "224.0.0.1", str(IP4)), 0)
    cache.receive_arp(b"\x00" * 20, 0)
    drops = cache.stats.drops
    assert drops[NeighborDrop.ADDRESS_CONFLICT] == 1
    assert drops[NeighborDrop.BOGUS_SENDER] == 2
    assert drops[NeighborDrop.MALFORMED] == 1
    assert cache.take_frames() == [] and len(cache) == 0


# --- NDP -------------------------------------------------------------------------------


def test_neighbor_solicitation_to_the_solicited_node_group() -> None:
    cache = make()
    cache.resolve(PEER6, "p", 0, source=IP6)
    (frame,) = cache.take_frames()
    eth = Ether(frame)
    assert eth.dst == "33:33:ff:00:00:02"
    ip = eth[IPv6]
    assert (ip.src, ip.dst, ip.hlim) == (str(IP6), "ff02::1:ff00:2", 255)
    ns = eth[ICMPv6ND_NS]
    assert ns.tgt == str(PEER6)
    assert eth[ICMPv6NDOptSrcLLAddr].lladdr == str(US)
    assert icmpv6_checksum_ok(frame, ICMPv6ND_NS)


def test_solicitation_source_follows_the_packet() -> None:
    cache = make()
    cache.resolve(IPv6Address("fe80::2"), "p", 0, source=LL6)
    cache.resolve(IPv6Address("fd00::3"), "q", 0, source=IPv6Address("fd00::99"))  # not ours
    first, second = (Ether(f)[IPv6].src for f in cache.take_frames())
    assert first == str(LL6)
    assert second == str(IP6)


def test_nud_cycle_with_exact_timers() -> None:
    cache = make()
    cache.resolve(PEER6, "p", 0)
    cache.take_frames()
    cache.receive_ndp(na_frame(solicited=True, override=True), 100)
    assert [r.packet for r in cache.take_resolved()] == ["p"]
    entry = cache.entry(PEER6)
    assert entry is not None and entry.state is NeighborState.REACHABLE
    assert entry.timer_ns is not None
    reachable = entry.timer_ns - 100
    assert 15 * S <= reachable < 45 * S  # RFC 4861 6.3.2: [0.5, 1.5) x 30 s
    cache.on_timer(100 + reachable - 1)
    assert state(cache, PEER6) is NeighborState.REACHABLE
    cache.on_timer(100 + reachable)
    assert state(cache, PEER6) is NeighborState.STALE
    assert cache.take_frames() == []
    t = 200 * S
    assert cache.resolve(PEER6, "q", t) == PEER  # sent at once with the stale address
    entry = cache.entry(PEER6)
    assert entry is not None and entry.state is NeighborState.DELAY
    assert entry.timer_ns == t + 5 * S
    cache.on_timer(t + 5 * S)
    assert state(cache, PEER6) is NeighborState.PROBE
    (probe,) = cache.take_frames()
    eth = Ether(probe)
    assert eth.dst == str(PEER)  # unicast probe to the cached address
    assert eth[IPv6].dst == str(PEER6) and eth[IPv6].hlim == 255
    assert eth[ICMPv6NDOptSrcLLAddr].lladdr == str(US)
    assert icmpv6_checksum_ok(probe, ICMPv6ND_NS)
    cache.on_timer(t + 6 * S)
    cache.on_timer(t + 7 * S)
    assert len(cache.take_frames()) == 2
    assert cache.stats.probes_sent == 3
    cache.on_timer(t + 8 * S - 1)
    assert state(cache, PEER6) is NeighborState.PROBE
    cache.on_timer(t + 8 * S)
    assert cache.entry(PEER6) is None
    assert cache.take_failed() == []  # packets in PROBE were already sent


def test_reachable_time_is_random_per_rng() -> None:
    times = set()
    for seed in range(8):
        cache = make(seed=seed)
        cache.resolve(PEER6, "p", 0)
        cache.receive_ndp(na_frame(solicited=True, override=True), 0)
        entry = cache.entry(PEER6)
        assert entry is not None and entry.timer_ns is not None
        times.add(entry.timer_ns)
    assert len(times) > 1


def test_confirm_moves_delay_to_reachable_and_extends_reachable() -> None:
    cache = make()
    cache.resolve(PEER6, "p", 0)
    cache.receive_ndp(na_frame(solicited=True, override=True), 0)
    entry = cache.entry(PEER6)
    assert entry is not None and entry.timer_ns is not None
    reachable = entry.timer_ns
    cache.confirm(PEER6, 10 * S)
    cache.on_timer(reachable)
    entry = cache.entry(PEER6)
    assert entry is not None and entry.state is NeighborState.REACHABLE
    assert entry.timer_ns == 10 * S + reachable
    cache.on_timer(10 * S + reachable)
    assert state(cache, PEER6) is NeighborState.STALE
    cache.resolve(PEER6, "q", 100 * S)
    assert state(cache, PEER6) is NeighborState.DELAY
    cache.take_frames()
    cache.confirm(PEER6, 101 * S)
    assert state(cache, PEER6) is NeighborState.REACHABLE
    cache.on_timer(106 * S)
    assert cache.take_frames() == []


def _entry_in(cache: NeighborCache[str], wanted: NeighborState) -> None:
    """Bring PEER6 to ``wanted`` with PEER as its address."""
    if wanted is NeighborState.INCOMPLETE:
        cache.resolve(PEER6, "p", 0)
    elif wanted is NeighborState.STALE:
        cache.receive_ndp(ns_frame(), 0)
    else:
        cache.resolve(PEER6, "p", 0)
        cache.receive_ndp(na_frame(solicited=True, override=True), 0)
        if wanted is not NeighborState.REACHABLE:
            cache.on_timer(50 * S)  # to STALE
            cache.resolve(PEER6, "q", 50 * S)  # to DELAY
            if wanted is NeighborState.PROBE:
                cache.on_timer(55 * S)
    assert state(cache, PEER6) is wanted
    cache.take_frames()
    cache.take_resolved()


R, ST, D, P, INC = (
    NeighborState.REACHABLE,
    NeighborState.STALE,
    NeighborState.DELAY,
    NeighborState.PROBE,
    NeighborState.INCOMPLETE,
)


# RFC 4861 section 7.2.5 and Appendix C: (state before, S, O, link address) -> (state, MAC).
@pytest.mark.parametrize(
    "case",
    [
        (INC, True, True, None, INC, None),  # no target link-layer option: discard
        (INC, False, False, PEER, D, PEER),  # STALE, then the queued packet starts DELAY
        (INC, True, False, PEER, R, PEER),
        (R, False, False, OTHER, ST, PEER),  # O clear, different: REACHABLE -> STALE only
        (ST, False, False, OTHER, ST, PEER),  # O clear, different, not REACHABLE: ignored
        (D, True, False, OTHER, D, PEER),
        (P, True, False, OTHER, P, PEER),
        (R, False, True, OTHER, ST, OTHER),  # O set: the address changes
        (ST, True, True, OTHER, R, OTHER),
        (P, False, True, OTHER, ST, OTHER),
        (ST, True, False, PEER, R, PEER),  # same address, solicited: REACHABLE
        (D, True, False, None, R, PEER),
        (R, False, True, PEER, R, PEER),  # same address, unsolicited: no change
        (P, False, False, PEER, P, PEER),
        (ST, False, True, None, ST, PEER),
    ],
)
def test_advertisement_rules_of_rfc_4861(
    case: tuple[NeighborState, bool, bool, MacAddress | None, NeighborState, MacAddress | None],
) -> None:
    before, solicited, override, lladdr, after, mac = case
    cache = make()
    _entry_in(cache, before)
    cache.receive_ndp(na_frame(solicited=solicited, override=override, lladdr=lladdr), 60 * S)
    entry = cache.entry(PEER6)
    assert entry is not None
    assert (entry.state, entry.mac) == (after, mac)


def test_solicitation_from_our_own_address_is_a_conflict() -> None:
    cache = make()
    cache.receive_ndp(ns_frame(src=str(LL6), dst=str(solicited_node_address(IP6))), 0)
    assert cache.take_frames() == [] and len(cache) == 0
    assert cache.stats.drops[NeighborDrop.ADDRESS_CONFLICT] == 1


def test_advertisement_without_entry_creates_nothing() -> None:
    cache = make()
    cache.receive_ndp(na_frame(solicited=False, override=True), 0)
    assert len(cache) == 0


def test_solicitation_for_us_is_answered_and_learned() -> None:
    cache = make()
    cache.receive_ndp(ns_frame(), 0)
    (reply,) = cache.take_frames()
    eth = Ether(reply)
    assert eth.dst == str(PEER) and eth.src == str(US)
    ip = eth[IPv6]
    assert (ip.src, ip.dst, ip.hlim) == (str(IP6), str(PEER6), 255)
    na = eth[ICMPv6ND_NA]
    assert (na.tgt, na.R, na.S, na.O) == (str(IP6), 0, 1, 1)
    assert eth[ICMPv6NDOptDstLLAddr].lladdr == str(US)
    assert icmpv6_checksum_ok(reply, ICMPv6ND_NA)
    assert state(cache, PEER6) is NeighborState.STALE and cache.lookup(PEER6) == PEER


def test_unicast_solicitation_without_source_option_is_answered_to_the_sender() -> None:
    cache = make()
    cache.receive_ndp(ns_frame(dst=str(IP6), lladdr=None), 0)
    (reply,) = cache.take_frames()
    assert Ether(reply).dst == str(PEER)
    assert len(cache) == 0


def test_duplicate_address_detection_probe_gets_all_nodes_advert() -> None:
    cache = make()
    cache.receive_ndp(ns_frame(src="::", lladdr=None), 0)
    (reply,) = cache.take_frames()
    eth = Ether(reply)
    assert eth.dst == "33:33:00:00:00:01"
    assert (eth[IPv6].src, eth[IPv6].dst) == (str(IP6), "ff02::1")
    na = eth[ICMPv6ND_NA]
    assert (na.S, na.O) == (0, 1)
    assert icmpv6_checksum_ok(reply, ICMPv6ND_NA)
    assert len(cache) == 0


def test_invalid_ndp_is_dropped() -> None:
    cache = make()
    cache.receive_ndp(ns_frame(hlim=64), 0)
    assert cache.stats.drops[NeighborDrop.BAD_HOP_LIMIT] == 1
    cache.receive_ndp(ns_frame(target=IPv6Address("fd00::77")), 0)  # not ours: ignored
    bad = bytearray(ns_frame())
    bad[-10] ^= 0xFF  # breaks the checksum
    cache.receive_ndp(bytes(bad), 0)
    cache.receive_ndp(ns_frame(src="::"), 0)  # DAD probe with a source link-layer option
    cache.receive_ndp(na_frame(solicited=True, override=True, dst="ff02::1"), 0)
    assert cache.stats.drops[NeighborDrop.MALFORMED] == 3
    assert cache.take_frames() == [] and len(cache) == 0


def test_announce_sends_gratuitous_arp_and_unsolicited_na() -> None:
    cache = make()
    cache.announce(IP4, 0)
    cache.announce(IP6, 0)
    garp, na = (Ether(f) for f in cache.take_frames())
    assert garp.dst == "ff:ff:ff:ff:ff:ff"
    assert (garp[ARP].op, garp[ARP].psrc, garp[ARP].pdst) == (1, str(IP4), str(IP4))
    assert na[IPv6].dst == "ff02::1" and (na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O) == (0, 1)
    with pytest.raises(ValueError):
        cache.announce(PEER4, 0)


# --- queues, limits and the table --------------------------------------------------------


def test_group_addresses_need_no_resolution() -> None:
    cache = make()
    assert cache.resolve(IPv4Address("224.0.0.251"), "m", 0) == MacAddress.parse(
        "01:00:5e:00:00:fb"
    )
    assert cache.resolve(IPv4Address("239.255.255.250"), "m", 0) == MacAddress.parse(
        "01:00:5e:7f:ff:fa"
    )
    assert cache.resolve(IPv6Address("ff02::1:ff00:2"), "m", 0) == MacAddress.parse(
        "33:33:ff:00:00:02"
    )
    broadcast = MacAddress.parse("ff:ff:ff:ff:ff:ff")
    assert cache.resolve(IPv4Address("255.255.255.255"), "b", 0) == broadcast
    assert cache.resolve(IPv4Address("198.18.0.255"), "b", 0) == broadcast
    assert cache.take_frames() == [] and len(cache) == 0


def test_unresolved_queue_is_bounded_oldest_dropped() -> None:
    cache = make(NeighborConfig(unres_qlen=3))
    for n in range(5):
        cache.resolve(PEER4, f"p{n}", n)
    failed = cache.take_failed()
    assert [(f.packet, f.reason) for f in failed] == [
        ("p0", NeighborDrop.QUEUE_OVERFLOW),
        ("p1", NeighborDrop.QUEUE_OVERFLOW),
    ]
    cache.receive_arp(arp_frame(2, str(PEER4), str(IP4), dst=str(US)), 10)
    assert [r.packet for r in cache.take_resolved()] == ["p2", "p3", "p4"]


def test_table_is_bounded_forced_gc_evicts_stale() -> None:
    cache = make(NeighborConfig(gc_thresh1=2, gc_thresh2=4, gc_thresh3=8))
    for n in range(8):
        cache.receive_arp(arp_frame(1, f"198.18.0.{10 + n}", str(IP4)), n)
    assert len(cache) == 8
    cache.resolve(PEER4, "p", 100)
    assert len(cache) == 5  # evicted down to gc_thresh2, least recently used first
    assert cache.entry(IPv4Address("198.18.0.10")) is None
    assert cache.entry(IPv4Address("198.18.0.17")) is not None
    assert cache.stats.forced_gc_runs == 1 and cache.stats.gc_evicted == 4


def test_table_full_of_incomplete_refuses() -> None:
    cache = make(NeighborConfig(gc_thresh2=2, gc_thresh3=4))
    for n in range(6):
        cache.resolve(IPv4Address(f"198.18.0.{10 + n}"), f"p{n}", 0)
    assert len(cache) == 4
    assert [(f.packet, f.reason) for f in cache.take_failed()] == [
        ("p4", NeighborDrop.TABLE_FULL),
        ("p5", NeighborDrop.TABLE_FULL),
    ]
    # IPv6 has its own bound.
    cache.resolve(PEER6, "v6", 0)
    assert state(cache, PEER6) is NeighborState.INCOMPLETE


def test_periodic_gc_removes_unused_stale_entries() -> None:
    cache = make(NeighborConfig(gc_thresh1=2))
    for n in range(4):
        cache.receive_arp(arp_frame(1, f"198.18.0.{10 + n}", str(IP4)), 0)
    assert cache.next_timer_ns() == 30 * S
    cache.on_timer(30 * S)
    assert len(cache) == 4  # used 30 s ago, gc_stale_time is 60 s
    assert cache.next_timer_ns() == 60 * S
    cache.on_timer(60 * S)
    assert len(cache) == 0
    assert cache.next_timer_ns() is None


def test_forget_static_and_no_source() -> None:
    cache = make()
    cache.resolve(PEER4, "p", 0)
    cache.forget(PEER4)
    assert [(f.packet, f.reason) for f in cache.take_failed()] == [("p", NeighborDrop.FLUSHED)]
    cache.resolve(PEER4, "q", 0)
    cache.add_static(PEER4, OTHER, 0)
    assert [(r.packet, r.mac) for r in cache.take_resolved()] == [("q", OTHER)]
    cache.receive_arp(arp_frame(2, str(PEER4), str(IP4), dst=str(US)), 10 * S)
    assert cache.lookup(PEER4) == OTHER and state(cache, PEER4) is NeighborState.PERMANENT
    lonely: NeighborCache[str] = NeighborCache(US, random.Random(0))
    lonely.add_address(IPv4Interface("198.18.0.1/24"))
    assert lonely.resolve(PEER6, "v6", 0) is None
    assert [f.reason for f in lonely.take_failed()] == [NeighborDrop.NO_SOURCE_ADDRESS]


def test_two_caches_resolve_each_other_over_a_wire() -> None:
    a: NeighborCache[str] = NeighborCache(US, random.Random(1))
    b: NeighborCache[str] = NeighborCache(PEER, random.Random(2))
    a.add_address(IPv4Interface("198.18.0.1/24"))
    a.add_address(IPv6Interface("fd00::1/64"))
    b.add_address(IPv4Interface("198.18.0.2/24"))
    b.add_address(IPv6Interface("fd00::2/64"))

    def deliver(frames: list[bytes], to: NeighborCache[str]) -> None:
        for frame in frames:
            if Ether(frame).type == 0x0806:
                to.receive_arp(frame, 0)
            else:
                to.receive_ndp(frame, 0)

    a.resolve(PEER4, "v4", 0)
    a.resolve(PEER6, "v6", 0)
    deliver(a.take_frames(), b)
    deliver(b.take_frames(), a)
    assert {(r.packet, r.mac) for r in a.take_resolved()} == {("v4", PEER), ("v6", PEER)}
    assert b.lookup(IP4) == US and b.lookup(IP6) == US
    assert a.entry(PEER4) is not None and state(a, PEER6) is NeighborState.REACHABLE


# --- invariants under random operation sequences ------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["resolve", "na", "ns", "arp", "confirm", "timer", "forget"]),
        st.integers(0, 5),  # which neighbour
        st.booleans(),
        st.booleans(),
        st.integers(0, 3 * S),  # time step
    ),
    max_size=60,
)


@settings(max_examples=80, deadline=None)
@given(ops)
def test_every_packet_is_accounted_for_and_memory_is_bounded(
    steps: list[tuple[str, int, bool, bool, int]],
) -> None:
    config = NeighborConfig(unres_qlen=2, gc_thresh1=1, gc_thresh2=2, gc_thresh3=3)
    cache = make(config)
    now = 0
    sent = resolved = failed = 0
    macs = [MacAddress(bytes((2, 0, 0, 0, 1, n))) for n in range(6)]
    for op, n, flag1, flag2, step in steps:
        now += step
        v6 = IPv6Address(f"fd00::{n + 10:x}")
        v4 = IPv4Address(f"198.18.0.{n + 10}")
        if op == "resolve":
            sent += 1
            if cache.resolve(v6 if flag1 else v4, f"x{sent}", now) is not None:
                resolved += 1
        elif op == "na":
            cache.receive_ndp(
                na_frame(solicited=flag1, override=flag2, lladdr=macs[n], target=v6), now
            )
        elif op == "ns":
            cache.receive_ndp(ns_frame(src=str(v6), lladdr=macs[n]), now)
        elif op == "arp":
            cache.receive_arp(arp_frame(2 if flag1 else 1, str(v4), str(IP4), macs[n]), now)
        elif op == "confirm":
            cache.confirm(v6 if flag1 else v4, now)
        elif op == "forget":
            cache.forget(v6 if flag1 else v4)
        else:
            due = cache.next_timer_ns()
            if due is not None:
                now = max(now, due)
                cache.on_timer(now)
        resolved += len(cache.take_resolved())
        failed += len(cache.take_failed())
        cache.take_frames()
        entries = cache.entries()
        queued = sum(e.queued for e in entries)
        assert resolved + failed + queued == sent
        assert sum(1 for e in entries if e.address.version == 4) <= config.gc_thresh3
        assert sum(1 for e in entries if e.address.version == 6) <= config.gc_thresh3
        for e in entries:
            assert e.queued <= config.unres_qlen
            assert (e.mac is None) == (e.state is NeighborState.INCOMPLETE)
            assert e.queued == 0 or e.state is NeighborState.INCOMPLETE
            due = cache.next_timer_ns()
            if e.timer_ns is not None:
                assert due is not None and due <= e.timer_ns
