"""Shared set-up for the ESP and AH tests: packets, keys, and SAs on both sides (ours, scapy's)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySa
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

from netoffload.engine.esp import EspAlgorithm, EspMode, NatTraversal, SecurityAssociation

SRC4, DST4 = "198.18.0.1", "198.18.0.2"
SRC6, DST6 = "fd00::1", "fd00::2"
TUNNEL4 = (IPv4Address("198.18.7.1"), IPv4Address("198.18.7.2"))
TUNNEL6 = (IPv6Address("fd00::7:1"), IPv6Address("fd00::7:2"))

#: (our algorithm, cipher key bytes) per case; AEAD keys get 4 salt bytes on top.
ALGORITHMS: dict[str, tuple[EspAlgorithm, int]] = {
    "aes128gcm": (EspAlgorithm.AES_GCM, 16),
    "aes256gcm": (EspAlgorithm.AES_GCM, 32),
    "chacha20poly1305": (EspAlgorithm.CHACHA20_POLY1305, 32),
    "aes128cbc-sha256": (EspAlgorithm.AES_CBC_HMAC_SHA256, 16),
}
_SCAPY_NAMES = {
    EspAlgorithm.AES_GCM: ("AES-GCM", None),
    EspAlgorithm.CHACHA20_POLY1305: ("CHACHA20-POLY1305", None),
    EspAlgorithm.AES_CBC_HMAC_SHA256: ("AES-CBC", "SHA2-256-128"),
}


@dataclass(frozen=True)
class Keys:
    algorithm: EspAlgorithm
    key: bytes
    auth_key: bytes | None


def keys_for(name: str, seed: int = 0) -> Keys:
    """Keys for the algorithm case ``name``, the same for a given seed."""
    algorithm, size = ALGORITHMS[name]
    rng = random.Random(f"{name}/{seed}")
    if algorithm is EspAlgorithm.AES_CBC_HMAC_SHA256:
        return Keys(algorithm, rng.randbytes(size), rng.randbytes(32))
    return Keys(algorithm, rng.randbytes(size + 4), None)


def udp4(payload: bytes = b"payload", **ip: Any) -> bytes:
    return bytes(IP(src=SRC4, dst=DST4, **ip) / UDP(sport=4000, dport=5000) / Raw(payload))


def tcp6(payload: bytes = b"payload", **ip: Any) -> bytes:
    return bytes(IPv6(src=SRC6, dst=DST6, **ip) / TCP(sport=4000, dport=5000) / Raw(payload))


def packet(version: int, payload: bytes = b"payload") -> bytes:
    return udp4(payload) if version == 4 else tcp6(payload)


def ours(
    keys: Keys,
    *,
    version: int = 4,
    tunnel: bool = False,
    esn: bool = False,
    nat_t: bool = False,
    spi: int = 0x1000,
    **kwargs: Any,
) -> SecurityAssociation:
    """Our SA for the case."""
    extra: dict[str, Any] = {}
    if tunnel:
        src, dst = TUNNEL4 if version == 4 else TUNNEL6
        extra = {"mode": EspMode.TUNNEL, "tunnel_src": src, "tunnel_dst": dst}
    if nat_t:
        extra["nat_t"] = NatTraversal()
    return SecurityAssociation(
        spi, keys.algorithm, keys.key, auth_key=keys.auth_key, esn=esn, **extra, **kwargs
    )


def scapy_sa(
    keys: Keys,
    *,
    version: int = 4,
    tunnel: bool = False,
    esn: bool = False,
    nat_t: bool = False,
    spi: int = 0x1000,
    seq_num: int = 1,
) -> Any:
    """scapy's SA for the same case."""
    crypt, auth = _SCAPY_NAMES[keys.algorithm]
    extra: dict[str, Any] = {}
    if tunnel:
        src, dst = TUNNEL4 if version == 4 else TUNNEL6
        header = (
            IP(src=str(src), dst=str(dst)) if version == 4 else IPv6(src=str(src), dst=str(dst))
        )
        extra["tunnel_header"] = header
    if nat_t:
        extra["nat_t_header"] = UDP(sport=4500, dport=4500)
    return ScapySa(
        ESP,
        spi=spi,
        seq_num=seq_num,
        crypt_algo=crypt,
        crypt_key=keys.key,
        auth_algo=auth,
        auth_key=keys.auth_key,
        esn_en=esn,
        esn=0,
        **extra,
    )


def parse_ip(data: bytes) -> ScapyPacket:
    """``data`` as scapy's IP or IPv6 packet."""
    return IP(data) if data[0] >> 4 == 4 else IPv6(data)


def address(text: str) -> IPv4Address | IPv6Address:
    return ip_address(text)
