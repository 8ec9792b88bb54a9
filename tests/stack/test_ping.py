"""The echo client against the ICMP core: requests, replies, RTTs, timeouts, summary."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv6Address

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, IPv6

from netoffload.stack._netaddr import NS_PER_MS, NS_PER_S
from netoffload.stack.icmp import EchoReplyReceived, Icmp, IcmpErrorKind, IcmpErrorReceived
from netoffload.stack.ping import EchoClient, PingError, PingReply, PingTimeout, echo_payload

US4, PEER4 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
US6, PEER6 = IPv6Address("fd00::1"), IPv6Address("fd00::2")
MS = NS_PER_MS


def answer(request: bytes) -> EchoReplyReceived:
    """The peer's ICMP core answers; ours turns the answer into an event."""
    peer = Icmp()
    peer.receive(request, 0)
    (reply,) = peer.take_packets()
    event = Icmp().receive(reply, 0)
    assert isinstance(event, EchoReplyReceived)
    return event


def test_requests_on_schedule_replies_matched_rtt_and_summary() -> None:
    client = EchoClient(PEER4, US4, random.Random(1), start_ns=0, count=3, ident=0x4242)
    assert client.next_timer_ns() == 0
    client.on_timer(0)
    (first,) = client.take_packets()
    parsed = IP(first)
    assert (parsed.src, parsed.dst) == (str(US4), str(PEER4))
    assert (parsed[ICMP].type, parsed[ICMP].id, parsed[ICMP].seq) == (8, 0x4242, 1)  # as iputils
    assert len(parsed[ICMP].load) == 56
    assert parsed[ICMP].load == echo_payload(0, 56)
    assert client.next_timer_ns() == NS_PER_S
    assert client.receive(answer(first), 10 * MS)
    client.on_timer(NS_PER_S)
    (_lost,) = client.take_packets()  # never answered
    client.on_timer(2 * NS_PER_S)
    (third,) = client.take_packets()
    assert client.receive(answer(third), 2 * NS_PER_S + 30 * MS)
    assert client.receive(answer(third), 2 * NS_PER_S + 31 * MS)  # a duplicate
    assert client.next_timer_ns() == NS_PER_S + 10 * NS_PER_S  # the second times out
    client.on_timer(11 * NS_PER_S)
    assert client.done
    events = client.take_events()
    assert events == [
        PingReply(1, 10 * MS, 64, 56),
        PingReply(3, 30 * MS, 64, 56),
        PingReply(3, 31 * MS, 64, 56, duplicate=True),
        PingTimeout(2),
    ]
    summary = client.summary()
    assert (summary.transmitted, summary.received, summary.duplicates) == (3, 2, 1)
    assert summary.loss_percent == pytest.approx(100 / 3)
    assert (summary.rtt_min_ns, summary.rtt_avg_ns, summary.rtt_max_ns) == (
        10 * MS,
        20 * MS,
        30 * MS,
    )
    assert summary.rtt_mdev_ns == 10 * MS


def test_foreign_and_corrupted_replies() -> None:
    client = EchoClient(PEER6, US6, random.Random(2), start_ns=0, count=1, ident=7)
    client.on_timer(0)
    (request,) = client.take_packets()
    assert IPv6(request)[ICMPv6EchoRequest].id == 7
    reply = answer(request)
    other = EchoReplyReceived(6, PEER6, US6, 8, 1, reply.data, 64)
    elsewhere = EchoReplyReceived(6, IPv6Address("fd00::9"), US6, 7, 1, reply.data, 64)
    assert not client.receive(other, MS) and not client.receive(elsewhere, MS)
    mangled = EchoReplyReceived(6, PEER6, US6, 7, 1, b"\xff" + reply.data[1:], 63)
    assert client.receive(mangled, 5 * MS)
    assert client.take_events() == [PingReply(1, 5 * MS, 63, 56, corrupted=True)]
    assert client.summary().corrupted == 1 and client.done


def test_errors_about_our_requests() -> None:
    client = EchoClient(PEER6, US6, random.Random(3), start_ns=0, count=2, ident=99)
    client.on_timer(0)
    (request,) = client.take_packets()
    router = IPv6Address("fd00::fe")
    error = bytes(IPv6(src=str(router), dst=str(US6)) / ICMPv6DestUnreach(code=3) / request)
    event = Icmp().receive(error, 0)
    assert isinstance(event, IcmpErrorReceived)
    assert client.receive_error(event)
    assert client.take_events() == [PingError(1, IcmpErrorKind.HOST_UNREACHABLE, router)]
    client.stop()
    assert client.done
    summary = client.summary()
    assert (summary.transmitted, summary.received, summary.errors) == (1, 0, 1)
    assert summary.loss_percent == 100.0 and summary.rtt_avg_ns is None


def test_sequence_numbers_wrap_and_intervals_catch_up() -> None:
    client = EchoClient(PEER4, US4, random.Random(4), start_ns=0, interval_ns=MS, timeout_ns=MS)
    client.on_timer(65_600 * MS)  # a late timer sends every request that is due
    packets = client.take_packets()
    assert len(packets) == 65_601
    assert IP(packets[-1])[ICMP].seq == 65_601 & 0xFFFF
    assert client.next_timer_ns() == 65_601 * MS
    with pytest.raises(ValueError):
        EchoClient(PEER4, US6, random.Random(0), start_ns=0)
