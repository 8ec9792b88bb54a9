"""What the IPv4 and IPv6 header views share: the source and destination address fields."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, Generic, TypeVar

from netoffload.wire._view import HeaderView

AddressT = TypeVar("AddressT", IPv4Address, IPv6Address)


class IpAddressView(HeaderView, Generic[AddressT]):
    """Source and destination address accessors at the slices ``SRC`` and ``DST``."""

    __slots__ = ()

    SRC: ClassVar[slice]
    DST: ClassVar[slice]

    def _address(self, packed: bytes) -> AddressT:
        raise NotImplementedError

    @property
    def src_bytes(self) -> memoryview:
        """Source address, packed (no copy)."""
        return self._buf[self.SRC]

    @property
    def dst_bytes(self) -> memoryview:
        """Destination address, packed (no copy)."""
        return self._buf[self.DST]

    @property
    def src(self) -> AddressT:
        """Source address."""
        return self._address(bytes(self._buf[self.SRC]))

    @src.setter
    def src(self, value: AddressT) -> None:
        self._writable()[self.SRC] = value.packed

    @property
    def dst(self) -> AddressT:
        """Destination address."""
        return self._address(bytes(self._buf[self.DST]))

    @dst.setter
    def dst(self, value: AddressT) -> None:
        self._writable()[self.DST] = value.packed
