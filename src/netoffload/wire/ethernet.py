"""Ethernet II frames with 802.1Q VLAN tags and stacked 802.1ad (QinQ) tags.

The frame check sequence is not part of the buffer: devices strip it on
receive and add it on transmit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from netoffload.wire._view import HeaderView, writable_view
from netoffload.wire.checksum import Buffer
from netoffload.wire.error import WireError

DST: Final = slice(0, 6)
SRC: Final = slice(6, 12)
ETHERTYPE: Final = 12
HEADER_LEN: Final = 14
VLAN_TAG_LEN: Final = 4
#: A frame with more tags than this is rejected rather than walked (QinQ uses two):
#: Linux's ``__vlan_get_protocol`` gives up at the ``VLAN_MAX_DEPTH``-th (8th) tag.
MAX_VLAN_TAGS: Final = 7
#: EtherType values at or below this are an 802.3 length field, not a type.
MAX_8023_LENGTH: Final = 1500

_U16 = struct.Struct("!H")
_TAG = struct.Struct("!HH")


class EtherType(IntEnum):
    """The EtherType values the stack knows by name."""

    IPV4 = 0x0800
    ARP = 0x0806
    VLAN = 0x8100
    IPV6 = 0x86DD
    QINQ = 0x88A8
    LLDP = 0x88CC
    MACSEC = 0x88E5
    # Pre-standard QinQ outer tag, still sent by some switches. Linux does not take it
    # for a VLAN tag (``eth_type_vlan``), so neither does this layer: it is an EtherType.
    QINQ_LEGACY = 0x9100


#: TPIDs that introduce a VLAN tag: 802.1Q and 802.1ad, as Linux's ``eth_type_vlan``.
VLAN_TPIDS: Final = frozenset({EtherType.VLAN, EtherType.QINQ})


def _ethertype(value: int) -> int:
    """``value`` as an ``EtherType`` member when it has a name, else the plain int."""
    try:
        return EtherType(value)
    except ValueError:
        return value


@dataclass(frozen=True, slots=True)
class MacAddress:
    """A 48-bit MAC address; ``str()`` gives ``aa:bb:cc:dd:ee:ff``."""

    octets: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.octets, bytes) or len(self.octets) != 6:
            raise WireError(f"a MAC address is 6 bytes, got {self.octets!r}")

    @classmethod
    def parse(cls, text: str) -> MacAddress:
        """Parse ``aa:bb:cc:dd:ee:ff`` (``-`` separators are accepted too)."""
        parts = text.replace("-", ":").split(":")
        if len(parts) != 6 or not all(
            1 <= len(p) <= 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts
        ):
            raise WireError(f"not a MAC address: {text!r}")
        return cls(bytes(int(p, 16) for p in parts))

    @classmethod
    def from_bytes(cls, data: Buffer) -> MacAddress:
        """The address held in 6 bytes (copied)."""
        return cls(bytes(data))

    @property
    def is_broadcast(self) -> bool:
        """True for ff:ff:ff:ff:ff:ff."""
        return self.octets == b"\xff" * 6

    @property
    def is_multicast(self) -> bool:
        """True when the I/G bit is set (broadcast included)."""
        return bool(self.octets[0] & 0x01)

    @property
    def is_unicast(self) -> bool:
        """True when the I/G bit is clear."""
        return not self.is_multicast

    @property
    def is_local(self) -> bool:
        """True when the U/L bit says the address is locally administered."""
        return bool(self.octets[0] & 0x02)

    def __bytes__(self) -> bytes:
        return self.octets

    def __str__(self) -> str:
        return self.octets.hex(":")


BROADCAST: Final = MacAddress(b"\xff" * 6)


@dataclass(frozen=True, slots=True)
class VlanTag:
    """One 802.1Q tag: priority, drop-eligible bit, VLAN id, and the TPID before it."""

    pcp: int
    dei: bool
    vid: int
    tpid: int = EtherType.VLAN

    def __post_init__(self) -> None:
        if not 0 <= self.pcp <= 7:
            raise WireError(f"VLAN PCP {self.pcp} not in 0..7")
        if not 0 <= self.vid <= 0xFFF:
            raise WireError(f"VLAN id {self.vid} not in 0..4095")
        if self.tpid not in VLAN_TPIDS:
            raise WireError(f"TPID {self.tpid:#06x} is not a VLAN TPID")

    @property
    def tci(self) -> int:
        """The 16-bit tag control information field."""
        return (self.pcp << 13) | (int(self.dei) << 12) | self.vid

    @classmethod
    def from_tci(cls, tpid: int, tci: int) -> VlanTag:
        """The tag with ``tci`` behind ``tpid``."""
        return cls(pcp=tci >> 13, dei=bool(tci & 0x1000), vid=tci & 0xFFF, tpid=_ethertype(tpid))


class EthernetFrame(HeaderView):
    """A zero-copy view of an Ethernet II frame, VLAN tags included.

    ``EthernetFrame(buf)`` does not check anything; use
    ``EthernetFrame.checked(buf)`` on untrusted input, after which no
    accessor can fail.
    """

    __slots__ = ()

    def check_len(self) -> None:
        """Raise ``WireError`` unless every header accessor is safe on this buffer."""
        n = len(self._buf)
        if n < HEADER_LEN:
            raise WireError(f"Ethernet frame of {n} bytes is shorter than {HEADER_LEN}", 0)
        self._tag_count()
        offset = self.header_len - 2
        if self.ethertype <= MAX_8023_LENGTH:
            raise WireError(
                f"EtherType {self.ethertype} is an 802.3 length, not Ethernet II", offset
            )

    def _tag_count(self) -> int:
        """Number of VLAN tags; raises ``WireError`` if they overrun the buffer."""
        buf = self._buf
        offset = ETHERTYPE
        count = 0
        while _U16.unpack_from(buf, offset)[0] in VLAN_TPIDS:
            count += 1
            if count > MAX_VLAN_TAGS:
                raise WireError(f"more than {MAX_VLAN_TAGS} VLAN tags", offset)
            offset += VLAN_TAG_LEN
            if offset + 2 > len(buf):
                raise WireError("VLAN tag runs past the end of the frame", offset - VLAN_TAG_LEN)
        return count

    @property
    def dst(self) -> MacAddress:
        """Destination MAC address."""
        return MacAddress(bytes(self._buf[DST]))

    @dst.setter
    def dst(self, value: MacAddress) -> None:
        self._writable()[DST] = value.octets

    @property
    def src(self) -> MacAddress:
        """Source MAC address."""
        return MacAddress(bytes(self._buf[SRC]))

    @src.setter
    def src(self, value: MacAddress) -> None:
        self._writable()[SRC] = value.octets

    @property
    def vlan_tags(self) -> tuple[VlanTag, ...]:
        """The VLAN tags, outermost first."""
        return tuple(
            VlanTag.from_tci(*_TAG.unpack_from(self._buf, ETHERTYPE + VLAN_TAG_LEN * i))
            for i in range(self._tag_count())
        )

    @property
    def header_len(self) -> int:
        """Bytes before the payload: 14 plus 4 per VLAN tag."""
        return HEADER_LEN + VLAN_TAG_LEN * self._tag_count()

    @property
    def ethertype(self) -> int:
        """The EtherType of the payload (after any VLAN tags)."""
        return _ethertype(self._u16(self.header_len - 2))

    @ethertype.setter
    def ethertype(self, value: int) -> None:
        self._set_u16(self.header_len - 2, value)

    @property
    def payload(self) -> memoryview:
        """The bytes after the header (no copy)."""
        return self._buf[self.header_len :]


@dataclass(frozen=True, slots=True)
class EthernetRepr:
    """An Ethernet II header as checked values; ``vlan_tags`` are outermost first."""

    dst: MacAddress
    src: MacAddress
    ethertype: int
    vlan_tags: tuple[VlanTag, ...] = ()

    def __post_init__(self) -> None:
        if not MAX_8023_LENGTH < self.ethertype <= 0xFFFF:
            raise WireError(f"EtherType {self.ethertype:#x} out of range")
        if self.ethertype in VLAN_TPIDS:
            raise WireError("the payload EtherType cannot be a VLAN TPID; use vlan_tags")
        if len(self.vlan_tags) > MAX_VLAN_TAGS:
            raise WireError(f"more than {MAX_VLAN_TAGS} VLAN tags")

    @classmethod
    def parse(cls, data: Buffer) -> EthernetRepr:
        """Parse and check an Ethernet header at the start of ``data``."""
        frame = EthernetFrame.checked(data)
        return cls(
            dst=frame.dst, src=frame.src, ethertype=frame.ethertype, vlan_tags=frame.vlan_tags
        )

    @property
    def header_len(self) -> int:
        """Bytes this header takes on the wire."""
        return HEADER_LEN + VLAN_TAG_LEN * len(self.vlan_tags)

    def buffer_len(self, payload_len: int = 0) -> int:
        """Bytes of a frame with this header and ``payload_len`` bytes of payload."""
        return self.header_len + payload_len

    def emit(self, buf: Buffer, offset: int = 0) -> None:
        """Write this header into ``buf`` at ``offset`` (payload bytes are left alone)."""
        view = writable_view(buf)
        if offset < 0 or offset + self.header_len > len(view):
            raise WireError(f"buffer too short for a {self.header_len}-byte header", offset)
        view[offset : offset + 6] = self.dst.octets
        view[offset + 6 : offset + 12] = self.src.octets
        pos = offset + ETHERTYPE
        for tag in self.vlan_tags:
            _TAG.pack_into(view, pos, tag.tpid, tag.tci)
            pos += VLAN_TAG_LEN
        _U16.pack_into(view, pos, self.ethertype)

    def to_bytes(self, payload: Buffer = b"") -> bytes:
        """The header followed by ``payload``."""
        out = bytearray(self.buffer_len(len(payload)))
        self.emit(out)
        out[self.header_len :] = payload
        return bytes(out)
