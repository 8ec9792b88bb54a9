"""A SYN flood on a SoftNic wire: the server answers with SYN cookies and keeps no state.

200,000 SYNs from random sources in 198.19.0.0/16 (through the client's router,
198.18.0.1) go to the server's listening port as fast as the test can post them,
while a legitimate client connects and sends 10 MB. The server's SoftNic has
a SYN rate limit of one a second per destination, so from the second SYN on
every SYN carries the verdict SYN_COOKIE, and the legitimate client's connection
is opened from its cookie too. The client's SoftNic drops the 200,000 SYN,ACKs
that come back for the spoofed sources with a classification rule (counted per
rule). The SYN count is fixed; the rate is not asserted.
"""

from __future__ import annotations

import os
import random
import time
from ipaddress import IPv4Address, ip_address

from netoffload.device.softnic import SoftNic, softnic_pair
from netoffload.loop import StackLoop
from netoffload.offload import Packet
from netoffload.stack.stack import Stack
from netoffload.stack.tcp.state import TcpState
from tests.stack.flood import syn_flood

SYNS = 200_000
PORT = 5200
BACKLOG = 64
TRANSFER = 10_000_000
CHUNK = 512
#: Half-open and established connections the server may hold at any time.
FLOW_BOUND = 2 * BACKLOG + 2


def test_a_syn_flood_leaves_no_state_and_a_client_still_gets_through() -> None:
    with softnic_pair(names=("flood-a", "flood-b")) as (nic_a, nic_b):
        client_stack = Stack(rng=random.Random(1))
        server_stack = Stack(rng=random.Random(2))
        client_stack.add_interface(nic_a, ["198.18.0.1/24"])
        server_stack.add_interface(nic_b, ["198.18.0.2/24"], gateways=["198.18.0.1"])
        nic_b.rules("add dos limit syn 1 burst 1")
        drop_rule = nic_a.rules("add flow-type tcp4 dst-ip 198.19.0.0/16 action drop")["added"]
        flood = syn_flood(
            SYNS,
            src_mac=nic_a.mac,
            dst_mac=nic_b.mac,
            source_net=IPv4Address("198.19.0.0"),
            dst=IPv4Address("198.18.0.2"),
            dport=PORT,
            seed=10,
        )
        data = os.urandom(TRANSFER)
        (listener,) = server_stack.tcp_listen(PORT, backlog=BACKLOG)
        loop_a, loop_b = StackLoop(client_stack), StackLoop(server_stack)
        posted = 0
        client = None
        server = None
        sent = 0
        got = bytearray()
        most_half_open = most_flows = 0
        started = time.monotonic()
        end = started + 300
        while len(got) < TRANSFER or posted < SYNS:
            assert time.monotonic() < end, (posted, len(got), listener.stats())
            if posted < SYNS:
                rows = flood[posted : posted + CHUNK]
                posted += nic_a.send([Packet(memoryview(row)) for row in rows])
            if client is None and posted >= SYNS // 10:
                client = client_stack.tcp_connect(
                    ip_address("198.18.0.2"), PORT, time.monotonic_ns()
                )
            loop_a.step(0.0)
            loop_b.step(0.0)
            most_half_open = max(most_half_open, listener.syn_queue_len())
            most_flows = max(most_flows, len(server_stack.tcp.flows))
            if server is None:
                server = server_stack.tcp_accept([listener])
            if client is not None and client.conn.state is TcpState.ESTABLISHED:
                sent += client.conn.send(memoryview(data)[sent : sent + (1 << 20)])
            if server is not None:
                while server.conn.readable():
                    got.extend(server.conn.recv(1 << 20))
        flood_s = time.monotonic() - started
        assert bytes(got) == data
        stats = listener.stats()
        # Every SYN was answered; all but the few the rate let through (one a second) with a
        # cookie, and for those no state was kept.
        assert stats["syn_cookies_sent"] + stats.get("syns", 0) >= SYNS
        assert stats.get("syns", 0) < 1000
        assert stats["syn_cookies_accepted"] >= 1  # the legitimate client's connection
        assert most_half_open <= BACKLOG
        assert most_flows <= FLOW_BOUND
        # The device marked them, counted them, and the client's NIC dropped the answers.
        nic_b.stats()
        marked = nic_b.steering_counters()["syn_cookies"]
        assert marked <= stats["syn_cookies_sent"]
        assert marked + stats.get("syns", 0) + stats.get("syn_queue_overflows", 0) >= SYNS
        rules = {r["id"]: r for r in nic_a.rules("list")["rules"] if r["table"] == "classify"}
        # (the last answers may still be on their way when the transfer ends)
        assert rules[drop_rule]["drops"] >= SYNS // 2
        assert nic_a.stats().drops["rule_drop"] == rules[drop_rule]["drops"]
        assert isinstance(nic_a, SoftNic)
        print(f"{SYNS} SYNs and {TRANSFER} bytes in {flood_s:.1f} s ({SYNS / flood_s:,.0f} SYN/s)")
