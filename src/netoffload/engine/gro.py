"""Receive assembly (GRO) of TCP and UDP, exactly as Linux's software GRO.

One call is one NAPI poll: frames are taken in order, held flows are
completed when the kernel would complete them, and whatever is still held at
the end is flushed oldest first (``napi_gro_flush``). Output order is the
order in which Linux hands packets to the stack: a frame GRO does not hold
comes out at once; a super-packet comes out when it is completed (before the
frame that completed it, when that frame is not merged).

Sources: ``dev_gro_receive``/``gro_list_prepare`` (net/core/gro.c),
``inet_gro_receive``/``inet_gro_complete`` (net/ipv4/af_inet.c),
``ipv6_gro_receive`` (net/ipv6/ip6_offload.c), ``inet_gro_flush``/
``ipv6_gro_flush`` (include/net/gro.h), ``tcp_gro_receive``/
``tcp_gro_complete``/``tcp4_gro_complete`` (net/ipv4/tcp_offload.c),
``udp_gro_receive_segment``/``udp4_gro_complete`` (net/ipv4/udp_offload.c),
``virtio_net_hdr_from_skb`` (include/linux/virtio_net.h). Kernel facts used:

* Not looked at all (passed up at once, held flows untouched): non-IP,
  IPv4 with options or fragment bits, a bad IPv4 header checksum, IPv6 with a
  fragment header, another L4 protocol, a bad L4 checksum, a TCP header that
  cannot be pulled, UDP with checksum 0 or a UDP length not equal to the bytes.
* Same flow: same L2 header bytes, addresses, protocol, ports; for IPv6 also
  the flow label and identical extension headers.
* The packet is "flushed" (never merged, and it completes its flow's held
  packet) when its IP length disagrees with the frame or the IPv4 reserved
  bit is set.
* A same-flow packet that does not merge completes the held one and is then
  held itself (unless it must be flushed): TTL/TOS/DF (IPv6 TC/hop limit)
  differ; IPv4 ID is not first + count (or, fixed-ID decided on the second
  packet when DF is set and the ID is unchanged, not equal); TCP: CWR set,
  doff/flags (other than CWR/FIN/PSH)/window, ack or option bytes differ,
  seq not contiguous, payload empty or longer than the first's (gso_size),
  result would reach 64 KiB (L3 length + payload >= GRO max size).
* TCP URG/PSH/RST/SYN/FIN, or a payload shorter than gso_size, merges and
  completes the super-packet; such a packet with no held flow passes alone.
* UDP: a longer datagram completes the held one and starts anew; a shorter
  merges and completes; at most 64 (UDP_GRO_CNT_MAX).
* Completion: first packet's headers; IPv4 total length (checksum updated
  with csum_replace2) / IPv6 payload length; TCP flags |= merged FIN/PSH;
  UDP length; the L4 checksum field holds the pseudo-header sum for the new
  length (CHECKSUM_PARTIAL). A held packet that merged nothing is passed up
  unchanged (validated: DATA_VALID on a TAP read).
* GSO type TCPV4/TCPV6 (+ECN when the first segment has CWR) or UDP_L4;
  gso_size = the first segment's payload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from netoffload.engine import gro_rows
from netoffload.engine.checksum import VerifyResult, verify_batch
from netoffload.engine.dissect import IPPROTO_TCP, Dissection
from netoffload.engine.gro_base import (
    ETH_HLEN,
    GRO_MAX_SIZE,
    MAX_GRO_SKBS,
    TCP_CWR,
    TCP_ENDS,
    TCP_FIN,
    TCP_FLAGS_MAY_DIFFER,
    TCP_PSH,
    UDP_GRO_CNT_MAX,
    Assembled,
    Seen,
    complete_head,
    look,
)
from netoffload.offload.extension import ChecksumRequest, GsoType, SegmentationRequest
from netoffload.offload.virtio import VirtioNetHdr

Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = [
    "GRO_MAX_SIZE",
    "MAX_GRO_SKBS",
    "UDP_GRO_CNT_MAX",
    "Assembled",
    "assemble",
    "assemble_scalar",
    "coalesce",
    "verify_and_assemble",
]


@dataclass(slots=True)
class _Held:
    """A held packet (``p`` in the kernel) and, read once, what merging into it compares."""

    index: int
    first: Buffer
    d: Dissection
    gso_size: int
    p_len: int
    net: tuple[int, int, int]  # (TTL / hop limit, TOS / traffic class, DF bit)
    ident: int  # IPv4 ID (0 for IPv6)
    same: tuple[bytes, ...]  # TCP header bytes a merged segment must repeat
    flags: int  # TCP flags
    seq: int  # TCP sequence number
    ulen: int  # UDP length
    payloads: list[memoryview] = field(default_factory=list)
    count: int = 1
    payload_total: int = 0
    merged_flags: int = 0
    fixed_id: bool = False


def _network_fields(h: bytes, d: Dissection) -> tuple[tuple[int, int, int], int]:
    """((ttl/hop limit, tos/traffic class, DF bit), IPv4 ID) of a frame's headers ``h``."""
    l3 = d.l3
    if d.version == 4:
        return (h[l3 + 8], h[l3 + 1], h[l3 + 6] & 0x40), (h[l3 + 4] << 8) | h[l3 + 5]
    return (h[l3 + 7], ((h[l3] & 0x0F) << 4) | (h[l3 + 1] >> 4), 0), 0


