"""TCP segmentation that leaves the payload where it lies: new headers, the same bytes.

A super-packet in two pieces, its headers and a view of its payload in memory
a device sends from where it lies (a TCP send buffer in an ``XdpDevice``'s
UMEM), is cut into segments of two pieces each: a header row of its own and
a slice of that same view. Only headers are written; the payload is read
once, for the checksums, and never copied.

The segments are the ones ``gso_batch`` (and Linux GSO) makes, byte for
byte: seq advances by the MSS, CWR only on the first segment and FIN and
PSH only on the last, IPv4 total length, ID (+1 a segment unless fixed)
and header checksum, IPv6 payload length, and a whole TCP checksum per
segment (one no longer than the MSS is sent whole, its checksum filled).
Every header field is a column of the header rows, so a
super-packet costs a few NumPy operations, not a loop over its segments.

Only the plain layout is cut here: untagged Ethernet, IPv4 without options
or IPv6 without extension headers, TCP with the checksum request Linux
makes (NEEDS_CSUM at the TCP header). Anything else gets ``None`` and goes
the general way (joined, validated and cut by ``gso_batch``).
"""

from __future__ import annotations

import struct
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine import rows as rowsum
from netoffload.engine.checksum import fill_partial_split
from netoffload.engine.dissect import ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPV4_DF
from netoffload.engine.gso_batch import TCP_CWR, TCP_FIN, TCP_PSH
from netoffload.engine.gso_batch import _complement as complement
from netoffload.offload.extension import GsoType, TxRequest
from netoffload.wire.checksum import ones_sum

Buffer: TypeAlias = bytes | bytearray | memoryview
IntArray: TypeAlias = npt.NDArray[np.int64]

_BE16 = np.dtype(">u2")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def cut_in_place(
    head: Buffer, payload: memoryview, request: TxRequest
) -> list[tuple[memoryview, memoryview]] | None:
    """Cut a TCP super-packet into (headers, payload slice) per segment (module doc), or
    None when it is not one this path takes."""
    seg = request.segmentation
    csum = request.checksum
    hlen = len(head)
    n = payload.nbytes
    if seg is None or csum is None or hlen & 1 or hlen < ETH_HLEN + 40:
        return None
    mss = seg.size
    if not n or payload.format != "B":
        return None
    (ethertype,) = _U16.unpack_from(head, 12)
    l3 = ETH_HLEN
    if ethertype == ETH_P_IP and seg.gso_type is GsoType.TCPV4:
        l4 = l3 + 20
        frag = _U16.unpack_from(head, l3 + 6)[0]
        if head[l3] != 0x45 or head[l3 + 9] != IPPROTO_TCP or frag & ~IPV4_DF:
            return None
        if seg.fixed_id and not frag & IPV4_DF:
            return None
    elif ethertype == ETH_P_IPV6 and seg.gso_type is GsoType.TCPV6:
        l4 = l3 + 40
        if head[l3] >> 4 != 6 or head[l3 + 6] != IPPROTO_TCP:
            return None
    else:
        return None
    if hlen < l4 + 20:
        return None
    word0 = _U16.unpack_from(head, l4 + 12)[0]
    if (word0 >> 12) * 4 != hlen - l4 or (csum.start, csum.offset) != (l4, 16):
        return None
    if word0 & TCP_CWR and not seg.ecn:
        return None
    if n <= mss:  # sent whole, as Linux does: only the checksum to fill
        whole = bytearray(head)
        fill_partial_split(whole, payload, csum)
        return [(memoryview(whole), payload)]
    count = -(-n // mss)
    rows = np.tile(np.frombuffer(head, np.uint8), (count, 1))
    words = rows.view(_BE16)
    index = np.arange(count, dtype=np.int64)
    plen = np.full(count, mss, np.int64)
    plen[-1] = n - (count - 1) * mss
    # seq, and the flags: CWR on the first segment only, FIN and PSH on the last only.
    seq0 = _U32.unpack_from(head, l4 + 4)[0]
    seq = (seq0 + index * mss) & 0xFFFFFFFF
    word = np.full(count, word0 & ~(TCP_FIN | TCP_PSH | TCP_CWR), np.int64)
    word[0] = word0 & ~(TCP_FIN | TCP_PSH)
    word[-1] = word0 & ~TCP_CWR
    w4 = l4 >> 1
    words[:, w4 + 2] = seq >> 16
    words[:, w4 + 3] = seq & 0xFFFF
    words[:, w4 + 6] = word
    header_words = np.frombuffer(head, _BE16).astype(np.int64)
    w3 = l3 >> 1
    if l4 == l3 + 20:
        total = (hlen - l3) + plen
        ident = header_words[w3 + 2] + (0 if seg.fixed_id else index)
        ident &= 0xFFFF
        # The header's words less the three rewritten here.
        rest = int(header_words[w3 : w3 + 10].sum()) - int(header_words[w3 + 1 : w3 + 3].sum())
        rest -= int(header_words[w3 + 5])
        words[:, w3 + 1] = total
        words[:, w3 + 2] = ident
        words[:, w3 + 5] = complement(rest + total + ident)
        addresses = int(header_words[w3 + 6 : w3 + 10].sum())
    else:
        words[:, w3 + 2] = (hlen - l3 - 40) + plen
        addresses = int(header_words[w3 + 4 : w3 + 20].sum())
    # TCP: the pseudo-header (addresses, protocol, length), the header less seq, flags
    # and checksum (their new values are added per segment), and the payload.
    tcp = header_words[w4 : hlen >> 1]
    rest = int(tcp.sum()) - int(tcp[2] + tcp[3] + tcp[6] + tcp[8])
    sums = _payload_sums(payload, mss, count)
    tcp_len = (hlen - l4) + plen
    words[:, w4 + 8] = complement(
        addresses + IPPROTO_TCP + rest + tcp_len + (seq >> 16) + (seq & 0xFFFF) + word + sums
    )
    flat = rows.reshape(-1).data
    return [
        (flat[k * hlen : (k + 1) * hlen], payload[k * mss : k * mss + int(plen[k])])
        for k in range(count)
    ]


def _payload_sums(payload: memoryview, mss: int, count: int) -> IntArray:
    """Each segment's payload sum (residues modulo 0xFFFF), read where it lies."""
    data = np.frombuffer(payload, np.uint8)
    full = len(data) // mss
    sums = np.empty(count, np.int64)
    if full:
        pieces = data[: full * mss].reshape(full, mss)
        # Little-endian word sums times 256: the big-endian sums' residues.
        sums[:full] = rowsum.le_sum(pieces, 0, mss) * 256
    if full < count:
        sums[full] = ones_sum(payload[full * mss :])
    return sums
