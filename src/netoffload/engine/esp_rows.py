"""ESP encryption of equal-length packets as the rows of one matrix: the batch fast path.

A batch of full-size packets of one flow is mostly one length. For those,
every header field ESP touches is a column: the IP header is copied and
patched (length, protocol, IPv4 checksum recomputed from its words), the ESP
header, IV, padding and trailer are written for every row at once, and the
only per-packet Python left is the AEAD call, which encrypts each row in
place (``encrypt_into``). The result is byte for byte what the per-packet
path in ``esp`` produces; tests hold the two together.

Taken here: AES-GCM and ChaCha20-Poly1305 in transport mode without NAT-T,
over IPv4 without options or IPv6 without extension headers, whole (not
fragmented) packets. Anything else goes the per-packet way. Each packet is
copied once, to the place where it is encrypted.
"""

from __future__ import annotations

import functools
import struct
from collections import deque
from collections.abc import Sequence
from typing import Final, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine.esp_sa import (
    ESP_HEADER_LEN,
    ICV_LEN,
    EspMode,
    SecurityAssociation,
)
from netoffload.engine.ipsec_ip import (
    IP_MAX_LEN,
    IPPROTO_DSTOPTS,
    IPPROTO_ESP,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
)

Buffer: TypeAlias = bytes | bytearray | memoryview
ByteMatrix: TypeAlias = npt.NDArray[np.uint8]

#: Fewer equal-length packets than this go the per-packet way (the matrix set-up costs more).
MIN_ROWS: Final = 8
_IPV6_EXT = np.zeros(256, dtype=np.bool_)
_IPV6_EXT[[IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS]] = True
_BE16 = np.dtype(">u2")
_BE64 = np.dtype(">u8")
# What goes in front of the ciphertext: the IP header as big-endian words, then ESP and IV.
_FRONT4 = np.dtype([("ip", ">u2", (10,)), ("spi", ">u4"), ("seq", ">u4"), ("iv", ">u8")])
_FRONT6 = np.dtype([("ip", ">u2", (20,)), ("spi", ">u4"), ("seq", ">u4"), ("iv", ">u8")])
# The first 8 bytes of an IPv4 header as one big-endian word: version and IHL, total
# length, and flags with fragment offset; and what they are in a whole packet without options.
_V4_SPLIT = np.dtype([("head", ">u8"), ("rest", "V12")])
_V4_MASK = np.uint64(0xFF00_FFFF_0000_3FFF)
_V4_WHOLE = np.uint64(0x4500_0000_0000_0000)
# Every word but the length and the checksum.
_V4_SUM = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1, 1], dtype=np.int64)
_NONCE = np.dtype([("salt", ">u4"), ("iv", ">u8")])
_AAD_ESN = np.dtype([("spi", ">u4"), ("seq", ">u8")])
#: The padding bytes 1, 2, ... and the pad length, for each pad length.
_PADS = tuple(np.array([*range(1, n + 1), n], dtype=np.uint8) for n in range(16))


class SealedRows(NamedTuple):
    """Row ``i``'s packet is ``arena[i * stride + headroom : i * stride + headroom + length]``
    when ``done[i]``."""

    arena: bytearray
    stride: int
    length: int
    done: npt.NDArray[np.bool_]


def rows_eligible(sa: SecurityAssociation) -> bool:
    """True when ``sa``'s packets can take the matrix path at all."""
    c = sa.config
    return c.aead and c.mode is EspMode.TRANSPORT and c.nat_t is None


