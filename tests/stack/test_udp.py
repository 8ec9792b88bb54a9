"""UDP endpoints: bind rules, ephemeral ports, demultiplexing, queues, UDP_SEGMENT / UDP_GRO."""

from __future__ import annotations

import errno
import random
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from netoffload.engine.gro import coalesce
from netoffload.engine.gso import segment
from netoffload.offload.virtio import VirtioFlags, VirtioNetHdr
from netoffload.stack.icmp import Icmp, IcmpErrorKind
from netoffload.stack.udp import (
    DATAGRAM_OVERHEAD,
    Delivery,
    SegmentRun,
    UdpConfig,
    UdpError,
    UdpTable,
    plan_udp_segments,
    split_gro,
)
from netoffload.wire import EthernetRepr, EtherType, Ipv4Repr, MacAddress, UdpPacket, UdpRepr
from netoffload.wire.checksum import pseudo_header_sum
from netoffload.wire.ipv4 import IpProtocol

ANY4, ANY6 = IPv4Address("0.0.0.0"), IPv6Address("::")
US4, US4B, PEER4 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.9"), IPv4Address("198.18.0.2")
US6, PEER6 = IPv6Address("fd00::1"), IPv6Address("fd00::2")


def table(seed: int = 1, **config: int) -> UdpTable:
    return UdpTable(random.Random(seed), UdpConfig(**config))


def udp(
    payload: bytes, sport: int = 6000, dport: int = 5000, src: object = PEER4, dst: object = US4
) -> bytes:
    """A datagram (UDP header and payload) with its checksum, built by scapy."""
    if isinstance(src, IPv4Address):
        packet = IP(src=str(src), dst=str(dst)) / UDP(sport=sport, dport=dport) / payload
        return bytes(packet[UDP])
    packet = IPv6(src=str(src), dst=str(dst)) / UDP(sport=sport, dport=dport) / payload
    return bytes(packet[UDP])


def errno_of(call: object) -> int:
    with pytest.raises(UdpError) as err:
        call()  # type: ignore[operator]
    return err.value.errno


# --- binding ----------------------------------------------------------------------------


def test_bind_conflicts_are_eaddrinuse() -> None:
    t = table()
    a = t.open(4)
    assert t.bind(a, ANY4, 5000) == 5000
    b = t.open(4)
    assert errno_of(lambda: t.bind(b, US4, 5000)) == errno.EADDRINUSE
    assert errno_of(lambda: t.bind(b, ANY4, 5000)) == errno.EADDRINUSE
    assert t.bind(b, US4, 5001) == 5001
    v6 = t.open(6)
    assert t.bind(v6, ANY6, 5000) == 5000  # IPV6_V6ONLY: no clash with IPv4
    c, d = t.open(4), t.open(4)
    t.bind(c, US4, 7000)
    assert t.bind(d, US4B, 7000) == 7000  # two specific addresses do not overlap
    assert errno_of(lambda: t.bind(a, US4, 1)) == errno.EINVAL  # already bound
    assert errno_of(lambda: t.bind(t.open(4), US6, 1)) == errno.EAFNOSUPPORT
    assert errno_of(lambda: t.recv(999)) == errno.EBADF


def test_reuse_addr_needs_both() -> None:
    t = table()
    a = t.open(4, reuse_addr=True)
    t.bind(a, ANY4, 5353)
    plain = t.open(4)
    assert errno_of(lambda: t.bind(plain, ANY4, 5353)) == errno.EADDRINUSE
    b = t.open(4, reuse_addr=True)
    assert t.bind(b, ANY4, 5353) == 5353


def test_ephemeral_ports_are_random_in_linux_range() -> None:
    ports = set()
    for seed in range(20):
        t = table(seed)
        port = t.bind(t.open(4), ANY4, 0)
        assert 32768 <= port <= 60999
        ports.add(port)
    assert len(ports) > 15
    t = table(ephemeral_low=40000, ephemeral_high=40009)
    got = {t.bind(t.open(4), ANY4, 0) for _ in range(10)}
    assert got == set(range(40000, 40010))
    assert errno_of(lambda: t.bind(t.open(4), ANY4, 0)) == errno.EAGAIN


