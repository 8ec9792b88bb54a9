"""``Stack``: the user-level TCP/IP stack, its interfaces and the protocol cores, glued.

The stack does no I/O of its own and reads no clock: ``poll(now_ns)`` takes
what its interfaces' devices received, runs every protocol on it, sends what
the protocols want sent, and returns; ``next_timer_ns`` says when to call
``on_timer``. A loop (``netoffload.loop``, or asyncio through it) owns the
waiting. The application side is the cores' own objects: a ``TcpHandle`` per
connection, listeners, UDP endpoint ids, ping clients.

Received, per frame: the Ethernet destination (ours, broadcast, a group we
joined), then ARP, IPv4 or IPv6. IP headers are checked as Linux's
``ip_rcv``/``ipv6_rcv`` do, the packet must be for one of our addresses
(this stack does not forward), fragments go through the reassembler, and
the transport checksum is taken from what the device found (the host
fallback verified whatever it left unchecked). Then TCP, UDP, ICMP/ICMPv6
and neighbour discovery; a closed UDP port or an unknown protocol gets its
ICMP error, a segment to no connection its RST.
"""

from __future__ import annotations

import errno
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv6Address,
    ip_address,
    ip_interface,
)

from netoffload.device.base import Device
from netoffload.offload import (
    NO_REQUEST,
    ChecksumStatus,
    CryptoStatus,
    FilterVerdict,
    Packet,
    RxInfo,
    TxRequest,
)
from netoffload.policy import OffloadPolicy
from netoffload.stack._netaddr import IpAddress, IpInterface
from netoffload.stack.fragment import (
    FragmentationNeeded,
    FragmentError,
    Reassembler,
    fragment_ipv4,
    fragment_ipv6,
)
from netoffload.stack.icmp import (
    EchoReplyReceived,
    Icmp,
    IcmpErrorKind,
    IcmpErrorReceived,
)
from netoffload.stack.interface import (
    ETH_HLEN,
    ETH_P_IP,
    ETH_P_IPV6,
    Interface,
    Pending,
)
from netoffload.stack.ipsec import SecurityPolicies, SecurityPolicy
from netoffload.stack.neighbor import NeighborConfig
from netoffload.stack.ping import EchoClient
from netoffload.stack.pmtu import PmtuCache
from netoffload.stack.route import NextHop, RouteTable
from netoffload.stack.tcp import IcmpErrorKind as TcpIcmpErrorKind
from netoffload.stack.tcp import IsnSource, TcpConfig, TcpListener, TcpSegmentOut
from netoffload.stack.tcp_layer import TcpHandle, TcpLayer
from netoffload.stack.udp import Datagram, Delivery, UdpTable, plan_udp_segments
from netoffload.wire import (
    PARTIAL,
    IpProtocol,
    Ipv4Repr,
    Ipv6Repr,
    TcpRepr,
    UdpRepr,
    WireError,
    walk_extension_headers,
)
from netoffload.wire.checksum import internet_checksum, ones_sum, pseudo_header_sum
from netoffload.wire.tcp import parse_options

ETH_P_ARP = 0x0806
_VERIFIED = ChecksumStatus.VERIFIED
_FAILED = ChecksumStatus.FAILED
_ABSENT = ChecksumStatus.ABSENT
_TCP = int(IpProtocol.TCP)
_UDP = int(IpProtocol.UDP)
_ICMP = int(IpProtocol.ICMP)
_ESP = 50
_ICMPV6 = int(IpProtocol.ICMPV6)
_FRAG6 = int(IpProtocol.IPV6_FRAG)
_NDP_TYPES = frozenset({133, 134, 135, 136, 137})
# The TCP core's error kinds for the ICMP layer's (packet-too-big goes to the path MTU).
_TCP_KIND = {
    IcmpErrorKind.NO_ROUTE: TcpIcmpErrorKind.NET_UNREACHABLE,
    IcmpErrorKind.HOST_UNREACHABLE: TcpIcmpErrorKind.HOST_UNREACHABLE,
    IcmpErrorKind.PROTOCOL_UNREACHABLE: TcpIcmpErrorKind.PROTOCOL_UNREACHABLE,
    IcmpErrorKind.PORT_UNREACHABLE: TcpIcmpErrorKind.PORT_UNREACHABLE,
    IcmpErrorKind.ADMIN_PROHIBITED: TcpIcmpErrorKind.ADMIN_PROHIBITED,
    IcmpErrorKind.SOURCE_ROUTE_FAILED: TcpIcmpErrorKind.SOURCE_ROUTE_FAILED,
    IcmpErrorKind.TTL_EXCEEDED: TcpIcmpErrorKind.TIME_EXCEEDED,
    IcmpErrorKind.REASSEMBLY_TIMEOUT: TcpIcmpErrorKind.TIME_EXCEEDED,
    IcmpErrorKind.PARAMETER_PROBLEM: TcpIcmpErrorKind.PARAMETER_PROBLEM,
    IcmpErrorKind.OTHER_UNREACHABLE: TcpIcmpErrorKind.HOST_UNREACHABLE,
}


