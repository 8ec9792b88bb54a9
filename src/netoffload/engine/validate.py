"""Validation of an untrusted virtio_net_hdr, as Linux does on a TAP write.

The rules, in the kernel's order:

* ``tun_get_user`` / ``tun_vnet_hdr_get`` (drivers/net/tun.c): a TAP frame is
  at least 14 bytes; with NEEDS_CSUM ``hdr_len`` is raised to
  ``csum_start + csum_offset + 2``; ``hdr_len`` may not exceed the frame and,
  when non-zero, may not be below 14.
* ``__virtio_net_hdr_to_skb`` (include/linux/virtio_net.h): known gso_type
  (ECN bit aside), gso_size non-zero; with NEEDS_CSUM the checksum field and
  the minimal L4 header lie in the frame and ``csum_start`` is at least 20
  (40 for TCPV6) bytes from the frame start (on TAP the skb still starts at
  the Ethernet header); UDP_L4 needs NEEDS_CSUM, csum_offset 6, no ECN bit,
  at most ``gso_size * 128`` payload bytes; TCP with NEEDS_CSUM needs
  csum_offset 16; gso_size 0xFFFF (GSO_BY_FRAGS) is refused. A frame whose
  length past ``p_off`` is not above gso_size is silently non-GSO.
* For a packet left GSO ("dodgy"), what ``inet_gso_segment`` /
  ``ipv6_gso_segment``, ``tcp4/6_gso_segment``, ``tcp_gso_segment`` and
  ``__udp_gso_segment`` check before cutting it: the network protocol and L4
  protocol match gso_type, ``csum_start`` is the L4 header, the TCP data
  offset is at least 5, the payload is longer than one segment.

TAP frames carry no network header offset at this point, so the kernel does
not dissect a GSO frame without NEEDS_CSUM on write; a protocol mismatch is
caught later, when it is segmented, which is where this module reports it.
"""

from __future__ import annotations

from typing import NamedTuple, TypeAlias

from netoffload.engine.dissect import (
    ETH_HLEN,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP_CSUM_OFFSET,
    TCP_HLEN,
    UDP_CSUM_OFFSET,
    UDP_HLEN,
    DissectError,
    Dissection,
    dissect,
)
from netoffload.offload.extension import GsoType
from netoffload.offload.stats import DropReason
from netoffload.offload.virtio import GSO_ECN, VirtioFlags, VirtioNetHdr

Buffer: TypeAlias = bytes | bytearray | memoryview

UDP_MAX_SEGMENTS = 128  # include/linux/udp.h since 6.10 (64 before)
GSO_BY_FRAGS = 0xFFFF
IPV4_MIN = 20
IPV6_MIN = 40

_NEEDS_CSUM = int(VirtioFlags.NEEDS_CSUM)
_NONE = int(GsoType.NONE)
_UDP = int(GsoType.UDP)
_UDP_L4 = int(GsoType.UDP_L4)
_TCPV6 = int(GsoType.TCPV6)
_KIND = {int(k): k for k in GsoType}
# The L4 header each segmentation kind needs; the keys are the known gso_types.
_THLEN = {
    int(GsoType.TCPV4): TCP_HLEN,
    _UDP: UDP_HLEN,
    _TCPV6: TCP_HLEN,
    _UDP_L4: UDP_HLEN,
}
_WANT_VERSION = {int(GsoType.TCPV4): 4, _TCPV6: 6}


class VnetPlan(NamedTuple):
    """What an accepted header asks for: segmentation (``gso``) and/or a checksum fill.

    ``kind`` is the segmentation kind (NONE when the frame is too small to be
    GSO, as the kernel decides); ``dissection`` is set when ``gso`` is. A
    named tuple: one is made for every header validated.
    """

    kind: GsoType
    gso_size: int
    needs_csum: bool
    csum_start: int
    csum_offset: int
    ecn: bool
    dissection: Dissection | None

    @property
    def gso(self) -> bool:
        return self.kind is not GsoType.NONE


