"""ARP (RFC 826) for Ethernet hardware addresses and IPv4 protocol addresses."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address
from typing import Final

from netoffload.wire._view import HeaderView, check_range, writable_view
from netoffload.wire.checksum import Buffer
from netoffload.wire.error import WireError
from netoffload.wire.ethernet import EtherType, MacAddress

HARDWARE_TYPE: Final = 0
PROTOCOL_TYPE: Final = 2
HARDWARE_LEN: Final = 4
PROTOCOL_LEN: Final = 5
OPERATION: Final = 6
SENDER_HW: Final = slice(8, 14)
SENDER_PROTO: Final = slice(14, 18)
TARGET_HW: Final = slice(18, 24)
TARGET_PROTO: Final = slice(24, 28)
FIXED_LEN: Final = 8
PACKET_LEN: Final = 28

HARDWARE_ETHERNET: Final = 1

_FIXED = struct.Struct("!HHBBH")


class ArpOperation(IntEnum):
    """ARP operation codes."""

    REQUEST = 1
    REPLY = 2


class ArpPacket(HeaderView):
    """A zero-copy view of an Ethernet/IPv4 ARP packet.

    ``ArpPacket(buf)`` does not check anything; use ``ArpPacket.checked(buf)``
    on untrusted input, after which no accessor can fail. Bytes after the 28
    of the packet (Ethernet padding) are ignored.
    """

    __slots__ = ()

    def check_len(self) -> None:
        """Raise ``WireError`` unless the address types, sizes and length are Ethernet/IPv4."""
        n = len(self._buf)
        if n < FIXED_LEN:
            raise WireError(f"ARP packet of {n} bytes is shorter than {FIXED_LEN}", 0)
        if self.hardware_type != HARDWARE_ETHERNET:
            raise WireError(f"ARP hardware type {self.hardware_type} is not Ethernet", 0)
        if self.protocol_type != EtherType.IPV4:
            raise WireError(
                f"ARP protocol type {self.protocol_type:#06x} is not IPv4", PROTOCOL_TYPE
            )
        if self.hardware_len != 6:
            raise WireError(f"ARP hardware length {self.hardware_len}, not 6", HARDWARE_LEN)
        if self.protocol_len != 4:
            raise WireError(f"ARP protocol length {self.protocol_len}, not 4", PROTOCOL_LEN)
        if n < PACKET_LEN:
            raise WireError(f"ARP packet of {n} bytes is shorter than {PACKET_LEN}", 0)

    @property
    def hardware_type(self) -> int:
        """Hardware address space (1 for Ethernet)."""
        return self._u16(HARDWARE_TYPE)

    @property
    def protocol_type(self) -> int:
        """Protocol address space, an EtherType (0x0800 for IPv4)."""
        return self._u16(PROTOCOL_TYPE)

    @property
    def hardware_len(self) -> int:
        """Hardware address length in bytes."""
        return self._buf[HARDWARE_LEN]

    @property
    def protocol_len(self) -> int:
        """Protocol address length in bytes."""
        return self._buf[PROTOCOL_LEN]

    @property
    def operation(self) -> int:
        """Operation (an ``ArpOperation`` member when known)."""
        value = self._u16(OPERATION)
        try:
            return ArpOperation(value)
        except ValueError:
            return value

    @operation.setter
    def operation(self, value: int) -> None:
        self._set_u16(OPERATION, value)

    @property
    def sender_hw(self) -> MacAddress:
        """Sender hardware address."""
        return MacAddress(bytes(self._buf[SENDER_HW]))

    @sender_hw.setter
    def sender_hw(self, value: MacAddress) -> None:
        self._writable()[SENDER_HW] = value.octets

    @property
    def sender_proto(self) -> IPv4Address:
        """Sender protocol address."""
        return IPv4Address(bytes(self._buf[SENDER_PROTO]))

    @sender_proto.setter
    def sender_proto(self, value: IPv4Address) -> None:
        self._writable()[SENDER_PROTO] = value.packed

    @property
    def target_hw(self) -> MacAddress:
        """Target hardware address."""
        return MacAddress(bytes(self._buf[TARGET_HW]))

    @target_hw.setter
    def target_hw(self, value: MacAddress) -> None:
        self._writable()[TARGET_HW] = value.octets

    @property
    def target_proto(self) -> IPv4Address:
        """Target protocol address."""
        return IPv4Address(bytes(self._buf[TARGET_PROTO]))

    @target_proto.setter
    def target_proto(self, value: IPv4Address) -> None:
        self._writable()[TARGET_PROTO] = value.packed


@dataclass(frozen=True, slots=True)
class ArpRepr:
    """An Ethernet/IPv4 ARP packet as checked values."""

    operation: int
    sender_hw: MacAddress
    sender_proto: IPv4Address
    target_hw: MacAddress
    target_proto: IPv4Address

    def __post_init__(self) -> None:
        check_range("ARP operation", self.operation, 0xFFFF)

    @classmethod
    def parse(cls, data: Buffer) -> ArpRepr:
        """Parse and check the ARP packet at the start of ``data``."""
        packet = ArpPacket.checked(data)
        return cls(
            operation=packet.operation,
            sender_hw=packet.sender_hw,
            sender_proto=packet.sender_proto,
            target_hw=packet.target_hw,
            target_proto=packet.target_proto,
        )

    @property
    def header_len(self) -> int:
        """Always 28."""
        return PACKET_LEN

    def buffer_len(self) -> int:
        """Always 28."""
        return PACKET_LEN

    def emit(self, buf: Buffer, offset: int = 0) -> None:
        """Write this packet into ``buf`` at ``offset``."""
        view = writable_view(buf)
        if offset < 0 or offset + PACKET_LEN > len(view):
            raise WireError(f"buffer too short for a {PACKET_LEN}-byte ARP packet", offset)
        _FIXED.pack_into(view, offset, HARDWARE_ETHERNET, EtherType.IPV4, 6, 4, self.operation)
        view[offset + FIXED_LEN : offset + PACKET_LEN] = (
            self.sender_hw.octets
            + self.sender_proto.packed
            + self.target_hw.octets
            + self.target_proto.packed
        )

    def to_bytes(self) -> bytes:
        """This packet as bytes."""
        out = bytearray(PACKET_LEN)
        self.emit(out)
        return bytes(out)
