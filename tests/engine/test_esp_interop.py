"""ESP against independent implementations: scapy's ``SecurityAssociation`` both ways, and
Wireshark's ESP dissector (tshark) decrypting a capture of our packets.

The kernel's xfrm is the third oracle of the issue; this machine's kernel has no ESP, so
that test belongs with the device integration (it needs the SoftNic path anyway).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.packet import Raw

from netoffload.engine.esp import EspAlgorithm, SecurityAssociation, decrypt, encrypt
from netoffload.wire.pcap import LINKTYPE_RAW, PcapWriter
from tests.engine.ipsec_cases import (
    ALGORITHMS,
    Keys,
    keys_for,
    ours,
    packet,
    parse_ip,
    scapy_sa,
    udp4,
)

SIZES = (0, 1, 3, 61, 1000)


@pytest.mark.parametrize("nat_t", [False, True], ids=["esp", "nat-t"])
@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("tunnel", [False, True], ids=["transport", "tunnel"])
@pytest.mark.parametrize("version", [4, 6], ids=["v4", "v6"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_scapy_decrypts_ours(name: str, version: int, tunnel: bool, esn: bool, nat_t: bool) -> None:
    keys = keys_for(name, seed=1)
    case = {"version": version, "tunnel": tunnel, "esn": esn, "nat_t": nat_t}
    tx = ours(keys, **case)
    theirs = scapy_sa(keys, **case)
    for size in SIZES:
        plain = packet(version, bytes(i % 251 for i in range(size)))
        decrypted = theirs.decrypt(parse_ip(encrypt(tx, plain)))
        assert bytes(decrypted) == plain


@pytest.mark.parametrize("nat_t", [False, True], ids=["esp", "nat-t"])
@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("tunnel", [False, True], ids=["transport", "tunnel"])
@pytest.mark.parametrize("version", [4, 6], ids=["v4", "v6"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_we_decrypt_scapys(name: str, version: int, tunnel: bool, esn: bool, nat_t: bool) -> None:
    keys = keys_for(name, seed=2)
    case = {"version": version, "tunnel": tunnel, "esn": esn, "nat_t": nat_t}
    rx = ours(keys, **case)
    theirs = scapy_sa(keys, **case)
    for size in SIZES:
        plain = packet(version, b"s" * size)
        assert decrypt(rx, bytes(theirs.encrypt(parse_ip(plain)))) == plain
    assert rx.counters.packets == len(SIZES)


@pytest.mark.parametrize("name", ["aes128gcm", "chacha20poly1305", "aes128cbc-sha256"])
def test_esn_across_2_32_with_scapy(name: str) -> None:
    """scapy takes the high-order 32 bits as a separate argument: both sides must carry them
    across the wrap the same way, in the AAD (AEAD) or after the ICV input (HMAC)."""
    keys = keys_for(name, seed=3)
    tx = ours(keys, esn=True, initial_sequence=2**32 - 3)
    theirs = scapy_sa(keys, esn=True)
    for i in range(6):
        seq = 2**32 - 3 + i
        sealed = parse_ip(encrypt(tx, udp4(bytes([i]))))
        assert bytes(theirs.decrypt(sealed, esn_en=True, esn=seq >> 32)) == udp4(bytes([i]))
    rx = ours(keys, esn=True)
    rx.window.top = 2**32 - 5
    for i in range(6):
        seq = 2**32 - 3 + i
        # scapy reads ``seq_num or self.seq_num``: a low half of 0 has to be set on the SA.
        theirs.seq_num, theirs.esn = seq & 0xFFFF_FFFF, seq >> 32
        sealed = theirs.encrypt(IP(udp4(bytes([i]))))
        assert decrypt(rx, bytes(sealed)) == udp4(bytes([i]))
    assert rx.window.top == 2**32 + 2


def test_ipv6_extension_headers_with_scapy() -> None:
    keys = keys_for("aes128gcm", seed=4)
    plain = bytes(
        IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["fd00::9"], segleft=0)
        / IPv6ExtHdrDestOpt()
        / UDP(sport=1, dport=2)
        / Raw(b"extension headers")
    )
    tx = ours(keys, version=6)
    theirs = scapy_sa(keys, version=6)
    assert bytes(theirs.decrypt(IPv6(encrypt(tx, plain)))) == plain
    assert decrypt(tx.twin(), bytes(theirs.encrypt(IPv6(plain)))) == plain


# --- tshark ----------------------------------------------------------------------------------


def _tshark() -> str:
    path = shutil.which("tshark")
    if path is not None:
        return path
    installable = os.geteuid() == 0 and shutil.which("apt-get") is not None
    reason = "needs tshark (Debian package tshark; `make test` installs it as root)"
    if installable and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: it could have been installed here", pytrace=False)
    pytest.skip(reason)


_TSHARK_NAMES = {
    EspAlgorithm.AES_GCM: ("AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
    EspAlgorithm.AES_CBC_HMAC_SHA256: ("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
}


def _esp_sa_record(sa: SecurityAssociation, family: str) -> str:
    """One row of Wireshark's ``esp_sa`` table (protocol, addresses, SPI, algorithms, keys)."""
    config = sa.config
    cipher, auth = _TSHARK_NAMES[config.algorithm]
    auth_key = "" if config.auth_key is None else f"0x{config.auth_key.hex()}"
    fields = [family, "*", "*", f"0x{sa.spi:08x}", cipher, f"0x{config.key.hex()}", auth, auth_key]
    return ",".join(f'"{f}"' for f in fields)


@pytest.mark.parametrize("name", ["aes128gcm", "aes256gcm", "aes128cbc-sha256"])
def test_tshark_decrypts_our_capture(name: str, tmp_path: Path) -> None:
    tshark = _tshark()
    keys: Keys = keys_for(name, seed=5)
    cases = [
        ("IPv4", {"version": 4}),
        ("IPv6", {"version": 6}),
        ("IPv4", {"version": 4, "tunnel": True}),
        ("IPv6", {"version": 6, "tunnel": True}),
        ("IPv4", {"version": 4, "nat_t": True}),
    ]
    records: list[str] = []
    expected: list[tuple[str, int, str]] = []
    path = tmp_path / f"esp-{name}.pcap"
    with PcapWriter(path, linktype=LINKTYPE_RAW) as writer:
        for index, (family, case) in enumerate(cases):
            tx = ours(keys, spi=0x4000 + index, **case)
            records.append(_esp_sa_record(tx, family))
            for n in range(3):
                payload = f"case {index} packet {n} ".encode() * (n + 1)
                writer.write(
                    encrypt(tx, packet(int(case["version"]), payload)), 10**6 * len(expected)
                )
                expected.append((f"0x{tx.spi:08x}", n + 1, payload.hex()))
    command = [
        tshark,
        "-n",
        "-r",
        str(path),
        "-o",
        "esp.enable_encryption_decode:TRUE",
        "-o",
        "esp.enable_authentication_check:TRUE",
    ]
    for record in records:
        command += ["-o", f"uat:esp_sa:{record}"]
    command += ["-T", "fields", "-E", "occurrence=l"]
    command += ["-e", "esp.spi", "-e", "esp.sequence", "-e", "esp.icv_good", "-e", "tcp.payload"]
    command += ["-e", "udp.payload"]
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120, env=env)
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    seen = [(spi, int(seq), tcp or udp) for spi, seq, good, tcp, udp in rows if good == "1"]
    assert seen == expected, out.stdout