@dataclass(slots=True)
class StackStats:
    """What the IP layer saw and dropped, by reason."""

    received: int = 0
    delivered: int = 0
    sent: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "received": self.received,
            "delivered": self.delivered,
            "sent": self.sent,
            "drops": dict(sorted(self.drops.items())),
        }


class Stack:
    """A user-level TCP/IP stack over one or more devices; see the module docstring."""

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        tcp: TcpConfig | None = None,
        policy: OffloadPolicy | None = None,
        neighbor_config: NeighborConfig | None = None,
    ) -> None:
        self.rng = rng or random.Random()
        self.policy = policy or OffloadPolicy()
        self.neighbor_config = neighbor_config
        self.interfaces: list[Interface] = []
        self.routes = RouteTable()
        self.pmtu = PmtuCache()
        self.icmp = Icmp(pmtu=self.pmtu)
        self.reassembler = Reassembler()
        self.udp = UdpTable(self.rng)
        self.isn = IsnSource(self.rng)
        self.tcp = TcpLayer(self, tcp or TcpConfig())
        self.pings: list[EchoClient] = []
        self.ipsec = SecurityPolicies()
        self.stats = StackStats()
        self._local: dict[bytes, int] = {}  # our addresses (packed) -> interface index
        self._broadcast: set[bytes] = {b"\xff\xff\xff\xff"}
        self._ident = self.rng.getrandbits(16)

    # -- configuration ---------------------------------------------------------------
    def add_interface(
        self,
        device: Device,
        addresses: Iterable[str | IpInterface] = (),
        *,
        gateways: Iterable[str | IpAddress] = (),
        name: str | None = None,
    ) -> Interface:
        """Bind ``device``: its offloads are enabled, ``addresses`` (``198.18.0.1/24``) assigned,
        and a default route added through each gateway."""
        iface = Interface(
            len(self.interfaces),
            device,
            rng=self.rng,
            policy=self.policy,
            name=name,
            neighbor_config=self.neighbor_config,
        )
        self.interfaces.append(iface)
        for text in addresses:
            self.add_address(iface, ip_interface(text) if isinstance(text, str) else text)
        for gateway in gateways:
            gw = ip_address(gateway) if isinstance(gateway, str) else gateway
            self.routes.add_default(gw, interface=iface.index)
        return iface

    def add_address(self, iface: Interface, address: IpInterface) -> None:
        self.routes.add_address(iface.index, address)
        iface.add_address(address)
        self._local[address.ip.packed] = iface.index
        if address.version == 4 and address.network.prefixlen < 31:
            self._broadcast.add(address.network.broadcast_address.packed)

    def route(self, destination: IpAddress) -> NextHop:
        """The next hop to ``destination``; ``OSError(ENETUNREACH)`` when there is none."""
        hop = self.routes.lookup(destination)
        if hop is None or hop.source is None:
            raise OSError(errno.ENETUNREACH, f"no route to {destination}")
        return hop

    def interface_of(self, address: IpAddress) -> Interface:
        """The interface that holds ``address``; ``OSError(EADDRNOTAVAIL)`` when none does."""
        index = self._local.get(address.packed)
        if index is None:
            raise OSError(errno.EADDRNOTAVAIL, f"{address} is not an address of this stack")
        return self.interfaces[index]

    def addresses(self, version: int | None = None) -> list[IpAddress]:
        out = [a.ip for a in self.routes.addresses()]
        return [a for a in out if version is None or a.version == version]

    # -- the application side ----------------------------------------------------------
    def add_security_policy(self, policy: SecurityPolicy) -> SecurityPolicy:
        """Protect ``policy``'s traffic: its SAs get handles from the range every
        interface's device offers (or the host's), the inbound SA is installed on every
        interface (in the device too when it decrypts), and TCP connections it covers
        lower their MSS by the SA's overhead. Only connections opened afterwards are
        covered."""
        self.ipsec.add(policy, self._sa_handle_limit())
        for iface in self.interfaces:
            if policy.out_sa is not None:
                iface.host.add_outbound_sa(policy.out_sa.handle, policy.out_sa.config)
            if policy.inbound is not None and policy.in_handle is not None:
                iface.host.install_sa(policy.in_handle, policy.inbound)
        return policy

    def _sa_handle_limit(self) -> int:
        from netoffload.host import HOST_SA_HANDLES
        from netoffload.offload import DecryptCaps, EncryptCaps

        limit = HOST_SA_HANDLES
        for iface in self.interfaces:
            for record in iface.device.enabled().values():
                if isinstance(record, EncryptCaps | DecryptCaps):
                    limit = min(limit, record.max_sas)
        return limit

    def _protect(
        self, packet: bytes | bytearray | memoryview, request: TxRequest, segments: int = 1
    ) -> TxRequest | None:
        """``request`` with encryption added when a policy covers ``packet``; ``None`` when
        the packet's SA cannot send it (counted)."""
        sa = self.ipsec.outbound_for_packet(packet)
        if sa is None:
            return request
        seq = self.ipsec.allocate(sa, segments, len(packet))
        return None if seq is None else request.encrypted(sa.handle, seq)

    def tcp_connect(self, address: IpAddress, port: int, now_ns: int) -> TcpHandle:
        """Open a connection (the SYN goes out at the next ``poll``).

        Raises ``OSError``: ``ENETUNREACH`` for a broadcast, multicast or
        unspecified address (as Linux does) and for no route, and
        ``EADDRNOTAVAIL`` for one of the stack's own addresses (it has no
        loopback).
        """
        packed = address.packed
        if address.is_multicast or address.is_unspecified or packed in self._broadcast:
            raise OSError(errno.ENETUNREACH, f"{address} is not a unicast address")
        if packed in self._local:
            raise OSError(
                errno.EADDRNOTAVAIL,
                f"{address} is this stack's own address (it has no loopback to reach it by)",
            )
        return self.tcp.connect(address, port, now_ns)

    def tcp_listen(
        self, port: int, *, address: IpAddress | None = None, backlog: int = 128
    ) -> list[TcpListener]:
        """Listen on ``port`` of ``address``, or of every address of the stack."""
        targets = [address] if address is not None else self.addresses()
        if not targets:
            raise OSError(errno.EADDRNOTAVAIL, "the stack has no address to listen on")
        return [self.tcp.listen(a, port, backlog) for a in targets]

    def tcp_accept(self, listeners: Sequence[TcpListener]) -> TcpHandle | None:
        for listener in listeners:
            handle = self.tcp.accept(listener)
            if handle is not None:
                return handle
        return None

    def udp_open(self, version: int, *, rcvbuf_bytes: int | None = None) -> int:
        """A UDP endpoint; ``rcvbuf_bytes`` bounds what it queues (SO_RCVBUF)."""
        return self.udp.open(version, rcvbuf_bytes=rcvbuf_bytes)

    def udp_bind(self, endpoint: int, address: IpAddress | None, port: int) -> int:
        if address is None:
            address = IPv4Address(0) if self.udp.family(endpoint) == 4 else IPv6Address(0)
        return self.udp.bind(endpoint, address, port)

    def udp_send(
        self,
        endpoint: int,
        datagrams: Sequence[bytes | memoryview],
        address: IpAddress,
        port: int,
        now_ns: int,
    ) -> None:
        """Send datagrams to one destination: runs of equal sizes go as one UDP_SEGMENT
        super-datagram (the device, or the host, cuts it); a datagram over the path MTU
        is fragmented."""
        flow = self.udp.send_to(endpoint, address, port)
        hop = self.route(address)
        source = flow.local or hop.source
        assert source is not None
        iface = self.interfaces[hop.interface]
        mtu = self.pmtu.get(address, iface.mtu, now_ns)
        if self.ipsec:
            sa = self.ipsec.outbound(source, address, _UDP, flow.local_port, port)
            if sa is not None:
                mtu -= sa.max_overhead  # each datagram is encrypted whole
        ip_len = 20 if address.version == 4 else 40
        sizes = [len(d) for d in datagrams]
        udp = UdpRepr(flow.local_port, port)
        for run in plan_udp_segments(
            sizes, mtu=mtu, ip_header_len=ip_len, ipv6=address.version == 6
        ):
            payload = b"".join(datagrams[run.start : run.start + run.count])
            if run.gso_size:
                self._send_udp_burst(
                    iface,
                    hop,
                    source=source,
                    address=address,
                    udp=udp,
                    payload=payload,
                    gso_size=run.gso_size,
                    now_ns=now_ns,
                )
            else:
                packet = self._ip(
                    source, address, _UDP, udp.to_bytes(payload, src=source, dst=address)
                )
                self.send_ip(packet, now_ns)

    def _send_udp_burst(
        self,
        iface: Interface,
        hop: NextHop,
        *,
        source: IpAddress,
        address: IpAddress,
        udp: UdpRepr,
        payload: bytes,
        gso_size: int,
        now_ns: int,
    ) -> None:
        datagram = udp.to_bytes(payload, src=source, dst=address, checksum=PARTIAL)
        packet = self._ip(source, address, _UDP, datagram)
        ip_len = 20 if address.version == 4 else 40
        request = TxRequest.segment_l4(
            l4_offset=ETH_HLEN + ip_len,
            protocol=_UDP,
            ip_version=address.version,
            mss=gso_size,
            header_len=ETH_HLEN + ip_len + 8,
        )
        ethertype = ETH_P_IP if address.version == 4 else ETH_P_IPV6
        if self.ipsec:
            sealed = self._protect(packet, request, -(-len(payload) // gso_size))
            if sealed is None:
                return
            request = sealed
        iface.output(
            hop.address, ethertype, packet, b"", request=request, now_ns=now_ns, source=source
        )
        self.stats.sent += 1

    def udp_recv(self, endpoint: int) -> Datagram | None:
        return self.udp.recv(endpoint)

    def ping(
        self, destination: IpAddress, now_ns: int, *, count: int | None = None, **kwargs: int
    ) -> EchoClient:
        hop = self.route(destination)
        assert hop.source is not None
        client = EchoClient(
            destination, hop.source, self.rng, start_ns=now_ns, count=count, **kwargs
        )
        self.pings.append(client)
        return client

    # -- the loop's side -----------------------------------------------------------------
    def filenos(self) -> list[int]:
        return [fd for iface in self.interfaces for fd in iface.filenos()]

    def poll(self, now_ns: int, *, max_packets: int = 256) -> int:
        """Take what arrived, run the protocols, send what is due; how many frames came in."""
        received = 0
        for iface in self.interfaces:
            packets = iface.recv(max_packets)
            if packets:
                received += len(packets)
                for packet in packets:
                    try:
                        self._input(iface, packet, now_ns)
                    except Exception:  # a bug must cost the packet, never the stack's loop
                        self.stats.drops["internal_error"] += 1
                iface.release(packets)
        self._output(now_ns)
        return received

    def next_timer_ns(self) -> int | None:
        candidates = [self.tcp.next_timer_ns(), self.reassembler.next_timer_ns()]
        candidates.append(self.pmtu.next_timer_ns())
        candidates += [iface.neighbors.next_timer_ns() for iface in self.interfaces]
        candidates += [p.next_timer_ns() for p in self.pings]
        due = [t for t in candidates if t is not None]
        return min(due) if due else None

    def on_timer(self, now_ns: int) -> None:
        self.tcp.on_timer(now_ns)
        for iface in self.interfaces:
            iface.neighbors.on_timer(now_ns)
        for timeout in self.reassembler.on_timer(now_ns):
            if timeout.first_fragment is not None:
                self._icmp_error(IcmpErrorKind.REASSEMBLY_TIMEOUT, timeout.first_fragment, now_ns)
        self.pmtu.on_timer(now_ns)
        for client in self.pings:
            client.on_timer(now_ns)
        self._output(now_ns)

    def observe_load(self, sample: object) -> None:
        """The loop's load sample for the offload policy; interfaces follow its choice."""
        from netoffload.policy import LoadSample

        if isinstance(sample, LoadSample):
            self.policy.observe(sample)
            for iface in self.interfaces:
                iface.apply_policy()

    def _output(self, now_ns: int) -> None:
        self.tcp.poll(now_ns)
        for packet in self.icmp.take_packets():
            self.send_ip(packet, now_ns)
        for client in self.pings:
            for packet in client.take_packets():
                self.send_ip(packet, now_ns)
        for iface in self.interfaces:
            for failed in iface.take_failed():
                self._unresolved(failed.packet, now_ns)
            iface.flush()

    # -- receiving --------------------------------------------------------------------
    def _input(self, iface: Interface, packet: Packet, now_ns: int) -> None:
        frame = memoryview(packet.data)
        stats = self.stats
        stats.received += 1
        if len(frame) < ETH_HLEN:
            stats.drops["runt"] += 1
            return
        if not iface.accepts(frame[0:6]):
            stats.drops["not_our_mac"] += 1
            return
        ethertype = (frame[12] << 8) | frame[13]
        group = bool(frame[0] & 0x01)
        if ethertype == ETH_P_IP:
            self._ipv4(iface, frame, packet.rx, group, now_ns)
        elif ethertype == ETH_P_IPV6:
            self._ipv6(iface, frame, packet.rx, group, now_ns)
        elif ethertype == ETH_P_ARP:
            iface.neighbors.receive_arp(bytes(frame), now_ns)
        else:
            stats.drops["ethertype"] += 1

    def _ipv4(
        self, iface: Interface, frame: memoryview, rx: RxInfo, group: bool, now_ns: int
    ) -> None:
        stats = self.stats
        n = len(frame)
        if n < ETH_HLEN + 20 or frame[ETH_HLEN] >> 4 != 4:
            stats.drops["ipv4_header"] += 1
            return
        ihl = (frame[ETH_HLEN] & 0x0F) * 4
        total = (frame[ETH_HLEN + 2] << 8) | frame[ETH_HLEN + 3]
        if ihl < 20 or total < ihl or ETH_HLEN + total > n:
            stats.drops["ipv4_length"] += 1
            return
        ip = frame[ETH_HLEN : ETH_HLEN + total]
        if rx.ipv4_header is not _VERIFIED and ones_sum(ip[:ihl]) != 0xFFFF:
            stats.drops["ipv4_checksum"] += 1
            return
        src, dst = bytes(ip[12:16]), bytes(ip[16:20])
        broadcast = dst in self._broadcast
        if dst not in self._local and not broadcast:
            stats.drops["not_for_us"] += 1  # this stack does not forward
            return
        checked = rx.l4
        if (ip[6] << 8 | ip[7]) & 0x3FFF:
            whole = self.reassembler.feed_ipv4(bytes(ip), now_ns)
            if whole is None:
                return
            ip = memoryview(whole)
            total = len(ip)
            checked = ChecksumStatus.NOT_CHECKED  # the device saw fragments, not this
        protocol = ip[9]
        payload = ip[ihl:total]
        ce = (ip[1] & 3) == 3
        if self._transport(
            iface, ip, rx, src=src, dst=dst, protocol=protocol, payload=payload,
            checked=checked, ce=ce, group=broadcast or group, now_ns=now_ns,
        ):  # fmt: skip
            return
        if protocol == _ICMP:
            self._icmp(ip, broadcast, dst, now_ns)
        else:
            stats.drops["protocol"] += 1
            if not (broadcast or group):
                self._icmp_error(IcmpErrorKind.PROTOCOL_UNREACHABLE, bytes(ip), now_ns)

    def _ipv6(
        self, iface: Interface, frame: memoryview, rx: RxInfo, group: bool, now_ns: int
    ) -> None:
        stats = self.stats
        n = len(frame)
        if n < ETH_HLEN + 40 or frame[ETH_HLEN] >> 4 != 6:
            stats.drops["ipv6_header"] += 1
            return
        length = (frame[ETH_HLEN + 4] << 8) | frame[ETH_HLEN + 5]
        if ETH_HLEN + 40 + length > n:
            stats.drops["ipv6_length"] += 1
            return
        ip = frame[ETH_HLEN : ETH_HLEN + 40 + length]
        src, dst = bytes(ip[8:24]), bytes(ip[24:40])
        if dst not in self._local and not dst.startswith(b"\xff"):
            stats.drops["not_for_us"] += 1
            return
        protocol, offset = ip[6], 40
        checked = rx.l4
        if protocol not in (_TCP, _UDP, _ICMPV6):
            try:
                chain = walk_extension_headers(ip)
            except WireError:
                stats.drops["ipv6_extension"] += 1
                return
            if any(h.PROTOCOL == _FRAG6 for h in chain.headers):
                whole = self.reassembler.feed_ipv6(bytes(ip), now_ns)
                if whole is None:
                    return
                ip = memoryview(whole)
                checked = ChecksumStatus.NOT_CHECKED
                try:
                    chain = walk_extension_headers(ip)
                except WireError:
                    stats.drops["ipv6_extension"] += 1
                    return
            protocol, offset = chain.upper_protocol, chain.upper_offset
        payload = ip[offset:]
        ce = ((ip[1] >> 4) & 3) == 3
        if self._transport(
            iface, ip, rx, src=src, dst=dst, protocol=protocol, payload=payload,
            checked=checked, ce=ce, group=group, now_ns=now_ns,
        ):  # fmt: skip
            return
        if protocol == _ICMPV6:
            if len(payload) and payload[0] in _NDP_TYPES:
                iface.neighbors.receive_ndp(bytes(frame[: ETH_HLEN + len(ip)]), now_ns)
            else:
                self._icmp(ip, False, dst, now_ns)
        else:
            stats.drops["protocol"] += 1
            if not group:
                self._icmp_error(IcmpErrorKind.PROTOCOL_UNREACHABLE, bytes(ip), now_ns)

    def _transport(
        self,
        iface: Interface,
        ip: memoryview,
        rx: RxInfo,
        *,
        src: bytes,
        dst: bytes,
        protocol: int,
        payload: memoryview,
        checked: ChecksumStatus,
        ce: bool,
        group: bool,
        now_ns: int,
    ) -> bool:
        """A packet for us past IP, either version: refused by a security policy, or counted
        delivered and, for TCP and UDP, handed on. False leaves ICMP and other protocols to
        the caller."""
        if self.ipsec and not self._ipsec_ok(rx, src, dst, protocol, payload):
            return True
        self.stats.delivered += 1
        if protocol == _TCP:
            if checked is not _VERIFIED and not _l4_ok(src, dst, _TCP, payload, checked):
                self.stats.drops["tcp_checksum"] += 1
                return True
            cookie = rx.verdict is FilterVerdict.SYN_COOKIE
            self.tcp.input(
                iface, src, dst, payload, segments=rx.segments, ce=ce, now_ns=now_ns, cookie=cookie
            )
            return True
        if protocol == _UDP:
            self._udp(
                iface,
                ip,
                src=src,
                dst=dst,
                datagram=payload,
                rx=rx,
                checked=checked,
                group=group,
                now_ns=now_ns,
            )
            return True
        return False

    def _ipsec_ok(
        self, rx: RxInfo, src: bytes, dst: bytes, protocol: int, payload: memoryview
    ) -> bool:
        """The security policies' verdict on a received packet (counted when refused):
        ESP nobody could open, or traffic a policy wants protected that was not."""
        if protocol == _ESP:
            self.stats.drops["ipsec_no_sa"] += 1
            return False
        handle = rx.sa_handle if rx.crypto is CryptoStatus.DECRYPTED else None
        if self.ipsec.inbound_ok(handle, _addr(src), _addr(dst), protocol, payload):
            return True
        self.stats.drops["ipsec_policy"] += 1
        return False

    def _udp(
        self,
        iface: Interface,
        ip: memoryview,
        *,
        src: bytes,
        dst: bytes,
        datagram: memoryview,
        rx: RxInfo,
        checked: ChecksumStatus,
        group: bool,
        now_ns: int,
    ) -> None:
        if checked is _FAILED:
            self.stats.drops["udp_checksum"] += 1
            return
        verified = checked in (_VERIFIED, _ABSENT)
        gso = rx.assembled.size if rx.assembled is not None else 0
        result = self.udp.deliver(
            _addr(src),
            _addr(dst),
            bytes(datagram),  # queued for the application: the device's buffer goes back
            verify_checksum=not verified,
            gso_size=gso,
            broadcast=group,
        )
        if result is Delivery.NO_ENDPOINT and not group:
            self._icmp_error(IcmpErrorKind.PORT_UNREACHABLE, bytes(ip), now_ns)

    def _icmp(self, ip: memoryview, broadcast: bool, dst: bytes, now_ns: int) -> None:
        packet = bytes(ip)
        event = self.icmp.receive(packet, now_ns, to_broadcast=broadcast, reply_source=None)
        if isinstance(event, EchoReplyReceived):
            for client in self.pings:
                if client.receive(event, now_ns):
                    break
        elif isinstance(event, IcmpErrorReceived):
            flow = event.flow
            for client in self.pings:
                if client.receive_error(event):
                    return
            if flow.protocol == _TCP and flow.src_port is not None and flow.dst_port is not None:
                key = (flow.src.packed, flow.src_port, flow.dst.packed, flow.dst_port)
                seq = (
                    int.from_bytes(event.transport[4:8], "big")
                    if len(event.transport) >= 8
                    else None
                )
                kind = (
                    None
                    if event.kind is IcmpErrorKind.PACKET_TOO_BIG
                    else _TCP_KIND.get(event.kind)
                )
                self.tcp.icmp_error(key, kind, event.mtu, seq, now_ns)

    # -- sending ------------------------------------------------------------------------
    def _ip(self, src: IpAddress, dst: IpAddress, protocol: int, payload: bytes) -> bytes:
        """A whole IP packet (header built with the Reprs) around ``payload``."""
        if isinstance(src, IPv4Address) and isinstance(dst, IPv4Address):
            self._ident = (self._ident + 1) & 0xFFFF
            header = Ipv4Repr(src, dst, protocol, len(payload), ident=self._ident, dont_frag=True)
            return header.to_bytes(payload)
        if isinstance(src, IPv6Address) and isinstance(dst, IPv6Address):
            return Ipv6Repr(src, dst, protocol, len(payload)).to_bytes(payload)
        raise ValueError(f"{src} and {dst} are not of one IP version")

    def send_ip(self, packet: bytes, now_ns: int) -> None:
        """Route and send a whole IP packet the stack made (checksums done), fragmenting it
        to the path MTU when it must."""
        version = packet[0] >> 4
        dst: IpAddress = IPv4Address(packet[16:20]) if version == 4 else IPv6Address(packet[24:40])
        src: IpAddress = IPv4Address(packet[12:16]) if version == 4 else IPv6Address(packet[8:24])
        try:
            hop = self.route(dst)
        except OSError:
            self.stats.drops["no_route"] += 1
            return
        iface = self.interfaces[hop.interface]
        mtu = self.pmtu.get(dst, iface.mtu, now_ns)
        pieces = [packet]
        request = NO_REQUEST
        if self.ipsec:
            sa = self.ipsec.outbound_for_packet(packet)
            if sa is not None:
                # Protected packets are encrypted whole, after the stack: they must fit.
                if len(packet) + sa.max_overhead > mtu:
                    self.stats.drops["ipsec_too_big"] += 1
                    return
                seq = self.ipsec.allocate(sa, 1, len(packet))
                if seq is None:
                    return
                request = NO_REQUEST.encrypted(sa.handle, seq)
        if len(packet) > mtu and request is NO_REQUEST:
            try:
                if version == 4:
                    pieces = fragment_ipv4(_without_df(packet), mtu)
                else:
                    pieces = fragment_ipv6(packet, mtu, self.rng.getrandbits(32))
            except (FragmentationNeeded, FragmentError):
                self.stats.drops["fragmentation"] += 1
                return
        ethertype = ETH_P_IP if version == 4 else ETH_P_IPV6
        for piece in pieces:
            iface.output(
                hop.address, ethertype, piece, b"", request=request, now_ns=now_ns, source=src
            )
            self.stats.sent += 1

    def send_tcp_reply(
        self,
        out: TcpSegmentOut,
        *,
        src: IpAddress,
        dst: IpAddress,
        sport: int,
        dport: int,
        now_ns: int,
    ) -> None:
        """A segment that belongs to no connection (an RST, a listener's refusal)."""
        tcp = TcpRepr(
            sport,
            dport,
            out.seq,
            out.ack,
            out.flags,  # type: ignore[arg-type]
            out.window,
            options=parse_options(out.options) if out.options else (),
        )
        segment = tcp.to_bytes(bytes(out.payload), src=src, dst=dst)
        self.send_ip(self._ip(src, dst, _TCP, segment), now_ns)

    def _icmp_error(self, kind: IcmpErrorKind, offending: bytes, now_ns: int) -> None:
        version = offending[0] >> 4
        ours = offending[16:20] if version == 4 else offending[24:40]
        source = _addr(bytes(ours))
        if source.packed not in self._local:
            return
        packet = self.icmp.error(kind, offending, source, now_ns)
        if packet is not None:
            self.send_ip(packet, now_ns)

    def _unresolved(self, pending: Pending, now_ns: int) -> None:
        """A packet whose next hop never answered: its TCP connection hears it."""
        head = bytes(pending.head)
        version = head[0] >> 4 if head else 0
        if version == 4 and len(head) >= 24 and head[9] == _TCP:
            l4 = (head[0] & 0x0F) * 4
            key = (head[12:16], _port(head, l4), head[16:20], _port(head, l4 + 2))
        elif version == 6 and len(head) >= 44 and head[6] == _TCP:
            key = (head[8:24], _port(head, 40), head[24:40], _port(head, 42))
        else:
            self.stats.drops["unresolved"] += 1
            return
        self.tcp.unreachable(key, now_ns)

    # -- introspection ------------------------------------------------------------------
    def as_dict(self) -> dict[str, object]:
        return {
            "ip": self.stats.as_dict(),
            "policy": self.policy.as_dict(),
            "tcp": self.tcp.as_dict(),
            "udp": self.udp.stats.as_dict(),
            "icmp": self.icmp.stats.as_dict(),
            "reassembly": self.reassembler.stats.as_dict(),
            "ipsec": self.ipsec.as_dict(),
            "interfaces": [iface.as_dict() for iface in self.interfaces],
        }


def _addr(packed: bytes) -> IpAddress:
    return IPv4Address(packed) if len(packed) == 4 else IPv6Address(packed)


def _port(head: bytes, at: int) -> int:
    return (head[at] << 8) | head[at + 1]


def _l4_ok(
    src: bytes, dst: bytes, protocol: int, segment: memoryview, checked: ChecksumStatus
) -> bool:
    """The transport checksum, from what the device found or computed here."""
    if checked is _VERIFIED:
        return True
    if checked is _FAILED:
        return False
    return internet_checksum(segment, pseudo_header_sum(src, dst, protocol, len(segment))) == 0


def _without_df(packet: bytes) -> bytes:
    """The stack's own packets may be fragmented: clear DF and fix the header checksum."""
    if not packet[6] & 0x40:
        return packet
    buf = bytearray(packet)
    buf[6] &= ~0x40 & 0xFF
    ihl = (buf[0] & 0x0F) * 4
    buf[10:12] = b"\x00\x00"
    buf[10:12] = internet_checksum(buf[:ihl]).to_bytes(2, "big")
    return bytes(buf)


__all__ = ["Stack", "StackStats"]
