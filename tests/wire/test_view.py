"""The shared pieces of the header views: range checks, typed field access, ``checked``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netoffload.wire._view import HeaderView, check_bits, check_range
from netoffload.wire.error import WireError
from netoffload.wire.icmpv4 import Icmpv4Packet
from netoffload.wire.icmpv6 import Icmpv6Packet
from netoffload.wire.ipv4 import Ipv4Packet
from netoffload.wire.ipv6 import Ipv6Packet


class _Pair(HeaderView):
    """A made-up header: a 16-bit field at 0, a 32-bit field at 2, a checked one at 6."""

    __slots__ = ()

    def check_len(self) -> None:
        if len(self._buf) < 8:
            raise WireError("short", 0)

    @property
    def short(self) -> int:
        return self._u16(0)

    @short.setter
    def short(self, value: int) -> None:
        self._set_u16(0, value)

    @property
    def long(self) -> int:
        return self._u32(2)

    @long.setter
    def long(self, value: int) -> None:
        self._set_u32(2, value)

    @property
    def strict(self) -> int:
        return self._u16(6)

    @strict.setter
    def strict(self, value: int) -> None:
        self._put_u16(6, "strict field", value)


def test_check_range_message() -> None:
    check_range("TTL", 255, 0xFF)
    with pytest.raises(WireError, match=r"^TTL 256 not in 0\.\.255$"):
        check_range("TTL", 256, 0xFF)
    with pytest.raises(WireError):
        check_range("TTL", -1, 0xFF)


def test_check_bits_rejects_non_int_and_overflow() -> None:
    check_bits("port", 0xFFFF, 16)
    with pytest.raises(WireError, match=r"^port 65536 does not fit in 16 bits$"):
        check_bits("port", 0x10000, 16)
    with pytest.raises(WireError, match="does not fit"):
        check_bits("port", 1.0, 16)  # type: ignore[arg-type]


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF))
def test_fields_round_trip_big_endian(short: int, long: int) -> None:
    view = _Pair(bytearray(8))
    view.short, view.long = short, long
    assert (view.short, view.long) == (short, long)
    assert bytes(view.buffer[:6]) == short.to_bytes(2, "big") + long.to_bytes(4, "big")


def test_checked_uses_check_len_and_keeps_the_type() -> None:
    assert type(_Pair.checked(bytes(8))) is _Pair
    with pytest.raises(WireError, match="short"):
        _Pair.checked(bytes(7))


def test_setters_refuse_read_only_buffers() -> None:
    view = _Pair(bytes(8))
    with pytest.raises(WireError, match="read-only"):
        view.short = 1
    with pytest.raises(WireError, match="read-only"):
        view.long = 1


def test_checked_setter_checks_before_writing() -> None:
    buf = bytearray(8)
    view = _Pair(buf)
    with pytest.raises(WireError, match="strict field 65536"):
        view.strict = 0x10000
    assert buf == bytearray(8)


@pytest.mark.parametrize("packet_type", [Icmpv4Packet, Icmpv6Packet])
def test_icmp_views_share_the_header_layout(packet_type: type[Icmpv4Packet | Icmpv6Packet]) -> None:
    packet = packet_type(bytearray(8))
    packet.icmp_type, packet.code, packet.echo_ident, packet.echo_seq = 128, 0, 0x1234, 7
    assert bytes(packet.buffer) == bytes.fromhex("8000000012340007")
    assert packet.rest == 0x12340007
    with pytest.raises(WireError, match="shorter than 8"):
        packet_type.checked(bytes(7))


def test_every_view_setter_rejects_out_of_range_with_wire_error() -> None:
    # Setters of all views check values first: a bad value is a WireError,
    # never struct.error or ValueError from the byte assignment.
    ipv4 = Ipv4Packet(bytearray(20))
    ipv6 = Ipv6Packet(bytearray(40))
    icmp4 = Icmpv4Packet(bytearray(8))
    icmp6 = Icmpv6Packet(bytearray(8))
    cases = [
        (ipv4, "ttl", 256),
        (ipv4, "total_len", 1 << 16),
        (ipv4, "ident", -1),
        (ipv6, "hop_limit", 300),
        (ipv6, "payload_len", 1 << 16),
        (icmp4, "code", 256),
        (icmp6, "checksum", 1 << 16),
        (icmp4, "rest", 1 << 32),
    ]
    for view, name, value in cases:
        with pytest.raises(WireError, match="does not fit"):
            setattr(view, name, value)
