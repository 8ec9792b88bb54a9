"""The vectorised classifier agrees with a slow reference loop, on random rules and random frames.

Frames are built with scapy (an independent builder) from small pools of
addresses, ports and MACs, so that rules and frames meet often; then some are
VLAN-tagged (up to three tags, either TPID), carry IPv4 options or IPv6
extension headers, are fragments (first or later), or are truncated or have a
byte flipped anywhere.
"""

from __future__ import annotations

from ipaddress import ip_address

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from netoffload.engine.classify import (
    NO_RULE,
    Action,
    AddressMatch,
    Classifier,
    Fate,
    Masked,
    Match,
    PortRange,
    Rule,
    RuleError,
    first_set_bit,
)
from netoffload.engine.fields import NO_DSCP, NO_FLAGS, NO_U16, FrameBatch, extract
from tests.engine import classify_reference

MACS = ["02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:01:01", "ff:ff:ff:ff:ff:ff"]
ADDR4 = ["198.18.0.1", "198.18.0.200", "198.18.1.5", "198.19.255.1"]
ADDR6 = ["fd00::1", "fd00::1:0:0:1", "fd00:1::5", "fd12:3456::ffff", "fd00::ffff:c612:1"]
PORTS = [0, 22, 53, 80, 443, 1024, 8080, 65535]


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["tcp4", "udp4", "icmp4", "tcp6", "udp6", "icmp6", "arp"]))
    pkt = Ether(src=draw(st.sampled_from(MACS)), dst=draw(st.sampled_from(MACS)))
    for _ in range(draw(st.integers(0, 3))):
        tag = Dot1AD if draw(st.booleans()) else Dot1Q
        pkt = pkt / tag(vlan=draw(st.sampled_from([1, 7, 4095])), prio=draw(st.integers(0, 7)))
    frag = draw(st.sampled_from(["none", "none", "first", "later"]))
    tos = draw(st.sampled_from([0, 0x2E << 2, 0xFF, 4]))
    if kind == "arp":
        pkt = pkt / ARP()
    elif kind.endswith("4"):
        ip = IP(src=draw(st.sampled_from(ADDR4)), dst=draw(st.sampled_from(ADDR4)), tos=tos)
        if draw(st.booleans()):
            ip.options = [IPOption_NOP()] * draw(st.integers(1, 8))
        if frag != "none":
            ip.flags = "MF"
            ip.frag = 0 if frag == "first" else draw(st.integers(1, 100))
        pkt = pkt / ip
    else:
        pkt = pkt / IPv6(src=draw(st.sampled_from(ADDR6)), dst=draw(st.sampled_from(ADDR6)), tc=tos)
        ext = draw(st.sampled_from(["none", "none", "hop", "dest"]))
        if ext == "hop":
            pkt = pkt / IPv6ExtHdrHopByHop()
        elif ext == "dest":
            pkt = pkt / IPv6ExtHdrDestOpt()
        if frag != "none":
            pkt = pkt / IPv6ExtHdrFragment(m=1, offset=0 if frag == "first" else 5)
    sport, dport = draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))
    if kind.startswith("tcp"):
        pkt = pkt / TCP(sport=sport, dport=dport, flags=draw(st.integers(0, 255)))
    elif kind.startswith("udp"):
        pkt = pkt / UDP(sport=sport, dport=dport)
    elif kind == "icmp4":
        pkt = pkt / ICMP()
    elif kind == "icmp6":
        pkt = pkt / ICMPv6EchoRequest()
    data = bytearray(bytes(pkt / (b"x" * draw(st.integers(0, 20)))))
    mutation = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if mutation == "truncate":  # mostly inside the headers
        del data[draw(st.integers(0, min(len(data), 90))) :]
    elif mutation == "flip" and data:
        at = draw(st.integers(0, min(len(data), 80) - 1))
        data[at] ^= draw(st.integers(1, 255))
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(frames(), min_size=1, max_size=16))
def test_extracted_fields_equal_the_wire_views(batch: list[bytes]) -> None:
    f = extract(FrameBatch.from_frames(batch))
    for i, frame in enumerate(batch):
        p = classify_reference.parse(frame)
        assert bool(f.l2[i]) == (p is not None)
        if p is None:
            continue
        mac = (int(f.dst_mac[i]), int(f.src_mac[i]))
        assert mac == (p.dst_mac, p.src_mac)
        assert int(f.ethertype[i]) == p.ethertype
        assert int(f.vlan[i]) == (NO_U16 if p.vlan is None else p.vlan)
        assert int(f.version[i]) == (p.version or 0)
        if p.version is None:
            assert (int(f.proto[i]), int(f.dscp[i])) == (0, NO_DSCP)
            assert not f.l4_ok[i]
            continue
        size = 4 if p.version == 4 else 16
        at = 12 if p.version == 4 else 8
        ip = f.ip[i].tobytes()
        assert p.src is not None and p.dst is not None
        assert (ip[at : at + size], ip[at + size : at + 2 * size]) == (p.src.packed, p.dst.packed)
        assert (int(f.proto[i]), int(f.dscp[i])) == (p.proto, p.dscp)
        assert bool(f.fragment[i]) == p.fragment
        assert bool(f.l4_ok[i]) == (p.sport is not None)
        assert int(f.sport[i]) == (NO_U16 if p.sport is None else p.sport)
        assert int(f.dport[i]) == (NO_U16 if p.dport is None else p.dport)
        assert int(f.tcp_flags[i]) == (NO_FLAGS if p.tcp_flags is None else p.tcp_flags)


