"""Security policies from TOML: what a valid file gives, and one clear line for each mistake."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_network
from pathlib import Path

import pytest

from netoffload.apps.ipsec_config import load_policies, parse_policies
from netoffload.engine.esp_sa import EspAlgorithm, EspMode

KEY = "000102030405060708090a0b0c0d0e0f73616c74"
GOOD = f"""
[[policy]]
local = "198.18.0.2"
remote = "198.18.0.0/24"
protocol = "tcp"
remote-port = 5001

[policy.out]
spi = 0x1000
algorithm = "aes-gcm"
key = "{KEY}"
esn = true
replay-window = 128

[policy.in]
spi = 0x2000
algorithm = "chacha20-poly1305"
key = "{"11" * 36}"
mode = "tunnel"
tunnel-src = "198.18.7.1"
tunnel-dst = "198.18.7.2"
nat-t = true
soft-packets = 10
hard-packets = 20
"""


def test_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "sa.toml"
    path.write_text(GOOD)
    (policy,) = load_policies(path)
    sel = policy.selector
    assert sel.local == ip_network("198.18.0.2/32") and sel.remote == ip_network("198.18.0.0/24")
    assert (sel.protocol, sel.local_port, sel.remote_port) == (6, None, 5001)
    out, inbound = policy.outbound, policy.inbound
    assert out is not None and inbound is not None
    assert (out.spi, out.algorithm, out.esn, out.replay_window) == (
        0x1000,
        EspAlgorithm.AES_GCM,
        True,
        128,
    )
    assert out.key == bytes.fromhex(KEY)
    assert inbound.mode is EspMode.TUNNEL and inbound.tunnel_dst == IPv4Address("198.18.7.2")
    assert inbound.nat_t is not None and inbound.nat_t.dst_port == 4500
    assert inbound.lifetime is not None and inbound.lifetime.hard_packets == 20


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[policy.out]", "[policy.sideways]"), "unknown field 'sideways'"),
        (('algorithm = "aes-gcm"', 'algorithm = "rot13"'), "unknown algorithm 'rot13'"),
        ((f'key = "{KEY}"', 'key = "zz"'), "policy 1 out: key is not hex"),
        ((f'key = "{KEY}"', 'key = "0011"'), "AES-GCM takes a 16, 24 or 32-byte key"),
        (('tunnel-dst = "198.18.7.2"', ""), "tunnel mode needs 'tunnel-dst'"),
        (('protocol = "tcp"', 'protocol = "sctpx"'), "unknown protocol 'sctpx'"),
        (("spi = 0x1000", "spi = 7"), "SPI 7 is outside"),
        (("remote-port = 5001", "remote-port = 70000"), "remote_port 70000 is not a port"),
    ],
)
def test_each_mistake_is_one_line_without_key_bytes(change: tuple[str, str], message: str) -> None:
    import tomllib

    text = GOOD.replace(*change)
    with pytest.raises(ValueError) as info:
        parse_policies(tomllib.loads(text), "sa.toml")
    text = str(info.value)
    assert message in text and "\n" not in text
    assert KEY not in text and "11" * 36 not in text


def test_files_that_are_not_configurations(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load_policies(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[policy]\n")
    with pytest.raises(ValueError, match="not TOML"):
        load_policies(bad)
    bad.write_text("[other]\nx = 1\n")
    with pytest.raises(ValueError, match="unknown table 'other'"):
        load_policies(bad)
    bad.write_text('[[policy]]\nlocal = "198.18.0.1"\n')
    with pytest.raises(ValueError, match=r"needs an \[policy.out\] or \[policy.in\] SA"):
        load_policies(bad)