def test_table_is_bounded() -> None:
    t = table(max_endpoints=3)
    ids = [t.open(4) for _ in range(3)]
    assert errno_of(lambda: t.open(4)) == errno.EMFILE
    t.close(ids[0])
    t.open(6)
    assert len(t) == 3


# --- demultiplexing and delivery ---------------------------------------------------------


def test_connected_then_bound_address_then_wildcard() -> None:
    t = table()
    wildcard = t.open(4, reuse_addr=True)
    t.bind(wildcard, ANY4, 5000)
    specific = t.open(4, reuse_addr=True)
    t.bind(specific, US4, 5000)
    connected = t.open(4, reuse_addr=True)
    t.bind(connected, US4, 5000)
    t.connect(connected, PEER4, 6000)
    assert t.deliver(PEER4, US4, udp(b"a", 6000), verify_checksum=True) is Delivery.DELIVERED
    assert t.deliver(PEER4, US4, udp(b"b", 7000)) is Delivery.DELIVERED
    assert t.deliver(PEER4, US4B, udp(b"c", 6000, dst=US4B)) is Delivery.DELIVERED
    got = {ep: t.recv(ep) for ep in (connected, specific, wildcard)}
    assert {ep: bytes(d.payload) for ep, d in got.items() if d} == {
        connected: b"a",
        specific: b"b",
        wildcard: b"c",
    }
    datagram = got[connected]
    assert datagram is not None
    assert (datagram.src, datagram.src_port, datagram.dst, datagram.dst_port) == (
        PEER4,
        6000,
        US4,
        5000,
    )
    assert t.lookup(PEER4, 6000, US4, 5000) == connected


def test_message_boundaries_and_order() -> None:
    t = table()
    ep = t.open(6)
    t.bind(ep, US6, 5000)
    for payload in (b"one", b"", b"three" * 100):
        assert t.deliver(PEER6, US6, udp(payload, src=PEER6, dst=US6)) is Delivery.DELIVERED
    assert [bytes(d.payload) for d in iter(lambda: t.recv(ep), None)] == [
        b"one",
        b"",
        b"three" * 100,
    ]


def test_checksum_rules() -> None:
    t = table()
    ep4, ep6 = t.open(4), t.open(6)
    t.bind(ep4, ANY4, 5000)
    t.bind(ep6, ANY6, 5000)
    bad = bytearray(udp(b"payload"))
    bad[-1] ^= 0x55
    assert t.deliver(PEER4, US4, bytes(bad)) is Delivery.CHECKSUM
    assert t.deliver(PEER4, US4, bytes(bad), verify_checksum=False) is Delivery.DELIVERED
    no_sum = UdpRepr(6000, 5000).to_bytes(b"x", checksum=0)
    assert t.deliver(PEER4, US4, no_sum) is Delivery.DELIVERED  # allowed over IPv4
    assert t.deliver(PEER6, US6, no_sum) is Delivery.CHECKSUM  # not over IPv6 (RFC 8200 8.1)
    assert t.deliver(PEER4, US4, b"\x00\x01") is Delivery.MALFORMED
    assert t.stats.in_csum_errors == 2 and t.stats.in_errors == 3
    # Bytes after the UDP length (Ethernet padding) are not payload.
    padded = udp(b"abc") + bytes(5)
    t.deliver(PEER4, US4, padded)
    last = None
    while (d := t.recv(ep4)) is not None:
        last = d
    assert last is not None and bytes(last.payload) == b"abc"


def test_no_endpoint_gets_port_unreachable() -> None:
    t = table()
    datagram = udp(b"knock", 6000, 9)
    assert t.deliver(PEER4, US4, datagram) is Delivery.NO_ENDPOINT
    assert t.stats.no_ports == 1
    ip = Ipv4Repr(PEER4, US4, IpProtocol.UDP, len(datagram)).to_bytes(datagram)
    error = Icmp().error(IcmpErrorKind.PORT_UNREACHABLE, ip, US4, 0)
    assert error is not None
    parsed = IP(error)
    assert (parsed.type, parsed.code, parsed.dst) == (3, 3, str(PEER4))