def _tcp_same(h: bytes, d: Dissection) -> tuple[bytes, ...]:
    """Ack, data offset, window and options: what every merged TCP segment must repeat.

    (The flags are compared apart, as some may differ; checksum and urgent
    pointer are not compared.)
    """
    l4 = d.l4
    return h[l4 + 8 : l4 + 13], h[l4 + 14 : l4 + 16], h[l4 + 20 : d.payload]


def _id_flush(p: _Held, ident: int, df: int) -> bool:
    """The IPv4 ID rule of ``inet_gro_flush``; may decide the flow is fixed-ID."""
    offset = (ident - p.ident) & 0xFFFF
    if p.count == 1 and df and offset == 0:
        p.fixed_id = True
    if p.fixed_id and df:
        return offset != 0
    return offset != (p.count & 0xFFFF)


def _be16(h: Buffer, offset: int) -> int:
    return (h[offset] << 8) | h[offset + 1]


class _Gro:
    """The state of one NAPI poll."""

    def __init__(
        self,
        verified: VerifyResult,
        *,
        tcp: bool,
        udp: bool,
        max_size: int,
        max_segments: int | None,
        max_flows: int,
    ) -> None:
        # Plain ints: one status look-up per frame.
        self.hdr_status: list[int] = verified.ipv4_header.tolist()
        self.l4_status: list[int] = verified.l4.tolist()
        self.tcp, self.udp = tcp, udp
        self.max_size = max_size
        self.max_segments = max_segments
        self.max_flows = max_flows
        self.held: dict[tuple[object, ...], _Held] = {}
        self.out: list[Assembled] = []

    # -- delivery ------------------------------------------------------------
    def alone(self, frame: Buffer, i: int, validated: bool = False) -> None:
        self.out.append(Assembled(frame, i, validated=validated))

    def complete(self, key: tuple[object, ...]) -> None:
        p = self.held.pop(key)
        self.out.append(_complete(p))

    def hold(self, key: tuple[object, ...], frame: Buffer, h: bytes, i: int, d: Dissection) -> None:
        if len(self.held) >= self.max_flows:
            self.complete(next(iter(self.held)))
        net, ident = _network_fields(h, d)
        tcp = d.protocol == IPPROTO_TCP
        payload_len = len(frame) - d.payload
        self.held[key] = _Held(
            index=i,
            first=frame,
            d=d,
            gso_size=payload_len,
            p_len=len(frame) - ETH_HLEN,
            net=net,
            ident=ident,
            same=_tcp_same(h, d) if tcp else (),
            flags=h[d.l4 + 13] if tcp else 0,
            seq=int.from_bytes(h[d.l4 + 4 : d.l4 + 8], "big") if tcp else 0,
            ulen=0 if tcp else _be16(h, d.l4 + 4),
            payload_total=payload_len,
        )

    def finish(self) -> list[Assembled]:
        for key in list(self.held):
            self.complete(key)
        return self.out

    # -- one frame -----------------------------------------------------------
    def receive(self, frame: Buffer, i: int) -> None:
        """IP-layer checks, checksum validation, header pull, then the flow's merge rules."""
        seen = look(frame, i, self.hdr_status[i], self.l4_status[i], tcp=self.tcp, udp=self.udp)
        if isinstance(seen, Seen):
            if seen.d.protocol == IPPROTO_TCP:
                self._tcp(frame, seen.h, i, seen.d, key=seen.key, flush=seen.flush)
            else:
                self._udp(frame, seen.h, i, seen.d, key=seen.key, flush=seen.flush)
        else:
            self.out.append(seen)

    def _network_flush(self, h: bytes, d: Dissection, p: _Held) -> bool:
        """``inet_gro_flush`` / ``ipv6_gro_flush``; may decide the flow is fixed-ID."""
        net, ident = _network_fields(h, d)
        if net != p.net:
            return True
        return d.version == 4 and _id_flush(p, ident, net[2])

    def _tcp(
        self,
        frame: Buffer,
        h: bytes,
        i: int,
        d: Dissection,
        *,
        key: tuple[object, ...],
        flush: bool,
    ) -> None:
        l4 = d.l4
        length = len(frame) - d.payload
        flags = h[l4 + 13]
        p = self.held.get(key)
        if p is None:
            if flush or length < 1 or flags & TCP_ENDS:
                self.alone(frame, i, not flush)
            else:
                self.hold(key, frame, h, i, d)
            return
        net, ident = _network_fields(h, d)
        # Cheap tests first. The IPv4 ID test comes last: it may mark the flow
        # fixed-ID, which only matters once this packet merges.
        if (
            flags & TCP_CWR
            or (flags ^ p.flags) & ~TCP_FLAGS_MAY_DIFFER
            or flush
            or not 1 <= length <= p.gso_size
            or p.p_len + length >= self.max_size
            or net != p.net
            or (p.seq + p.payload_total) & 0xFFFFFFFF != int.from_bytes(h[l4 + 4 : l4 + 8], "big")
            or _tcp_same(h, d) != p.same
            or (d.version == 4 and _id_flush(p, ident, net[2]))
        ):
            self.complete(key)
            if flush or flags & TCP_ENDS:
                self.alone(frame, i, not flush)
            else:
                self.hold(key, frame, h, i, d)
            return
        p.payloads.append(memoryview(frame)[d.payload :])
        p.count += 1
        p.payload_total += length
        p.p_len += length
        p.merged_flags |= flags & (TCP_FIN | TCP_PSH)
        if length < p.gso_size or flags & TCP_ENDS or self._full(p, 0xFFFF):
            self.complete(key)

    def _udp(
        self,
        frame: Buffer,
        h: bytes,
        i: int,
        d: Dissection,
        *,
        key: tuple[object, ...],
        flush: bool,
    ) -> None:
        ulen = _be16(h, d.l4 + 4)
        p = self.held.get(key)
        if p is None:
            if flush:
                self.alone(frame, i)
            else:
                self.hold(key, frame, h, i, d)
            return
        payload_len = len(frame) - d.payload
        net_flush = self._network_flush(h, d, p)
        if ulen > p.ulen or net_flush:
            merged = False
        else:
            merged = not flush and p.p_len + payload_len < self.max_size
            if merged:
                self._merge(p, frame, d, payload_len)
        if not merged or ulen != p.ulen or self._full(p, UDP_GRO_CNT_MAX):
            self.complete(key)
        if not merged:
            if flush:
                self.alone(frame, i)
            else:
                self.hold(key, frame, h, i, d)

    def _merge(self, p: _Held, frame: Buffer, d: Dissection, length: int) -> None:
        p.payloads.append(memoryview(frame)[d.payload : d.payload + length])
        p.count += 1
        p.payload_total += length
        p.p_len += length

    def _full(self, p: _Held, limit: int) -> bool:
        if self.max_segments is not None:
            limit = min(limit, self.max_segments)
        return p.count >= limit


