"""A SYN flood on a SoftNic wire: the server answers with SYN cookies and keeps no state.

200,000 SYNs from random sources go to the server's listening port as fast as
the test can post them, while a legitimate client connects and sends 10 MB
(``netoffload.bench.synflood``: the server's SoftNic limits SYNs to one a
second per destination, so nearly every SYN carries the verdict SYN_COOKIE, the
legitimate client's included). The SYN count is fixed; the rate is reported by
``netoffload bench synflood``, not asserted.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from netoffload.bench.synflood import flood, syn_flood
from netoffload.wire import MacAddress

SYNS = 200_000
TRANSFER = 10_000_000


def test_the_flood_frames_have_right_checksums() -> None:
    rows = syn_flood(
        16,
        src_mac=MacAddress(b"\x02\x00\x00\x00\x00\x01"),
        dst_mac=MacAddress(b"\x02\x00\x00\x00\x00\x02"),
        source_net=IPv4Address("198.19.0.0"),
        dst=IPv4Address("198.18.0.2"),
        dport=5200,
        seed=3,
    )
    sources = set()
    for row in rows:
        frame = Ether(row.tobytes())
        ip_sum, tcp_sum = frame[IP].chksum, frame[TCP].chksum
        del frame[IP].chksum, frame[TCP].chksum
        again = Ether(bytes(frame))  # scapy recomputes both
        assert (ip_sum, tcp_sum) == (again[IP].chksum, again[TCP].chksum)
        assert again[TCP].flags == "S" and again[IP].src.startswith("198.19.")
        sources.add(again[IP].src)
    assert len(sources) > 8


def test_a_syn_flood_leaves_no_state_and_a_client_still_gets_through() -> None:
    result = flood(SYNS, TRANSFER, timeout_s=300)
    assert result.syns == SYNS
    assert result.transfer_bytes == TRANSFER and result.transfer_intact
    stats = result.listener
    # Every SYN was answered; all but the few the rate let through (one a second) with a
    # cookie, and for those no state was kept.
    assert stats["syn_cookies_sent"] + stats.get("syns", 0) >= SYNS
    assert stats.get("syns", 0) < 1000
    assert stats["syn_cookies_accepted"] >= 1  # the legitimate client's connection
    assert result.half_open_max <= result.backlog
    assert result.flows_max <= 2 * result.backlog + 2
    # Memory stays bounded: the frames, the data and the stacks, not state per SYN (the
    # 200,000 SYNs themselves are 11.6 MB, the transfer 10 MB twice).
    assert result.rss_growth_bytes < 256 << 20
    # The device marked them; the client's NIC dropped the answers to the spoofed sources
    # with its rule (the last may still be on their way when the transfer ends).
    marked = result.syns_marked_by_device
    assert marked <= stats["syn_cookies_sent"]
    assert marked + stats.get("syns", 0) + stats.get("syn_queue_overflows", 0) >= SYNS
    assert result.answers_dropped_by_rule >= SYNS // 2
    assert result.client_rule_drops == result.answers_dropped_by_rule
