"""Header fields of a batch of frames as NumPy columns: the input of RSS, classify and dosfilter.

A receive batch arrives as frames in one buffer (a ring's buffer pool, a
cable's receive buffer): a ``FrameBatch`` is that buffer with the start and
length of each frame. ``extract`` reads every header field the classification
tasks need for the whole batch with a few gathers: the first bytes of every
frame (Ethernet and up to two VLAN tags), then the network header and the L4
header from where each frame's layout puts them, each as one copy of a fixed
number of bytes per frame out of a strided window over the buffer. Rows the
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
from dataclasses import dataclass
from typing import TypeAlias

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

#: Bytes of each frame read at its start: Ethernet and two VLAN tags.
ETH_WINDOW = ETH_HLEN + 8
#: Bytes read at the network header: a whole IPv6 header covers an IPv4 one too.
IP_WINDOW = 40
#: Bytes read at the L4 header: ports, TCP data offset and flags, ICMP type and code.
L4_WINDOW = 16
#: Padding a buffer needs past its last frame so that every window fits.
PAD = ETH_WINDOW + 4 * 7 + 60 + 256 + L4_WINDOW

_IPV6_WALKED = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS)
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
_U64BE = np.dtype(">u8")
_U32BE = np.dtype(">u4")
_U16BE = np.dtype(">u2")


class FrameBatch:
    """Frames in one buffer: ``starts[i]`` and ``lengths[i]`` locate frame ``i``.

    ``buffer`` must extend at least ``PAD`` bytes past the end of the last
    frame (``from_frames`` and ``from_ring`` see to it, copying only when the
    caller's buffer is too short), so that every fixed-size read of a header
    stays inside it; bytes past a frame's end are never taken as its own.
    """

    __slots__ = ("_windows", "buffer", "lengths", "starts")

    def __init__(self, buffer: npt.NDArray[np.uint8], starts: IntArray, lengths: IntArray) -> None:
        self.buffer = buffer
        self.starts = starts
        self.lengths = lengths
        self._windows: dict[int, ByteMatrix] = {}

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
            if int(starts_a.min()) < 0 or int(lengths_a.min()) < 0:
                raise ValueError("negative frame start or length")
            if int((starts_a + lengths_a).max()) > len(buffer):
                raise ValueError("a frame runs past the end of the pool")
            if int(starts_a.max()) + PAD > len(buffer):
                padded = np.zeros(len(buffer) + PAD, dtype=np.uint8)
                padded[: len(buffer)] = buffer
                buffer = padded
        return cls(buffer, starts_a, lengths_a)

    def __len__(self) -> int:
        return len(self.starts)

    def frame(self, i: int) -> memoryview:
        """Frame ``i`` (a view into the buffer)."""
        start = int(self.starts[i])
        return memoryview(self.buffer)[start : start + int(self.lengths[i])]  # type: ignore[arg-type]

    def window(self, width: int) -> ByteMatrix:
        """Row ``k`` is ``buffer[k : k + width]``: a strided view, no copy."""
        view = self._windows.get(width)
        if view is None:
            b = self.buffer
            view = np.ndarray((len(b) - width + 1, width), dtype=np.uint8, buffer=b, strides=(1, 1))
            self._windows[width] = view
        return view

    def gather(self, offsets: IntArray, width: int) -> ByteMatrix:
        """``width`` bytes of every frame from ``offsets`` (relative to each frame) as rows."""
        rows: ByteMatrix = self.window(width)[self.starts + offsets]
        return rows


@dataclass(frozen=True, slots=True, eq=False)
class Fields:
    """The header fields of every frame of a batch, one array per field (see the module doc).

    Absent values are the indexes named by the module constants (``NO_U16``,
    ``NO_FLAGS``, ``NO_DSCP``, ``NO_ADDRESS``), so that a column indexes a
    lookup table directly. ``ip`` holds the network header's first 40 bytes
    of each frame (rows without IP are meaningless) and ``l4_head`` the L4
    header's first 16 bytes; RSS hashes those bytes as they are.
    """

    length: IntArray
    l2: BoolArray
    dst_mac: U64Array
    src_mac: U64Array
    vlan: IntArray  # outermost TCI, NO_U16 when untagged
    ethertype: IntArray  # behind the VLAN tags (0 when not l2)
    l3: IntArray
    version: IntArray  # 4, 6, or 0 when the IP header is not intact
    proto: IntArray  # upper-layer protocol (0 without IP)
    dscp: IntArray  # NO_DSCP without IP
    fragment: BoolArray
    frag_offset: IntArray  # in 8-byte units
    more_fragments: BoolArray
    ip_len: IntArray  # what the length field claims: IPv4 total, IPv6 40 + payload
    ihl: IntArray  # IPv4 header bytes (0 for IPv6)
    l4: IntArray
    l4_ok: BoolArray
    sport: IntArray  # NO_U16 unless l4_ok
    dport: IntArray
    tcp_flags: IntArray  # NO_FLAGS unless a whole TCP header (l4_ok and TCP)
    src_key: U64Array  # IPv4: the address; IPv6: 2**63 | high 64 bits >> 1; NO_ADDRESS
    dst_key: U64Array
    ip: ByteMatrix
    l4_head: ByteMatrix

    def __len__(self) -> int:
        return len(self.length)


def _be16(m: ByteMatrix, at: int) -> IntArray:
    column: IntArray = m[:, at : at + 2].view(_U16BE)[:, 0].astype(np.int64)
    return column


def _is_tag(ethertype: IntArray) -> BoolArray:
    tag: BoolArray = (ethertype == ETH_P_8021Q) | (ethertype == ETH_P_8021AD)
    return tag


def extract(batch: FrameBatch) -> Fields:
    """Every header field of every frame of ``batch`` (see the module doc for their meaning)."""
    n = len(batch)
    length = batch.lengths
    zero = np.zeros(n, dtype=np.int64)
    eth = batch.gather(zero, ETH_WINDOW)
    dst_mac = eth[:, 0:8].view(_U64BE)[:, 0] >> np.uint64(16)
    src_mac = eth[:, 6:14].view(_U64BE)[:, 0] >> np.uint64(16)
    ethertype = _be16(eth, 12)
    l2 = length >= ETH_HLEN
    l3 = np.full(n, ETH_HLEN, dtype=np.int64)
    tagged = _is_tag(ethertype)
    vlan = np.full(n, NO_U16, dtype=np.int64)
    slow: list[int] = []
    if tagged.any():
        vlan[tagged] = _be16(eth, 14)[tagged]
        et1 = _be16(eth, 16)
        et2 = _be16(eth, 20)
        two = tagged & _is_tag(et1)
        deep = two & _is_tag(et2)
        ethertype = np.where(tagged, np.where(two, et2, et1), ethertype)
        l3 += np.where(tagged, np.where(two, 8, 4), 0)
        l2 &= length >= l3
        slow = np.flatnonzero(deep & (length >= ETH_HLEN)).tolist()
        for i in slow:
            try:
                l3[i], ethertype[i] = l3_offset(batch.frame(i))
            except DissectError:
                l2[i] = False
    ethertype[~l2] = 0
    l3[~l2] = ETH_HLEN

    ip = batch.gather(l3, IP_WINDOW)
    v0 = ip[:, 0].astype(np.int64)
    ihl = (v0 & 0x0F) * 4
    room = length - l3
    is4 = (ethertype == ETH_P_IP) & (v0 >> 4 == 4) & (ihl >= 20) & (room >= np.maximum(ihl, 20))
    is6 = (ethertype == ETH_P_IPV6) & (v0 >> 4 == 6) & (room >= 40)
    proto = np.where(is4, ip[:, 9], ip[:, 6]).astype(np.int64)
    l4 = l3 + np.where(is4, ihl, 40)
    ip_len = np.where(is4, _be16(ip, 2), 40 + _be16(ip, 4))
    frag_field = _be16(ip, 6)
    frag_offset = np.where(is4, frag_field & 0x1FFF, 0)
    more = is4 & ((frag_field & 0x2000) != 0)
    tos = np.where(is4, ip[:, 1], (_be16(ip, 0) >> 4) & 0xFF)
    if is6.any():
        walked = is6 & np.isin(proto, _IPV6_WALKED)
        for i in np.flatnonzero(walked).tolist():
            try:
                l4[i], proto[i] = gso_extension_walk(
                    batch.frame(i), int(l4[i]), int(proto[i]), int(length[i])
                )
            except WireError:
                is6[i] = False
        frag6 = is6 & (proto == IPPROTO_FRAGMENT)
        if frag6.any():
            frag6 &= length >= l4 + 8
            is6 &= (proto != IPPROTO_FRAGMENT) | frag6
            fh = batch.gather(np.where(frag6, l4, 0), 8)
            proto = np.where(frag6, fh[:, 0], proto)
            off_m = _be16(fh, 2)
            frag_offset = np.where(frag6, off_m >> 3, frag_offset)
            more |= frag6 & ((off_m & 1) != 0)
            l4 = np.where(frag6, l4 + 8, l4)
            fragment6 = frag6
        else:
            fragment6 = np.zeros(n, dtype=bool)
    else:
        fragment6 = np.zeros(n, dtype=bool)
    is_ip = is4 | is6
    version = np.where(is4, 4, np.where(is6, 6, 0))
    fragment = (is4 & (more | (frag_offset != 0))) | fragment6
    proto[~is_ip] = 0
    dscp = np.where(is_ip, tos >> 2, NO_DSCP)
    l4[~is_ip] = l3[~is_ip]

    head = batch.gather(l4, L4_WINDOW)
    room4 = length - l4
    doff = (head[:, 12] >> 4).astype(np.int64) * 4
    whole = (room4 >= 20) & (doff >= 20) & (room4 >= doff)
    tcp = is_ip & ~fragment & (proto == IPPROTO_TCP) & whole
    udp = is_ip & ~fragment & (proto == IPPROTO_UDP) & (room4 >= 8)
    l4_ok = tcp | udp
    sport = np.where(l4_ok, _be16(head, 0), NO_U16)
    dport = np.where(l4_ok, _be16(head, 2), NO_U16)
    tcp_flags = np.where(tcp, head[:, 13], NO_FLAGS).astype(np.int64)

    src4 = ip[:, 12:16].view(_U32BE)[:, 0].astype(np.uint64)
    dst4 = ip[:, 16:20].view(_U32BE)[:, 0].astype(np.uint64)
    one = np.uint64(1)
    src6 = (ip[:, 8:16].view(_U64BE)[:, 0] >> one) | _V6_KEY
    dst6 = (ip[:, 24:32].view(_U64BE)[:, 0] >> one) | _V6_KEY
    none = np.uint64(NO_ADDRESS)
    src_key = np.where(is4, src4, np.where(is6, src6, none))
    dst_key = np.where(is4, dst4, np.where(is6, dst6, none))
    return Fields(
        length=length,
        l2=l2,
        dst_mac=dst_mac,
        src_mac=src_mac,
        vlan=vlan,
        ethertype=ethertype,
        l3=l3,
        version=version,
        proto=proto,
        dscp=dscp,
        fragment=fragment,
        frag_offset=frag_offset,
        more_fragments=more & is_ip,
        ip_len=ip_len,
        ihl=np.where(is4, ihl, 0),
        l4=l4,
        l4_ok=l4_ok,
        sport=sport,
        dport=dport,
        tcp_flags=tcp_flags,
        src_key=src_key,
        dst_key=dst_key,
        ip=ip,
        l4_head=head,
    )