def _masked(draw: st.DrawFn, value: int, bits: int) -> Masked:
    full = (1 << bits) - 1
    mask = draw(st.sampled_from([full, full, full & ~0xF, 0, draw(st.integers(0, full))]))
    return Masked(value, mask)


def _address(draw: st.DrawFn, version: int) -> AddressMatch:
    pool = ADDR4 if version == 4 else ADDR6
    addr = int(ip_address(draw(st.sampled_from(pool))))
    bits = 32 if version == 4 else 128
    if draw(st.integers(0, 4)) == 0:  # any mask: a residual check
        return AddressMatch(version, addr, draw(st.integers(0, (1 << bits) - 1)))
    plen = draw(
        st.sampled_from(
            [0, 8, 15, 16, 24, 31, 32] if version == 4 else [0, 8, 16, 48, 63, 64, 65, 120, 128]
        )
    )
    return AddressMatch(version, addr, ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1))


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    version = draw(st.sampled_from([None, None, 4, 6]))
    m: dict[str, object] = {}

    def maybe() -> bool:
        return draw(st.integers(0, 5)) == 0

    if maybe():
        m["ingress_queue"] = draw(st.integers(0, 2))
    if maybe():
        mac = int.from_bytes(bytes.fromhex(draw(st.sampled_from(MACS)).replace(":", "")), "big")
        m[draw(st.sampled_from(["dst_mac", "src_mac"]))] = _masked(draw, mac, 48)
    if maybe():
        m["vlan"] = _masked(draw, draw(st.sampled_from([1, 7, 4095, 0xE007])), 16)
    if maybe():
        m["ethertype"] = _masked(draw, draw(st.sampled_from([0x0800, 0x86DD, 0x0806])), 16)
    if version is not None:
        if maybe():
            m["ip_version"] = version
        for side in ("src", "dst"):
            if draw(st.booleans()):
                m[side] = _address(draw, version)
    if maybe() or maybe():
        m["proto"] = _masked(draw, draw(st.sampled_from([6, 17, 1, 58])), 8)
    for side in ("sport", "dport"):
        if maybe():
            if draw(st.booleans()):
                lo = draw(st.sampled_from(PORTS))
                m[side] = PortRange(lo, draw(st.integers(lo, 65535)))
            else:
                m[side] = _masked(draw, draw(st.sampled_from(PORTS)), 16)
    if maybe():
        m["tcp_flags"] = _masked(draw, draw(st.integers(0, 255)), 8)
    if maybe():
        m["dscp"] = _masked(draw, draw(st.sampled_from([0, 0x2E, 63, 1])), 6)
    fate = draw(st.sampled_from(list(Fate)))
    action = Action(
        fate,
        draw(st.integers(0, 3)) if fate is Fate.QUEUE else None,
        mark=draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
        mirror=draw(st.one_of(st.none(), st.integers(0, 3))),
        count=draw(st.booleans()),
    )
    return Rule(Match(**m), action, draw(st.integers(0, 3)))  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule_set=st.lists(rules(), max_size=20),
    batch=st.lists(frames(), min_size=1, max_size=24),
    ingress_queue=st.integers(0, 2),
)
def test_vectorised_classification_equals_the_reference_loop(
    rule_set: list[Rule], batch: list[bytes], ingress_queue: int
) -> None:
    classifier = Classifier()
    ids = [classifier.add(rule) for rule in rule_set]
    got = classifier.classify(
        extract(FrameBatch.from_frames(batch)), ingress_queue=ingress_queue, default_queue=9
    )
    want = classify_reference.classify(
        list(zip(ids, rule_set, strict=True)), batch, ingress_queue, 9
    )
    assert got.rule.tolist() == [w.rule for w in want]
    assert got.queue.tolist() == [w.queue for w in want]
    assert got.drop.tolist() == [w.drop for w in want]
    assert got.mark.tolist() == [w.mark for w in want]
    assert got.mirror.tolist() == [w.mirror for w in want]
    counters = classifier.counters()
    for rid, rule in zip(ids, rule_set, strict=True):
        hits = [i for i, w in enumerate(want) if w.rule == rid]
        assert counters[rid].hits == len(hits)
        assert counters[rid].drops == sum(want[i].drop for i in hits)
        assert counters[rid].bytes == (sum(len(batch[i]) for i in hits) if rule.action.count else 0)


