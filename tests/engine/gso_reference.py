"""Segmentation written out one segment at a time, as the kernel rules read.

The engine computes every segment's fields as NumPy columns; this is the
plain per-segment form it must agree with byte for byte.
"""

from __future__ import annotations

import struct

from netoffload.engine.checksum import complement_for_wire, ipv4_header_checksum
from netoffload.engine.validate import plan_vnet_hdr
from netoffload.offload.virtio import VirtioNetHdr
from netoffload.wire.checksum import add16, fold32, ones_sum, pseudo_header_sum

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def reference_segments(frame: bytes, hdr: VirtioNetHdr, *, fixed_id: bool = False) -> list[bytes]:
    """The segments of a GSO super-packet (TCP or UDP_L4) that ``plan_vnet_hdr`` accepts."""
    plan = plan_vnet_hdr(hdr, frame)
    d = plan.dissection
    assert d is not None
    l3, l4, hdr_end, mss = d.l3, d.l4, d.payload, plan.gso_size
    tcp = d.protocol == 6
    old_len = len(frame) - l4
    if tcp and plan.needs_csum:
        (check,) = _U16.unpack_from(frame, l4 + 16)
    elif tcp:
        a, w = (l3 + 12, 4) if d.version == 4 else (l3 + 8, 16)
        check = pseudo_header_sum(frame[a : a + w], frame[a + w : a + 2 * w], 6, old_len)
    else:
        (check,) = _U16.unpack_from(frame, l4 + 6)
    (old_ulen,) = _U16.unpack_from(frame, l4 + 4)
    (seq0,) = _U32.unpack_from(frame, l4 + 4)
    (ident0,) = _U16.unpack_from(frame, l3 + 4)
    starts = range(hdr_end, len(frame), mss)
    out = []
    for i, start in enumerate(starts):
        last = i == len(starts) - 1
        seg = bytearray(frame[:hdr_end]) + frame[start : start + mss]
        if d.version == 4:
            _U16.pack_into(seg, l3 + 2, len(seg) - l3)
            ident = ident0 if fixed_id else (ident0 + i) & 0xFFFF
            _U16.pack_into(seg, l3 + 4, ident)
            _U16.pack_into(seg, l3 + 10, 0)
            _U16.pack_into(seg, l3 + 10, ipv4_header_checksum(seg[l3:l4]))
        else:
            _U16.pack_into(seg, l3 + 4, len(seg) - l3 - 40)
        if tcp:
            _U32.pack_into(seg, l4 + 4, (seq0 + i * mss) & 0xFFFFFFFF)
            if not last:
                seg[l4 + 13] &= ~0x09  # FIN, PSH
            if i:
                seg[l4 + 13] &= ~0x80  # CWR
            new_len = len(seg) - l4
            field = fold32(check + ((0xFFFFFFFF - old_len + new_len) & 0xFFFFFFFF))
            _U16.pack_into(seg, l4 + 16, field)
            _U16.pack_into(seg, l4 + 16, ~ones_sum(seg[l4:]) & 0xFFFF)
        else:
            ulen = len(seg) - l4
            _U16.pack_into(seg, l4 + 4, ulen)
            _U16.pack_into(seg, l4 + 6, add16(add16(check, ~old_ulen & 0xFFFF), ulen))
            _U16.pack_into(seg, l4 + 6, complement_for_wire(ones_sum(seg[l4:])))
        out.append(bytes(seg))
    return out
