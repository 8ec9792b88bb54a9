"""ESP engine: round trips, the inbound checks in RFC 4303's order, the replay window, ESN,
lifetimes, batches, the SA table, NAT-T and tunnel details, and keys that never leak.

Negative cases are built by hand from RFC 4106 (scapy for the IP header, the
``cryptography`` AESGCM call for the payload), not by the engine under test.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.ipsec import ESP
from scapy.packet import Raw

import netoffload.engine.esp as esp_module
from netoffload.engine.esp import (
    EspAlgorithm,
    EspDropReason,
    EspError,
    EspMode,
    HardLifetimeReached,
    Lifetime,
    NatTraversal,
    SaTable,
    SecurityAssociation,
    SoftLifetimeReached,
    decrypt,
    decrypt_batch,
    encrypt,
    encrypt_batch,
    encrypt_with,
)
from netoffload.engine.ipsec_ip import inbound_layout, outbound_layout, quick_layout
from netoffload.engine.ipsec_sa import ReplayWindow
from netoffload.wire import EspPacket, EspRepr, Ipv4Packet, UdpPacket
from netoffload.wire.pcap import LINKTYPE_RAW, PcapWriter
from tests.engine.ipsec_cases import (
    ALGORITHMS,
    DST4,
    SRC4,
    TUNNEL4,
    TUNNEL6,
    Keys,
    keys_for,
    ours,
    packet,
    tcp6,
    udp4,
)

R = EspDropReason
GCM = keys_for("aes128gcm")
CBC = keys_for("aes128cbc-sha256")


def esp_by_hand(
    keys: Keys,
    body: bytes,
    next_header: int,
    *,
    spi: int = 0x1000,
    seq: int = 1,
    padding: bytes | None = None,
    pad_len: int | None = None,
) -> bytes:
    """An IPv4 ESP packet built from RFC 4106 alone: SPI and sequence number, IV, then
    AES-GCM over payload, padding, pad length and next header, with SPI and sequence
    number as the AAD and salt || IV as the nonce."""
    assert keys.algorithm is EspAlgorithm.AES_GCM
    if padding is None:
        padding = bytes(range(1, -(len(body) + 2) % 4 + 1))
    plaintext = body + padding + bytes([len(padding) if pad_len is None else pad_len, next_header])
    header = EspRepr(spi, seq).to_bytes()
    iv = seq.to_bytes(8, "big")
    sealed = AESGCM(keys.key[:-4]).encrypt(keys.key[-4:] + iv, plaintext, header)
    return bytes(IP(src=SRC4, dst=DST4, proto=50) / Raw(header + iv + sealed))


def reason_of(sa: SecurityAssociation | SaTable[SecurityAssociation], data: bytes) -> R:
    with pytest.raises(EspError) as caught:
        decrypt(sa, data)
    return caught.value.reason


def esp_part(data: bytes) -> EspPacket:
    """The ESP header of an encrypted packet without NAT-T."""
    offset = 20 if data[0] >> 4 == 4 else 40
    return EspPacket.checked(data[offset:])


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("nat_t", [False, True], ids=["esp", "nat-t"])
@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("tunnel", [False, True], ids=["transport", "tunnel"])
@pytest.mark.parametrize("version", [4, 6], ids=["v4", "v6"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_round_trip(name: str, version: int, tunnel: bool, esn: bool, nat_t: bool) -> None:
    tx = ours(keys_for(name), version=version, tunnel=tunnel, esn=esn, nat_t=nat_t)
    rx = tx.twin()
    align = 16 if tx.config.algorithm is EspAlgorithm.AES_CBC_HMAC_SHA256 else 4
    for size in (0, 1, 2, 3, 17, 100, 1400):
        plain = packet(version, b"x" * size)
        sealed = encrypt(tx, plain)
        assert len(sealed) == len(plain) + tx.config.overhead(
            len(plain) if tunnel else len(plain) - (20 if version == 4 else 40)
        )
        outer_version = version
        assert sealed[0] >> 4 == outer_version
        header = 20 if outer_version == 4 else 40
        protocol = sealed[9] if outer_version == 4 else sealed[6]
        assert protocol == (17 if nat_t else 50)
        esp_at = header + (8 if nat_t else 0)
        ciphertext = len(sealed) - esp_at - 8 - tx.config.iv_len - 16
        assert ciphertext % align == 0
        assert decrypt(rx, sealed) == plain
    assert tx.counters.packets == rx.counters.packets == 7
    assert rx.counters.dropped == 0


@pytest.mark.parametrize("inner, outer", [(4, 6), (6, 4)])
def test_tunnel_across_ip_versions(inner: int, outer: int) -> None:
    src, dst = TUNNEL4 if outer == 4 else TUNNEL6
    tx = SecurityAssociation(
        0x1000, GCM.algorithm, GCM.key, mode=EspMode.TUNNEL, tunnel_src=src, tunnel_dst=dst
    )
    plain = packet(inner)
    sealed = encrypt(tx, plain)
    assert sealed[0] >> 4 == outer
    assert (sealed[9] if outer == 4 else sealed[6]) == 50
    assert decrypt(tx.twin(), sealed) == plain


def test_esp_header_carries_spi_and_sequence() -> None:
    tx = ours(GCM, initial_sequence=41)
    sealed = encrypt(tx, udp4())
    esp = esp_part(sealed)
    assert (esp.spi, esp.sequence_number) == (0x1000, 41)
    assert bytes(esp.data[:8]) == (41).to_bytes(8, "big")  # the AEAD IV is the sequence number
    assert tx.next_seq == 42


def test_ipv6_extension_headers_that_routers_read_stay_in_front() -> None:
    inner = (
        IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=["fd00::9"], segleft=0)
        / IPv6ExtHdrDestOpt()
        / UDP(sport=1, dport=2)
        / Raw(b"data")
    )
    plain = bytes(inner)
    tx = ours(GCM, version=6)
    sealed = encrypt(tx, plain)
    # Hop-by-hop, destination options and routing stay; the last destination options go inside.
    assert IPv6(sealed).layers() == [
        IPv6,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrRouting,
        ESP,
    ]
    assert decrypt(tx.twin(), sealed) == plain


@settings(max_examples=400, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    protocol=st.sampled_from([6, 17, 50, 132, 0, 43, 44, 60]),
    size=st.integers(0, 80),
    options=st.booleans(),
    more_fragments=st.booleans(),
    extra=st.integers(0, 3),
)
def test_quick_layout_agrees_with_the_walk(
    *, version: int, protocol: int, size: int, options: bool, more_fragments: bool, extra: int
) -> None:
    """The shortcut for common packets and the full header walk never disagree."""
    if version == 4:
        ip = IP(src=SRC4, dst=DST4, proto=protocol, flags="MF" if more_fragments else 0)
        if options:
            ip.options = b"\x94\x04\x00\x00"
        data = bytes(ip / Raw(bytes(size)))
    else:
        data = bytes(IPv6(src="fd00::1", dst="fd00::2", nh=protocol) / Raw(bytes(size)))
    data += bytes(extra)  # link-layer padding after the packet
    view = memoryview(data)
    quick = quick_layout(view)
    # IPv4 options, fragments and IPv6 extension headers need the walk.
    common = not (options or more_fragments) if version == 4 else protocol not in (0, 43, 44, 60)
    assert (quick is not None) == (common and extra == 0)
    if quick is not None:
        assert quick == outbound_layout(view) == inbound_layout(view)


# --- sequence numbers and IVs: the host owns them ------------------------------------------


def test_encrypt_with_uses_the_given_sequence_number_and_iv() -> None:
    tx = ours(GCM)
    iv = bytes.fromhex("0102030405060708")
    sealed = encrypt_with(tx, udp4(), 77, iv)
    esp = esp_part(sealed)
    assert esp.sequence_number == 77
    assert bytes(esp.data[:8]) == iv
    assert tx.next_seq == 1  # the SA's own counter is the host's business
    assert decrypt(tx.twin(), sealed) == udp4()


def test_cbc_ivs_are_unpredictable_and_aead_ivs_are_the_sequence_number() -> None:
    cbc = ours(CBC)
    ivs = {cbc.iv_for(seq) for seq in range(1, 2001)}
    assert len(ivs) == 2000
    assert all(len(iv) == 16 for iv in ivs)
    assert cbc.iv_for(1) != (1).to_bytes(16, "big")
    assert ours(GCM).iv_for(0x0102) == bytes.fromhex("0000000000000102")


@pytest.mark.parametrize(
    "seq, iv",
    [(0, bytes(8)), (2**32, bytes(8)), (5, bytes(7)), (5, bytes(16)), (-1, bytes(8))],
)
def test_bad_explicit_sequence_number_or_iv(seq: int, iv: bytes) -> None:
    tx = ours(GCM)
    with pytest.raises(EspError) as caught:
        encrypt_with(tx, udp4(), seq, iv)
    assert caught.value.reason is R.BAD_REQUEST
    assert tx.counters.drops[R.BAD_REQUEST.value] == 1


def test_host_allocated_numbers_never_repeat_an_iv_across_host_and_device() -> None:
    """The host allocates every (sequence number, IV); a per-packet choice between its own
    engine and the device's copy of the SA never reuses a GCM nonce."""
    host = ours(GCM)
    device = SecurityAssociation.from_config(host.config)  # what the device installs
    rx = host.twin()
    rng = random.Random(9)
    seen: set[bytes] = set()
    for _ in range(300):
        seq = host.next_sequence()
        side = host if rng.random() < 0.5 else device
        sealed = encrypt_with(side, udp4(rng.randbytes(rng.randrange(60))), seq, host.iv_for(seq))
        iv = bytes(esp_part(sealed).data[:8])
        assert iv not in seen
        seen.add(iv)
        decrypt(rx, sealed)
    assert rx.counters.packets == 300


