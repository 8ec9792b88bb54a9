"""ICMP: echo replies, errors out (RFC rules, quoting, rate limits) and in, checked by scapy."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
)
from scapy.packet import NoPayload, Raw

from netoffload.stack._netaddr import NS_PER_MS, NS_PER_S
from netoffload.stack.icmp import (
    EchoReplyReceived,
    Icmp,
    IcmpConfig,
    IcmpDrop,
    IcmpErrorKind,
    IcmpErrorReceived,
    parse_quoted,
)

US4, PEER4 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
US6, PEER6 = IPv6Address("fd00::1"), IPv6Address("fd00::2")
K = IcmpErrorKind


def checksums_ok(packet: bytes) -> bool:
    """Rebuild with scapy, outer checksums recomputed; the bytes must not change."""
    parsed = IP(packet) if packet[0] >> 4 == 4 else IPv6(packet)
    layer = parsed
    # Stop at the quoted packet: its checksums are the original's, whatever they were.
    while layer and not isinstance(layer, Raw | NoPayload | IPerror | IPerror6):
        for name in ("chksum", "cksum"):
            if name in layer.fields:
                delattr(layer, name)  # also drops scapy's cached raw bytes
        layer = layer.payload
    return bytes(parsed) == packet


# --- echo --------------------------------------------------------------------------------


def test_echo_request_is_answered_with_the_same_data() -> None:
    icmp = Icmp()
    request = bytes(IP(src=str(PEER4), dst=str(US4), tos=0x28) / ICMP(id=0x1234, seq=7) / b"hi!")
    assert icmp.receive(request, 0) is None
    (reply,) = icmp.take_packets()
    parsed = IP(reply)
    assert (parsed.src, parsed.dst, parsed.proto, parsed.ttl) == (str(US4), str(PEER4), 1, 64)
    assert parsed.tos == 0x28
    assert (parsed[ICMP].type, parsed[ICMP].code) == (0, 0)
    assert (parsed[ICMP].id, parsed[ICMP].seq, parsed[ICMP].load) == (0x1234, 7, b"hi!")
    assert checksums_ok(reply)


def test_ipv6_echo_request_is_answered() -> None:
    icmp = Icmp()
    request = bytes(
        IPv6(src=str(PEER6), dst=str(US6), tc=0x20)
        / ICMPv6EchoRequest(id=9, seq=300, data=b"x" * 100)
    )
    icmp.receive(request, 0)
    (reply,) = icmp.take_packets()
    parsed = IPv6(reply)
    assert (parsed.src, parsed.dst, parsed.tc) == (str(US6), str(PEER6), 0x20)
    echo = parsed[ICMPv6EchoReply]
    assert (echo.id, echo.seq, echo.data) == (9, 300, b"x" * 100)
    sent = echo.cksum
    del parsed[ICMPv6EchoReply].cksum
    assert IPv6(bytes(parsed))[ICMPv6EchoReply].cksum == sent


def test_echo_to_groups() -> None:
    icmp = Icmp()
    icmp.receive(bytes(IP(src=str(PEER4), dst="224.0.0.1") / ICMP()), 0)
    icmp.receive(bytes(IP(src=str(PEER4), dst="198.18.0.255") / ICMP()), 0, to_broadcast=True)
    assert icmp.take_packets() == []
    assert icmp.stats.drops[IcmpDrop.ECHO_IGNORED] == 2
    multicast = bytes(IPv6(src=str(PEER6), dst="ff02::1") / ICMPv6EchoRequest(id=1))
    icmp.receive(multicast, 0)
    assert icmp.take_packets() == []
    icmp.receive(multicast, 0, reply_source=US6)
    (reply,) = icmp.take_packets()
    assert IPv6(reply).src == str(US6)
    icmp.receive(bytes(IP(src="0.0.0.0", dst=str(US4)) / ICMP()), 0)
    icmp.receive(bytes(IPv6(src="::", dst=str(US6)) / ICMPv6EchoRequest()), 0)
    assert icmp.take_packets() == []
    quiet = Icmp(IcmpConfig(echo_ignore_all=True))
    quiet.receive(bytes(IP(src=str(PEER4), dst=str(US4)) / ICMP()), 0)
    assert quiet.take_packets() == []


def test_echo_reply_is_an_event() -> None:
    icmp = Icmp()
    event = icmp.receive(
        bytes(IP(src=str(PEER4), dst=str(US4), ttl=61) / ICMP(type=0, id=5, seq=6) / b"d"), 0
    )
    assert event == EchoReplyReceived(4, PEER4, US4, 5, 6, b"d", 61)


def test_malformed_is_counted() -> None:
    icmp = Icmp()
    bad = bytearray(bytes(IP(src=str(PEER4), dst=str(US4)) / ICMP() / b"abc"))
    bad[-1] ^= 1
    assert icmp.receive(bytes(bad), 0) is None
    assert icmp.receive(b"", 0) is None
    assert icmp.stats.drops[IcmpDrop.MALFORMED] == 2


# --- errors out ---------------------------------------------------------------------------


def udp4(size: int = 20, **ip: object) -> bytes:
    fields = {"src": str(PEER4), "dst": str(US4)} | ip
    return bytes(IP(**fields) / UDP(sport=4000, dport=5000) / bytes(size))


def udp6(size: int = 20, **ip: object) -> bytes:
    fields = {"src": str(PEER6), "dst": str(US6)} | ip
    return bytes(IPv6(**fields) / UDP(sport=4000, dport=5000) / bytes(size))


def test_port_unreachable_quotes_the_datagram() -> None:
    offending = udp4()
    packet = Icmp().error(K.PORT_UNREACHABLE, offending, US4, 0)
    assert packet is not None
    parsed = IP(packet)
    assert (parsed.src, parsed.dst, parsed.proto) == (str(US4), str(PEER4), 1)
    assert (parsed[ICMP].type, parsed[ICMP].code) == (3, 3)
    assert bytes(parsed[ICMP].payload) == offending
    assert parsed[UDPerror].dport == 5000
    assert checksums_ok(packet)


def test_ipv4_quote_is_cut_at_576_bytes() -> None:
    offending = udp4(1400)
    packet = Icmp().error(K.HOST_UNREACHABLE, offending, US4, 0)
    assert packet is not None and len(packet) == 576
    assert packet[28:] == offending[:548]
    assert (IP(packet)[ICMP].type, IP(packet)[ICMP].code) == (3, 1)


def test_ipv6_quote_is_cut_at_1280_bytes() -> None:
    offending = udp6(1400)
    packet = Icmp().error(K.PORT_UNREACHABLE, offending, US6, 0)
    assert packet is not None and len(packet) == 1280
    parsed = IPv6(packet)
    assert (parsed[ICMPv6DestUnreach].type, parsed[ICMPv6DestUnreach].code) == (1, 4)
    assert packet[48:] == offending[:1232]
    sent = parsed[ICMPv6DestUnreach].cksum
    del parsed[ICMPv6DestUnreach].cksum
    assert IPv6(bytes(parsed))[ICMPv6DestUnreach].cksum == sent


def test_fragmentation_needed_and_packet_too_big_carry_the_mtu() -> None:
    icmp = Icmp()
    v4 = icmp.error(K.PACKET_TOO_BIG, udp4(1400, flags="DF"), US4, 0, mtu=1280)
    assert v4 is not None
    assert (IP(v4)[ICMP].type, IP(v4)[ICMP].code, IP(v4)[ICMP].nexthopmtu) == (3, 4, 1280)
    v6 = icmp.error(K.PACKET_TOO_BIG, udp6(1400), US6, 0, mtu=1300)
    assert v6 is not None and IPv6(v6)[ICMPv6PacketTooBig].mtu == 1300


def test_time_exceeded_and_parameter_problem() -> None:
    icmp = Icmp()
    v4 = icmp.error(K.REASSEMBLY_TIMEOUT, udp4(), US4, 0)
    assert v4 is not None and (IP(v4)[ICMP].type, IP(v4)[ICMP].code) == (11, 1)
    v6 = icmp.error(K.TTL_EXCEEDED, udp6(), US6, 0)
    assert v6 is not None and IPv6(v6)[ICMPv6TimeExceeded].code == 0
    bad = icmp.error(K.PARAMETER_PROBLEM, udp4(), US4, 0, pointer=9)
    assert bad is not None and (IP(bad)[ICMP].type, IP(bad)[ICMP].ptr) == (12, 9)


def test_ipv6_protocol_unreachable_points_at_the_next_header_field() -> None:
    icmp = Icmp()
    plain = bytes(IPv6(src=str(PEER6), dst=str(US6), nh=253) / (b"x" * 8))
    packet = icmp.error(K.PROTOCOL_UNREACHABLE, plain, US6, 0)
    assert packet is not None
    problem = IPv6(packet)[ICMPv6ParamProblem]
    assert (problem.code, problem.ptr) == (1, 6)
    chained = bytes(IPv6(src=str(PEER6), dst=str(US6)) / IPv6ExtHdrDestOpt(nh=253) / (b"y" * 8))
    packet = icmp.error(K.PROTOCOL_UNREACHABLE, chained, US6, 0)
    assert packet is not None and IPv6(packet)[ICMPv6ParamProblem].ptr == 40


@pytest.mark.parametrize(
    ("offending", "reason", "kwargs"),
    [
        (
            bytes(IP(src=str(PEER4), dst=str(US4)) / ICMP(type=3, code=3) / udp4()),
            IcmpDrop.ABOUT_ICMP_ERROR,
            {},
        ),
        (bytes(IP(src=str(PEER4), dst=str(US4)) / ICMP(type=42)), IcmpDrop.ABOUT_ICMP_ERROR, {}),
        (
            bytes(IP(src=str(PEER4), dst=str(US4), frag=10) / (b"x" * 16)),
            IcmpDrop.ABOUT_FRAGMENT,
            {},
        ),
        (udp4(dst="224.0.0.9"), IcmpDrop.ABOUT_GROUP, {}),
        (udp4(dst="255.255.255.255"), IcmpDrop.ABOUT_GROUP, {}),
        (udp4(dst="198.18.0.255"), IcmpDrop.ABOUT_GROUP, {"to_broadcast": True}),
        (udp4(), IcmpDrop.ABOUT_GROUP, {"link_multicast": True}),
        (udp4(src="0.0.0.0"), IcmpDrop.ABOUT_BAD_SOURCE, {}),
        (udp4(src="224.0.0.1"), IcmpDrop.ABOUT_BAD_SOURCE, {}),
        (udp4(src="240.0.0.1"), IcmpDrop.ABOUT_BAD_SOURCE, {}),
        (udp4(src="127.0.0.1"), IcmpDrop.ABOUT_BAD_SOURCE, {}),
    ],
)
def test_ipv4_errors_that_must_not_be_sent(
    offending: bytes, reason: IcmpDrop, kwargs: dict[str, bool]
) -> None:
    icmp = Icmp()
    assert icmp.error(K.PORT_UNREACHABLE, offending, US4, 0, **kwargs) is None
    assert icmp.stats.drops[reason] == 1


def test_ipv6_errors_that_must_not_be_sent() -> None:
    icmp = Icmp()
    error = bytes(IPv6(src=str(PEER6), dst=str(US6)) / ICMPv6DestUnreach() / udp6())
    redirect = bytes(IPv6(src=str(PEER6), dst=str(US6)) / ICMPv6EchoRequest())
    redirect = redirect[:40] + bytes([137]) + redirect[41:]
    later = bytes(
        IPv6(src=str(PEER6), dst=str(US6)) / IPv6ExtHdrFragment(offset=3, nh=17) / bytes(16)
    )
    assert icmp.error(K.PORT_UNREACHABLE, error, US6, 0) is None
    assert icmp.error(K.PORT_UNREACHABLE, redirect, US6, 0) is None
    assert icmp.error(K.PORT_UNREACHABLE, later, US6, 0) is None
    assert icmp.error(K.PORT_UNREACHABLE, udp6(dst="ff02::1"), US6, 0) is None
    assert icmp.error(K.PORT_UNREACHABLE, udp6(), US6, 0, link_multicast=True) is None
    assert icmp.error(K.PORT_UNREACHABLE, udp6(src="::"), US6, 0) is None
    drops = icmp.stats.drops
    assert drops[IcmpDrop.ABOUT_ICMP_ERROR] == 2
    assert drops[IcmpDrop.ABOUT_FRAGMENT] == 1
    assert drops[IcmpDrop.ABOUT_GROUP] == 2
    assert drops[IcmpDrop.ABOUT_BAD_SOURCE] == 1
    # RFC 4443 2.4(e.3): Packet Too Big may answer a multicast destination.
    assert icmp.error(K.PACKET_TOO_BIG, udp6(1400, dst="ff0e::1"), US6, 0, mtu=1280) is not None
    # An informational ICMPv6 message may be answered.
    echo = bytes(IPv6(src=str(PEER6), dst=str(US6)) / ICMPv6EchoRequest())
    assert icmp.error(K.PARAMETER_PROBLEM, echo, US6, 0) is not None


def test_rate_limit_per_destination_and_overall() -> None:
    icmp = Icmp()
    sent = [icmp.error(K.PORT_UNREACHABLE, udp4(), US4, 0) is not None for _ in range(10)]
    # A new destination starts with 6 x icmp_ratelimit of credit (XRLIM_BURST_FACTOR).
    assert sent == [True] * 6 + [False] * 4
    assert icmp.stats.drops[IcmpDrop.RATE_LIMITED] == 4
    assert icmp.error(K.PORT_UNREACHABLE, udp4(), US4, NS_PER_S - 1) is None
    assert icmp.error(K.PORT_UNREACHABLE, udp4(), US4, NS_PER_S) is not None
    # Fragmentation needed is never limited.
    for _ in range(20):
        assert icmp.error(K.PACKET_TOO_BIG, udp4(), US4, NS_PER_S, mtu=1280) is not None
    overall = Icmp()
    got = sum(
        overall.error(K.PORT_UNREACHABLE, udp4(src=f"198.18.1.{n}"), US4, 0) is not None
        for n in range(80)
    )
    assert got == 50  # icmp_msgs_burst
    later = sum(
        overall.error(K.PORT_UNREACHABLE, udp4(src=f"198.18.2.{n}"), US4, 10 * NS_PER_MS)
        is not None
        for n in range(80)
    )
    assert later == 10  # 1000 per second for 10 ms


# --- errors in ------------------------------------------------------------------------------


def our_udp4(size: int = 20) -> IP:
    return IP(src=str(US4), dst=str(PEER4)) / UDP(sport=5555, dport=53) / bytes(size)


def test_port_unreachable_names_the_flow() -> None:
    icmp = Icmp()
    message = bytes(IP(src=str(PEER4), dst=str(US4)) / ICMP(type=3, code=3) / bytes(our_udp4()))
    event = icmp.receive(message, 0)
    assert isinstance(event, IcmpErrorReceived)
    assert (event.kind, event.errno, event.fatal) == (K.PORT_UNREACHABLE, errno.ECONNREFUSED, True)
    flow = event.flow
    assert (flow.version, flow.protocol, flow.src, flow.dst) == (4, 17, US4, PEER4)
    assert (flow.src_port, flow.dst_port) == (5555, 53)
    assert event.sender == PEER4 and event.mtu is None


def test_truncated_quotes_and_odd_codes() -> None:
    icmp = Icmp()
    short = bytes(our_udp4())[:24]
    assert (
        icmp.receive(bytes(IP(src=str(PEER4), dst=str(US4)) / ICMP(type=3, code=3) / short), 0)
        is None
    )
    assert icmp.stats.drops[IcmpDrop.TRUNCATED_QUOTE] == 1
    # Only the IP header and 8 bytes (RFC 792's minimum) still give the ports.
    minimal = bytes(our_udp4())[:28]
    event = icmp.receive(
        bytes(IP(src=str(PEER4), dst=str(US4)) / ICMP(type=11, code=0) / minimal), 0
    )
    assert isinstance(event, IcmpErrorReceived)
    assert (event.kind, event.errno, event.fatal) == (K.TTL_EXCEEDED, errno.EHOSTUNREACH, False)
    assert event.flow.dst_port == 53


def test_tcp_and_echo_quotes() -> None:
    icmp = Icmp()
    tcp = bytes(IP(src=str(US4), dst=str(PEER4)) / TCP(sport=40000, dport=80, seq=12345))
    event = icmp.receive(bytes(IP(src=str(PEER4), dst=str(US4)) / ICMP(type=3, code=1) / tcp), 0)
    assert isinstance(event, IcmpErrorReceived)
    assert (event.flow.protocol, event.flow.src_port, event.flow.dst_port) == (6, 40000, 80)
    assert event.transport[4:8] == (12345).to_bytes(4, "big")  # TCP checks its sequence number
    echo = bytes(IPv6(src=str(US6), dst=str(PEER6)) / ICMPv6EchoRequest(id=77, seq=3))
    event = icmp.receive(
        bytes(IPv6(src=str(PEER6), dst=str(US6)) / ICMPv6DestUnreach(code=3) / echo), 0
    )
    assert isinstance(event, IcmpErrorReceived)
    assert (event.kind, event.flow.echo_ident, event.flow.echo_seq) == (K.HOST_UNREACHABLE, 77, 3)


def test_path_mtu_is_learned_with_floors() -> None:
    icmp = Icmp()
    big = bytes(IP(src=str(US4), dst=str(PEER4), flags="DF") / UDP() / bytes(1400))
    event = icmp.receive(
        bytes(IP(src="198.18.0.254", dst=str(US4)) / ICMP(type=3, code=4, nexthopmtu=1400) / big), 0
    )
    assert isinstance(event, IcmpErrorReceived) and event.mtu == 1400
    assert event.kind is K.PACKET_TOO_BIG and event.errno == errno.EMSGSIZE
    assert icmp.pmtu.get(PEER4, 1500, 0) == 1400
    # Never raised by a message; floored at 552.
    raised = icmp.receive(
        bytes(IP(src="198.18.0.254", dst=str(US4)) / ICMP(type=3, code=4, nexthopmtu=1450) / big), 0
    )
    assert isinstance(raised, IcmpErrorReceived) and raised.mtu is None
    icmp.receive(
        bytes(IP(src="198.18.0.254", dst=str(US4)) / ICMP(type=3, code=4, nexthopmtu=68) / big), 0
    )
    assert icmp.pmtu.get(PEER4, 1500, 0) == 552
    big6 = bytes(IPv6(src=str(US6), dst=str(PEER6)) / UDP() / bytes(1400))
    event = icmp.receive(
        bytes(IPv6(src="fd00::fe", dst=str(US6)) / ICMPv6PacketTooBig(mtu=1000) / big6), 0
    )
    assert isinstance(event, IcmpErrorReceived) and event.mtu == 1280
    assert icmp.pmtu.get(PEER6, 1500, 0) == 1280


def test_our_errors_parse_back_to_the_flow() -> None:
    sender, receiver = Icmp(), Icmp()
    offending = bytes(IPv6(src=str(US6), dst=str(PEER6)) / UDP(sport=1111, dport=2222) / bytes(50))
    packet = sender.error(K.PORT_UNREACHABLE, offending, PEER6, 0)
    assert packet is not None
    event = receiver.receive(packet, 0)
    assert isinstance(event, IcmpErrorReceived)
    assert (event.flow.src, event.flow.dst, event.flow.src_port, event.flow.dst_port) == (
        US6,
        PEER6,
        1111,
        2222,
    )
    assert (event.kind, event.errno, event.fatal) == (K.PORT_UNREACHABLE, errno.ECONNREFUSED, True)


@settings(max_examples=80, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    size=st.integers(4, 3000),
    protocol=st.sampled_from([6, 17, 253]),
    kind=st.sampled_from(
        [K.PORT_UNREACHABLE, K.HOST_UNREACHABLE, K.TTL_EXCEEDED, K.PACKET_TOO_BIG]
    ),
)
def test_any_error_fits_quotes_a_prefix_and_round_trips(
    version: int, size: int, protocol: int, kind: IcmpErrorKind
) -> None:
    payload = (1234).to_bytes(2, "big") + (80).to_bytes(2, "big") + bytes(size)
    if version == 4:
        offending = bytes(IP(src=str(PEER4), dst=str(US4), proto=protocol) / payload)
        packet = Icmp().error(kind, offending, US4, 0, mtu=1280)
        limit, header = 576, 28
    else:
        offending = bytes(IPv6(src=str(PEER6), dst=str(US6), nh=protocol) / payload)
        packet = Icmp().error(kind, offending, US6, 0, mtu=1280)
        limit, header = 1280, 48
    assert packet is not None
    assert len(packet) == min(limit, header + len(offending))
    assert packet[header:] == offending[: len(packet) - header]
    assert checksums_ok(packet) if version == 4 else True
    event = Icmp().receive(packet, 0)
    assert isinstance(event, IcmpErrorReceived)
    assert (event.flow.src, event.flow.protocol) == ((PEER4 if version == 4 else PEER6), protocol)
    if protocol != 253:
        assert (event.flow.src_port, event.flow.dst_port) == (1234, 80)
    assert event.kind is kind


def test_parse_quoted_refuses_garbage() -> None:
    assert parse_quoted(4, b"\x45") is None
    assert parse_quoted(4, b"\x60" + bytes(30)) is None
    assert parse_quoted(6, bytes(IP() / UDP())) is None
    flow = parse_quoted(
        6,
        bytes(IPv6(src=str(US6), dst=str(PEER6)) / IPv6ExtHdrDestOpt() / UDP(sport=9, dport=10))[
            :50
        ],
    )
    assert flow is not None and flow.src_port is None  # the quote ends inside the chain
