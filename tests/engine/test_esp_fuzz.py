"""Hostile input to the inbound path: every refusal is an ``EspError`` (or ``AhError``),
never another exception. Arbitrary bytes, IP packets carrying ESP with known SPIs and
random contents, and real packets with bytes changed or cut off."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from netoffload.engine.digest import AhSecurityAssociation, ah_protect, ah_verify
from netoffload.engine.esp import EspError, SaTable, SecurityAssociation, decrypt, encrypt
from netoffload.engine.ipsec_sa import AhError
from tests.engine.ipsec_cases import ALGORITHMS, DST4, SRC4, keys_for, ours, packet

# Inbound SAs of every algorithm and shape, found by SPI: what a device holds.
_SENDERS = [
    ours(
        keys_for(name),
        spi=0x5000 + 16 * i + j,
        version=version,
        tunnel=tunnel,
        esn=esn,
        nat_t=nat_t,
    )
    for i, name in enumerate(ALGORITHMS)
    for j, (version, tunnel, esn, nat_t) in enumerate(
        [
            (4, False, False, False),
            (6, True, True, False),
            (4, False, True, True),
            (6, False, False, True),
        ]
    )
]
_SPIS = [sa.spi for sa in _SENDERS]
_VALID = [
    encrypt(sa, packet(4 if i % 2 else 6, bytes(i * 7 % 90))) for i, sa in enumerate(_SENDERS)
]
_AH = AhSecurityAssociation(0x6000, bytes(range(32)))
_AH_VALID = [ah_protect(_AH, packet(v, b"ah")) for v in (4, 6)]


def _table() -> SaTable[SecurityAssociation]:
    table: SaTable[SecurityAssociation] = SaTable()
    for sa in _SENDERS:
        table.install(sa.twin())
    return table


_TABLE = _table()


def _survives(data: bytes) -> None:
    with contextlib.suppress(EspError):
        decrypt(_TABLE, data)


@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120))
def test_arbitrary_bytes(data: bytes) -> None:
    _survives(data)


_esp_like = st.builds(
    lambda version, spi, seq, body, proto: bytes(
        (
            IP(src=SRC4, dst=DST4, proto=proto)
            if version == 4
            else IPv6(src="fd00::1", dst="fd00::2", nh=proto)
        )
        / Raw(spi.to_bytes(4, "big") + seq.to_bytes(4, "big") + body)
    ),
    st.sampled_from([4, 6]),
    st.sampled_from([*_SPIS, 0, 0xFFFF_FFFF]),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=96),
    st.sampled_from([50, 50, 50, 17]),
)


@settings(max_examples=3_000, deadline=None)
@given(_esp_like)
def test_esp_with_known_spis_and_random_contents(data: bytes) -> None:
    _survives(data)


@settings(max_examples=3_000, deadline=None)
@given(
    st.sampled_from(_VALID),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
    st.integers(0, 400),
)
def test_real_packets_changed_or_cut(
    data: bytes, changes: list[tuple[int, int]], keep: int
) -> None:
    mutated = bytearray(data)
    for index, value in changes:
        if index < len(mutated):
            mutated[index] = value
    _survives(bytes(mutated[: max(keep, 1)]))
    _survives(bytes(mutated))


@settings(max_examples=2_000, deadline=None)
@given(
    st.sampled_from(_AH_VALID),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
    st.integers(0, 200),
)
def test_ah_verify_survives(data: bytes, changes: list[tuple[int, int]], keep: int) -> None:
    mutated = bytearray(data)
    for index, value in changes:
        if index < len(mutated):
            mutated[index] = value
    for candidate in (bytes(mutated), bytes(mutated[:keep])):
        with contextlib.suppress(AhError):
            ah_verify(_AH.twin(), candidate)


@settings(max_examples=2_000, deadline=None)
@given(st.binary(max_size=80), st.sampled_from(_SENDERS))
def test_encrypt_refuses_garbage_with_a_reason(data: bytes, sa: SecurityAssociation) -> None:
    with contextlib.suppress(EspError):
        encrypt(sa, data)
