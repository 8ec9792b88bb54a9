"""TCP in the stack: the connection table, listeners, and the per-connection fast paths.

Received: a segment's IP and TCP fields are read at fixed offsets (the
packet's headers were checked by the IP layer) and handed to its connection
as a ``TcpSegmentIn``: a GRO super-packet is one call, and its payload is
copied once, into the connection's receive buffer.

Sent: each connection keeps its IP and TCP headers as a template made once
from the Reprs (``FlowTemplate``); a ``TcpSegmentOut`` becomes that header,
patched, in front of a view of the send buffer, with a request prebuilt per
connection: "segment at MSS and fill the checksums" for a super-packet,
"fill the checksum" for one segment. The device (or the host's engine) cuts
and checksums; the payload is never copied on the way.

Where the device lends memory it sends from in place (``XdpDevice``'s UMEM),
an established connection keeps its send buffer there: the application's
bytes are then copied once, into memory the device transmits from. Such a
connection sends super-packets even without TSO: the host cuts them around
their payload, which stays where it is.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, TypeAlias

from netoffload.offload import TxRequest
from netoffload.stack._netaddr import IpAddress
from netoffload.stack.interface import ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Interface
from netoffload.stack.ipsec import OutboundSa
from netoffload.stack.tcp import (
    Closed,
    Established,
    IcmpErrorKind,
    TcpConfig,
    TcpConnection,
    TcpEvent,
    TcpListener,
    TcpSegmentIn,
    TcpSegmentOut,
    TcpState,
    reset_for,
)
from netoffload.stack.tcp.buffers import SendMemory
from netoffload.stack.tcp.segment import CWR
from netoffload.wire import IpProtocol, Ipv4Repr, Ipv6Repr, TcpRepr
from netoffload.wire.template import FlowTemplate

if TYPE_CHECKING:
    from netoffload.stack.stack import Stack

Buffer: TypeAlias = bytes | bytearray | memoryview
Key: TypeAlias = tuple[bytes, int, bytes, int]  # local address, port, remote address, port

_TCP = struct.Struct("!HHIIHH")
TCP_HLEN = 20
IPPROTO_TCP_NUM = 6
IPV4_HLEN = 20
IPV6_HLEN = 40


#: Within one received batch, a connection ACKs at least this often (two 64 KiB
#: super-packets); the rest of the batch is acknowledged once, after it.
ACK_EVERY_BYTES = 128 * 1024


@dataclass(slots=True)
class TcpHandle:
    """One connection as the application holds it: the core and the events it raised.

    The stack drains the connection's events into ``events`` as they come, so
    it can see ``Closed`` (and drop the connection from its table); the
    application reads them from here.
    """

    conn: TcpConnection
    events: deque[TcpEvent] = field(default_factory=deque)

    @property
    def state(self) -> TcpState:
        return self.conn.state

    def next_event(self) -> TcpEvent | None:
        return self.events.popleft() if self.events else None


class _Flow:
    """A connection's transmit state: where it goes and its prebuilt headers and requests."""

    __slots__ = (
        "conn",
        "ethertype",
        "handle",
        "header_len",
        "ident",
        "iface",
        "ip_header",
        "key",
        "listener",
        "memory",
        "next_hop",
        "requests",
        "sa",
        "source",
        "template",
        "version",
    )

    def __init__(
        self,
        handle: TcpHandle,
        key: Key,
        iface: Interface,
        *,
        next_hop: IpAddress,
        source: IpAddress,
        remote: IpAddress,
        ports: tuple[int, int],
    ) -> None:
        self.handle = handle
        self.conn = handle.conn
        self.key = key
        self.iface = iface
        self.next_hop = next_hop
        self.source = source
        self.version = source.version
        self.listener: tuple[bytes, int] | None = None
        ip: Ipv4Repr | Ipv6Repr
        if isinstance(source, IPv4Address) and isinstance(remote, IPv4Address):
            ip = Ipv4Repr(source, remote, IpProtocol.TCP, 0, dont_frag=True)
            self.ethertype = ETH_P_IP
            self.ip_header = IPV4_HLEN
        elif isinstance(source, IPv6Address) and isinstance(remote, IPv6Address):
            ip = Ipv6Repr(source, remote, IpProtocol.TCP, 0)
            self.ethertype = ETH_P_IPV6
            self.ip_header = IPV6_HLEN
        else:
            raise ValueError(f"{source} and {remote} are not of one IP version")
        self.template = FlowTemplate(None, ip, TcpRepr(ports[0], ports[1], 0))
        self.header_len = self.template.header_len
        self.ident = 0
        self.requests: dict[tuple[int, int, bool], TxRequest] = {}
        self.sa: OutboundSa | None = None  # set when a security policy covers the flow
        self.memory: SendMemory | None = None  # the device's memory the send buffer is in

    def request(self, payload: int, mss: int, options: int, ecn: bool) -> TxRequest:
        """The request for a segment: a super-packet's "segment and checksum", or a checksum."""
        key = (mss if payload > mss else 0, options, ecn and payload > mss)
        req = self.requests.get(key)
        if req is None:
            l4 = ETH_HLEN + self.ip_header
            if payload > mss:
                req = TxRequest.segment_l4(
                    l4_offset=l4,
                    protocol=IpProtocol.TCP,
                    ip_version=self.version,
                    mss=mss,
                    header_len=l4 + TCP_HLEN + options,
                    ecn=key[2],
                )
            else:
                req = TxRequest.checksum_l4(l4_offset=l4, protocol=IpProtocol.TCP)
            self.requests[key] = req
        return req


