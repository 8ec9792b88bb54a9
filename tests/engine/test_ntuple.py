"""Rules as ethtool ntuple text: what the words mean, round trips, one-line errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from netoffload.engine.classify import (
    Action,
    AddressMatch,
    Fate,
    Masked,
    Match,
    PortRange,
    Rule,
)
from netoffload.engine.ntuple import RuleSyntaxError, format_rule, parse_rule
from tests.engine.test_classify import rules

TCP = Masked.exact(6, 8)
UDP = Masked.exact(17, 8)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (
            "flow-type tcp4 src-ip 198.18.0.0/24 dst-port 80 action 2",
            Rule(
                Match(
                    ip_version=4,
                    proto=TCP,
                    src=AddressMatch.parse("198.18.0.0/24"),
                    dport=Masked.exact(80, 16),
                ),
                Action.deliver(2),
            ),
        ),
        (
            "flow-type udp6 dst-ip fd00::1 action -1",
            Rule(Match(ip_version=6, proto=UDP, dst=AddressMatch.parse("fd00::1")), Action.drop()),
        ),
        (
            # ethtool's masks name the bits to ignore
            "flow-type ip4 src-ip 198.18.0.7 m 0.0.0.255 l4proto 1 mark 7 loc 3",
            Rule(
                Match(ip_version=4, src=AddressMatch.parse("198.18.0.0/24"), proto=Masked(1, 0xFF)),
                Action(mark=7),
                priority=3,
            ),
        ),
        (
            "flow-type ether dst 02:00:00:00:00:01 proto 0x88cc vlan 7 m 0xf000 drop mirror 1",
            Rule(
                Match(
                    dst_mac=Masked.exact(0x020000000001, 48),
                    ethertype=Masked.exact(0x88CC, 16),
                    vlan=Masked(7, 0x0FFF),
                ),
                Action.drop(mirror=1),
            ),
        ),
        (
            "src-port 1000-2000 tcp-flags syn/syn,ack dscp 46 ingress-queue 1 queue 3 count",
            Rule(
                Match(
                    sport=PortRange(1000, 2000),
                    tcp_flags=Masked(0x02, 0x12),
                    dscp=Masked.exact(46, 6),
                    ingress_queue=1,
                ),
                Action(Fate.QUEUE, 3, count=True),
            ),
        ),
        ("flow-type ether", Rule(Match(), Action())),
    ],
)
def test_words_mean_what_ethtool_says(text: str, rule: Rule) -> None:
    assert parse_rule(text) == rule
    assert parse_rule(format_rule(rule)) == rule


@settings(max_examples=300, deadline=None)
@given(rules())
def test_every_rule_survives_text(rule: Rule) -> None:
    if rule.match.tcp_flags is not None and rule.match.proto not in (None, TCP):
        return  # flags on a non-TCP rule: a rule the text refuses (and that never matches)
    assert parse_rule(format_rule(rule)) == rule


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty rule"),
        ("flow-type tcp5", "flow-type: 'tcp5' is not one of"),
        ("dst-port 99999", "dst-port: 99999 is not in 0..65535"),
        ("dst-port http", "dst-port: 'http' is not a number"),
        ("src-ip 198.18.0", "src-ip: '198.18.0' is not an address"),
        ("src-ip 198.18.0.1 m ffff::", "src-ip m: 'ffff::' is not an IPv4 mask"),
        ("action 1 drop", "drop: the rule has an action already"),
        ("flow-type tcp4 l4proto 6", "flow-type tcp4 sets the protocol"),
        ("flow-type ether src-ip 198.18.0.1", "IP words need an IP flow type"),
        ("flow-type udp4 tcp-flags syn", "tcp-flags: the rule is not for TCP"),
        ("tcp-flags syn,fun", "'fun' is not one of"),
        ("tcp-flags syn/ack", "not in the mask"),
        ("flow-type tcp4 src-ip fd00::1", "mixes IPv4 and IPv6"),
        ("dst-port 9-1", "the range 9-1 is empty"),
        ("mark", "mark: a value is missing"),
        ("mark 4294967296", "mark: 4294967296 is not in"),
        ("loc 1 loc 2", "loc: given twice"),
        ("bogus 1", "'bogus' is not a rule word"),
        ("src 02:00:00:00:00", "src: '02:00:00:00:00' is not a MAC address"),
    ],
)
def test_errors_are_one_line_value_errors(text: str, message: str) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse_rule(text)
    assert isinstance(caught.value, ValueError)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
