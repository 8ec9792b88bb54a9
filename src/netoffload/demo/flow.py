"""A simple flow generator and sink: one direction of a bulk transfer as super-packets.

This is not a TCP connection (no handshake, no acks, no retransmission): it
cuts a byte stream into TCP super-packets (or UDP super-datagrams) with the
headers and the per-packet offload request a real stack would produce, and
the sink puts received payload back in place by sequence number (UDP:
by the stream offset each datagram carries in its first 8 bytes).

Headers come from a per-flow template built once from the wire Reprs
(``FlowTemplate``) and are written into the caller's buffer (a SoftNic pool
slot on the zero-copy path) with the few fields that change patched; the
payload is one copy from the stream. Requests come from the builders
(``TxRequest.segment_l4`` / ``checksum_l4``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import numpy as np
import numpy.typing as npt

from netoffload.engine.dissect import try_dissect
from netoffload.offload import ChecksumStatus, Packet, TxRequest
from netoffload.wire import (
    EthernetFrame,
    EthernetRepr,
    EtherType,
    FlowTemplate,
    IpProtocol,
    Ipv4Packet,
    Ipv4Repr,
    Ipv6Packet,
    Ipv6Repr,
    MacAddress,
    TcpFlags,
    TcpPacket,
    TcpRepr,
    UdpRepr,
    WireError,
)

ETH_LEN = 14
TCP_LEN = 20
UDP_LEN = 8
# A datagram's first bytes: its offset in the stream (UDP has no sequence number).
UDP_TAG = struct.Struct("!Q")

SRC_MAC = MacAddress.parse("02:00:00:00:00:01")
DST_MAC = MacAddress.parse("02:00:00:00:00:02")
SRC_V4 = IPv4Address("198.18.0.1")
DST_V4 = IPv4Address("198.18.0.2")
SRC_V6 = IPv6Address("fd00::1")
DST_V6 = IPv6Address("fd00::2")


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """One flow: protocol, IP version, segment size and super-packet size.

    ``segment_bytes`` is the MSS (TCP) or the datagram payload size (UDP,
    which includes the 8-byte stream tag); a super-packet carries up to
    ``segments`` of them.
    """

    protocol: str = "tcp"
    ipv6: bool = False
    segment_bytes: int = 1448
    segments: int = 45
    src_port: int = 40000
    dst_port: int = 5201
    isn: int = 1_000_000

    def __post_init__(self) -> None:
        if self.protocol not in ("tcp", "udp"):
            raise ValueError("protocol must be tcp or udp")
        if self.protocol == "udp" and self.segment_bytes <= UDP_TAG.size:
            raise ValueError("a UDP segment must have room for its 8-byte stream tag")
        if self.segment_bytes < 1 or self.segments < 1:
            raise ValueError("segment_bytes and segments must be positive")

    @property
    def l3_len(self) -> int:
        return 40 if self.ipv6 else 20

    @property
    def l4_offset(self) -> int:
        return ETH_LEN + self.l3_len

    @property
    def header_len(self) -> int:
        return self.l4_offset + (TCP_LEN if self.protocol == "tcp" else UDP_LEN)

    @property
    def data_per_segment(self) -> int:
        """Stream bytes one segment carries."""
        tag = UDP_TAG.size if self.protocol == "udp" else 0
        return self.segment_bytes - tag

    @property
    def ip_protocol(self) -> IpProtocol:
        return IpProtocol.TCP if self.protocol == "tcp" else IpProtocol.UDP

    def template(self) -> FlowTemplate:
        """The flow's headers, built once from the Reprs."""
        ethertype = EtherType.IPV6 if self.ipv6 else EtherType.IPV4
        ethernet = EthernetRepr(DST_MAC, SRC_MAC, ethertype)
        ip: Ipv4Repr | Ipv6Repr
        if self.ipv6:
            ip = Ipv6Repr(SRC_V6, DST_V6, self.ip_protocol, 0)
        else:
            ip = Ipv4Repr(SRC_V4, DST_V4, self.ip_protocol, 0, dont_frag=True)
        transport: TcpRepr | UdpRepr
        if self.protocol == "tcp":
            transport = TcpRepr(self.src_port, self.dst_port, self.isn, 1, TcpFlags.ACK, 65535)
        else:
            transport = UdpRepr(self.src_port, self.dst_port)
        return FlowTemplate(ethernet, ip, transport)