def _complete(p: _Held) -> Assembled:
    """``napi_gro_complete``: build the super-packet, or pass a lone packet up unchanged."""
    d = p.d
    if p.count == 1:
        return Assembled(p.first, p.index, 1, d.version, d.protocol, validated=True)
    # The new lengths are known before joining: patch the first packet's headers,
    # then copy every payload once.
    first = memoryview(p.first)
    head = bytearray(first[: d.payload])
    l4, offset, ecn = complete_head(head, d, d.payload + p.payload_total, p.merged_flags)
    if d.protocol == IPPROTO_TCP:
        kind = GsoType.TCPV4 if d.version == 4 else GsoType.TCPV6
    else:
        kind = GsoType.UDP_L4
    data = b"".join([head, first[d.payload :], *p.payloads])
    seg = SegmentationRequest(kind, p.gso_size, d.payload, ecn, p.fixed_id and d.version == 4)
    csum = ChecksumRequest(l4, offset)
    return Assembled(data, p.index, p.count, d.version, d.protocol, True, seg, csum)


def assemble(
    frames: Sequence[Buffer],
    *,
    tcp: bool = True,
    udp: bool = True,
    verified: VerifyResult | None = None,
    max_size: int = GRO_MAX_SIZE,
    max_segments: int | None = None,
    max_flows: int = MAX_GRO_SKBS,
) -> list[Assembled]:
    """Run GRO over one batch (one NAPI poll); see the module docstring.

    ``verified`` is the batch's ``verify_batch`` result when the caller has
    it already. ``max_segments`` caps a super-packet's segments (Linux has
    no cap for TCP beyond the size; UDP is capped at 64 regardless).

    A batch of mostly one TCP layout takes the column path (``gro_rows``);
    whatever that path declines takes ``assemble_scalar``. Same result.
    """
    _, units = _assemble(
        frames,
        tcp=tcp,
        udp=udp,
        verified=verified,
        max_size=max_size,
        max_segments=max_segments,
        max_flows=max_flows,
    )
    return units