def test_sequence_numbers_do_not_cycle_without_esn() -> None:
    tx = ours(GCM, initial_sequence=2**32 - 1)
    encrypt(tx, udp4())
    with pytest.raises(EspError) as caught:
        encrypt(tx, udp4())
    assert caught.value.reason is R.SEQUENCE_EXHAUSTED
    assert tx.counters.drops[R.SEQUENCE_EXHAUSTED.value] == 1


# --- ESN ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["aes128gcm", "aes128cbc-sha256"])
def test_esn_across_the_2_32_boundary(name: str) -> None:
    keys = keys_for(name)
    tx = ours(keys, esn=True, initial_sequence=2**32 - 4)
    rx = tx.twin()
    rx.window.top = 2**32 - 6  # as if everything up to here had arrived
    sealed = [encrypt(tx, udp4(bytes([i]))) for i in range(10)]
    low = [esp_part(s).sequence_number for s in sealed]
    assert low == [2**32 - 4, 2**32 - 3, 2**32 - 2, 2**32 - 1, 0, 1, 2, 3, 4, 5]
    late = sealed.pop(2)  # 2**32 - 2 arrives after the wrap
    for i, s in enumerate(sealed):
        assert decrypt(rx, s) == udp4(bytes([i if i < 2 else i + 1]))
    assert rx.window.top == 2**32 + 5
    assert decrypt(rx, late) == udp4(bytes([2]))  # high bits inferred as 0, not 1
    assert reason_of(rx, late) is R.REPLAY


