"""RSS: the Toeplitz hash against the specification's verification values, per frame and per batch.

Vectors: Microsoft, "Verifying the RSS Hash Calculation" (Windows driver
documentation, RSS specification), key and tables as published there; the same
tables are in DPDK's app/test/test_thash.c.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1Q, Ether

from netoffload.engine.rss import (
    MICROSOFT_KEY,
    Rss,
    byte_tables,
    default_table,
    hash_input_ipv4,
    hash_input_ipv6,
    toeplitz_hash,
)
from netoffload.offload.caps import RssHashTypes
from netoffload.offload.extension import HashReport

# (destination, destination port, source, source port, hash of the addresses, with the ports)
IPV4_VECTORS = [
    ("161.142.100.80", 1766, "66.9.149.187", 2794, 0x323E8FC2, 0x51CCC178),
    ("65.69.140.83", 4739, "199.92.111.2", 14230, 0xD718262A, 0xC626B0EA),
    ("12.22.207.184", 38024, "24.19.198.95", 12898, 0xD2D0A5DE, 0x5C2B394A),
    ("209.142.163.6", 2217, "38.27.205.30", 48228, 0x82989176, 0xAFC7327F),
    ("202.188.127.2", 1303, "153.39.163.191", 44251, 0x5D1809C5, 0x10E828A2),
]
IPV6_VECTORS = [
    ("3ffe:2501:200:3::1", 1766, "3ffe:2501:200:1fff::7", 2794, 0x2CC18CD5, 0x40207D3D),
    ("ff02::1", 4739, "3ffe:501:8::260:97ff:fe40:efab", 14230, 0x0F0C461C, 0xDDE51BBF),
    (
        "fe80::200:f8ff:fe21:67cf",
        38024,
        "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
        44251,
        0x4B61E985,
        0x02D1FEEF,
    ),
]
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


@pytest.mark.parametrize(("dst", "dport", "src", "sport", "ip_only", "with_ports"), IPV4_VECTORS)
def test_ipv4_verification_values(
    dst: str, dport: int, src: str, sport: int, *, ip_only: int, with_ports: int
) -> None:
    assert toeplitz_hash(MICROSOFT_KEY, hash_input_ipv4(src, dst)) == ip_only
    assert toeplitz_hash(MICROSOFT_KEY, hash_input_ipv4(src, dst, (sport, dport))) == with_ports


@pytest.mark.parametrize(("dst", "dport", "src", "sport", "ip_only", "with_ports"), IPV6_VECTORS)
def test_ipv6_verification_values(
    dst: str, dport: int, src: str, sport: int, *, ip_only: int, with_ports: int
) -> None:
    assert toeplitz_hash(MICROSOFT_KEY, hash_input_ipv6(src, dst)) == ip_only
    assert toeplitz_hash(MICROSOFT_KEY, hash_input_ipv6(src, dst, (sport, dport))) == with_ports


def test_the_batch_path_gives_the_verification_values_from_frames() -> None:
    frames, want_hash, want_report = [], [], []
    for vectors, ip, tcp_report, udp_report, ip_report in (
        (IPV4_VECTORS, IP, HashReport.TCPV4, HashReport.UDPV4, HashReport.IPV4),
        (IPV6_VECTORS, IPv6, HashReport.TCPV6, HashReport.UDPV6, HashReport.IPV6),
    ):
        for dst, dport, src, sport, ip_only, with_ports in vectors:
            header = ETH / ip(src=src, dst=dst)
            frames += [
                bytes(header / TCP(sport=sport, dport=dport)),
                bytes(header / UDP(sport=sport, dport=dport)),
                bytes(header / (ICMP() if ip is IP else b"\x3b" * 8)),
            ]
            want_hash += [with_ports, with_ports, ip_only]
            want_report += [tcp_report, udp_report, ip_report]
    rss = Rss(queues=4)
    got = rss.hash_frames(frames)
    assert got.hash.tolist() == want_hash
    assert got.report.tolist() == [int(r) for r in want_report]
    table = default_table(4)
    assert got.queue.tolist() == [table[h % len(table)] for h in want_hash]


def test_hash_types_that_are_off_fall_back_to_addresses_or_to_nothing() -> None:
    dst, dport, src, sport, ip_only, with_ports = IPV4_VECTORS[0]
    dst6, _, src6, _, ip6_only, _ = IPV6_VECTORS[0]
    frames = [
        bytes(ETH / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport)),
        bytes(ETH / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport)),
        bytes(ETH / IPv6(src=src6, dst=dst6) / UDP(sport=sport, dport=dport)),
        bytes(ETH / ARP()),
    ]
    rss = Rss(hash_types=RssHashTypes.IPV4 | RssHashTypes.UDP_IPV4, default_queue=3, queues=2)
    got = rss.hash_frames(frames)
    assert got.hash.tolist() == [ip_only, with_ports, 0, 0]
    assert got.report.tolist() == [HashReport.IPV4, HashReport.UDPV4, 0, 0]
    assert got.queue.tolist()[2:] == [3, 3]
    rss6 = Rss(hash_types=RssHashTypes.IPV6)
    assert rss6.hash_frames(frames[2:3]).hash.tolist() == [ip6_only]


def test_fragments_and_tagged_frames_hash_on_what_they_carry() -> None:
    dst, dport, src, sport, ip_only, with_ports = IPV4_VECTORS[1]
    dst6, _, src6, _, ip6_only, _ = IPV6_VECTORS[1]
    frames = [
        bytes(ETH / IP(src=src, dst=dst, flags="MF") / TCP(sport=sport, dport=dport)),
        bytes(ETH / IP(src=src, dst=dst, frag=10) / (b"x" * 20)),
        bytes(ETH / IPv6(src=src6, dst=dst6) / IPv6ExtHdrFragment(m=1) / UDP(sport=1, dport=2)),
        bytes(ETH / Dot1Q(vlan=5) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport)),
        bytes(ETH / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport))[:40],  # cut TCP
    ]
    got = Rss().hash_frames(frames)
    assert got.hash.tolist() == [ip_only, ip_only, ip6_only, with_ports, ip_only]
    assert got.report.tolist() == [1, 1, 4, 2, 1]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=36, max_size=36), min_size=1, max_size=8),
    st.binary(min_size=40, max_size=52),
)
def test_the_byte_tables_equal_the_bit_loop(rows: list[bytes], key: bytes) -> None:
    rss = Rss(key=key)
    data = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), 36)
    for width in (8, 12, 32, 36):
        got = rss.hash_rows(data[:, :width]).tolist()
        assert got == [toeplitz_hash(key, r[:width]) for r in rows]


def test_byte_tables_are_the_hash_of_one_byte() -> None:
    tables = byte_tables(MICROSOFT_KEY)
    for j, v in ((0, 1), (5, 0x80), (35, 0xA5)):
        data = bytes(j) + bytes([v]) + bytes(35 - j)
        assert int(tables[j, v]) == toeplitz_hash(MICROSOFT_KEY, data)


@settings(max_examples=100, deadline=None)
@given(
    family=st.sampled_from(["v4", "v6"]),
    l4=st.sampled_from([TCP, UDP]),
    a=st.integers(0, 2**32 - 1),
    b=st.integers(0, 2**32 - 1),
    pa=st.integers(0, 65535),
    pb=st.integers(0, 65535),
)
def test_symmetric_hashing_puts_both_directions_on_one_queue(
    family: str, l4: type, a: int, b: int, *, pa: int, pb: int
) -> None:
    if family == "v4":
        x, y = f"198.18.{a >> 8 & 255}.{a & 255}", f"198.19.{b >> 8 & 255}.{b & 255}"
        ip: type = IP
    else:
        x, y = f"fd00::{a >> 16:x}:{a & 0xFFFF:x}", f"fd00::{b >> 16:x}:{b & 0xFFFF:x}"
        ip = IPv6
    forward = bytes(ETH / ip(src=x, dst=y) / l4(sport=pa, dport=pb))
    backward = bytes(ETH / ip(src=y, dst=x) / l4(sport=pb, dport=pa))
    got = Rss(symmetric=True, queues=8).hash_frames([forward, backward])
    assert got.hash[0] == got.hash[1]
    assert got.queue[0] == got.queue[1]
    assert got.report[0] == got.report[1] != 0


def test_symmetric_hash_is_the_hash_of_the_sorted_input() -> None:
    dst, dport, src, sport, _, _ = IPV4_VECTORS[0]  # 161.142.100.80 > 66.9.149.187
    frame = bytes(ETH / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport))
    got = Rss(symmetric=True).hash_frames([frame])
    want = toeplitz_hash(
        MICROSOFT_KEY, hash_input_ipv4(src, dst, (min(sport, dport), max(sport, dport)))
    )
    assert got.hash.tolist() == [want]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": bytes(39)}, "key"),
        ({"table": [0, 1, 2]}, "power of two"),
        ({"table": []}, "power of two"),
        ({"table": [0, -1]}, "numbered"),
    ],
)
def test_impossible_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rss(**kwargs)  # type: ignore[arg-type]


def test_a_short_key_cannot_hash_a_long_input() -> None:
    with pytest.raises(ValueError):
        toeplitz_hash(bytes(12), bytes(9))
