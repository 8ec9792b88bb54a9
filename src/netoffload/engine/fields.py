"""Header fields of a batch of frames as NumPy columns: the input of RSS, classify and dosfilter.

A receive batch arrives as frames in one buffer (a ring's buffer pool, a
cable's receive buffer): a ``FrameBatch`` is that buffer with the start and
length of each frame. ``extract`` reads every header field the classification
tasks need for the whole batch with a few gathers, each one copy of a fixed
number of bytes per frame out of a strided window over the buffer: the first
96 bytes of every frame (Ethernet, up to two VLAN tags, the IP header), then,
unless every frame has the same layout, the L4 header from where each frame's
layout puts it. Table lookups decide the layouts (EtherType class; IP version
and header length from the first IP byte; TCP or UDP from the protocol). Rows the
columns do not model (three or more VLAN tags, IPv6 extension headers other
than a fragment header) are walked one by one with the engine's dissector
(``dissect.l3_offset``, ``wire.ipv6.gso_extension_walk``), so every frame gets
an answer and no Python runs per frame in the usual batch.

What a field means, layer by layer (a field of a layer that is not intact is
absent, and a rule or a hash that needs it does not use it):

* **Ethernet** (``l2``): the frame holds its 14-byte header and every VLAN
  tag (TPID 0x8100 or 0x88A8, at most 7, as ``dissect``). ``vlan`` is the TCI
  of the outermost tag, ``ethertype`` the EtherType behind the tags.
* **IP** (``version`` 4 or 6): the EtherType says IPv4 / IPv6, the version
  nibble agrees, the IPv4 header (IHL at least 5) or the 40-byte IPv6 header
  is in the frame, and the IPv6 hop-by-hop, routing and destination options
  headers are walked (a fragment header, if any, must be in the frame too).
  ``proto`` is the upper-layer protocol (behind an IPv6 fragment header, its
  next header). Length fields are not judged here: a lying IPv4 total length
  or IPv6 payload length is ``dosfilter``'s business, as on a NIC the
  classifier reads the headers that are there.
* **L4** (``l4_ok``): TCP or UDP, not a fragment (first or later: the ports
  of a datagram's fragments are not all known, so none are used, as RSS
  hashes every fragment on its addresses alone), and the whole header is in
  the frame (TCP: 20 bytes and the data offset; UDP: 8 bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine.dissect import (
    ETH_HLEN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
    DissectError,
    l3_offset,
)
from netoffload.wire import WireError
from netoffload.wire.ipv6 import gso_extension_walk

Buffer: TypeAlias = bytes | bytearray | memoryview
IntArray: TypeAlias = npt.NDArray[np.int64]
U64Array: TypeAlias = npt.NDArray[np.uint64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
ByteMatrix: TypeAlias = npt.NDArray[np.uint8]

#: Index of an absent 16-bit field (a port, a VLAN TCI) in a 65537-entry table.
NO_U16 = 1 << 16
#: Index of an absent TCP flags byte in a 257-entry table.
NO_FLAGS = 1 << 8
#: Index of an absent DSCP in a 65-entry table.
NO_DSCP = 1 << 6
#: Address key of a frame without an intact IP header: between every IPv4 and IPv6 key.
NO_ADDRESS = 1 << 62
_V6_KEY = np.uint64(1 << 63)

#: Bytes read at each frame's start: up to two VLAN tags, the IP header, the L4 header's start.
HEAD_WINDOW = 96
#: Bytes read at the network header: a whole IPv6 header covers an IPv4 one too.
IP_WINDOW = 40
#: Bytes read at the L4 header: ports, TCP data offset and flags, ICMP type and code.
L4_WINDOW = 16
#: Padding a buffer needs past its last frame so that every read fits: no read of a frame
#: ends past ``start + max(HEAD_WINDOW, length + L4_WINDOW)``.
PAD = HEAD_WINDOW

_IPV6_WALKED = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS)
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
_U64BE = np.dtype(">u8")
_U32BE = np.dtype(">u4")
_U16BE = np.dtype(">u2")


class FrameBatch:
    """Frames in one buffer: ``starts[i]`` and ``lengths[i]`` locate frame ``i``.

    Every frame's headers are read with fixed-size reads, which may run past
    the frame (never past ``start + max(HEAD_WINDOW, length + L4_WINDOW)``),
    so the buffer must extend that far (``from_frames`` pads it; ``from_ring``
    copies the batch when the pool ends too soon); bytes past a frame's end
    are never taken as its own.
    """

    __slots__ = ("_windows", "buffer", "lengths", "starts")

    def __init__(self, buffer: npt.NDArray[np.uint8], starts: IntArray, lengths: IntArray) -> None:
        self.buffer = buffer
        self.starts = starts
        self.lengths = lengths
        self._windows: dict[int, npt.NDArray[np.void]] = {}

    @classmethod
    def from_frames(cls, frames: Sequence[Buffer]) -> FrameBatch:
        """A batch of separate frames, copied end to end into one buffer."""
        lengths = np.fromiter(map(len, frames), dtype=np.int64, count=len(frames))
        data = b"".join(frames)
        buffer = np.zeros(len(data) + PAD, dtype=np.uint8)
        buffer[: len(data)] = np.frombuffer(data, dtype=np.uint8)
        starts = np.zeros(len(frames), dtype=np.int64)
        if len(frames) > 1:
            np.cumsum(lengths[:-1], out=starts[1:])
        return cls(buffer, starts, lengths)

    @classmethod
    def from_ring(
        cls, pool: Buffer | npt.NDArray[np.uint8], starts: npt.ArrayLike, lengths: npt.ArrayLike
    ) -> FrameBatch:
        """Frames in place in a ring's buffer pool (no copy unless the pool ends too soon)."""
        buffer = np.frombuffer(pool, dtype=np.uint8) if not isinstance(pool, np.ndarray) else pool
        starts_a = np.asarray(starts, dtype=np.int64)
        lengths_a = np.asarray(lengths, dtype=np.int64)
        if len(starts_a) != len(lengths_a):
            raise ValueError("starts and lengths differ in length")
        if len(starts_a):
            first, last, longest = int(starts_a.min()), int(starts_a.max()), int(lengths_a.max())
            if first < 0 or int(lengths_a.min()) < 0:
                raise ValueError("negative frame start or length")
            if last + max(longest + L4_WINDOW, HEAD_WINDOW) > len(buffer):
                if int((starts_a + lengths_a).max()) > len(buffer):
                    raise ValueError("a frame runs past the end of the pool")
                reach = starts_a + np.maximum(lengths_a + L4_WINDOW, HEAD_WINDOW)
                if int(reach.max()) > len(buffer):
                    # A frame at the very end of the pool: read the batch from a copy.
                    spans = zip(starts_a.tolist(), lengths_a.tolist(), strict=True)
                    return cls.from_frames([buffer[s : s + k].tobytes() for s, k in spans])
        return cls(buffer, starts_a, lengths_a)

    def __len__(self) -> int:
        return len(self.starts)

    def frame(self, i: int) -> memoryview:
        """Frame ``i`` (a view into the buffer)."""
        start = int(self.starts[i])
        return memoryview(self.buffer)[start : start + int(self.lengths[i])]  # type: ignore[arg-type]

    def window(self, width: int) -> npt.NDArray[np.void]:
        """Item ``k`` is ``buffer[k : k + width]`` as one ``width``-byte value: a view, no copy.

        Gathering whole items of a void type copies each frame's bytes in one
        ``memcpy``, several times faster than fancy indexing rows of bytes.
        """
        view = self._windows.get(width)
        if view is None:
            b = self.buffer
            view = np.ndarray(
                (len(b) - width + 1,), dtype=np.dtype(f"V{width}"), buffer=b, strides=(1,)
            )
            self._windows[width] = view
        return view

    def gather(self, offsets: IntArray | None, width: int) -> ByteMatrix:
        """``width`` bytes of every frame from ``offsets`` (relative to each frame) as rows."""
        at = self.starts if offsets is None else self.starts + offsets
        rows: ByteMatrix = self.window(width)[at].view(np.uint8).reshape(-1, width)
        return rows


