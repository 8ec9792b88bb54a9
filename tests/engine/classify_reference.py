"""A deliberately slow classifier: one frame at a time, parsed with the wire views, rule by rule.

Written apart from ``engine.fields`` / ``engine.classify`` (no NumPy, no lookup
tables): the frame's layers are read with the ``wire`` views, each condition of
each rule is tested in plain Python, and the first rule that holds decides.
The meaning of a field whose layer is not intact follows ``engine.fields``'s
module doc, stated again here from the views' side.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from netoffload.engine.classify import Fate, Rule
from netoffload.wire import EthernetFrame, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket, WireError
from netoffload.wire.ipv6 import gso_extension_walk

NONE = -1


@dataclass
class Parsed:
    dst_mac: int
    src_mac: int
    vlan: int | None
    ethertype: int
    version: int | None = None
    src: IPv4Address | IPv6Address | None = None
    dst: IPv4Address | IPv6Address | None = None
    proto: int | None = None
    dscp: int | None = None
    fragment: bool = False
    sport: int | None = None
    dport: int | None = None
    tcp_flags: int | None = None


def parse(frame: bytes) -> Parsed | None:
    """The fields of ``frame``; ``None`` when its Ethernet header or VLAN tags are not whole."""
    if len(frame) < 14:
        return None
    eth = EthernetFrame(frame)
    try:
        tags = eth.vlan_tags
        ethertype = int(eth.ethertype)
        payload = bytes(eth.payload)
    except WireError:
        return None
    p = Parsed(
        dst_mac=int.from_bytes(eth.dst.octets, "big"),
        src_mac=int.from_bytes(eth.src.octets, "big"),
        vlan=tags[0].tci if tags else None,
        ethertype=ethertype,
    )
    l4: bytes | None = None
    if ethertype == 0x0800 and len(payload) >= 20:
        ip4 = Ipv4Packet(payload)
        if ip4.version == 4 and ip4.ihl >= 5 and ip4.header_len <= len(payload):
            p.version, p.src, p.dst = 4, ip4.src, ip4.dst
            p.proto, p.dscp = ip4.protocol, ip4.dscp
            p.fragment = ip4.more_frags or ip4.frag_offset != 0
            l4 = payload[ip4.header_len :]
    elif ethertype == 0x86DD and len(payload) >= 40:
        ip6 = Ipv6Packet(payload)
        if ip6.version == 6:
            try:
                offset, proto = gso_extension_walk(payload, 40, ip6.next_header, len(payload))
            except WireError:
                return p
            if proto == 44:
                if offset + 8 > len(payload):
                    return p
                proto = payload[offset]
                offset += 8
                p.fragment = True
            p.version, p.src, p.dst = 6, ip6.src, ip6.dst
            p.proto, p.dscp = proto, ip6.traffic_class >> 2
            l4 = payload[offset:]
    if l4 is not None and not p.fragment:
        if p.proto == 6:
            try:
                tcp = TcpPacket.checked(l4, options=False)
            except WireError:
                return p
            p.sport, p.dport, p.tcp_flags = tcp.src_port, tcp.dst_port, int(tcp.flags) & 0xFF
        elif p.proto == 17 and len(l4) >= 8:
            udp = UdpPacket(l4)
            p.sport, p.dport = udp.src_port, udp.dst_port
    return p


def holds(rule: Rule, p: Parsed | None, ingress_queue: int) -> bool:
    """Whether every condition of ``rule`` holds for the frame parsed as ``p``."""
    if p is None:
        return False
    m = rule.match
    if m.ingress_queue is not None and m.ingress_queue != ingress_queue:
        return False
    for cond, value in (
        (m.dst_mac, p.dst_mac),
        (m.src_mac, p.src_mac),
        (m.ethertype, p.ethertype),
        (m.vlan, p.vlan),
        (m.proto, p.proto),
        (m.sport, p.sport),
        (m.dport, p.dport),
        (m.tcp_flags, p.tcp_flags),
        (m.dscp, p.dscp),
    ):
        if cond is not None and (value is None or not cond.matches(value)):
            return False
    needs_ip = (
        m.ip_version is not None
        or m.src is not None
        or m.dst is not None
        or m.proto is not None
        or m.dscp is not None
        or m.sport is not None
        or m.dport is not None
        or m.tcp_flags is not None
    )
    if needs_ip and p.version is None:
        return False
    version = m.ip_version or (m.src.version if m.src else m.dst.version if m.dst else None)
    if version is not None and p.version != version:
        return False
    if m.tcp_flags is not None and p.proto != 6:
        return False
    for acond, addr in ((m.src, p.src), (m.dst, p.dst)):
        if acond is not None and (addr is None or not acond.matches(addr)):
            return False
    return True


@dataclass
class Outcome:
    rule: int
    queue: int
    drop: bool
    mark: int
    mirror: int


def classify(
    rules: list[tuple[int, Rule]], frames: list[bytes], ingress_queue: int, default_queue: int
) -> list[Outcome]:
    """Per frame: the first rule (in (priority, id) order) that holds, and what it decides."""
    ordered = sorted(rules, key=lambda item: (item[1].priority, item[0]))
    out = []
    for frame in frames:
        p = parse(frame)
        result = Outcome(NONE, default_queue, False, NONE, NONE)
        for rid, rule in ordered:
            if holds(rule, p, ingress_queue):
                a = rule.action
                drop = a.fate is Fate.DROP
                queue = NONE if drop else a.queue if a.fate is Fate.QUEUE else default_queue
                mark = NONE if a.mark is None else a.mark
                mirror = NONE if a.mirror is None else a.mirror
                result = Outcome(rid, queue, drop, mark, mirror)  # type: ignore[arg-type]
                break
        out.append(result)
    return out