class BulkFlowGenerator:
    """Cuts ``stream`` into super-packets of ``spec``; ``write`` builds packet ``i`` in place."""

    def __init__(self, stream: bytes | bytearray | memoryview, spec: FlowSpec) -> None:
        self.stream = memoryview(stream).cast("B")
        self.spec = spec
        self.template = spec.template()
        per_packet = spec.data_per_segment * spec.segments
        self.chunks = [
            (start, min(per_packet, len(self.stream) - start))
            for start in range(0, len(self.stream), per_packet)
        ]
        self._ident = [0] * len(self.chunks)
        ident = 0
        for i, (_, size) in enumerate(self.chunks):
            self._ident[i] = ident
            ident = (ident + -(-size // spec.data_per_segment)) & 0xFFFF
        layout = self.template.layout
        version = 6 if spec.ipv6 else 4
        # Linux sends a payload of at most gso_size as a plain packet: no segmentation asked.
        self._whole = TxRequest.checksum_l4(l4_offset=layout.l4_offset, protocol=spec.ip_protocol)
        self._segmented = TxRequest.segment_l4(
            l4_offset=layout.l4_offset,
            protocol=spec.ip_protocol,
            ip_version=version,
            mss=spec.segment_bytes,
            header_len=layout.header_len,
        )

    def __len__(self) -> int:
        return len(self.chunks)

    def frame_len(self, index: int) -> int:
        """The length of super-packet ``index``."""
        size = self.chunks[index][1]
        return self.spec.header_len + self._wire_payload(size)

    def _wire_payload(self, size: int) -> int:
        spec = self.spec
        if spec.protocol == "tcp":
            return size
        return size + UDP_TAG.size * -(-size // spec.data_per_segment)

    def request(self, index: int) -> TxRequest:
        """The offload request for packet ``index``: checksum, and segmentation when it is
        longer than one segment."""
        payload = self._wire_payload(self.chunks[index][1])
        return self._segmented if payload > self.spec.segment_bytes else self._whole

    def write(self, into: memoryview | bytearray, index: int) -> Packet:
        """Build super-packet ``index`` at the start of ``into``; returns it as a Packet."""
        spec = self.spec
        start, size = self.chunks[index]
        payload = self._wire_payload(size)
        ident = self._ident[index]
        if spec.protocol == "tcp":
            seq = (spec.isn + start) & 0xFFFFFFFF
            hdr = self.template.write(into, payload, ident=ident, seq=seq, ack=1)
            into[hdr : hdr + size] = self.stream[start : start + size]
        else:
            hdr = self.template.write(into, payload, ident=ident)
            _write_tagged(into, hdr, self.stream, start, size, step=spec.data_per_segment)
        total = hdr + payload
        view = into if isinstance(into, memoryview) else memoryview(into)
        return Packet(view[:total], self.request(index))


class FlowSink:
    """Puts received payload back in stream order and counts what arrived."""

    def __init__(self, spec: FlowSpec, total_bytes: int) -> None:
        self.spec = spec
        self.buffer = bytearray(total_bytes)
        self._view = memoryview(self.buffer)
        self._array = np.frombuffer(self.buffer, dtype=np.uint8)
        # Fault the pages in now (a large bytearray is mapped lazily), so the first write
        # of each page is not charged to whoever receives into it.
        self._array[::4096] = 0
        self.bytes_received = 0
        self.packets = 0
        self.checksum_failed = 0
        self.not_mine = 0

    def accept(self, packets: Iterable[Packet]) -> None:
        """Take a batch of received packets (super-packets or single segments)."""
        tcp = self.spec.protocol == "tcp"
        isn = self.spec.isn
        dest = self._view
        total = len(dest)
        failed = ChecksumStatus.FAILED
        for packet in packets:
            data = packet.data
            if packet.rx.l4 is failed:
                self.checksum_failed += 1
                continue
            # The engine's dissector: the fast reading the wire views are proven to share.
            d = try_dissect(data)
            if d is None or d.l4_header_len == 0:
                self.not_mine += 1
                continue
            self.packets += 1
            end = min(len(data), d.ip_end)
            if tcp:
                seq = int.from_bytes(data[d.l4 + 4 : d.l4 + 8], "big")
                offset = (seq - isn) & 0xFFFFFFFF
                n = end - d.payload
                if n > 0 and offset + n <= total:
                    dest[offset : offset + n] = data[d.payload : end]
                    self.bytes_received += n
                continue
            assembled = packet.rx.assembled
            body = data[d.payload : end]
            step = assembled.size if assembled is not None else len(body)
            self.bytes_received += _read_tagged(body, step, self._array)

    def verified_bytes(self, stream: bytes | bytearray | memoryview) -> int:
        """How many stream bytes arrived intact (all of them, or 0 when anything differs)."""
        if self.bytes_received != len(stream) or self.buffer != stream:
            return 0
        return len(stream)


def _write_tagged(
    into: memoryview | bytearray, at: int, stream: memoryview, start: int, size: int, *, step: int
) -> None:
    """Lay ``stream[start:start+size]`` out as UDP payloads of ``step`` stream bytes, each
    behind its 8-byte stream offset: full datagrams as rows of one matrix, no loop per datagram."""
    full, rest = divmod(size, step)
    width = UDP_TAG.size + step
    if full:
        rows = np.frombuffer(into, dtype=np.uint8, count=full * width, offset=at)
        rows = rows.reshape(full, width)
        tags = (start + step * np.arange(full, dtype=np.uint64)).astype(">u8")
        rows[:, : UDP_TAG.size] = tags.view(np.uint8).reshape(full, UDP_TAG.size)
        data = np.frombuffer(stream, dtype=np.uint8, count=full * step, offset=start)
        rows[:, UDP_TAG.size :] = data.reshape(full, step)
    if rest:
        at += full * width
        offset = start + full * step
        UDP_TAG.pack_into(into, at, offset)
        into[at + UDP_TAG.size : at + UDP_TAG.size + rest] = stream[offset : offset + rest]


def _read_tagged(
    body: bytes | bytearray | memoryview, step: int, dest: npt.NDArray[np.uint8]
) -> int:
    """Put the tagged datagrams of ``body`` (each ``step`` bytes, the last maybe shorter)
    where their tags say; returns the stream bytes placed.

    A run of full datagrams with consecutive tags (what a coalesced super-packet
    holds) is copied as one matrix; anything else one datagram at a time.
    """
    tag = UDP_TAG.size
    if step <= tag:
        return 0
    full = len(body) // step
    placed = 0
    done = 0
    if full > 1:
        rows = np.frombuffer(body, dtype=np.uint8, count=full * step).reshape(full, step)
        offsets = rows[:, :tag].copy().view(">u8").ravel()
        per = step - tag
        first = int(offsets[0])
        end = first + full * per
        if end <= len(dest) and bool((offsets == first + per * np.arange(full)).all()):
            dest[first:end].reshape(full, per)[:] = rows[:, tag:]
            placed, done = full * per, full * step
    for at in range(done, len(body), step):
        chunk = body[at : at + step]
        if len(chunk) <= tag:
            continue
        (offset,) = UDP_TAG.unpack_from(chunk, 0)
        n = len(chunk) - tag
        if offset + n <= len(dest):
            dest[offset : offset + n] = np.frombuffer(chunk, dtype=np.uint8, offset=tag)
            placed += n
    return placed


def _l4_span(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(start of the L4 header, end of the IP packet), or (-1, -1) when not IPv4/IPv6."""
    try:
        frame = EthernetFrame.checked(data)
        if frame.ethertype == EtherType.IPV4:
            ip4 = Ipv4Packet.checked(frame.payload)
            l4 = frame.header_len + ip4.header_len
            return l4, frame.header_len + ip4.total_len
        if frame.ethertype == EtherType.IPV6:
            ip6 = Ipv6Packet.checked(frame.payload)
            return frame.header_len + 40, frame.header_len + 40 + ip6.payload_len
    except WireError:
        pass
    return -1, -1


def build_all(gen: BulkFlowGenerator) -> list[Packet]:
    """Every super-packet of ``gen`` in its own bytearray (tests and small runs)."""
    out = []
    for i in range(len(gen)):
        out.append(gen.write(bytearray(gen.frame_len(i)), i))
    return out


def payload_of(frames: Sequence[bytes]) -> bytes:
    """Concatenated L4 payload of single TCP segments (a test helper)."""
    parts = []
    for frame in frames:
        l4, end = _l4_span(frame)
        parts.append(bytes(TcpPacket.checked(memoryview(frame)[l4:end]).payload))
    return b"".join(parts)