def test_esn_high_bits_are_authenticated() -> None:
    tx = ours(GCM, esn=True)
    rx = tx.twin()
    rx.window.top = 2**32 + 100
    # Same low 32 bits, wrong high bits: the receiver infers 1, the ICV was made with 0.
    forged = encrypt_with(tx, udp4(), 101, tx.iv_for(2**32 + 101))
    assert reason_of(rx, forged) is R.BAD_ICV
    good = encrypt_with(tx, udp4(), 2**32 + 101, tx.iv_for(2**32 + 101))
    assert decrypt(rx, good) == udp4()


def test_esn_inference_follows_rfc4303_appendix_a() -> None:
    w = ReplayWindow(64, esn=True)
    w.top = (5 << 32) + 100  # case A: the window lies within one subspace
    assert w.infer(90) == (5 << 32) + 90
    assert w.infer(37) == (5 << 32) + 37  # the window's last slot
    assert w.infer(36) == (6 << 32) + 36  # below the window: the next subspace
    assert w.infer(5000) == (5 << 32) + 5000
    w.top = (5 << 32) + 10  # case B: the window spans two subspaces
    assert w.infer(5) == (5 << 32) + 5
    assert w.infer(2**32 - 20) == (4 << 32) + 2**32 - 20
    assert w.infer(1000) == (5 << 32) + 1000
    w.top = 3  # nothing below subspace 0
    assert w.infer(2**32 - 1) is None
    assert ReplayWindow(64, esn=False).infer(2**32 - 1) == 2**32 - 1


# --- the replay window ----------------------------------------------------------------------


@pytest.mark.parametrize("window", [64, 100, 4096])
def test_replay_window_edges(window: int) -> None:
    tx = ours(GCM, replay_window=window)
    rx = tx.twin()
    top = window + 10

    def sealed(seq: int) -> bytes:
        return encrypt_with(tx, udp4(), seq, tx.iv_for(seq))

    decrypt(rx, sealed(top))
    decrypt(rx, sealed(top - window + 1))  # the oldest number still inside
    assert reason_of(rx, sealed(top - window)) is R.REPLAY  # just outside
    assert reason_of(rx, sealed(top)) is R.REPLAY
    assert reason_of(rx, sealed(top - window + 1)) is R.REPLAY
    decrypt(rx, sealed(top - 1))
    decrypt(rx, sealed(top + window + 5))  # far ahead: the window slides past everything
    assert reason_of(rx, sealed(top + 5)) is R.REPLAY
    decrypt(rx, sealed(top + 6))  # now the oldest inside
    assert rx.counters.drops[R.REPLAY.value] == 4


@pytest.mark.parametrize("window", [0, 63, 4097])
def test_replay_window_size_is_bounded(window: int) -> None:
    with pytest.raises(ValueError, match="replay window"):
        ours(GCM, replay_window=window)


def test_sequence_number_zero_is_never_accepted() -> None:
    assert reason_of(ours(GCM), esp_by_hand(GCM, udp4()[20:], 17, seq=0)) is R.REPLAY


# --- inbound checks, in order ---------------------------------------------------------------


def test_replay_is_rejected_with_its_reason() -> None:
    tx = ours(GCM)
    rx = tx.twin()
    sealed = encrypt(tx, udp4())
    decrypt(rx, sealed)
    assert reason_of(rx, sealed) is R.REPLAY
    assert rx.counters.drops == {R.REPLAY.value: 1}


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("where", ["icv", "ciphertext", "iv", "sequence"])
def test_tampering_fails_the_icv(name: str, where: str) -> None:
    tx = ours(keys_for(name))
    rx = tx.twin()
    sealed = bytearray(encrypt(tx, udp4(b"p" * 40)))
    index = {"icv": -1, "ciphertext": -20, "iv": 20 + 8, "sequence": 20 + 7}[where]
    sealed[index] ^= 0x02  # sequence number 1 becomes 3, not 0 (which is refused as a replay)
    assert reason_of(rx, bytes(sealed)) is R.BAD_ICV
    assert rx.window.top == 0  # a packet that failed its ICV does not move the window
    assert rx.counters.packets == 0


