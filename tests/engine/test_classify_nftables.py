"""Classification verdicts against nftables on a veth: the kernel as the oracle.

Random rules that nftables can say too (addresses and prefixes, protocol, ports
and port ranges, TCP flags, DSCP, MACs, EtherType) become one netdev ingress
chain on a veth in a private namespace, each rule ``counter accept`` in the
same order, so that each counter counts the frames that rule decided: first
match wins, as in ours. Random frames are sent into the veth's peer with an
AF_PACKET socket, and every rule's counter must equal our classifier's hits.

The frames are ones on which the two agree on what a field is: untagged,
with consistent length fields (nftables does not read the transport header of
a packet whose lengths it refuses), and not fragments: ours reads no
fragment's ports or TCP flags (so that every fragment of a datagram hashes and
classifies alike), while nftables reads a first fragment's transport header,
and the kernel here also reads a later fragment's data at the
transport header's offsets as if it were one.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from netoffload.engine.classify import (
    Action,
    AddressMatch,
    Classifier,
    Masked,
    Match,
    PortRange,
    Rule,
)
from netoffload.engine.fields import FrameBatch
from netoffload.netns import Netns

MACS = ["02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:01:01"]
ADDR4 = ["198.18.0.1", "198.18.0.200", "198.18.1.5", "198.19.255.1"]
ADDR6 = ["fd00::1", "fd00::1:0:0:1", "fd00:1::5", "fd12:3456::ffff"]
PORTS = [22, 53, 80, 443, 1024, 8080]
FLAGS = [0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01]
ROUNDS = 6
RULES = 12
FRAMES = 200
TABLE = """
table netdev nsocls {{
    chain ingress {{
        type filter hook ingress device "{dev}" priority 0; policy accept;
        ether saddr != {{ {macs} }} accept
{rules}
        counter comment "none"
    }}
}}
"""


def random_rule(rng: random.Random) -> tuple[Rule, str]:
    """A rule and the same rule in nftables words."""
    m: dict[str, object] = {}
    words: list[str] = []
    version = rng.choice([None, 4, 6])
    if rng.random() < 0.2:
        mac = rng.choice(MACS)
        m["src_mac"] = Masked.exact(int(mac.replace(":", ""), 16), 48)
        words.append(f"ether saddr {mac}")
    if version is None and rng.random() < 0.2:
        ethertype = rng.choice([0x0800, 0x86DD, 0x0806])
        m["ethertype"] = Masked.exact(ethertype, 16)
        words.append(f"ether type {ethertype:#06x}")
    if version is not None:
        family = "ip" if version == 4 else "ip6"
        m["ip_version"] = version
        words.append(f"meta protocol {family}")
        for side in ("src", "dst"):
            if rng.random() < 0.5:
                addr = rng.choice(ADDR4 if version == 4 else ADDR6)
                plen = rng.choice([8, 16, 24, 32] if version == 4 else [8, 16, 32, 64, 128])
                cond = AddressMatch.parse(f"{addr}/{plen}")
                m[side] = cond
                words.append(f"{family} {side[0]}addr {cond.address(cond.value)}/{plen}")
        if rng.random() < 0.2:
            dscp = rng.choice([0, 46, 10])
            m["dscp"] = Masked.exact(dscp, 6)
            words.append(f"{family} dscp {dscp}")
    proto = rng.choice([None, None, 6, 17, 1 if version == 4 else 58])
    if proto is not None:
        m["proto"] = Masked.exact(proto, 8)
        words.append(f"meta l4proto {proto}")
    if proto in (None, 6, 17) and rng.random() < 0.5:
        if proto is None:
            # Ports mean TCP or UDP to us; to nftables, any transport header.
            words.append("meta l4proto { tcp, udp }")
            m["sport"] = Masked(0, 0)  # a port condition that any port meets
            words.append("th sport & 0 == 0")
        for side in ("sport", "dport"):
            if rng.random() < 0.6:
                lo = rng.choice(PORTS)
                if rng.random() < 0.3:
                    hi = rng.choice([p for p in PORTS if p >= lo] + [65535])
                    m[side] = PortRange(lo, hi)
                    words.append(f"th {side} {lo}-{hi}")
                else:
                    m[side] = Masked.exact(lo, 16)
                    words.append(f"th {side} {lo}")
    if proto == 6 and rng.random() < 0.6:
        mask = rng.choice([0x12, 0x02, 0x3F, 0x17])
        value = rng.choice(FLAGS) & mask
        m["tcp_flags"] = Masked(value, mask)
        words.append(f"tcp flags & {mask:#04x} == {value:#04x}")
    if not words:
        return random_rule(rng)  # a rule that matches everything would shadow the rest
    return Rule(Match(**m), Action.deliver(0)), " ".join(words)  # type: ignore[arg-type]


def random_frame(rng: random.Random) -> bytes:
    eth = Ether(src=rng.choice(MACS), dst=rng.choice(MACS))
    kind = rng.choice(["tcp4", "udp4", "icmp4", "tcp6", "udp6", "icmp6", "arp"])
    tos = rng.choice([0, 46 << 2, 10 << 2])
    sport, dport = rng.choice(PORTS), rng.choice(PORTS)
    flags = rng.choice(FLAGS)
    if kind == "arp":
        return bytes(eth / ARP())
    if kind.endswith("4"):
        ip = IP(src=rng.choice(ADDR4), dst=rng.choice(ADDR4), tos=tos)
        if kind == "tcp4":
            return bytes(eth / ip / TCP(sport=sport, dport=dport, flags=flags) / b"payload")
        if kind == "udp4":
            return bytes(eth / ip / UDP(sport=sport, dport=dport) / b"payload")
        return bytes(eth / ip / ICMP() / b"payload")
    ip6 = IPv6(src=rng.choice(ADDR6), dst=rng.choice(ADDR6), tc=tos, nh=58)
    if kind == "tcp6":
        ip6.nh = 6
        return bytes(eth / ip6 / TCP(sport=sport, dport=dport, flags=flags) / b"payload")
    if kind == "udp6":
        ip6.nh = 17
        return bytes(eth / ip6 / UDP(sport=sport, dport=dport) / b"payload")
    return bytes(eth / ip6 / (b"\x80\x00" + bytes(10)))  # an ICMPv6 echo request


def _counters(ns: Netns) -> dict[str, int]:
    listing = json.loads(ns.exec("nft", "-j", "list", "table", "netdev", "nsocls"))
    out = {}
    for item in listing["nftables"]:
        rule = item.get("rule")
        if rule is None or "comment" not in rule:
            continue
        for expr in rule["expr"]:
            if "counter" in expr:
                out[rule["comment"]] = int(expr["counter"]["packets"])
    return out


@pytest.mark.privileged
def test_first_match_counts_equal_nftables_counters() -> None:
    rng = random.Random(2010)
    decided = 0
    with Netns() as ns:
        ns.add_veth("nsocls0", "nsocls1")
        ns.set_link("nsocls0", up=True)
        ns.set_link("nsocls1", up=True)
        with ns.entered():
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sock.bind(("nsocls0", 0))
        with sock:
            for _ in range(ROUNDS):
                # The most specific first, so that later rules still get frames to decide.
                pairs = sorted(
                    (random_rule(rng) for _ in range(RULES)), key=lambda p: -p[1].count(" ")
                )
                frames = [random_frame(rng) for _ in range(FRAMES)]
                classifier = Classifier()
                ids = [classifier.add(rule) for rule, _ in pairs]
                classifier.classify_batch(FrameBatch.from_frames(frames))
                lines = "\n".join(
                    f'        {words} counter accept comment "r{i}"'
                    for i, (_, words) in enumerate(pairs)
                )
                table = TABLE.format(dev="nsocls1", macs=", ".join(MACS), rules=lines)
                with ns.entered():
                    subprocess.run(["nft", "-f", "-"], input=table.encode(), check=True)
                try:
                    for frame in frames:
                        sock.send(frame)
                    deadline = time.monotonic() + 10
                    while sum((counts := _counters(ns)).values()) < len(frames):
                        assert time.monotonic() < deadline, counts
                        time.sleep(0.05)
                finally:
                    ns.exec("nft", "delete", "table", "netdev", "nsocls")
                ours = classifier.counters()
                want = {f"r{i}": ours[rid].hits for i, rid in enumerate(ids)}
                want["none"] = len(frames) - sum(want.values())
                assert counts == want, "\n".join(words for _, words in pairs)
                decided += len(frames) - want["none"]
    assert decided > ROUNDS * FRAMES // 4  # the rules met the frames often enough to tell