class Fields:
    """The header fields of every frame of a batch, one array per field (see the module doc).

    Absent values are the indexes named by the module constants (``NO_U16``,
    ``NO_FLAGS``, ``NO_DSCP``, ``NO_ADDRESS``), so that a column indexes a
    lookup table directly. ``ip`` holds the first 40 bytes of each frame's
    network header (meaningless in rows without IP) and ``l4_head`` the first
    16 of its L4 header; RSS hashes those bytes as they are. The columns every
    consumer needs are made by ``extract``; the others when first read.
    """

    __slots__ = (
        "_cache",
        "_head",
        "batch",
        "fragment",
        "ip",
        "l2",
        "l3",
        "l4",
        "l4_head",
        "l4_ok",
        "length",
        "proto",
        "tcp",
        "version",
    )

    def __init__(
        self,
        *,
        batch: FrameBatch,
        head: ByteMatrix,
        length: IntArray,
        l2: BoolArray,
        l3: IntArray,
        version: IntArray,
        proto: IntArray,
        fragment: BoolArray,
        l4: IntArray,
        l4_ok: BoolArray,
        tcp: BoolArray,
        ip: ByteMatrix,
        l4_head: ByteMatrix,
        ethertype: IntArray,
        vlan: IntArray | None,
    ) -> None:
        self.batch = batch
        self._head = head
        self.length = length
        self.l2 = l2  # Ethernet header and VLAN tags intact
        self.l3 = l3
        self.version = version  # 4, 6, or 0 when the IP header is not intact
        self.proto = proto  # upper-layer protocol (0 without IP)
        self.fragment = fragment
        self.l4 = l4
        self.l4_ok = l4_ok  # a whole TCP or UDP header of an unfragmented packet
        self.tcp = tcp  # l4_ok and TCP
        self.ip = ip
        self.l4_head = l4_head
        self._cache: dict[str, npt.NDArray[Any]] = {"ethertype": ethertype}
        if vlan is not None:
            self._cache["vlan"] = vlan

    def __len__(self) -> int:
        return len(self.length)

    @property
    def ethertype(self) -> IntArray:
        """The EtherType behind the VLAN tags (0 when not ``l2``)."""
        return self._cache["ethertype"]

    @property
    def vlan(self) -> IntArray:
        """The outermost VLAN tag's TCI, ``NO_U16`` when untagged."""
        got = self._cache.get("vlan")
        if got is None:
            got = self._cache["vlan"] = np.full(len(self), NO_U16, dtype=np.int64)
        return got

    @property
    def dst_mac(self) -> U64Array:
        got = self._cache.get("dst_mac")
        if got is None:
            got = self._cache["dst_mac"] = self._head[:, 0:8].view(_U64BE)[:, 0] >> np.uint64(16)
        return got

    @property
    def src_mac(self) -> U64Array:
        got = self._cache.get("src_mac")
        if got is None:
            got = self._cache["src_mac"] = self._head[:, 6:14].view(_U64BE)[:, 0] >> np.uint64(16)
        return got

    @property
    def dscp(self) -> IntArray:
        """DSCP (the TOS / traffic class byte's top six bits), ``NO_DSCP`` without IP."""
        got = self._cache.get("dscp")
        if got is None:
            index = _be16(self.ip, 0)
            index += self.version * (1 << 16)
            got = self._cache["dscp"] = _DSCP[index]
        return got

    @property
    def ip_len(self) -> IntArray:
        """What the IP length field claims: IPv4 total length, IPv6 40 + payload length."""
        got = self._cache.get("ip_len")
        if got is None:
            v = self.version
            got = np.where(v == 4, _be16(self.ip, 2), 40 + _be16(self.ip, 4))
            self._cache["ip_len"] = got = np.where(v != 0, got, 0)
        return got

    @property
    def ihl(self) -> IntArray:
        """IPv4 header length in bytes (0 for other frames)."""
        got = self._cache.get("ihl")
        if got is None:
            got = np.where(self.version == 4, (self.ip[:, 0] & 0x0F).astype(np.int64) * 4, 0)
            self._cache["ihl"] = got
        return got

    def _fragment_fields(self) -> tuple[IntArray, BoolArray]:
        got = self._cache.get("frag_offset")
        if got is None:
            is4 = self.version == 4
            field = _be16(self.ip, 6)
            offset = np.where(is4, field & 0x1FFF, 0)
            more = is4 & ((field & 0x2000) != 0)
            frag6 = self.fragment & (self.version == 6)
            if frag6.any():
                fh = self.batch.gather(np.where(frag6, self.l4 - 8, self.l3), 4)
                word = _be16(fh, 2)
                offset = np.where(frag6, word >> 3, offset)
                more |= frag6 & ((word & 1) != 0)
            self._cache["frag_offset"], self._cache["more_fragments"] = offset, more
            return offset, more
        return got, self._cache["more_fragments"]

    @property
    def frag_offset(self) -> IntArray:
        """Fragment offset in 8-byte units (0 for an unfragmented packet)."""
        return self._fragment_fields()[0]

    @property
    def more_fragments(self) -> BoolArray:
        return self._fragment_fields()[1]

    def _ports(self) -> tuple[IntArray, IntArray]:
        got = self._cache.get("sport")
        if got is None:
            both = self.l4_head[:, 0:4].view(_U32BE)[:, 0].astype(np.int64)
            got = self._cache["sport"] = np.where(self.l4_ok, both >> 16, NO_U16)
            self._cache["dport"] = np.where(self.l4_ok, both & 0xFFFF, NO_U16)
        return got, self._cache["dport"]

    @property
    def sport(self) -> IntArray:
        """Source port, ``NO_U16`` unless ``l4_ok``."""
        return self._ports()[0]

    @property
    def dport(self) -> IntArray:
        """Destination port, ``NO_U16`` unless ``l4_ok``."""
        return self._ports()[1]

    @property
    def tcp_flags(self) -> IntArray:
        """The TCP flags byte (CWR..FIN), ``NO_FLAGS`` unless ``tcp``."""
        got = self._cache.get("tcp_flags")
        if got is None:
            got = np.where(self.tcp, self.l4_head[:, 13].astype(np.int64), NO_FLAGS)
            self._cache["tcp_flags"] = got
        return got

    def _key(self, name: str, at4: int, at6: int) -> U64Array:
        got = self._cache.get(name)
        if got is None:
            v = self.version
            got = self.ip[:, at6 : at6 + 8].view(_U64BE)[:, 0].astype(np.uint64)
            got >>= np.uint64(1)
            got |= _V6_KEY
            v4 = self.ip[:, at4 : at4 + 4].view(_U32BE)[:, 0].astype(np.uint64)
            got = np.where(v == 4, v4, got)
            if not (v != 0).all():
                got[v == 0] = NO_ADDRESS
            self._cache[name] = got
        return got

    @property
    def src_key(self) -> U64Array:
        """Source address key: IPv4 the address, IPv6 ``2**63 | high 64 bits >> 1``."""
        return self._key("src_key", 12, 8)

    @property
    def dst_key(self) -> U64Array:
        """Destination address key, as ``src_key``."""
        return self._key("dst_key", 16, 24)