def test_replay_is_checked_before_the_icv() -> None:
    tx = ours(GCM)
    rx = tx.twin()
    sealed = encrypt(tx, udp4())
    decrypt(rx, sealed)
    tampered = bytearray(sealed)
    tampered[-1] ^= 0xFF
    assert reason_of(rx, bytes(tampered)) is R.REPLAY


def test_a_forged_packet_does_not_move_the_window() -> None:
    tx = ours(GCM)
    rx = tx.twin()
    first = encrypt(tx, udp4())
    forged = bytearray(encrypt_with(tx, udp4(), 10_000, tx.iv_for(10_000)))
    forged[-3] ^= 0x10
    assert reason_of(rx, bytes(forged)) is R.BAD_ICV
    assert decrypt(rx, first) == udp4()  # had the window moved to 10 000, this would be too old


def test_cbc_decrypts_nothing_before_the_icv_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    tx = ours(CBC)
    rx = tx.twin()
    sealed = bytearray(encrypt(tx, udp4()))
    sealed[-1] ^= 1
    made: list[object] = []
    real = esp_module.Cipher

    def spy(*args: object, **kwargs: object) -> object:
        made.append(args)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(esp_module, "Cipher", spy)
    assert reason_of(rx, bytes(sealed)) is R.BAD_ICV
    assert made == []
    sealed[-1] ^= 1
    decrypt(rx, bytes(sealed))
    assert len(made) == 1


def test_wrong_spi() -> None:
    tx = ours(GCM)
    sealed = bytearray(encrypt(tx, udp4()))
    EspPacket(memoryview(sealed)[20:]).spi = 0x2000
    rx = tx.twin()
    assert reason_of(rx, bytes(sealed)) is R.UNKNOWN_SPI
    table: SaTable[SecurityAssociation] = SaTable()
    table.install(rx)
    assert reason_of(table, bytes(sealed)) is R.UNKNOWN_SPI
    assert table.drops == {R.UNKNOWN_SPI.value: 1}
    assert rx.counters.drops == {R.UNKNOWN_SPI.value: 1}  # the SA that was asked directly


def test_truncated_packets() -> None:
    tx = ours(GCM)
    rx = tx.twin()
    sealed = encrypt(tx, udp4(b"q" * 30))
    assert reason_of(rx, sealed[:-1]) is R.TRUNCATED  # the IP header says more
    assert reason_of(rx, sealed[:10]) is R.TRUNCATED
    short = bytearray(sealed[: 20 + 8 + 8 + 16 + 1])  # less than a trailer of ciphertext
    Ipv4Packet(memoryview(short)).total_len = len(short)
    assert reason_of(rx, bytes(short)) is R.TRUNCATED
    header_only = bytearray(sealed[:26])
    Ipv4Packet(memoryview(header_only)).total_len = 26
    assert reason_of(rx, bytes(header_only)) is R.TRUNCATED
    cut = bytearray(sealed[:-4])  # long enough, but the ICV is gone
    Ipv4Packet(memoryview(cut)).total_len = len(cut)
    assert reason_of(rx, bytes(cut)) is R.BAD_ICV


@pytest.mark.parametrize(
    "padding, pad_len",
    [(b"\x01\x02\x04", None), (b"\x00\x00", None), (b"", 200), (b"\x01\x02\x03\x04\x05\x06", 7)],
)
def test_malformed_padding(padding: bytes, pad_len: int | None) -> None:
    body = udp4()[20:]
    sealed = esp_by_hand(GCM, body, 17, padding=padding, pad_len=pad_len)
    rx = ours(GCM)
    assert reason_of(rx, sealed) is R.BAD_PADDING
    assert rx.window.top == 1  # authenticated: the window moved


def test_hand_built_packet_is_accepted() -> None:
    """The by-hand builder and the engine agree on the format (the negative tests rest on it)."""
    plain = udp4(b"hello")
    assert decrypt(ours(GCM), esp_by_hand(GCM, plain[20:], 17)) == plain
    longer_pad = esp_by_hand(GCM, plain[20:], 17, padding=bytes(range(1, 12)))
    assert decrypt(ours(GCM), longer_pad) == plain  # any valid padding length is fine


def test_dummy_packets_are_dropped() -> None:
    rx = ours(GCM)
    assert reason_of(rx, esp_by_hand(GCM, b"\x00" * 20, 59)) is R.DUMMY


def test_tunnel_mode_needs_an_inner_ip_packet() -> None:
    rx = ours(GCM, tunnel=True)
    assert reason_of(rx, esp_by_hand(GCM, udp4()[20:], 17)) is R.MODE_MISMATCH
    assert reason_of(rx, esp_by_hand(GCM, b"\x45" + bytes(30), 4, seq=2)) is R.MALFORMED
    assert reason_of(rx, esp_by_hand(GCM, tcp6(), 4, seq=3)) is R.MALFORMED  # v6 inside "IPv4"


def test_tunnel_mode_drops_tfc_padding() -> None:
    rx = ours(GCM, tunnel=True)
    inner = udp4(b"inner")
    assert decrypt(rx, esp_by_hand(GCM, inner + bytes(13), 4)) == inner


def test_not_esp() -> None:
    rx = ours(GCM)
    assert reason_of(rx, udp4()) is R.NOT_IPSEC
    assert reason_of(rx, b"") is R.TRUNCATED
    assert reason_of(rx, bytes(40)) is R.MALFORMED
    fragment = bytes(IP(src=SRC4, dst=DST4, proto=50, flags="MF") / Raw(bytes(64)))
    assert reason_of(rx, fragment) is R.FRAGMENT