class VnetHdrRejected(ValueError):
    """The header is refused; ``reason`` is the drop reason."""

    def __init__(self, reason: DropReason, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def _reject(reason: DropReason, message: str) -> VnetHdrRejected:
    return VnetHdrRejected(reason, message)


def plan_vnet_hdr(hdr: VirtioNetHdr, frame: Buffer) -> VnetPlan:
    """Validate ``hdr`` for ``frame`` and say what to do; raises ``VnetHdrRejected``."""
    # Runs on every TAP read and SoftNic transmit: plain ints throughout, enum
    # members only looked up (never constructed) for the plan.
    n = len(frame)
    needs_csum = bool(hdr.flags & _NEEDS_CSUM)
    gso_type, gso_size = hdr.gso_type, hdr.gso_size
    start, off = hdr.csum_start, hdr.csum_offset
    # -- tun.c ---------------------------------------------------------------
    if n < ETH_HLEN:
        raise _reject(DropReason.MALFORMED_FRAME, f"TAP frame of {n} bytes")
    hdr_len = hdr.hdr_len
    if needs_csum and start + off + 2 > hdr_len:
        hdr_len = start + off + 2
        if hdr_len > n:
            raise _reject(DropReason.CSUM_OFFSETS_INVALID, "checksum field lies past the frame")
    if hdr_len > n:
        raise _reject(DropReason.BAD_VNET_HDR, f"hdr_len {hdr_len} exceeds the {n}-byte frame")
    if hdr_len and hdr_len < ETH_HLEN:
        raise _reject(DropReason.BAD_VNET_HDR, f"hdr_len {hdr_len} is shorter than Ethernet")
    # -- virtio_net_hdr_to_skb ---------------------------------------------
    raw = _NONE
    thlen = 0
    nh_min = IPV4_MIN
    ecn = bool(gso_type & GSO_ECN)
    if gso_type:
        raw = gso_type & ~GSO_ECN
        if raw not in _THLEN:
            raise _reject(DropReason.BAD_VNET_HDR, f"unknown gso_type {gso_type:#x}")
        thlen = _THLEN[raw]
        if raw == _TCPV6:
            nh_min = IPV6_MIN
        if gso_size == 0:
            raise _reject(DropReason.GSO_SIZE_INVALID, "gso_size is 0")
    p_off = 0
    if needs_csum:
        if start + max(thlen, off + 2) > n:
            raise _reject(DropReason.CSUM_OFFSETS_INVALID, "checksum field lies past the frame")
        if start < nh_min:
            raise _reject(DropReason.CSUM_OFFSETS_INVALID, f"csum_start {start} is below {nh_min}")
        p_off = start + thlen
    elif raw != _NONE:
        p_off = nh_min + thlen
        if p_off > n:
            raise _reject(DropReason.MALFORMED_FRAME, "frame too short for its gso_type")
    if raw == _NONE:
        return VnetPlan(GsoType.NONE, gso_size, needs_csum, start, off, ecn, None)
    nh_off = p_off
    if raw == _UDP:
        nh_off -= thlen  # UFO's gso_size need not include the UDP header
    elif raw == _UDP_L4:
        if not needs_csum:
            raise _reject(DropReason.BAD_VNET_HDR, "UDP_L4 segmentation without NEEDS_CSUM")
        if off != UDP_CSUM_OFFSET:
            raise _reject(DropReason.CSUM_OFFSETS_INVALID, f"UDP csum_offset {off}, not 6")
        if n - p_off > gso_size * UDP_MAX_SEGMENTS:
            raise _reject(DropReason.TOO_MANY_SEGMENTS, f"more than {UDP_MAX_SEGMENTS} segments")
        if ecn:
            raise _reject(DropReason.BAD_VNET_HDR, "ECN bit on UDP_L4 segmentation")
    elif needs_csum and off != TCP_CSUM_OFFSET:
        raise _reject(DropReason.CSUM_OFFSETS_INVALID, f"TCP csum_offset {off}, not 16")
    if gso_size == GSO_BY_FRAGS:
        raise _reject(DropReason.GSO_SIZE_INVALID, "gso_size 0xFFFF (GSO_BY_FRAGS)")
    if n - nh_off <= gso_size:
        # "Too small packets are not really GSO ones": sent as one packet.
        return VnetPlan(GsoType.NONE, gso_size, needs_csum, start, off, ecn, None)
    d = _check_dodgy(raw, gso_size, needs_csum, start, frame)
    return VnetPlan(_KIND[raw], gso_size, needs_csum, start, off, ecn, d)


def _check_dodgy(raw: int, mss: int, needs_csum: bool, start: int, frame: Buffer) -> Dissection:
    """The header re-checks the kernel's segmentation code makes on an untrusted packet."""
    try:
        d = dissect(frame)
    except DissectError as exc:
        raise _reject(exc.reason, str(exc)) from None
    want_version = _WANT_VERSION.get(raw)
    want_proto = IPPROTO_TCP if want_version is not None else IPPROTO_UDP
    if (want_version is not None and d.version != want_version) or d.protocol != want_proto:
        raise _reject(
            DropReason.GSO_TYPE_MISMATCH,
            f"gso_type {_KIND[raw].name} on an IPv{d.version} packet of protocol {d.protocol}",
        )
    if d.fragment or d.l4_header_len == 0:
        raise _reject(DropReason.GSO_TYPE_MISMATCH, "an IP fragment cannot be segmented")
    if needs_csum and start != d.l4:
        raise _reject(
            DropReason.CSUM_OFFSETS_INVALID, f"csum_start {start} is not the L4 header at {d.l4}"
        )
    n = len(frame)
    if want_proto == IPPROTO_TCP and n - d.payload <= mss:
        raise _reject(DropReason.GSO_SIZE_INVALID, "TCP payload is not longer than gso_size")
    if raw == _UDP_L4 and n - d.l4 <= UDP_HLEN + mss:
        raise _reject(DropReason.GSO_SIZE_INVALID, "UDP payload is not longer than gso_size")
    return d


def check_vnet_hdr(hdr: VirtioNetHdr, frame: Buffer) -> DropReason | None:
    """The reason Linux would refuse ``hdr`` on a TAP write of ``frame``, or ``None``.

    Includes what segmentation later re-checks for an untrusted GSO packet.
    Never raises.
    """
    try:
        plan_vnet_hdr(hdr, frame)
    except VnetHdrRejected as exc:
        return exc.reason
    return None