def test_more_than_64_rules_first_match_in_every_word() -> None:
    # 150 rules over three 64-bit words; rule k matches only destination port k.
    rule_set = [Rule(Match(dport=Masked.exact(k, 16)), Action.deliver(k % 4)) for k in range(150)]
    classifier = Classifier(rule_set)
    batch = [
        bytes(Ether() / IP(src=ADDR4[0], dst=ADDR4[1]) / UDP(sport=1, dport=k))
        for k in (0, 63, 64, 127, 128, 149, 150)
    ]
    got = classifier.classify_batch(FrameBatch.from_frames(batch), default_queue=7)
    ids = [rid for rid, _ in classifier.rules()]
    assert got.rule.tolist() == [ids[0], ids[63], ids[64], ids[127], ids[128], ids[149], NO_RULE]
    assert got.queue.tolist() == [0, 3, 0, 3, 0, 1, 7]


def test_first_set_bit() -> None:
    bits = np.array([[0, 0], [1, 0], [1 << 63, 5], [0, 1 << 63], [6, 0]], dtype=np.uint64)
    index, matched = first_set_bit(bits)
    assert matched.tolist() == [False, True, True, True, True]
    assert index[matched].tolist() == [0, 63, 127, 1]


def test_rules_are_added_and_removed_at_run_time_and_priorities_order_them() -> None:
    frame = bytes(Ether() / IP(src=ADDR4[0], dst=ADDR4[1]) / TCP(sport=1, dport=80))
    batch = FrameBatch.from_frames([frame])
    classifier = Classifier()
    low = classifier.add(Rule(Match(dport=Masked.exact(80, 16)), Action.deliver(1), priority=5))
    assert classifier.classify_batch(batch).queue.tolist() == [1]
    high = classifier.add(Rule(Match(ip_version=4), Action.drop(), priority=1))
    got = classifier.classify_batch(batch)
    assert (got.rule.tolist(), got.drop.tolist(), got.queue.tolist()) == ([high], [True], [-1])
    classifier.remove(high)
    assert classifier.classify_batch(batch).rule.tolist() == [low]
    counters = classifier.counters()
    assert set(counters) == {low}
    assert (counters[low].hits, counters[low].drops) == (2, 0)
    with pytest.raises(RuleError):
        classifier.remove(high)
    with pytest.raises(RuleError):
        classifier.add(Rule(Match(), Action()), rule_id=low)


def test_a_full_rule_set_refuses_another_rule() -> None:
    classifier = Classifier(max_rules=2)
    classifier.add(Rule(Match(), Action()))
    classifier.add(Rule(Match(), Action()))
    with pytest.raises(RuleError, match="full"):
        classifier.add(Rule(Match(), Action()))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: Match(
                src=AddressMatch.parse("198.18.0.0/15"), dst=AddressMatch.parse("fd00::/8")
            ),
            "mixes",
        ),
        (lambda: Match(dport=PortRange(10, 5)), "empty"),
        (lambda: Match(dscp=Masked(0, 0x7F)), "6 bits"),
        (lambda: Action(Fate.QUEUE), "queue"),
        (lambda: Action(mark=2**32), "mark"),
    ],
)
def test_impossible_rules_are_refused(make: object, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        make()  # type: ignore[operator]
