"""What the AH and ESP views share: the SPI and sequence number fields (RFC 4302, 4303)."""

from __future__ import annotations

from typing import ClassVar

from netoffload.wire._view import HeaderView


class SpiSequenceView(HeaderView):
    """The SPI and the low 32 bits of the sequence number, at offsets the subclass sets."""

    __slots__ = ()

    SPI: ClassVar[int]
    SEQUENCE_NUMBER: ClassVar[int]

    @property
    def spi(self) -> int:
        """Security parameters index (0 is reserved and never sent)."""
        return self._u32(self.SPI)

    @spi.setter
    def spi(self, value: int) -> None:
        self._put_u32(self.SPI, "SPI", value)

    @property
    def sequence_number(self) -> int:
        """Low 32 bits of the anti-replay sequence number."""
        return self._u32(self.SEQUENCE_NUMBER)

    @sequence_number.setter
    def sequence_number(self, value: int) -> None:
        self._put_u32(self.SEQUENCE_NUMBER, "sequence number", value)