def _be16(m: ByteMatrix, at: int) -> IntArray:
    column: IntArray = m[:, at : at + 2].view(_U16BE)[:, 0].astype(np.int64)
    return column


def _table(size: int, entries: dict[int, int]) -> npt.NDArray[np.int64]:
    t = np.zeros(size, dtype=np.int64)
    for k, v in entries.items():
        t[k] = v
    return t


# EtherType class: 1 a VLAN tag, 2 IPv4, 3 IPv6, 0 anything else.
_ET_CLASS = _table(1 << 16, {ETH_P_8021Q: 1, ETH_P_8021AD: 1, ETH_P_IP: 2, ETH_P_IPV6: 3})
# By EtherType class * 256 + the network header's first byte: IP version and header length.
_FAMILY = np.zeros(1024, dtype=np.int64)
_HLEN = np.zeros(1024, dtype=np.int64)
for _b in range(256):
    if _b >> 4 == 4 and _b & 0x0F >= 5:
        _FAMILY[2 * 256 + _b], _HLEN[2 * 256 + _b] = 4, (_b & 0x0F) * 4
    if _b >> 4 == 6:
        _FAMILY[3 * 256 + _b], _HLEN[3 * 256 + _b] = 6, 40
_WALKED = _table(256, dict.fromkeys(_IPV6_WALKED, 1)).astype(bool)
# By version * 65536 + the IP header's first 16 bits: the DSCP (NO_DSCP without IP).
_DSCP = np.full(7 << 16, NO_DSCP, dtype=np.int64)
_DSCP[4 << 16 : 5 << 16] = (np.arange(1 << 16) & 0xFF) >> 2
_DSCP[6 << 16 : 7 << 16] = (np.arange(1 << 16) >> 4 & 0xFF) >> 2
# By protocol: 1 TCP, 2 UDP.
_L4_KIND = _table(256, {IPPROTO_TCP: 1, IPPROTO_UDP: 2})