# --- outbound refusals ----------------------------------------------------------------------


def test_encrypt_refuses_what_it_cannot_protect() -> None:
    tx = ours(GCM)

    def reason(data: bytes) -> R:
        with pytest.raises(EspError) as caught:
            encrypt(tx, data)
        return caught.value.reason

    assert reason(b"") is R.MALFORMED
    assert reason(b"\x45\x00") is R.MALFORMED
    assert reason(udp4(flags="MF")) is R.FRAGMENT
    assert reason(udp4(b"z" * (65535 - 28))) is R.TOO_BIG
    assert tx.counters.dropped == 4
    tunnel = ours(GCM, tunnel=True)
    with pytest.raises(EspError) as caught:
        encrypt(tunnel, b"\x99" * 40)
    assert caught.value.reason is R.MALFORMED
    assert decrypt(tunnel.twin(), encrypt(tunnel, udp4(flags="MF"))) == udp4(flags="MF")


# --- lifetimes ------------------------------------------------------------------------------


def test_packet_lifetime_soft_then_hard() -> None:
    tx = ours(GCM, lifetime=Lifetime(soft_packets=3, hard_packets=5))
    for _ in range(2):
        encrypt(tx, udp4())
    assert not tx.soft_expired
    assert tx.take_events() == []
    encrypt(tx, udp4())
    assert tx.soft_expired
    assert tx.take_events() == [SoftLifetimeReached(0x1000, 3, 3 * len(udp4()))]
    encrypt(tx, udp4())
    encrypt(tx, udp4())
    assert tx.hard_expired
    assert tx.take_events() == [HardLifetimeReached(0x1000, 5, 5 * len(udp4()))]
    with pytest.raises(EspError) as caught:
        encrypt(tx, udp4())
    assert caught.value.reason is R.LIFETIME_EXPIRED
    assert tx.next_seq == 6  # no sequence number burnt on a refused packet
    assert tx.take_events() == []


def test_byte_lifetime() -> None:
    plain = udp4(b"b" * 572)  # 600 bytes
    tx = ours(GCM, lifetime=Lifetime(soft_bytes=1000, hard_bytes=2000))
    encrypt(tx, plain)
    assert not tx.soft_expired
    encrypt(tx, plain)
    assert tx.soft_expired
    encrypt(tx, plain)
    encrypt(tx, plain)  # 1800 bytes before it: still under the hard limit
    assert tx.hard_expired
    with pytest.raises(EspError):
        encrypt(tx, plain)
    assert [type(e) for e in tx.take_events()] == [SoftLifetimeReached, HardLifetimeReached]


def test_inbound_lifetime() -> None:
    tx = ours(GCM)
    rx = ours(GCM, lifetime=Lifetime(hard_packets=2))
    sealed = [encrypt(tx, udp4()) for _ in range(3)]
    decrypt(rx, sealed[0])
    decrypt(rx, sealed[1])
    assert reason_of(rx, sealed[2]) is R.LIFETIME_EXPIRED


def test_batch_stops_at_the_hard_limit() -> None:
    tx = ours(GCM, lifetime=Lifetime(hard_packets=12))
    batch = encrypt_batch(tx, [udp4()] * 20)
    assert batch.reasons == [None] * 12 + [R.LIFETIME_EXPIRED] * 8
    assert batch.accepted == 12
    assert decrypt_batch(tx.twin(), [bytes(p) for p in batch.packets[:12] if p]).accepted == 12


@pytest.mark.parametrize(
    "limits",
    [{"soft_packets": 5, "hard_packets": 4}, {"soft_bytes": 0}, {"hard_packets": True}],
)
def test_lifetime_limits_are_checked(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"lifetime|soft"):
        Lifetime(**limits)


# --- batches --------------------------------------------------------------------------------


def test_batch_of_equal_packets_takes_the_matrix_path() -> None:
    tx = ours(GCM)
    batch = encrypt_batch(tx, [udp4(bytes([i]) * 100) for i in range(16)])
    assert len(batch.blocks) == 1
    assert not batch.singles
    single = ours(GCM)
    assert [bytes(p) for p in batch.packets if p] == [
        encrypt(single, udp4(bytes([i]) * 100)) for i in range(16)
    ]


_packet_shapes = st.lists(
    st.tuples(
        st.sampled_from([4, 6]),
        st.sampled_from([0, 1, 5, 64, 200]),
        st.booleans(),  # with an IPv4 option or an IPv6 extension header
    ),
    min_size=0,
    max_size=40,
)


def _shaped(version: int, size: int, extra: bool, fill: int) -> bytes:
    payload = bytes([fill]) * size
    if version == 4:
        return udp4(payload, options=b"\x94\x04\x00\x00" if extra else b"", ttl=fill)
    if extra:
        return bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / UDP() / payload)
    return tcp6(payload, hlim=fill)


