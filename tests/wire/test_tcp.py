"""TCP view, repr, options and checksum; scapy is the independent oracle."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from netoffload.wire.checksum import pseudo_header_sum
from netoffload.wire.error import WireError
from netoffload.wire.tcp import (
    TcpEndOfList,
    TcpFlags,
    TcpMss,
    TcpNoOperation,
    TcpOption,
    TcpPacket,
    TcpRepr,
    TcpSack,
    TcpSackPermitted,
    TcpTimestamps,
    TcpUnknownOption,
    TcpWindowScale,
    options_bytes,
    parse_options,
)

V4_SRC = bytes([198, 18, 0, 1])
V4_DST = bytes([198, 18, 0, 2])
V6_SRC = ipaddress.IPv6Address("fd00::1")
V6_DST = ipaddress.IPv6Address("fd00::2")

# Captured with an AF_PACKET socket on a veth pair (tx checksum offload off, so
# the kernel filled in full checksums) between two private network namespaces,
# Linux 6.18: the SYN of `socket.create_connection(("198.18.0.2", 8080))` sent
# from 198.18.0.1. Options: MSS 1460, SACK permitted, timestamps, NOP, wscale 10.
SYN_V4 = bytes.fromhex(
    "c15a1f90b7831d9900000000a002faf0b2d00000020405b40402080a670cf0ff000000000103030a"
)
# Same capture: the server's PSH|ACK carrying b"hello\n", 198.18.0.2 -> 198.18.0.1.
DATA_V4 = bytes.fromhex(
    "1f90c15ad5d9c573b7831d9e801800407c0900000101080a9948e7b2670cf0ff68656c6c6f0a"
)
# Same capture over IPv6: the SYN|ACK from fd00::2 to fd00::1.
SYNACK_V6 = bytes.fromhex(
    "1f90c9ce9bda7f44e1d0252da012fb04e4340000020405a00402080aa6d542f3dd029c7b0103030a"
)

SYN_V4_REPR = TcpRepr(
    src_port=49498,
    dst_port=8080,
    seq_number=0xB7831D99,
    ack_number=0,
    flags=TcpFlags.SYN,
    window_len=64240,
    urgent_pointer=0,
    options=(
        TcpMss(1460),
        TcpSackPermitted(),
        TcpTimestamps(0x670CF0FF, 0),
        TcpNoOperation(),
        TcpWindowScale(10),
    ),
)
DATA_V4_REPR = TcpRepr(
    src_port=8080,
    dst_port=49498,
    seq_number=0xD5D9C573,
    ack_number=0xB7831D9E,
    flags=TcpFlags.PSH | TcpFlags.ACK,
    window_len=64,
    options=(TcpNoOperation(), TcpNoOperation(), TcpTimestamps(0x9948E7B2, 0x670CF0FF)),
)


def test_deconstruct() -> None:
    packet = TcpPacket.checked(SYN_V4)
    assert packet.src_port == 49498
    assert packet.dst_port == 8080
    assert packet.seq_number == 0xB7831D99
    assert packet.ack_number == 0
    assert packet.header_len == 40
    assert packet.flags == TcpFlags.SYN
    assert packet.window_len == 64240
    assert packet.checksum == 0xB2D0
    assert packet.urgent_pointer == 0
    assert bytes(packet.options) == SYN_V4[20:40]
    assert packet.parsed_options == SYN_V4_REPR.options
    assert len(packet.payload) == 0
    assert packet.verify_checksum(V4_SRC, V4_DST)
    assert TcpRepr.parse(SYN_V4, src=V4_SRC, dst=V4_DST) == SYN_V4_REPR


def test_construct() -> None:
    assert SYN_V4_REPR.header_len == 40
    assert SYN_V4_REPR.to_bytes(src=V4_SRC, dst=V4_DST) == SYN_V4
    buf = bytearray(SYN_V4_REPR.buffer_len(0) + 4)
    SYN_V4_REPR.emit(buf, 2, src=ipaddress.IPv4Address(V4_SRC), dst=V4_DST)
    assert bytes(buf[2:42]) == SYN_V4


def test_deconstruct_construct_with_payload() -> None:
    packet = TcpPacket.checked(DATA_V4)
    assert bytes(packet.payload) == b"hello\n"
    assert isinstance(packet.payload, memoryview)
    assert TcpRepr.parse(DATA_V4, src=V4_DST, dst=V4_SRC) == DATA_V4_REPR
    assert DATA_V4_REPR.to_bytes(b"hello\n", src=V4_DST, dst=V4_SRC) == DATA_V4


def test_ipv6_segment() -> None:
    repr_ = TcpRepr.parse(SYNACK_V6, src=V6_DST, dst=V6_SRC)
    assert repr_.flags == TcpFlags.SYN | TcpFlags.ACK
    assert repr_.options[0] == TcpMss(1440)
    assert repr_.to_bytes(src=V6_DST.packed, dst=V6_SRC.packed) == SYNACK_V6
    other = ipaddress.IPv6Address("fd00::3")
    with pytest.raises(WireError, match="checksum"):
        TcpRepr.parse(SYNACK_V6, src=other, dst=V6_SRC)
    assert TcpRepr.parse(SYNACK_V6, src=other, dst=V6_SRC, verify_checksum=False) == repr_


def test_bad_checksum_is_reported_at_its_offset() -> None:
    bad = bytearray(SYN_V4)
    bad[17] ^= 1
    with pytest.raises(WireError) as info:
        TcpRepr.parse(bad, src=V4_SRC, dst=V4_DST)
    assert info.value.offset == 16
    assert TcpRepr.parse(bad) == SYN_V4_REPR  # no addresses: nothing to verify against


def test_setters_on_writable_buffer() -> None:
    buf = bytearray(DATA_V4)
    packet = TcpPacket.checked(buf)
    packet.src_port = 1
    packet.dst_port = 2
    packet.seq_number = 0xFFFFFFFF
    packet.ack_number = 5
    packet.flags = TcpFlags.FIN | TcpFlags.AE
    packet.window_len = 0xFFFF
    packet.urgent_pointer = 7
    assert packet.header_len == 32  # the data offset survives a flags change
    packet.fill_checksum(V4_SRC, V4_DST)
    scapy_tcp = IP(bytes(IP(src="198.18.0.1", dst="198.18.0.2", proto=6) / Raw(bytes(buf))))[TCP]
    assert (scapy_tcp.sport, scapy_tcp.dport, scapy_tcp.seq, scapy_tcp.ack) == (1, 2, 2**32 - 1, 5)
    assert int(scapy_tcp.flags) == 0x101
    assert (scapy_tcp.window, scapy_tcp.urgptr) == (0xFFFF, 7)
    assert packet.verify_checksum(V4_SRC, V4_DST)
    packet.header_len = 20
    assert packet.header_len == 20
    assert packet.flags == TcpFlags.FIN | TcpFlags.AE


def test_setters_refuse_read_only_buffer_and_bad_values() -> None:
    packet = TcpPacket.checked(SYN_V4)
    with pytest.raises(WireError, match="read-only"):
        packet.src_port = 1
    writable = TcpPacket.checked(bytearray(SYN_V4))
    with pytest.raises(WireError):
        writable.src_port = 65536
    with pytest.raises(WireError):
        writable.seq_number = -1
    with pytest.raises(WireError):
        writable.header_len = 22
    with pytest.raises(WireError):
        writable.flags = 0x200  # type: ignore[assignment]


def test_compute_checksum_ignores_current_field() -> None:
    buf = bytearray(SYN_V4)
    buf[16:18] = b"\x12\x34"
    packet = TcpPacket(buf)
    assert packet.compute_checksum(V4_SRC, V4_DST) == 0xB2D0
    assert not packet.verify_checksum(V4_SRC, V4_DST)
    packet.fill_checksum(V4_SRC, V4_DST)
    assert bytes(buf) == SYN_V4


def test_explicit_checksum_is_written_as_given() -> None:
    assert SYN_V4_REPR.to_bytes(checksum=0)[16:18] == b"\x00\x00"
    # CHECKSUM_PARTIAL: the device completes a field seeded with the pseudo-header sum.
    seed = pseudo_header_sum(V4_SRC, V4_DST, 6, 40)
    partial = SYN_V4_REPR.to_bytes(checksum=seed)
    assert int.from_bytes(partial[16:18], "big") == seed
    with pytest.raises(WireError, match="src and dst"):
        SYN_V4_REPR.to_bytes()
    with pytest.raises(WireError):
        SYN_V4_REPR.to_bytes(checksum=0x10000)


def test_emit_checks_buffer() -> None:
    with pytest.raises(WireError, match="read-only"):
        SYN_V4_REPR.emit(bytes(40), checksum=0)
    with pytest.raises(WireError, match="too short"):
        SYN_V4_REPR.emit(bytearray(39), checksum=0)
    with pytest.raises(WireError):
        SYN_V4_REPR.emit(bytearray(40), -1, checksum=0)
    with pytest.raises(WireError):
        SYN_V4_REPR.to_bytes(src=V4_SRC, dst=V6_DST)


def test_repr_validates_fields() -> None:
    with pytest.raises(WireError):
        TcpRepr(src_port=70000, dst_port=1, seq_number=0)
    with pytest.raises(WireError):
        TcpRepr(src_port=1, dst_port=1, seq_number=2**32)
    with pytest.raises(WireError, match="over 60"):
        TcpRepr(src_port=1, dst_port=1, seq_number=0, options=(TcpTimestamps(1, 2),) * 5)
    with pytest.raises(WireError):
        TcpRepr(src_port=1, dst_port=1, seq_number=0, options=(b"\x01",))  # type: ignore[arg-type]
    with pytest.raises(WireError):
        TcpSack(())
    with pytest.raises(WireError):
        TcpSack(((1, 2),) * 5)
    with pytest.raises(WireError):
        TcpUnknownOption(2, b"\x05\xb4")  # kind 2 is MSS, which has its own type
    with pytest.raises(WireError):
        TcpWindowScale(256)


def test_every_option_kind() -> None:
    options: tuple[TcpOption, ...] = (
        TcpNoOperation(),
        TcpMss(536),
        TcpWindowScale(14),
        TcpSackPermitted(),
        TcpSack(((1, 2), (0xFFFFFFFF, 0))),
        TcpUnknownOption(30, b"\xaa\xbb"),
        TcpUnknownOption(254, b""),
        TcpEndOfList(),
    )
    raw = options_bytes(options)
    assert len(raw) % 4 == 0
    assert parse_options(raw) == options
    assert TcpRepr(1, 2, 3, options=options).header_len == 20 + len(raw)


def test_padding_after_end_of_list_is_ignored() -> None:
    assert parse_options(b"\x02\x04\x05\xb4\x00\xff\xff\xff") == (TcpMss(1460), TcpEndOfList())


def test_emit_reproduces_option_layout() -> None:
    # NOPs before the timestamps and an explicit EOL early on keep their places.
    layouts = [
        b"\x01\x01\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x02",
        b"\x02\x04\x05\xb4\x00\x00\x00\x00",
        b"\x01\x01\x01\x01",
        b"\x03\x03\x07\x00",
    ]
    for area in layouts:
        header = bytearray(SYN_V4[:20])
        header[12] = ((20 + len(area)) // 4) << 4
        segment = bytes(header) + area
        repr_ = TcpRepr.parse(segment)
        assert repr_.to_bytes(checksum=int.from_bytes(segment[16:18], "big")) == segment


@pytest.mark.parametrize(
    "area",
    [
        b"\x02",  # no length byte
        b"\x02\x01\x00\x00",  # length below 2
        b"\x02\x00\x00\x00",  # length 0 would loop forever
        b"\x02\x08\x05\xb4",  # runs past the area
        b"\x02\x03\x05\x00",  # MSS must be 4
        b"\x03\x04\x07\x00",  # window scale must be 3
        b"\x04\x03\x00\x00",  # SACK permitted must be 2
        b"\x08\x08\x00\x00\x00\x00\x00\x00",  # timestamps must be 10
        b"\x05\x02\x00\x00",  # SACK with no blocks
        b"\x05\x06\x00\x00\x00\x00",  # SACK not a whole block
        b"\x05\x2a" + bytes(40),  # five SACK blocks
    ],
)
def test_malformed_options_raise_wire_error(area: bytes) -> None:
    with pytest.raises(WireError):
        parse_options(area)
    padded = area + bytes(-len(area) % 4)
    if len(padded) > 40:
        return
    header = bytearray(SYN_V4[:20])
    header[12] = ((20 + len(padded)) // 4) << 4
    with pytest.raises(WireError):
        TcpPacket.checked(bytes(header) + padded)


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"", 0),
        (SYN_V4[:19], 0),
        (SYN_V4[:12] + b"\x40" + SYN_V4[13:], 12),  # data offset 4
        (SYN_V4[:36], 12),  # header says 40 bytes
    ],
)
def test_short_or_inconsistent_headers(data: bytes, offset: int) -> None:
    with pytest.raises(WireError) as info:
        TcpPacket.checked(data)
    assert info.value.offset == offset


# --- property tests ----------------------------------------------------------

_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)
_known_options = st.one_of(
    st.just(TcpNoOperation()),
    st.builds(TcpMss, _u16),
    st.builds(TcpWindowScale, st.integers(0, 14)),
    st.just(TcpSackPermitted()),
    st.builds(TcpSack, st.lists(st.tuples(_u32, _u32), min_size=1, max_size=4).map(tuple)),
    st.builds(TcpTimestamps, _u32, _u32),
)
_any_option = st.one_of(
    _known_options,
    st.builds(
        TcpUnknownOption,
        st.integers(6, 255).filter(lambda k: k != 8),
        st.binary(max_size=8),
    ),
)


def _fit(options: list[TcpOption]) -> tuple[TcpOption, ...]:
    """Drop options until they fit in 40 bytes; end with EOL when not 4-aligned."""
    while sum(len(o.to_bytes()) for o in options) > 39:
        options.pop()
    if sum(len(o.to_bytes()) for o in options) % 4:
        options.append(TcpEndOfList())
    return tuple(options)


def _reprs(option: st.SearchStrategy[TcpOption]) -> st.SearchStrategy[TcpRepr]:
    return st.builds(
        TcpRepr,
        src_port=_u16,
        dst_port=_u16,
        seq_number=_u32,
        ack_number=_u32,
        flags=st.integers(0, 0x1FF).map(TcpFlags),
        window_len=_u16,
        urgent_pointer=_u16,
        options=st.lists(option, max_size=8).map(_fit),
    )


_v4 = st.binary(min_size=4, max_size=4)
_v6 = st.binary(min_size=16, max_size=16)
_addresses = st.one_of(st.tuples(_v4, _v4), st.tuples(_v6, _v6))


@settings(max_examples=300, deadline=None)
@given(_reprs(_any_option), st.binary(max_size=64), _addresses)
def test_parse_emit_roundtrip(repr_: TcpRepr, payload: bytes, addrs: tuple[bytes, bytes]) -> None:
    src, dst = addrs
    data = repr_.to_bytes(payload, src=src, dst=dst)
    assert TcpRepr.parse(data, src=src, dst=dst) == repr_
    assert bytes(TcpPacket.checked(data).payload) == payload


def _scapy_options(options: tuple[TcpOption, ...]) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for opt in options:
        match opt:
            case TcpNoOperation():
                out.append(("NOP", None))
            case TcpEndOfList():
                out.append(("EOL", None))
            case TcpMss(mss_bytes=mss):
                out.append(("MSS", mss))
            case TcpWindowScale(shift=shift):
                out.append(("WScale", shift))
            case TcpSackPermitted():
                out.append(("SAckOK", b""))
            case TcpSack(blocks=blocks):
                out.append(("SAck", tuple(edge for block in blocks for edge in block)))
            case TcpTimestamps(tsval=tsval, tsecr=tsecr):
                out.append(("Timestamp", (tsval, tsecr)))
            case _:
                raise AssertionError(opt)
    return out


def _ip(src: bytes, dst: bytes) -> IP | IPv6:
    if len(src) == 4:
        return IP(src=str(ipaddress.IPv4Address(src)), dst=str(ipaddress.IPv4Address(dst)))
    return IPv6(src=str(ipaddress.IPv6Address(src)), dst=str(ipaddress.IPv6Address(dst)))


def _scapy_checksum(packet: IP | IPv6) -> int:
    """The checksum scapy computes for the TCP layer of ``packet``."""
    copy = packet.copy()
    del copy[TCP].chksum
    return int(type(packet)(bytes(copy))[TCP].chksum)


@settings(max_examples=200, deadline=None)
@given(_reprs(_known_options), st.binary(max_size=64), _addresses)
def test_scapy_reads_what_we_build(
    repr_: TcpRepr, payload: bytes, addrs: tuple[bytes, bytes]
) -> None:
    src, dst = addrs
    segment = repr_.to_bytes(payload, src=src, dst=dst)
    ip = _ip(src, dst)
    if isinstance(ip, IP):
        ip.proto = 6
    else:
        ip.nh = 6
    packet = type(ip)(bytes(ip / Raw(segment)))
    tcp = packet[TCP]
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack) == (
        repr_.src_port,
        repr_.dst_port,
        repr_.seq_number,
        repr_.ack_number,
    )
    assert int(tcp.flags) == repr_.flags
    assert (tcp.window, tcp.urgptr) == (repr_.window_len, repr_.urgent_pointer)
    assert tcp.dataofs * 4 == repr_.header_len
    assert tcp.options == _scapy_options(repr_.options)
    assert bytes(tcp.payload) == payload
    assert tcp.chksum == _scapy_checksum(packet)


@settings(max_examples=200, deadline=None)
@given(_reprs(_known_options), st.binary(max_size=64), _addresses)
def test_we_read_what_scapy_builds(
    fields: TcpRepr, payload: bytes, addrs: tuple[bytes, bytes]
) -> None:
    src, dst = addrs
    tcp = TCP(
        sport=fields.src_port,
        dport=fields.dst_port,
        seq=fields.seq_number,
        ack=fields.ack_number,
        flags=int(fields.flags),
        window=fields.window_len,
        urgptr=fields.urgent_pointer,
        options=_scapy_options(fields.options),
    )
    wire = bytes(_ip(src, dst) / tcp / Raw(payload))
    segment = wire[20 if len(src) == 4 else 40 :]
    repr_ = TcpRepr.parse(segment, src=src, dst=dst)
    # scapy pads with zeros, which we read as an end-of-list option: compare on the wire.
    assert options_bytes(repr_.options) == options_bytes(fields.options)
    assert repr_ == TcpRepr.parse(fields.to_bytes(checksum=0))
    assert bytes(TcpPacket.checked(segment).payload) == payload
    assert repr_.to_bytes(payload, src=src, dst=dst) == segment


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        packet = TcpPacket.checked(data)
    except WireError:
        return
    # After checked() no accessor may fail.
    _ = (packet.src_port, packet.dst_port, packet.seq_number, packet.ack_number)
    _ = (packet.flags, packet.window_len, packet.checksum, packet.urgent_pointer)
    _ = (packet.parsed_options, packet.payload, packet.reserved_bits)
    packet.verify_checksum(V4_SRC, V4_DST)
    repr_ = TcpRepr.parse(data, src=V4_SRC, dst=V4_DST, verify_checksum=False)
    assert repr_.header_len <= packet.header_len


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_random_option_areas_raise_only_wire_error(area: bytes) -> None:
    try:
        options = parse_options(area)
    except WireError:
        return
    assert len(options_bytes(options)) <= len(area) + 3
