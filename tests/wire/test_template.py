"""Flow templates: per-packet headers equal the Reprs' and scapy's, checksums partial or full."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from netoffload.wire import (
    PARTIAL,
    EthernetRepr,
    EtherType,
    FlowTemplate,
    IpProtocol,
    Ipv4Repr,
    Ipv6Repr,
    MacAddress,
    TcpFlags,
    TcpMss,
    TcpNoOperation,
    TcpRepr,
    TcpTimestamps,
    UdpRepr,
)

A4, B4 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
A6, B6 = IPv6Address("fd00::1"), IPv6Address("fd00::2")
MAC_A, MAC_B = MacAddress.parse("02:00:00:00:00:01"), MacAddress.parse("02:00:00:00:00:02")


def _eth(v6: bool) -> EthernetRepr:
    return EthernetRepr(MAC_B, MAC_A, EtherType.IPV6 if v6 else EtherType.IPV4)


def _ip(v6: bool, proto: IpProtocol, payload_len: int, ident: int = 0) -> Ipv4Repr | Ipv6Repr:
    if v6:
        return Ipv6Repr(A6, B6, proto, payload_len)
    return Ipv4Repr(A4, B4, proto, payload_len, ident=ident, dont_frag=True)


def _tcp(seq: int, ack: int, flags: TcpFlags, window: int) -> TcpRepr:
    opts = (TcpNoOperation(), TcpNoOperation(), TcpTimestamps(7, 9))
    return TcpRepr(40000, 5201, seq, ack, flags, window, options=opts)


@settings(max_examples=200)
@given(
    v6=st.booleans(),
    payload=st.binary(max_size=3000),
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    flags=st.sampled_from([TcpFlags.ACK, TcpFlags.ACK | TcpFlags.PSH, TcpFlags.FIN | TcpFlags.ACK]),
    window=st.integers(0, 0xFFFF),
    ident=st.integers(0, 0xFFFF),
)
def test_tcp_packet_equals_the_reprs(  # noqa: PLR0917
    v6: bool, payload: bytes, seq: int, ack: int, flags: TcpFlags, window: int, ident: int
) -> None:
    template = FlowTemplate(_eth(v6), _ip(v6, IpProtocol.TCP, 0), _tcp(0, 0, TcpFlags.ACK, 0))
    buf = bytearray(template.header_len + len(payload))
    hl = template.write(
        buf, len(payload), ident=ident, seq=seq, ack=ack, flags=flags, window=window
    )
    buf[hl:] = payload
    tcp = _tcp(seq, ack, flags, window)
    src, dst = (A6, B6) if v6 else (A4, B4)
    segment = tcp.to_bytes(payload, src=src, dst=dst, checksum=PARTIAL)
    ip = _ip(v6, IpProtocol.TCP, len(segment), ident)
    assert bytes(buf) == _eth(v6).to_bytes(ip.to_bytes(segment))
    template.finish_checksum(buf, len(buf))
    pkt = Ether(bytes(buf))
    l4 = pkt[TCP]
    reported = l4.chksum
    del l4.chksum
    if not v6:
        del pkt[IP].chksum
    assert Ether(bytes(pkt))[TCP].chksum == reported
    assert bytes(l4.payload) == payload


@given(v6=st.booleans(), payload=st.binary(max_size=2000), ident=st.integers(0, 0xFFFF))
def test_udp_packet_checksums_are_what_scapy_computes(v6: bool, payload: bytes, ident: int) -> None:
    template = FlowTemplate(_eth(v6), _ip(v6, IpProtocol.UDP, 0), UdpRepr(4000, 4001))
    buf = bytearray(template.header_len + len(payload))
    hl = template.write(buf, len(payload), ident=ident)
    buf[hl:] = payload
    template.finish_checksum(buf, len(buf))
    pkt = Ether(bytes(buf))
    reported = pkt[UDP].chksum
    ip_layer = IPv6 if v6 else IP
    assert pkt[ip_layer].src == str(A6 if v6 else A4)
    del pkt[UDP].chksum
    if not v6:
        assert pkt[IP].id == ident
        reported_ip = pkt[IP].chksum
        del pkt[IP].chksum
        assert Ether(bytes(pkt))[IP].chksum == reported_ip
    assert Ether(bytes(pkt))[UDP].chksum == reported
    assert pkt[UDP].len == 8 + len(payload)


def test_options_keep_the_data_offset() -> None:
    tcp = TcpRepr(1, 2, 0, options=(TcpMss(1460), TcpNoOperation(), TcpNoOperation()))
    template = FlowTemplate(_eth(False), _ip(False, IpProtocol.TCP, 0), tcp)
    buf = bytearray(template.header_len)
    template.write(buf, 0, seq=5, ack=6, flags=int(TcpFlags.SYN))
    assert Ether(bytes(buf))[TCP].dataofs == 7 and Ether(bytes(buf))[TCP].flags == "S"


def test_ecn_codepoint_and_ip_only_templates() -> None:
    for v6 in (False, True):
        template = FlowTemplate(None, _ip(v6, IpProtocol.TCP, 0), _tcp(0, 0, TcpFlags.ACK, 0))
        assert template.layout.l3_offset == 0
        buf = bytearray(template.header_len + 10)
        template.write(buf, 10, seq=1, ack=2, flags=int(TcpFlags.ACK), ecn=2)
        frame = _eth(v6).to_bytes(bytes(buf))
        pkt = Ether(frame)
        if v6:
            assert pkt[IPv6].tc & 3 == 2
        else:
            assert pkt[IP].tos & 3 == 2
            reported = pkt[IP].chksum
            del pkt[IP].chksum
            assert Ether(bytes(pkt))[IP].chksum == reported


@given(
    v6=st.booleans(),
    options=st.sampled_from(
        [
            (TcpNoOperation(), TcpNoOperation(), TcpTimestamps(5, 6)),
            (TcpMss(1460),),
            (TcpMss(1440), TcpNoOperation(), TcpNoOperation(), TcpTimestamps(1, 2)),
        ]
    ),
    payload=st.binary(max_size=100),
)
def test_options_after_an_option_free_template(
    v6: bool, options: tuple[object, ...], payload: bytes
) -> None:
    from netoffload.wire.tcp import options_bytes

    raw = options_bytes(options)  # type: ignore[arg-type]
    template = FlowTemplate(None, _ip(v6, IpProtocol.TCP, 0), TcpRepr(40000, 5201, 0))
    buf = bytearray(template.header_len + len(raw) + len(payload))
    hl = template.write(
        buf, len(payload), seq=7, ack=8, flags=int(TcpFlags.ACK), window=9, options=raw
    )
    buf[hl:] = payload
    tcp = TcpRepr(40000, 5201, 7, 8, TcpFlags.ACK, 9, options=options)  # type: ignore[arg-type]
    src, dst = (A6, B6) if v6 else (A4, B4)
    segment = tcp.to_bytes(payload, src=src, dst=dst, checksum=PARTIAL)
    assert bytes(buf) == _ip(v6, IpProtocol.TCP, len(segment)).to_bytes(segment)