@settings(max_examples=60, deadline=None)
@given(
    shapes=_packet_shapes,
    name=st.sampled_from(list(ALGORITHMS)),
    esn=st.booleans(),
    headroom=st.sampled_from([0, 14, 18]),
    start=st.sampled_from([1, 2**32 - 5]),
)
def test_batch_equals_one_by_one(
    shapes: list[tuple[int, int, bool]], name: str, esn: bool, headroom: int, start: int
) -> None:
    """Whatever path a packet takes in a batch, its bytes are those of ``encrypt``."""
    if start > 1 and not esn:
        start = 1
    packets = [_shaped(v, n, x, i % 251) for i, (v, n, x) in enumerate(shapes)]
    packets += [udp4(b"r" * 300, ttl=i) for i in range(12)]  # an equal-length group
    packets += [bytes(IP(src=SRC4, dst=DST4, proto=132, id=i) / Raw(b"s" * 99)) for i in range(9)]
    a = ours(keys_for(name), esn=esn, initial_sequence=start)
    b = ours(keys_for(name), esn=esn, initial_sequence=start)
    batch = encrypt_batch(a, packets, headroom=headroom)
    expected = [encrypt(b, p) for p in packets]
    assert [None if p is None else bytes(p) for p in batch.packets] == expected
    for i in range(len(packets)):
        framed = batch.framed(i)
        assert framed is not None
        assert len(framed) == headroom + len(expected[i])
        assert bytes(framed[headroom:]) == expected[i]
    assert a.counters == b.counters
    assert a.next_seq == b.next_seq
    if start == 1:  # and back (a receiver's window starts below the 2**32 start)
        back = decrypt_batch(a.twin(), expected)
        assert [None if p is None else bytes(p) for p in back.packets] == packets


@pytest.mark.parametrize("version", [4, 6])
def test_batch_from_a_matrix_of_packets(version: int) -> None:
    """Equal-length packets as matrix rows (the segments of a super-packet) give the same
    bytes; a row the matrix path cannot take goes one by one."""
    rows = [packet(version, bytes([i]) * 90) for i in range(12)]
    if version == 4:
        rows[5] = udp4(bytes([5]) * 90, flags="MF", frag=0)  # a fragment: refused
        rows[7] = udp4(bytes([7]) * 86, options=b"\x94\x04\x00\x00")  # same length, an option
    assert len({len(r) for r in rows}) == 1
    matrix = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(12, -1)
    tx = ours(GCM, version=version)
    batch = encrypt_batch(tx, matrix, headroom=14)
    single = ours(GCM, version=version)
    expected: list[bytes | None] = []
    for row in rows:
        try:
            expected.append(encrypt(single, row))
        except EspError:
            expected.append(None)
    assert [None if p is None else bytes(p) for p in batch.packets] == expected
    assert batch.reasons.count(R.FRAGMENT) == (1 if version == 4 else 0)
    with pytest.raises(ValueError, match="matrix"):
        encrypt_batch(tx, matrix.astype(np.uint16))


def test_batch_with_host_sequence_numbers_and_ivs() -> None:
    tx = ours(GCM, esn=True)
    packets = [udp4(bytes([i]) * 64) for i in range(10)]
    seqs = [2**32 + 7 * i for i in range(10)]
    ivs = [random.Random(i).randbytes(8) for i in range(10)]
    batch = encrypt_batch(tx, packets, seqs=seqs, ivs=ivs)
    assert len(batch.blocks) == 1
    other = ours(GCM, esn=True)
    assert [bytes(p) for p in batch.packets if p] == [
        encrypt_with(other, p, s, iv) for p, s, iv in zip(packets, seqs, ivs, strict=True)
    ]
    bad = encrypt_batch(tx, packets, seqs=[0, *seqs[1:]], ivs=[b"short", *ivs[1:]])
    assert bad.reasons[0] is R.BAD_REQUEST
    assert bad.reasons[1:] == [None] * 9


def test_batch_reports_reasons() -> None:
    tx = ours(GCM)
    rx = tx.twin()
    batch = encrypt_batch(tx, [udp4(), b"junk", udp4(flags="MF"), tcp6()])
    assert batch.reasons == [None, R.MALFORMED, R.FRAGMENT, None]
    assert batch.packet(1) is None
    sealed = [bytes(p) for p in batch.packets if p is not None]
    back = decrypt_batch(rx, [sealed[0], sealed[0], b"\x45", sealed[1]])
    assert back.reasons == [None, R.REPLAY, R.TRUNCATED, None]
    assert [bytes(p) for p in back.packets if p is not None] == [udp4(), tcp6()]
    with pytest.raises(ValueError, match="ivs"):
        encrypt_batch(tx, [udp4()], ivs=[bytes(8)])


def test_batch_runs_out_of_sequence_numbers_per_packet() -> None:
    tx = ours(GCM, initial_sequence=2**32 - 3)
    batch = encrypt_batch(tx, [udp4()] * 10)
    assert batch.reasons == [None] * 3 + [R.SEQUENCE_EXHAUSTED] * 7
    assert tx.counters.drops == {R.SEQUENCE_EXHAUSTED.value: 7}


# --- the SA table, NAT-T ----------------------------------------------------------------------