def test_multicast_goes_to_every_matching_endpoint() -> None:
    t = table()
    a, b = t.open(4, reuse_addr=True), t.open(4, reuse_addr=True)
    t.bind(a, ANY4, 5353)
    t.bind(b, ANY4, 5353)
    group = IPv4Address("224.0.0.251")
    assert t.deliver(PEER4, group, udp(b"mdns", 5353, 5353, dst=group)) is Delivery.DELIVERED
    assert t.recv(a) is not None and t.recv(b) is not None
    bcast = IPv4Address("198.18.0.255")
    t.deliver(PEER4, bcast, udp(b"all", 68, 5353, dst=bcast), broadcast=True)
    assert t.queued(a)[0] == 1 and t.queued(b)[0] == 1


def test_receive_queue_is_bounded_like_linux() -> None:
    t = table()
    ep = t.open(4, rcvbuf_bytes=1000)
    t.bind(ep, ANY4, 5000)
    results = [t.deliver(PEER4, US4, udp(bytes(300))) for _ in range(10)]
    # Accepted while the queue holds at most rcvbuf: 0 -> 556 -> 1112, then refused.
    assert results.count(Delivery.DELIVERED) == 2
    assert results.count(Delivery.QUEUE_FULL) == 8
    count, held = t.queued(ep)
    assert count == 2 and held == 2 * (300 + DATAGRAM_OVERHEAD)
    assert t.stats.rcvbuf_errors == 8
    t.recv(ep)
    t.recv(ep)
    assert t.queued(ep) == (0, 0)
    assert t.deliver(PEER4, US4, udp(bytes(300))) is Delivery.DELIVERED
    # A flood of empty datagrams is bounded too.
    for _ in range(100):
        t.deliver(PEER4, US4, udp(b""))
    assert t.queued(ep)[1] <= 1000 + 65535 + DATAGRAM_OVERHEAD


def test_send_to_connect_disconnect() -> None:
    t = table()
    ep = t.open(4)
    assert errno_of(lambda: t.send_to(ep)) == errno.EDESTADDRREQ
    flow = t.send_to(ep, PEER4, 53)
    assert flow.local is None and 32768 <= flow.local_port <= 60999
    assert (flow.remote, flow.remote_port) == (PEER4, 53)
    assert t.local(ep) == (ANY4, flow.local_port)
    flow2 = t.connect(ep, PEER4, 54, local_address=US4)
    assert flow2.local == US4 and flow2.local_port == flow.local_port
    assert t.send_to(ep) == flow2
    assert t.remote(ep) == (PEER4, 54)
    t.disconnect(ep)
    assert t.remote(ep) is None and t.local(ep) == (ANY4, flow.local_port)
    assert errno_of(lambda: t.connect(ep, PEER6, 1)) == errno.EAFNOSUPPORT
    assert errno_of(lambda: t.connect(ep, PEER4, 0)) == errno.EINVAL
    assert t.stats.out_datagrams == 2
    fresh = t.open(6)
    t.connect(fresh, PEER6, 443)
    assert t.local(fresh) is not None
    assert t.close(fresh) == 0


# --- UDP_SEGMENT layout ------------------------------------------------------------------


def test_runs_of_equal_sizes_with_a_shorter_last() -> None:
    plan = plan_udp_segments([1400] * 3 + [100] + [1400] * 2, mtu=1500, ip_header_len=20)
    assert plan == [SegmentRun(0, 4, 1400, 4300), SegmentRun(4, 2, 1400, 2800)]
    # A longer payload after shorter ones starts a new run; a run of one is plain.
    plan = plan_udp_segments([500, 1000, 1000], mtu=1500, ip_header_len=20)
    assert plan == [SegmentRun(0, 1, 0, 500), SegmentRun(1, 2, 1000, 2000)]