def extract(batch: FrameBatch) -> Fields:
    """Every header field of every frame of ``batch`` (see the module doc for their meaning)."""
    n = len(batch)
    length = batch.lengths
    head = batch.gather(None, HEAD_WINDOW)
    ethertype = _be16(head, 12)
    l2 = length >= ETH_HLEN
    eclass = _ET_CLASS[ethertype]
    tagged = (eclass == 1) & l2
    vlan: IntArray | None = None
    if tagged.any():
        l3, ethertype, l2, vlan = _tags(batch, head, ethertype, tagged, l2)
        eclass = _ET_CLASS[ethertype]
        ip = batch.gather(l3, IP_WINDOW)
    else:
        l3 = np.full(n, ETH_HLEN, dtype=np.int64)
        ip = head[:, ETH_HLEN : ETH_HLEN + IP_WINDOW]
    eclass *= l2
    ethertype *= l2
    layout = eclass * 256 + ip[:, 0]
    l4 = l3 + _HLEN[layout]
    family = _FAMILY[layout] * (length >= l4)
    is6 = family == 6
    proto = np.where(family == 4, ip[:, 9], ip[:, 6]).astype(np.int64)
    fragment = (family == 4) & ((_be16(ip, 6) & 0x3FFF) != 0)
    if is6.any():
        walked = is6 & _WALKED[proto]
        if walked.any():
            for i in np.flatnonzero(walked).tolist():
                try:
                    l4[i], proto[i] = gso_extension_walk(
                        batch.frame(i), int(l4[i]), int(proto[i]), int(length[i])
                    )
                except WireError:
                    family[i] = 0
        frag6 = (family == 6) & (proto == IPPROTO_FRAGMENT)
        if frag6.any():
            whole = length >= l4 + 8
            family[frag6 & ~whole] = 0
            frag6 &= whole
            fh = batch.gather(np.where(frag6, l4, l3), 8)
            proto = np.where(frag6, fh[:, 0], proto)
            l4 = np.where(frag6, l4 + 8, l4)
            fragment |= frag6
    is_ip = family != 0
    proto *= is_ip
    fragment &= is_ip
    l4 = np.where(is_ip, l4, l3)
    l4_head = batch.gather(l4, L4_WINDOW)
    kind = _L4_KIND[proto] * ~fragment
    room = length - l4
    doff = (l4_head[:, 12] >> 4).astype(np.int64) * 4
    tcp = (kind == 1) & (doff >= 20) & (room >= doff)
    l4_ok = tcp | ((kind == 2) & (room >= 8))
    return Fields(
        batch=batch,
        head=head,
        length=length,
        l2=l2,
        l3=l3,
        version=family,
        proto=proto,
        fragment=fragment,
        l4=l4,
        l4_ok=l4_ok,
        tcp=tcp,
        ip=ip,
        l4_head=l4_head,
        ethertype=ethertype,
        vlan=vlan,
    )


def _tags(
    batch: FrameBatch, head: ByteMatrix, ethertype: IntArray, tagged: BoolArray, l2: BoolArray
) -> tuple[IntArray, IntArray, BoolArray, IntArray]:
    """(l3, inner EtherType, l2, outer TCI) of a batch with VLAN-tagged frames."""
    length = batch.lengths
    vlan = np.where(tagged, _be16(head, 14), NO_U16)
    et1 = _be16(head, 16)
    et2 = _be16(head, 20)
    two = tagged & (_ET_CLASS[et1] == 1)
    deep = two & (_ET_CLASS[et2] == 1)
    ethertype = np.where(tagged, np.where(two, et2, et1), ethertype)
    l3 = ETH_HLEN + np.where(tagged, np.where(two, 8, 4), 0)
    l2 = l2 & (length >= l3)
    for i in np.flatnonzero(deep & l2).tolist():
        try:
            l3[i], ethertype[i] = l3_offset(batch.frame(i))
        except DissectError:
            l2[i] = False
    vlan = np.where(l2, vlan, NO_U16)
    return l3, ethertype, l2, vlan