def test_table_finds_each_sa_by_spi() -> None:
    table: SaTable[SecurityAssociation] = SaTable()
    senders = [ours(keys_for(name), spi=0x3000 + i) for i, name in enumerate(ALGORITHMS)]
    for tx in senders:
        table.install(tx.twin())
    with pytest.raises(ValueError, match="already"):
        table.install(senders[0].twin())
    for tx in senders:
        assert decrypt(table, encrypt(tx, udp4())) == udp4()
    assert [sa.counters.packets for sa in table] == [1, 1, 1, 1]
    removed = table.remove(0x3000)
    assert removed is not None and 0x3000 not in table
    assert reason_of(table, encrypt(senders[0], udp4())) is R.UNKNOWN_SPI


def _udp_to(port: int, payload: bytes) -> bytes:
    return bytes(IP(src=SRC4, dst=DST4) / UDP(sport=4500, dport=port) / Raw(payload))


def test_nat_t_keepalive_ike_and_other_ports() -> None:
    rx = ours(GCM, nat_t=True)
    assert reason_of(rx, _udp_to(4500, b"\xff")) is R.NAT_KEEPALIVE
    assert reason_of(rx, _udp_to(4500, bytes(4) + b"IKE message")) is R.NOT_IPSEC
    assert reason_of(rx, _udp_to(4501, b"\x00\x00\x10\x00" + bytes(40))) is R.NOT_IPSEC
    assert rx.counters.drops[R.NOT_IPSEC.value] == 2


def test_nat_t_ports_and_encapsulation_mismatch() -> None:
    tx = ours(GCM, nat_t=True)
    tx_ports = SecurityAssociation(
        0x1000, GCM.algorithm, GCM.key, nat_t=NatTraversal(src_port=40000, dst_port=4501)
    )
    sealed = encrypt(tx_ports, udp4())
    udp = UdpPacket.checked(sealed[20:])
    assert (udp.src_port, udp.dst_port, udp.checksum) == (40000, 4501, 0)
    assert decrypt(tx_ports.twin(), sealed) == udp4()
    plain_sa = ours(GCM, spi=0x1000)
    table: SaTable[SecurityAssociation] = SaTable()
    table.install(plain_sa)
    table.install(ours(GCM, nat_t=True, spi=0x1001))
    assert reason_of(table, encrypt(tx, udp4())) is R.ENCAPSULATION_MISMATCH
    assert plain_sa.counters.drops == {R.ENCAPSULATION_MISMATCH.value: 1}


def test_nat_t_over_ipv6_carries_a_udp_checksum() -> None:
    tx = ours(GCM, version=6, nat_t=True)
    sealed = encrypt(tx, tcp6())
    udp = UdpPacket.checked(sealed[40:])
    assert udp.checksum != 0
    assert udp.verify_checksum(sealed[8:24], sealed[24:40])


# --- tunnel details -------------------------------------------------------------------------


def test_tunnel_outer_header() -> None:
    tx = ours(GCM, tunnel=True, initial_sequence=0x12345)
    plain = udp4(tos=0xB8 | 0x03, flags="DF")  # DSCP 46, CE
    outer = IP(encrypt(tx, plain))
    assert (outer.src, outer.dst, outer.ttl, outer.proto) == (*map(str, TUNNEL4), 64, 50)
    assert outer.tos == 0xB8 | 0x02  # CE is not copied out: ECT(0) (RFC 6040)
    assert outer.flags == "DF"
    assert outer.id == 0x2345
    no_df = IP(encrypt(tx, udp4()))
    assert no_df.flags == 0


def test_tunnel_decapsulation_carries_congestion() -> None:
    tx = ours(GCM, tunnel=True)
    plain = udp4(tos=0x02)  # ECT(0)
    marked = bytearray(encrypt(tx, plain))
    outer = Ipv4Packet(memoryview(marked))
    outer.ecn = 3
    outer.fill_checksum()
    inner = IP(decrypt(tx.twin(), bytes(marked)))
    assert inner.tos & 3 == 3
    assert Ipv4Packet(memoryview(bytes(inner))).verify_checksum()


# --- configuration and keys -----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        {"algorithm": EspAlgorithm.AES_GCM, "key": bytes(16)},
        {"algorithm": EspAlgorithm.CHACHA20_POLY1305, "key": bytes(32)},
        {"algorithm": EspAlgorithm.AES_CBC_HMAC_SHA256, "key": bytes(16)},
        {"algorithm": EspAlgorithm.AES_CBC_HMAC_SHA256, "key": bytes(15), "auth_key": bytes(32)},
        {"algorithm": EspAlgorithm.AES_GCM, "key": bytes(20), "auth_key": bytes(32)},
        {"algorithm": EspAlgorithm.AES_GCM | EspAlgorithm.AES_CBC_HMAC_SHA256, "key": bytes(20)},
        {"algorithm": EspAlgorithm.AES_GCM, "key": bytes(20), "mode": EspMode.TUNNEL},
        {"algorithm": EspAlgorithm.AES_GCM, "key": bytes(20), "tunnel_src": TUNNEL4[0]},
        {"algorithm": EspAlgorithm.AES_GCM, "key": bytes(20), "spi": 255},
    ],
)
def test_bad_configurations(args: dict[str, object]) -> None:
    kwargs = {"spi": 0x1000, **args}
    with pytest.raises(ValueError):
        SecurityAssociation(**kwargs)  # type: ignore[arg-type]


