"""Security policies: which of the stack's traffic is protected with which SA.

A ``SecurityPolicy`` maps a selector (local and remote prefixes, protocol,
ports) to an ESP SA in each direction, as Linux's xfrm policies do. Matching
outbound traffic is encrypted with the outbound SA; matching inbound traffic
must arrive protected by the inbound SA, or it is dropped
(``ipsec_policy``). Policies are tried in priority order (lower first), then
in the order they were added; traffic no policy selects goes as it is.

The stack owns the outbound sequence numbers: ``OutboundSa.allocate`` hands
out one per segment a packet will be cut into and counts the lifetime, so
the device or the host fallback, whichever encrypts, uses numbers (and
nonces) that were never used before. A soft lifetime limit is an event in
``SecurityPolicies.take_events()``; at the hard limit the SA stops and its
packets are dropped (``ipsec_lifetime_expired``). SA handles come from the
range the devices' capability records offer.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network

from netoffload.engine.esp_sa import EspConfig, SecurityAssociation
from netoffload.engine.ipsec_sa import EspError, SaEvent
from netoffload.stack._netaddr import IpAddress

IpNetwork = IPv4Network | IPv6Network

IPPROTO_TCP = 6
IPPROTO_UDP = 17
_PORTS = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class Selector:
    """What traffic a policy covers; ``None`` matches anything. Ports are for TCP and UDP."""

    local: IpNetwork | None = None
    remote: IpNetwork | None = None
    protocol: int | None = None
    local_port: int | None = None
    remote_port: int | None = None

    @classmethod
    def parse(
        cls,
        *,
        local: str | None = None,
        remote: str | None = None,
        protocol: str | int | None = None,
        local_port: int | None = None,
        remote_port: int | None = None,
    ) -> Selector:
        """From text: prefixes (``198.18.0.0/24``, or an address), ``tcp``/``udp`` or a number."""
        proto: int | None
        if isinstance(protocol, str):
            names = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "icmp": 1, "ipv6-icmp": 58}
            if protocol.lower() not in names:
                raise ValueError(f"unknown protocol {protocol!r} (tcp, udp, icmp, ipv6-icmp)")
            proto = names[protocol.lower()]
        else:
            proto = protocol
        for name, port in (("local_port", local_port), ("remote_port", remote_port)):
            if port is not None and not 0 < port < 65536:
                raise ValueError(f"{name} {port} is not a port")
        return cls(
            ip_network(local, strict=False) if local is not None else None,
            ip_network(remote, strict=False) if remote is not None else None,
            proto,
            local_port,
            remote_port,
        )

    def matches(
        self, local: IpAddress, remote: IpAddress, protocol: int, lport: int, rport: int
    ) -> bool:
        if self.protocol is not None and self.protocol != protocol:
            return False
        if self.local is not None and local not in self.local:
            return False
        if self.remote is not None and remote not in self.remote:
            return False
        if self.local_port is not None and self.local_port != lport:
            return False
        return self.remote_port is None or self.remote_port == rport


class OutboundSa:
    """An outbound SA as the stack holds it: its handle, context and sequence numbers."""

    __slots__ = ("config", "handle", "sa")

    def __init__(self, handle: int, config: EspConfig) -> None:
        self.handle = handle
        self.config = config
        self.sa = SecurityAssociation.from_config(config)

    @property
    def max_overhead(self) -> int:
        """The most ESP adds to a packet: what MSS and path MTU give up for it."""
        return self.config.max_overhead

    def allocate(self, segments: int, nbytes: int) -> int:
        """The first of ``segments`` new sequence numbers (lifetimes counted); ``EspError``
        when the SA reached its hard lifetime or ran out of numbers."""
        sa = self.sa
        sa.admit()
        first = sa.allocate(segments).start
        sa.account(segments, nbytes)
        return first


@dataclass(slots=True)
class SecurityPolicy:
    """``selector``'s traffic goes out protected by ``outbound`` and must come in protected
    by ``inbound`` (either may be ``None``: that direction is not covered)."""

    selector: Selector
    outbound: EspConfig | None = None
    inbound: EspConfig | None = None
    priority: int = 0
    #: Filled in by the stack when the policy is added.
    out_sa: OutboundSa | None = None
    in_handle: int | None = None


@dataclass(slots=True)
class SecurityPolicies:
    """The stack's policies, its SAs' handles, and the counters."""

    policies: list[SecurityPolicy] = field(default_factory=list)
    drops: Counter[str] = field(default_factory=Counter)
    events: list[SaEvent] = field(default_factory=list)
    next_handle: int = 0
    protected_out: int = 0
    protected_in: int = 0

    def __bool__(self) -> bool:
        return bool(self.policies)

    def add(self, policy: SecurityPolicy, handle_limit: int) -> SecurityPolicy:
        """Give the policy's SAs their handles (outbound first); ``ValueError`` when the
        handles run out."""
        wanted = (policy.outbound is not None) + (policy.inbound is not None)
        if self.next_handle + wanted > handle_limit:
            raise ValueError(f"no SA handle left (the devices offer {handle_limit})")
        if policy.outbound is not None:
            policy.out_sa = OutboundSa(self.next_handle, policy.outbound)
            self.next_handle += 1
        if policy.inbound is not None:
            policy.in_handle = self.next_handle
            self.next_handle += 1
        self.policies.append(policy)
        self.policies.sort(key=lambda p: p.priority)
        return policy

    def lookup(
        self, local: IpAddress, remote: IpAddress, protocol: int, lport: int = 0, rport: int = 0
    ) -> SecurityPolicy | None:
        for policy in self.policies:
            if policy.selector.matches(local, remote, protocol, lport, rport):
                return policy
        return None

    def outbound(
        self, local: IpAddress, remote: IpAddress, protocol: int, lport: int = 0, rport: int = 0
    ) -> OutboundSa | None:
        policy = self.lookup(local, remote, protocol, lport, rport)
        return None if policy is None else policy.out_sa

    def outbound_for_packet(self, packet: bytes | bytearray | memoryview) -> OutboundSa | None:
        """The SA for an IP packet the stack sends (ports read from its TCP/UDP header)."""
        if not self.policies:
            return None
        view = memoryview(packet)
        src, dst, proto, l4 = _addresses(view)
        lport = rport = 0
        if proto in (IPPROTO_TCP, IPPROTO_UDP) and len(view) >= l4 + 4:
            lport, rport = _PORTS.unpack_from(view, l4)
        return self.outbound(src, dst, proto, lport, rport)

    def inbound_ok(
        self,
        handle: int | None,
        remote: IpAddress,
        local: IpAddress,
        protocol: int,
        payload: memoryview,
    ) -> bool:
        """True when a received packet may be taken: protected by the SA its policy names,
        or not covered by any policy (counted when not)."""
        rport = lport = 0
        if protocol in (IPPROTO_TCP, IPPROTO_UDP) and len(payload) >= 4:
            rport, lport = _PORTS.unpack_from(payload, 0)
        policy = self.lookup(local, remote, protocol, lport, rport)
        if policy is None or policy.in_handle is None:
            return True
        if handle == policy.in_handle:
            self.protected_in += 1
            return True
        self.drops["ipsec_policy"] += 1
        return False

    def take_events(self) -> list[SaEvent]:
        """Lifetime events of the outbound SAs (soft: rekey now; hard: the SA stopped)."""
        for policy in self.policies:
            if policy.out_sa is not None:
                self.events.extend(policy.out_sa.sa.take_events())
        out, self.events = self.events, []
        return out

    def allocate(self, sa: OutboundSa, segments: int, nbytes: int) -> int | None:
        """Sequence numbers for a packet, or ``None`` (counted) when the SA cannot send."""
        try:
            seq = sa.allocate(segments, nbytes)
        except EspError as exc:
            self.drops[exc.reason.value] += 1
            return None
        self.protected_out += 1
        return seq

    def as_dict(self) -> dict[str, object]:
        """Counts and selectors only: never a key."""
        return {
            "policies": len(self.policies),
            "protected_out": self.protected_out,
            "protected_in": self.protected_in,
            "drops": dict(sorted(self.drops.items())),
            "sas": [
                {
                    "handle": p.out_sa.handle,
                    "spi": f"{p.out_sa.config.spi:#010x}",
                    "next_seq": p.out_sa.sa.next_seq,
                }
                for p in self.policies
                if p.out_sa is not None
            ],
        }


def _addresses(view: memoryview) -> tuple[IpAddress, IpAddress, int, int]:
    from ipaddress import IPv4Address, IPv6Address

    if view[0] >> 4 == 4:
        ihl = (view[0] & 0x0F) * 4
        return IPv4Address(bytes(view[12:16])), IPv4Address(bytes(view[16:20])), view[9], ihl
    return IPv6Address(bytes(view[8:24])), IPv6Address(bytes(view[24:40])), view[6], 40


__all__ = ["OutboundSa", "SecurityPolicies", "SecurityPolicy", "Selector"]
