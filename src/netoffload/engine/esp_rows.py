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
import operator
import struct
from collections import deque
from collections.abc import Iterator, Sequence
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
BE16 = np.dtype(">u2")
_BE64 = np.dtype(">u8")
# What goes in front of the ciphertext: the IP header as big-endian words, then ESP and IV.
_FRONT4 = np.dtype([("ip", ">u2", (10,)), ("spi", ">u4"), ("seq", ">u4"), ("iv", ">u8")])
_FRONT6 = np.dtype([("ip", ">u2", (20,)), ("spi", ">u4"), ("seq", ">u4"), ("iv", ">u8")])
#: Bytes read from each packet before it is copied: the IPv4 header up to its protocol,
#: the IPv6 header up to its next header.
_LEAD_LEN = 10
_lead = operator.itemgetter(slice(0, _LEAD_LEN))
#: Packets longer than this are copied and encrypted in one pass each.
_FUSE_ABOVE = 4096
# The first 8 bytes of an IPv4 header as one big-endian word: version and IHL, total
# length, and flags with fragment offset; and what they are in a whole packet without options.
_V4_SPLIT = np.dtype([("head", ">u8"), ("rest", f"V{_LEAD_LEN - 8}")])
V4_MASK = np.uint64(0xFF00_FFFF_0000_3FFF)
V4_WHOLE = np.uint64(0x4500_0000_0000_0000)
# Every word but the length and the checksum.
_V4_SUM = np.array([1, 0, 1, 1, 1, 0, 1, 1, 1, 1], dtype=np.int64)
_INPUTS = np.dtype([("salt", ">u4"), ("iv", ">u8"), ("spi", ">u4"), ("seq", ">u4")])
_INPUTS_ESN = np.dtype([("salt", ">u4"), ("iv", ">u8"), ("spi", ">u4"), ("seq", ">u8")])
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