def verify_and_assemble(
    frames: Sequence[Buffer],
    *,
    tcp: bool = True,
    udp: bool = True,
    max_size: int = GRO_MAX_SIZE,
    max_segments: int | None = None,
    max_flows: int = MAX_GRO_SKBS,
) -> tuple[VerifyResult, list[Assembled]]:
    """``verify_batch(frames)`` and ``assemble(frames, verified=...)`` in one pass.

    The column path lays the batch out once for both, so the checksums cost
    one pass over the bytes; the ``VerifyResult`` equals ``verify_batch``'s.
    """
    return _assemble(
        frames,
        tcp=tcp,
        udp=udp,
        verified=None,
        max_size=max_size,
        max_segments=max_segments,
        max_flows=max_flows,
    )


def _assemble(
    frames: Sequence[Buffer],
    *,
    tcp: bool,
    udp: bool,
    verified: VerifyResult | None,
    max_size: int,
    max_segments: int | None,
    max_flows: int,
) -> tuple[VerifyResult, list[Assembled]]:
    prepared = gro_rows.prepare(frames) if tcp else None
    if prepared is not None:
        if verified is None:
            verified = gro_rows.verify(prepared)
        units = gro_rows.assemble_prepared(
            prepared,
            verified,
            udp=udp,
            max_size=max_size,
            max_segments=max_segments,
            max_flows=max_flows,
        )
        if units is not None:
            return verified, units
    if verified is None:
        verified = verify_batch(frames)
    units = assemble_scalar(
        frames,
        tcp=tcp,
        udp=udp,
        verified=verified,
        max_size=max_size,
        max_segments=max_segments,
        max_flows=max_flows,
    )
    return verified, units


def assemble_scalar(
    frames: Sequence[Buffer],
    *,
    tcp: bool = True,
    udp: bool = True,
    verified: VerifyResult | None = None,
    max_size: int = GRO_MAX_SIZE,
    max_segments: int | None = None,
    max_flows: int = MAX_GRO_SKBS,
) -> list[Assembled]:
    """``assemble`` one frame at a time, every rule in the kernel's order.

    The exact path for any batch, and the one the column path is tested against.
    """
    if verified is None:
        verified = verify_batch(frames)
    gro = _Gro(
        verified,
        tcp=tcp,
        udp=udp,
        max_size=max_size,
        max_segments=max_segments,
        max_flows=max_flows,
    )
    for i, frame in enumerate(frames):
        gro.receive(frame, i)
    return gro.finish()


def coalesce(
    frames: Sequence[Buffer],
    *,
    tcp: bool = True,
    udp: bool = True,
    max_size: int = GRO_MAX_SIZE,
    max_segments: int | None = None,
) -> list[tuple[VirtioNetHdr, bytes]]:
    """GRO a batch; each output frame with the virtio_net_hdr a TAP read would show.

    ``[f for h, b in coalesce(x) for f in segment(b, h)] == x`` for frames of
    mergeable flows with incrementing IPv4 IDs.
    """
    units = assemble(frames, tcp=tcp, udp=udp, max_size=max_size, max_segments=max_segments)
    return [(u.vnet_hdr(), bytes(u.data)) for u in units]
