"""What TCP and UDP share: the port fields and the pseudo-header checksum."""

from __future__ import annotations

from typing import ClassVar, Final

from netoffload.wire._view import HeaderView, check_bits
from netoffload.wire.checksum import (
    Address,
    ChecksumKind,
    add16,
    internet_checksum,
    ones_sum,
    pseudo_header_sum,
)
from netoffload.wire.error import WireError

# Both headers start with the two ports (RFC 768, RFC 9293).
_SRC_PORT: Final = 0
_DST_PORT: Final = 2


class TransportView(HeaderView):
    """Ports and checksum of a TCP or UDP header; the checksum covers ``_covered()``.

    Subclasses set ``PROTOCOL`` (for the pseudo-header) and ``CHECKSUM`` (the
    field's offset).
    """

    __slots__ = ()

    PROTOCOL: ClassVar[int]
    CHECKSUM: ClassVar[int]

    def _covered(self) -> memoryview:
        """The bytes the checksum covers: the whole buffer unless a length field says less."""
        return self._buf

    @property
    def src_port(self) -> int:
        """Source port."""
        return self._u16(_SRC_PORT)

    @src_port.setter
    def src_port(self, value: int) -> None:
        self._put_u16(_SRC_PORT, "source port", value)

    @property
    def dst_port(self) -> int:
        """Destination port."""
        return self._u16(_DST_PORT)

    @dst_port.setter
    def dst_port(self, value: int) -> None:
        self._put_u16(_DST_PORT, "destination port", value)

    @property
    def checksum(self) -> int:
        """Checksum field as it is in the buffer."""
        return self._u16(self.CHECKSUM)

    @checksum.setter
    def checksum(self, value: int) -> None:
        self._put_u16(self.CHECKSUM, "checksum", value)

    def _sum(self, src: Address, dst: Address) -> int:
        """Folded sum of the pseudo-header and the covered bytes as they stand."""
        covered = self._covered()
        pseudo = pseudo_header_sum(src, dst, self.PROTOCOL, len(covered))
        return add16(pseudo, ones_sum(covered))

    def compute_checksum(self, src: Address, dst: Address) -> int:
        """The value the checksum field should hold, whatever it holds now."""
        without_field = add16(self._sum(src, dst), ~self.checksum & 0xFFFF)
        return ~without_field & 0xFFFF

    def verify_checksum(self, src: Address, dst: Address) -> bool:
        """True when the checksum is right for these IPv4 or IPv6 addresses."""
        return self._sum(src, dst) == 0xFFFF

    def fill_checksum(self, src: Address, dst: Address) -> None:
        """Compute the checksum and write it into the buffer."""
        self.checksum = self.compute_checksum(src, dst)


def parse_addresses(
    src: Address | None, dst: Address | None, verify_checksum: bool
) -> tuple[Address, Address] | None:
    """The addresses to verify a parsed checksum against, or ``None`` to skip it."""
    if (src is None) != (dst is None):
        raise WireError("give both src and dst, or neither")
    if not verify_checksum or src is None or dst is None:
        return None
    return src, dst


def emit_addresses(
    src: Address | None, dst: Address | None, checksum: int | ChecksumKind | None
) -> tuple[Address, Address] | None:
    """The addresses an emitted checksum needs (computed or partial), ``None`` when given."""
    if isinstance(checksum, int):
        check_bits("checksum", checksum, 16)
        return None
    if checksum is not None and checksum is not ChecksumKind.PARTIAL:
        raise WireError(f"checksum must be an int, None or PARTIAL, not {checksum!r}")
    if src is None or dst is None:
        raise WireError("src and dst are needed to compute the checksum")
    return src, dst


def emitted_checksum(
    packet: memoryview,
    protocol: int,
    addresses: tuple[Address, Address],
    kind: int | ChecksumKind | None = None,
) -> int:
    """The checksum field of ``packet`` (a whole segment or datagram, its field zero):
    the full checksum, or with ``PARTIAL`` the pseudo-header sum a device finishes."""
    src, dst = addresses
    pseudo = pseudo_header_sum(src, dst, protocol, len(packet))
    if kind is ChecksumKind.PARTIAL:
        return pseudo
    return internet_checksum(packet, pseudo)