def test_limits_of_a_super_datagram() -> None:
    plan = plan_udp_segments([100] * 100, mtu=1500, ip_header_len=20)
    assert [(r.count, r.gso_size) for r in plan] == [(64, 100), (36, 100)]
    # 65535 - 20 - 8 = 65507 payload bytes: 46 segments of 1400.
    plan = plan_udp_segments([1400] * 64, mtu=1500, ip_header_len=20)
    assert [r.count for r in plan] == [46, 18]
    six = plan_udp_segments([1400] * 64, mtu=1500, ip_header_len=40, ipv6=True)
    assert [r.count for r in six] == [46, 18]  # 65535 - 8 over IPv6 (no fixed header)
    # A segment must fit the MTU; empty payloads cannot be segments.
    plan = plan_udp_segments([1473, 1472, 0, 0], mtu=1500, ip_header_len=20)
    assert [(r.count, r.gso_size) for r in plan] == [(1, 0), (1, 0), (1, 0), (1, 0)]
    assert plan_udp_segments([], mtu=1500, ip_header_len=20) == []


def test_split_gro() -> None:
    assert [bytes(p) for p in split_gro(b"abcdefg", 3)] == [b"abc", b"def", b"g"]
    assert [bytes(p) for p in split_gro(b"abcdef", 3)] == [b"abc", b"def"]
    assert [bytes(p) for p in split_gro(b"", 3)] == [b""]
    with pytest.raises(ValueError):
        split_gro(b"abc", 0)


def super_frame(payloads: list[bytes], run: SegmentRun) -> bytes:
    """The Ethernet frame of one run: a UDP_L4 super-datagram's checksum field is partial."""
    data = b"".join(payloads[run.start : run.start + run.count])
    if run.gso_size:
        partial = pseudo_header_sum(US4, PEER4, IpProtocol.UDP, 8 + len(data))
        datagram = UdpRepr(5000, 6000).to_bytes(data, checksum=partial)
    else:  # a plain datagram goes out whole, checksum and all
        datagram = UdpRepr(5000, 6000).to_bytes(data, src=US4, dst=PEER4)
    ip = Ipv4Repr(US4, PEER4, IpProtocol.UDP, len(datagram), ident=7).to_bytes(datagram)
    mac = MacAddress.parse("02:00:00:00:00:01")
    return EthernetRepr(mac, mac, EtherType.IPV4).to_bytes(ip)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(
        st.one_of(st.sampled_from([0, 1, 100, 1400, 1472, 1473]), st.integers(0, 1600)),
        max_size=120,
    ),
    seed=st.integers(),
)
def test_gro_of_a_udp_segment_burst_gives_back_the_datagrams(sizes: list[int], seed: int) -> None:
    rng = random.Random(seed)
    payloads = [rng.randbytes(n) for n in sizes]
    plan = plan_udp_segments(sizes, mtu=1500, ip_header_len=20)
    # The runs cover the burst in order.
    assert [i for r in plan for i in range(r.start, r.start + r.count)] == list(range(len(sizes)))
    received = UdpTable(random.Random(0))
    ep = received.open(4)
    received.bind(ep, ANY4, 6000)
    for run in plan:
        run_payloads = payloads[run.start : run.start + run.count]
        assert run.payload_bytes == sum(map(len, run_payloads))
        if run.gso_size == 0:
            assert run.count == 1
            wire = [super_frame(payloads, run)]
        else:
            assert 1 < run.count <= 64 and run.gso_size + 28 <= 1500
            assert all(len(p) == run.gso_size for p in run_payloads[:-1])
            assert 0 < len(run_payloads[-1]) <= run.gso_size
            # The engine (Linux GSO semantics) cuts it into the burst's datagrams.
            hdr = VirtioNetHdr(
                flags=VirtioFlags.NEEDS_CSUM,
                gso_type=5,  # UDP_L4
                hdr_len=42,
                gso_size=run.gso_size,
                csum_start=34,
                csum_offset=6,
            )
            wire = segment(super_frame(payloads, run), hdr)
            assert [bytes(UdpPacket(f[34:]).payload) for f in wire] == run_payloads
        # ... and UDP_GRO on the receiving side gives one super-datagram per run back.
        for vnet, frame in coalesce(wire):
            datagram = frame[34:]
            delivery = received.deliver(
                US4, PEER4, datagram, verify_checksum=vnet.gso_size == 0, gso_size=vnet.gso_size
            )
            assert delivery is Delivery.DELIVERED
    got = [bytes(d.payload) for d in iter(lambda: received.recv(ep), None)]
    assert got == payloads