@functools.lru_cache(maxsize=32)
def row_slices(
    k: int, stride: int, ct: int, ctl: int, end: int
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Where each of ``k`` rows' plaintext lies and where its ciphertext and ICV go: one
    set of slice objects per batch shape, made once (a flow's batches share a shape)."""
    starts = range(ct, k * stride, stride)
    return tuple(slice(s, s + ctl) for s in starts), tuple(slice(s, s + end) for s in starts)


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
    first = o + shift  # where each packet is copied: its payload lands where it is encrypted
    ct = first + h
    trailer = ct + plen
    end = ctl + ICV_LEN

    arena = bytearray(k * stride)
    view = memoryview(arena)
    m = np.frombuffer(arena, dtype=np.uint8).reshape(k, stride)
    # Large packets are copied and encrypted one at a time, while each is in the cache;
    # small ones are all copied first (the cache holds them) and then encrypted.
    fused = length > _FUSE_ABOVE and not isinstance(packets, np.ndarray)
    if isinstance(packets, np.ndarray):
        m[:, first : first + length] = packets
    elif not fused:
        for start, stop, packet in zip(
            range(first, k * stride, stride),
            range(first + length, k * stride + length, stride),
            packets,
            strict=True,
        ):
            view[start:stop] = packet
    # The first bytes of every packet say whether it can go this way, and its next
    # header, before anything is encrypted.
    if fused:
        lead = np.frombuffer(b"".join(map(_lead, packets)), dtype=np.uint8).reshape(k, _LEAD_LEN)
    else:
        lead = np.ascontiguousarray(m[:, first : first + _LEAD_LEN])
    if version == 4:
        next_header = lead[:, 9].astype(np.int64)
        # Version 4 and IHL 5, this length, neither MF nor a fragment offset: one 64-bit compare.
        done = (lead.view(_V4_SPLIT)["head"][:, 0] & V4_MASK) == (V4_WHOLE | length << 32)
    else:
        next_header = lead[:, 6].astype(np.int64)
        payload_len = lead[:, 4].astype(np.int64) << 8 | lead[:, 5]
        done = (lead[:, 0] >> 4 == 6) & (payload_len == plen) & ~_IPV6_EXT[next_header]
    rows: Sequence[int] = range(k) if done.all() else np.flatnonzero(done).tolist()

    m[:, trailer : trailer + pad + 1] = _PADS[pad]
    m[:, trailer + pad + 1] = next_header
    iv_column = seqs if ivs is None else np.frombuffer(ivs, dtype=_BE64)
    # Each row's nonce (salt, IV) and AAD (SPI, sequence number: 32 bits, or 64 with ESN)
    # side by side, cut apart in one call.
    inputs = np.empty(k, dtype=_INPUTS_ESN if sa.esn else _INPUTS)
    inputs["salt"] = sa._nonce_base >> 64
    inputs["iv"] = iv_column
    inputs["spi"] = sa.spi
    inputs["seq"] = seqs
    cut = _splitter(inputs.dtype.itemsize, k).unpack(inputs.tobytes())
    nonces, aads = cut[0::2], cut[1::2]

    encrypt_into = aead.encrypt_into
    if not fused:
        cut_at = view.__getitem__
        plaintexts: Iterator[memoryview]
        outputs: Iterator[memoryview]
        chosen: tuple[Sequence[bytes], Sequence[bytes]]
        if len(rows) == k:
            texts, sealed_at = row_slices(k, stride, ct, ctl, end)
            plaintexts = map(cut_at, texts)
            outputs = map(cut_at, sealed_at)
            chosen = (nonces, aads)
        else:
            starts = [r * stride + ct for r in rows]
            plaintexts = iter([view[s : s + ctl] for s in starts])
            outputs = iter([view[s : s + end] for s in starts])
            chosen = _pick(rows, nonces, aads)
        # The only per-packet work left: one AEAD call each, in place, looped in C.
        deque(map(encrypt_into, chosen[0], plaintexts, chosen[1], outputs), maxlen=0)
    elif len(rows) == k:
        size = k * stride
        for start, stop, text, text_end, icv_end, packet, nonce_bytes, aad_bytes in zip(
            range(first, size, stride),
            range(first + length, size + length, stride),
            range(ct, size, stride),
            range(ct + ctl, size + ctl, stride),
            range(ct + end, size + end, stride),
            packets,
            nonces,
            aads,
            strict=True,
        ):
            view[start:stop] = packet
            encrypt_into(nonce_bytes, view[text:text_end], aad_bytes, view[text:icv_end])
    else:
        for r in rows:
            s = r * stride + first
            view[s : s + length] = packets[r]
            s += h
            encrypt_into(nonces[r], view[s : s + ctl], aads[r], view[s : s + end])
    if len(rows) < k:
        m[~done] = 0  # what was copied of the packets left to the one-by-one path

    # Now the headers, all at once: moved in front of ESP header and IV, and patched.
    words = np.ascontiguousarray(m[:, first:ct]).view(BE16).astype(np.int64)
    if version == 4:
        # The sum of the header's words with the new length and protocol, checksum left out.
        total = words @ _V4_SUM - next_header + (olen + IPPROTO_ESP)
        words[:, 1] = olen
        words[:, 4] += IPPROTO_ESP - next_header
        words[:, 5] = 0xFFFF - ((total - 1) % 0xFFFF + 1)
    else:
        words[:, 2] = olen - IPV6_HEADER_LEN
        words[:, 3] += (IPPROTO_ESP - next_header) << 8
    front = np.empty(k, dtype=_FRONT4 if version == 4 else _FRONT6)
    front["ip"] = words
    front["spi"] = sa.spi
    front["seq"] = seqs & 0xFFFF_FFFF
    front["iv"] = iv_column
    m[:, o:ct] = front.view(np.uint8).reshape(k, ct - o)
    return SealedRows(arena, stride, olen, done)


def _pick(
    rows: Sequence[int], nonces: tuple[bytes, ...], aads: tuple[bytes, ...]
) -> tuple[list[bytes], list[bytes]]:
    return [nonces[r] for r in rows], [aads[r] for r in rows]


@functools.lru_cache(maxsize=64)
def _splitter(size: int, count: int) -> struct.Struct:
    """Cuts ``count`` joined rows of a 12-byte nonce and a ``size - 12``-byte AAD apart."""
    return struct.Struct(f"12s{size - 12}s" * count)