def seal_rows(
    sa: SecurityAssociation,
    packets: Sequence[Buffer] | ByteMatrix,
    seqs: npt.NDArray[np.uint64],
    *,
    ivs: bytes | None,
    headroom: int,
) -> SealedRows | None:
    """Encrypt ``packets`` (all one length; a list, or the rows of a matrix) with sequence
    numbers ``seqs`` and the joined ``ivs`` (``None``: each row's ``iv_for``).

    Each packet is copied once, to where its payload is encrypted in place;
    its header is then moved in front of the ESP header. Rows that are not
    whole IPv4 packets without options or IPv6 ones without extension headers
    (of the first packet's version) are left out: ``SealedRows.done`` says
    which rows hold a packet. ``None`` when the packets would outgrow IP.
    """
    aead = sa._aead
    assert aead is not None
    k = len(packets)
    length = len(packets[0])
    version = int(packets[0][0]) >> 4 if length else 0
    if version == 4:
        h = IPV4_HEADER_LEN
    elif version == 6:
        h = IPV6_HEADER_LEN
    else:
        return None
    if length < h:
        return None
    iv_len = sa.config.iv_len
    shift = ESP_HEADER_LEN + iv_len
    plen = length - h
    pad = -(plen + 2) % sa.config.align
    ctl = plen + pad + 2
    olen = length + shift + pad + 2 + ICV_LEN
    if olen > IP_MAX_LEN + (IPV6_HEADER_LEN if version == 6 else 0):
        return None
    stride = headroom + olen
    o = headroom
    ct = o + h + shift
    arena = bytearray(k * stride)
    view = memoryview(arena)
    first = o + shift
    m = np.frombuffer(arena, dtype=np.uint8).reshape(k, stride)
    if isinstance(packets, np.ndarray):
        m[:, first : first + length] = packets
    else:
        for start, packet in zip(range(first, k * stride, stride), packets, strict=True):
            view[start : start + length] = packet
    header = np.ascontiguousarray(m[:, first : first + h])
    words = header.view(_BE16).astype(np.int64)
    front = np.empty(k, dtype=_FRONT4 if version == 4 else _FRONT6)

    if version == 4:
        next_header = header[:, 9].astype(np.int64)
        # Version 4 and IHL 5, this length, neither MF nor a fragment offset: one 64-bit compare.
        done = (header.view(_V4_SPLIT)["head"][:, 0] & _V4_MASK) == (_V4_WHOLE | length << 32)
        # The sum of the header's words with the new length and protocol, checksum left out.
        total = words @ _V4_SUM - next_header + (olen + IPPROTO_ESP)
        words[:, 1] = olen
        words[:, 4] += IPPROTO_ESP - next_header
        words[:, 5] = 0xFFFF - ((total - 1) % 0xFFFF + 1)
    else:
        next_header = header[:, 6].astype(np.int64)
        done = ((words[:, 0] >> 12) == 6) & (words[:, 2] == plen) & ~_IPV6_EXT[next_header]
        words[:, 2] = olen - IPV6_HEADER_LEN
        words[:, 3] += (IPPROTO_ESP - next_header) << 8
    front["ip"] = words
    front["spi"] = sa.spi
    front["seq"] = seqs & 0xFFFF_FFFF
    front["iv"] = seqs if ivs is None else np.frombuffer(ivs, dtype=_BE64)
    m[:, o:ct] = front.view(np.uint8).reshape(k, ct - o)
    trailer = ct + plen
    m[:, trailer : trailer + pad + 1] = _PADS[pad]
    m[:, trailer + pad + 1] = next_header

    nonce = np.empty(k, dtype=_NONCE)
    nonce["salt"] = sa._nonce_base >> 64
    nonce["iv"] = front["iv"]
    nonces = _splitter(12, k).unpack(nonce.tobytes())
    if sa.esn:
        aad = np.empty(k, dtype=_AAD_ESN)
        aad["spi"] = sa.spi
        aad["seq"] = seqs
        aads = _splitter(12, k).unpack(aad.tobytes())
    else:
        aads = _splitter(ESP_HEADER_LEN, k).unpack(m[:, o + h : o + h + ESP_HEADER_LEN].tobytes())

    end = ctl + ICV_LEN
    if done.all():
        starts: Sequence[int] = range(ct, k * stride, stride)
    else:
        rows = np.flatnonzero(done).tolist()
        starts = [i * stride + ct for i in rows]
        nonces = tuple(nonces[i] for i in rows)
        aads = tuple(aads[i] for i in rows)
    plaintexts = [view[s : s + ctl] for s in starts]
    outputs = [view[s : s + end] for s in starts]
    # The only per-packet work left: one AEAD call each, in place, looped in C.
    deque(map(aead.encrypt_into, nonces, plaintexts, aads, outputs), maxlen=0)
    return SealedRows(arena, stride, olen, done)


@functools.lru_cache(maxsize=64)
def _splitter(size: int, count: int) -> struct.Struct:
    """Cuts ``count`` joined ``size``-byte values apart in one call."""
    return struct.Struct(f"{size}s" * count)