def test_keys_never_leak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[bytes] = []
    texts: list[str] = []
    sealed: list[bytes] = []
    for name in ALGORITHMS:
        keys = keys_for(name, seed=77)
        secrets += [keys.key, keys.key[:-4]] + ([keys.auth_key] if keys.auth_key else [])
        tx = ours(keys, lifetime=Lifetime(soft_packets=1, hard_packets=2))
        rx = tx.twin()
        table: SaTable[SecurityAssociation] = SaTable()
        table.install(rx)
        out = encrypt(tx, udp4())
        sealed.append(out)
        decrypt(table, out)
        texts += [repr(tx), str(tx), repr(tx.config), str(tx.config), repr(table)]
        texts += [repr(e) for e in tx.take_events()]
        texts += [str(tx.counters.as_dict()), str(rx.counters.as_dict()), str(table.drops)]
        for bad in (out, out[:-1], b"", udp4()):
            with pytest.raises(EspError) as caught:
                decrypt(table, bad)
            texts += [str(caught.value), repr(caught.value), repr(caught.value.args)]
        encrypt(tx, udp4())
        with pytest.raises(EspError) as expired:
            encrypt(tx, udp4())
        texts += [str(expired.value)]
        with pytest.raises(ValueError) as config:
            SecurityAssociation(0x1000, keys.algorithm, keys.key + b"x", auth_key=keys.auth_key)
        texts += [str(config.value)]
    path = tmp_path / "esp.pcap"
    with PcapWriter(path, linktype=LINKTYPE_RAW) as writer:
        for i, frame in enumerate(sealed):
            writer.write(frame, i)
    blob = path.read_bytes()
    text = "\n".join(texts) + caplog.text
    for secret in secrets:
        assert secret not in blob
        for form in (secret.hex(), secret.hex().upper(), repr(secret)[2:-1], str(list(secret))):
            assert form not in text


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["aes128gcm", "aes256gcm", "chacha20poly1305"]),
    version=st.sampled_from([4, 6]),
    esn=st.booleans(),
    window=st.sampled_from([64, 128]),
    plan=st.lists(
        st.tuples(
            st.integers(0, 3),  # how much shorter the payload is (the padding makes up for it)
            st.sampled_from(["fresh", "fresh", "fresh", "replay", "icv", "spi", "old"]),
        ),
        min_size=8,
        max_size=48,
    ),
)
def test_rows_open_a_batch_exactly_as_one_by_one(
    name: str, version: int, esn: bool, window: int, plan: list[tuple[int, str]]
) -> None:
    """Equal-length ESP packets opened as rows give, packet by packet, what ``decrypt``
    gives one after the other: the same inner packets (whatever their padding), the same
    reasons (replays within the batch, bad ICVs, unknown SPIs, packets left of the
    window) and the same window and counters afterwards."""
    keys = keys_for(name, seed=11)
    tx = ours(keys, version=version, esn=esn, replay_window=window)
    sealed: list[bytes] = []
    for extra in range(window + 8):  # old packets, left behind by the window
        sealed.append(encrypt(tx, packet(version, bytes([extra % 251]) * 102)))
    batch: list[bytes] = []
    for cut, kind in plan:
        if kind == "replay" and batch:
            batch.append(batch[-1])
            continue
        if kind == "old":
            batch.append(sealed[0])
            continue
        out = bytearray(encrypt(tx, packet(version, bytes([len(batch)]) * (102 - cut))))
        if kind == "icv":
            out[-1] ^= 0x55
        elif kind == "spi":
            at = 20 if version == 4 else 40
            out[at + 3] ^= 0x01
        batch.append(bytes(out))
    assert len({len(p) for p in batch}) == 1  # one group: 99 to 102 bytes pad alike
    rows, single = tx.twin(), tx.twin()
    for early in sealed[8:]:  # both windows far past the first packets
        decrypt(rows, early)
        decrypt(single, early)
    got = decrypt_batch(rows, batch)
    for i, p in enumerate(batch):
        try:
            want: bytes | EspDropReason = decrypt(single, p)
        except EspError as err:
            want = err.reason
        have = got.packet(i)
        assert (bytes(have) if have is not None else got.reasons[i]) == want, (i, plan[i])
    assert (rows.window.top, rows.counters, rows.counters.drops) == (
        single.window.top,
        single.counters,
        single.counters.drops,
    )


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    flips=st.lists(st.tuples(st.integers(0, 15), st.integers(0, 200), st.integers(1, 255))),
)
def test_rows_take_mangled_batches_without_an_untyped_error(
    version: int, flips: list[tuple[int, int, int]]
) -> None:
    """Sixteen packets of one length with arbitrary bytes changed anywhere (headers, ESP,
    trailer): every packet comes out or has a reason, nothing else is raised."""
    tx = ours(keys_for("aes128gcm", seed=3), version=version, replay_window=64)
    batch = [bytearray(encrypt(tx, packet(version, b"m" * 102))) for _ in range(16)]
    for row, at, value in flips:
        batch[row][at % len(batch[row])] ^= value
    got = decrypt_batch(tx.twin(), [bytes(p) for p in batch])
    for i in range(16):
        assert (got.packet(i) is None) != (got.reasons[i] is None)
    assert got.accepted >= 16 - len({row for row, _, _ in flips})