@dataclass(slots=True)
class TcpStats:
    segments_in: int = 0
    segments_out: int = 0
    super_packets_out: int = 0
    resets_out: int = 0
    #: Send buffers in memory the device sends from, and in the host's own memory.
    send_buffers_in_device: int = 0
    send_buffers_in_host: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "segments_in": self.segments_in,
            "segments_out": self.segments_out,
            "super_packets_out": self.super_packets_out,
            "resets_out": self.resets_out,
            "send_buffers_in_device": self.send_buffers_in_device,
            "send_buffers_in_host": self.send_buffers_in_host,
            "drops": dict(sorted(self.drops.items())),
        }


class TcpLayer:
    """The stack's TCP: connections by 4-tuple, listeners by local address and port."""

    def __init__(self, stack: Stack, config: TcpConfig) -> None:
        self.stack = stack
        self.config = config
        self.stats = TcpStats()
        self.flows: dict[Key, _Flow] = {}
        self.listeners: dict[tuple[bytes, int], TcpListener] = {}
        self._by_conn: dict[int, _Flow] = {}
        self._ports_in_use: set[tuple[bytes, int]] = set()
        #: Called with a handle after its connection raised events (a socket layer's wake-up:
        #: it must not call back into the stack).
        self.on_events: Callable[[TcpHandle], None] | None = None

    # -- opening ------------------------------------------------------------------
    def connect(
        self,
        remote: IpAddress,
        port: int,
        now_ns: int,
        *,
        local_port: int = 0,
        config: TcpConfig | None = None,
    ) -> TcpHandle:
        """Open a connection; ``config`` replaces the layer's settings (buffer sizes...)."""
        stack = self.stack
        hop = stack.route(remote)
        source = hop.source
        assert source is not None  # route() raises when there is none
        lport = local_port or self._ephemeral(source.packed)
        iface = stack.interfaces[hop.interface]
        config = self._config_for(iface, source, config)
        conn = TcpConnection.connect(
            (source, lport),
            (remote, port),
            config=config,
            now_ns=now_ns,
            isn_source=stack.isn,
            rng=stack.rng,
        )
        handle = TcpHandle(conn)
        self._add(
            handle, iface, next_hop=hop.address, source=source, remote=remote, lport=lport,
            rport=port,
        )  # fmt: skip
        return handle

    def listen(
        self, address: IpAddress, port: int, backlog: int, *, config: TcpConfig | None = None
    ) -> TcpListener:
        key = (address.packed, port)
        if key in self.listeners:
            raise OSError(98, f"{address} port {port} is already listening")  # EADDRINUSE
        hop_iface = self.stack.interface_of(address)
        config = self._config_for(hop_iface, address, config)
        listener = TcpListener(
            (address, port),
            backlog=backlog,
            config=config,
            isn_source=self.stack.isn,
            rng=self.stack.rng,
        )
        self.listeners[key] = listener
        return listener

    def accept(self, listener: TcpListener) -> TcpHandle | None:
        conn = listener.accept()
        if conn is None:
            return None
        flow = self._by_conn.get(id(conn))
        return flow.handle if flow is not None else TcpHandle(conn)

    def _config_for(
        self, iface: Interface, source: IpAddress, base: TcpConfig | None = None
    ) -> TcpConfig:
        header = IPV4_HLEN if source.version == 4 else IPV6_HLEN
        return replace(base or self.config, mss_bytes=max(536, iface.mtu - header - TCP_HLEN))

    def _ephemeral(self, local: bytes) -> int:
        rng = self.stack.rng
        for _ in range(64):
            port = rng.randrange(32768, 61000)
            if (local, port) not in self._ports_in_use:
                return port
        raise OSError(99, "no free local port")  # EADDRNOTAVAIL

    def _add(
        self,
        handle: TcpHandle,
        iface: Interface,
        *,
        next_hop: IpAddress,
        source: IpAddress,
        remote: IpAddress,
        lport: int,
        rport: int,
    ) -> _Flow:
        key = (source.packed, lport, remote.packed, rport)
        flow = _Flow(
            handle,
            key,
            iface,
            next_hop=next_hop,
            source=source,
            remote=remote,
            ports=(lport, rport),
        )
        if self.stack.ipsec:
            sa = self.stack.ipsec.outbound(source, remote, IPPROTO_TCP_NUM, lport, rport)
            if sa is not None:
                flow.sa = sa
                # Segments must still fit the link once ESP is around them.
                handle.conn.set_path_mtu(iface.mtu, flow.ip_header + TCP_HLEN + sa.max_overhead)
        self.flows[key] = flow
        self._by_conn[id(handle.conn)] = flow
        self._ports_in_use.add((source.packed, lport))
        return flow

    def _remove(self, flow: _Flow) -> None:
        if flow.memory is not None:
            flow.memory.close()
            flow.memory = None
        self.flows.pop(flow.key, None)
        self._by_conn.pop(id(flow.conn), None)
        self._ports_in_use.discard((flow.key[0], flow.key[1]))

    # -- receiving ------------------------------------------------------------------
    def input(
        self,
        iface: Interface,
        src: bytes,
        dst: bytes,
        segment: memoryview,
        *,
        segments: int,
        ce: bool,
        now_ns: int,
        cookie: bool = False,
    ) -> None:
        """One TCP segment (or GRO super-packet) addressed to us; checksum already trusted.

        ``cookie``: the device's DoS filter found this SYN over its SYN rate (a listener
        answers it with a SYN cookie).
        """
        if len(segment) < TCP_HLEN:
            self.stats.drops["truncated"] += 1
            return
        sport, dport, seq, ack, word, window = _TCP.unpack_from(segment)
        doff = (word >> 12) * 4
        if doff < TCP_HLEN or doff > len(segment):
            self.stats.drops["bad_data_offset"] += 1
            return
        seg = TcpSegmentIn(
            seq,
            ack,
            word & 0x1FF,
            window,
            segment[TCP_HLEN:doff],
            segment[doff:],
            segments,
            ce,
        )
        self.stats.segments_in += segments
        flow = self.flows.get((dst, dport, src, sport))
        if flow is not None:
            conn = flow.conn
            conn.on_segment(seg, now_ns)
            if conn.state is TcpState.CLOSED and seg.flags & 0x02 and flow.listener:
                # A SYN that ended a TIME-WAIT connection opens a new one (RFC 6191).
                self._collect(flow)
                self._remove(flow)
                self._to_listener(iface, src, dst, (sport, dport), seg, now_ns=now_ns)
                return
            # What it has to send goes out in ``poll``, after the received batch: one ACK
            # for what the batch brought (ACK aggregation, as mTCP does) and new data after
            # all of its ACKs; but at least one ACK per ``ACK_EVERY_BYTES`` within a batch.
            if conn.unacknowledged_bytes >= ACK_EVERY_BYTES:
                self._after(flow, now_ns)
            else:
                self._collect(flow)
            return
        self._to_listener(iface, src, dst, (sport, dport), seg, now_ns=now_ns, cookie=cookie)

    def _to_listener(
        self,
        iface: Interface,
        src: bytes,
        dst: bytes,
        ports: tuple[int, int],
        seg: TcpSegmentIn,
        *,
        now_ns: int,
        cookie: bool = False,
    ) -> None:
        sport, dport = ports
        listener = self.listeners.get((dst, dport))
        remote = _address(src)
        if listener is None:
            reply = reset_for(seg)
            if reply is not None:
                self.stats.resets_out += 1
                self.stack.send_tcp_reply(
                    reply, src=_address(dst), dst=remote, sport=dport, dport=sport, now_ns=now_ns
                )
            return
        result = listener.on_segment((remote, sport), seg, now_ns, cookie=cookie)
        if isinstance(result, TcpConnection):
            local = _address(dst)
            hop = self.stack.route(remote)
            handle = TcpHandle(result)
            flow = self._add(
                handle, iface, next_hop=hop.address, source=local, remote=remote, lport=dport,
                rport=sport,
            )  # fmt: skip
            flow.listener = (dst, dport)
            self._after(flow, now_ns)
        elif result is not None:
            self.stats.resets_out += 1
            self.stack.send_tcp_reply(
                result, src=_address(dst), dst=remote, sport=dport, dport=sport, now_ns=now_ns
            )

    # -- sending -------------------------------------------------------------------
    def _after(self, flow: _Flow, now_ns: int) -> None:
        """After anything happened to a connection: its events, then what it has to send."""
        self._collect(flow)
        if flow.conn.has_output():
            self._transmit(flow, now_ns)

    def _collect(self, flow: _Flow) -> None:
        conn = flow.conn
        event = conn.next_event()
        if event is None:
            return
        events = flow.handle.events
        while event is not None:
            events.append(event)
            if isinstance(event, Established):
                self._send_memory(flow)
            elif isinstance(event, Closed):
                self._remove(flow)
            event = conn.next_event()
        if self.on_events is not None:
            self.on_events(flow.handle)

    def _send_memory(self, flow: _Flow) -> None:
        """Move a new connection's (empty) send buffer into memory the device sends from,
        when it lends some; counted either way."""
        memory = None
        if flow.sa is None and flow.memory is None:
            memory = flow.iface.lend_send_memory(flow.conn.config.send_buffer_bytes)
        if memory is not None and flow.conn.use_send_memory(memory):
            flow.memory = memory
            self.stats.send_buffers_in_device += 1
            return
        if memory is not None:
            memory.close()
        self.stats.send_buffers_in_host += 1

    def _max_payload(self, flow: _Flow) -> int:
        """The largest payload one segment may carry: a super-packet when the device cuts,
        or when the send buffer is in the device's memory (the host cuts around it)."""
        mss = flow.conn.mss_bytes
        seg = flow.iface.segmentation
        if seg.tcp(flow.version):
            limit = min(seg.tcp_max_bytes or 65536, 65535) - flow.ip_header - TCP_HLEN - 40
            if seg.tcp_max_segments:
                limit = min(limit, seg.tcp_max_segments * mss)
        elif flow.memory is not None:
            limit = 65535 - flow.ip_header - TCP_HLEN - 40
        else:
            return mss
        return max(mss, limit - limit % mss)

    def _transmit(self, flow: _Flow, now_ns: int) -> None:
        out = flow.conn.poll_transmit(now_ns, max_payload_bytes=self._max_payload(flow))
        for segment in out:
            self._send(flow, segment, now_ns)

    def _send(self, flow: _Flow, out: TcpSegmentOut, now_ns: int) -> None:
        payload = out.payload
        size = len(payload)
        options = out.options
        head = bytearray(flow.header_len + len(options))
        ident = flow.ident
        flow.template.write(
            head,
            size,
            ident=ident,
            seq=out.seq,
            ack=out.ack,
            flags=out.flags,
            window=out.window,
            ecn=2 if out.ect else 0,  # ECT(0)
            options=options,
        )
        segments = out.segments
        flow.ident = (ident + segments) & 0xFFFF
        request = flow.request(size, out.mss, len(options), bool(out.flags & CWR))
        sa = flow.sa
        if sa is not None:
            seq = self.stack.ipsec.allocate(sa, segments if size > out.mss else 1, len(head) + size)
            if seq is None:
                return  # the SA cannot send (counted): TCP will try again, then give up
            request = request.encrypted(sa.handle, seq)
        self.stats.segments_out += segments
        if segments > 1:
            self.stats.super_packets_out += 1
        flow.iface.output(
            flow.next_hop,
            flow.ethertype,
            head,
            payload,
            request=request,
            now_ns=now_ns,
            source=flow.source,
        )

    def flush(self, handle: TcpHandle, now_ns: int) -> Interface | None:
        """Send what one connection has now, after an application call on it (a socket
        layer's fast path: no other connection is looked at); the interface to flush, or
        ``None`` when the connection has left the table."""
        flow = self._by_conn.get(id(handle.conn))
        if flow is None:
            return None
        self._after(flow, now_ns)
        return flow.iface

    def poll(self, now_ns: int) -> None:
        """Send what every connection has (after application calls)."""
        for flow in list(self.flows.values()):
            conn = flow.conn
            if conn.has_output():
                self._transmit(flow, now_ns)
            self._collect(flow)

    # -- timers and errors ------------------------------------------------------------
    def next_timer_ns(self) -> int | None:
        due: int | None = None
        for flow in self.flows.values():
            t = flow.conn.next_timer_ns()
            if t is not None and (due is None or t < due):
                due = t
        return due

    def on_timer(self, now_ns: int) -> None:
        for flow in list(self.flows.values()):
            t = flow.conn.next_timer_ns()
            if t is not None and t <= now_ns:
                flow.conn.on_timer(now_ns)
                self._after(flow, now_ns)

    def icmp_error(
        self,
        key: Key,
        kind: IcmpErrorKind | None,
        mtu: int | None,
        seq: int | None,
        now_ns: int,
    ) -> None:
        flow = self.flows.get(key)
        if flow is None:
            return
        if mtu is not None:
            flow.conn.set_path_mtu(mtu, flow.ip_header + TCP_HLEN)
        if kind is not None:
            flow.conn.on_icmp_error(kind, now_ns, seq=seq)
        self._after(flow, now_ns)

    def unreachable(self, key: Key, now_ns: int) -> None:
        """The next hop of a connection did not answer neighbour resolution."""
        self.icmp_error(key, IcmpErrorKind.HOST_UNREACHABLE, None, None, now_ns)

    def handles(self) -> Iterator[TcpHandle]:
        for flow in self.flows.values():
            yield flow.handle

    def as_dict(self) -> dict[str, object]:
        out = self.stats.as_dict()
        out["connections"] = len(self.flows)
        out["listeners"] = len(self.listeners)
        return out


def _address(packed: bytes) -> IpAddress:
    return IPv4Address(packed) if len(packed) == 4 else IPv6Address(packed)
