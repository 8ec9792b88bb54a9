"""Security contexts by handle, and segment-then-encrypt in one pass (engine.ipsec_offload)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySa
from scapy.layers.l2 import Ether

from netoffload.engine.esp_sa import EspAlgorithm, EspConfig, EspMode, NatTraversal
from netoffload.engine.ipsec_offload import (
    Opened,
    SecurityContexts,
    decode_config,
    decrypt_frames,
    encode_config,
    encrypt_frame,
    is_esp,
    transmit_encrypted,
)
from netoffload.engine.ipsec_sa import IpsecDropReason, Lifetime
from netoffload.engine.pipeline import transmit
from netoffload.offload import Packet, Task, TxRequest
from netoffload.offload.stats import DropReason
from netoffload.wire import IpProtocol
from tests.engine.builders import as_partial

KEY = bytes(range(16)) + b"salt"
GCM = EspConfig(spi=0x1000, algorithm=EspAlgorithm.AES_GCM, key=KEY)
MAC = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def tcp_frame(payload: bytes) -> bytes:
    """A TCP/IPv4 frame with a CHECKSUM_PARTIAL seed, as a stack hands it to a device."""
    pkt = Ether(**MAC) / IP(src="198.18.0.1", dst="198.18.0.2") / TCP(sport=1, dport=2, seq=7)
    return as_partial(bytes(pkt / payload))[0]


@pytest.mark.parametrize(
    "config",
    [
        GCM,
        EspConfig(
            spi=0x2000,
            algorithm=EspAlgorithm.AES_CBC_HMAC_SHA256,
            key=bytes(32),
            auth_key=bytes(range(32)),
            mode=EspMode.TUNNEL,
            tunnel_src=IPv6Address("fd00::7:1"),
            tunnel_dst=IPv6Address("fd00::7:2"),
            esn=True,
            replay_window=1024,
            nat_t=NatTraversal(4500, 4501),
            lifetime=Lifetime(soft_packets=10, hard_packets=20, hard_bytes=10**9),
        ),
        EspConfig(
            spi=0x3000,
            algorithm=EspAlgorithm.CHACHA20_POLY1305,
            key=bytes(36),
            mode=EspMode.TUNNEL,
            tunnel_src=IPv4Address("198.18.7.1"),
            tunnel_dst=IPv4Address("198.18.7.2"),
        ),
    ],
)
def test_a_context_crosses_a_process_boundary_unchanged(config: EspConfig) -> None:
    data = encode_config(config)
    assert decode_config(data) == config
    assert len(data) <= 256  # it rides in front of the frame in a SoftNic slot's headroom
    assert config.key.hex() not in repr(config)


@pytest.mark.parametrize(
    "data",
    [b"", bytes(10), b"\x02" + encode_config(GCM)[1:], encode_config(GCM)[:-1]],
)
def test_a_bad_context_is_a_value_error_without_key_bytes(data: bytes) -> None:
    with pytest.raises(ValueError) as info:
        decode_config(data)
    assert KEY.hex() not in str(info.value)


def test_segment_then_encrypt_in_one_pass_with_the_host_sequence_numbers() -> None:
    payload = bytes(range(256)) * 20  # 5120 bytes: 4 segments of 1448 (the last shorter)
    frame = tcp_frame(payload)
    seg = TxRequest.segment_l4(l4_offset=34, protocol=IpProtocol.TCP, ip_version=4, mss=1448)
    request = seg.encrypted(3, 100, GCM)
    device = SecurityContexts(8)
    out = transmit_encrypted([Packet(frame, request)], device)
    assert out.drops == [] and out.sources == [0, 0, 0, 0]
    assert out.tasks == {Task.CHECKSUM: 1, Task.TCP_SEGMENTATION: 1, Task.ENCRYPT: 1}
    assert 3 in device
    # The segments the same request cuts without encryption, checksums filled:
    plain = [bytes(p.data) for p in transmit([Packet(frame, seg)], seg.tasks()).packets]
    theirs = ScapySa(ESP, spi=0x1000, crypt_algo="AES-GCM", crypt_key=KEY)
    for k, (sealed, expected) in enumerate(zip(out.frames, plain, strict=True)):
        esp = Ether(sealed)
        assert esp[ESP].seq == 100 + k  # the host's numbers, one per segment
        assert bytes(theirs.decrypt(esp[IP])) == expected[14:]
    # The other end opens them with the same context installed as inbound.
    receiver = SecurityContexts(8)
    receiver.install_inbound(5, GCM)
    opened = decrypt_frames(receiver, out.frames)
    assert [o.frame for o in opened if isinstance(o, Opened)] == plain
    assert {o.handle for o in opened if isinstance(o, Opened)} == {5}


def test_later_packets_carry_the_handle_alone() -> None:
    device = SecurityContexts(4)
    first = TxRequest.checksum_l4(l4_offset=34, protocol=IpProtocol.TCP)
    out = transmit_encrypted([Packet(tcp_frame(b"a" * 10), first.encrypted(1, 1, GCM))], device)
    assert len(out.frames) == 1
    out = transmit_encrypted([Packet(tcp_frame(b"b" * 10), first.encrypted(1, 2))], device)
    assert len(out.frames) == 1 and out.drops == []


@pytest.mark.parametrize("handle", [0, 3, 9])
def test_unknown_revoked_or_foreign_handles_are_counted_drops(handle: int) -> None:
    device = SecurityContexts(4)
    device.install_outbound(2, GCM)
    device.revoke(2)
    request = TxRequest.checksum_l4(l4_offset=34, protocol=IpProtocol.TCP).encrypted(handle, 1)
    out = transmit_encrypted([Packet(tcp_frame(b"x"), request)], device)
    assert out.frames == [] and out.drops == [(0, DropReason.IPSEC_UNKNOWN_SPI)]
    assert device.drops["ipsec_unknown_spi"] == 1
    with pytest.raises(ValueError, match="outside"):
        device.install_outbound(4, GCM)


def test_every_engine_reason_is_a_device_drop_reason() -> None:
    for reason in IpsecDropReason:
        assert DropReason(reason.value).value == reason.value


def test_decrypt_leaves_other_traffic_alone_and_counts_what_it_refuses() -> None:
    sender = SecurityContexts(2)
    sender.install_outbound(0, GCM)
    sealed = encrypt_frame(sender, tcp_frame(b"hello"), 0, 1)
    assert isinstance(sealed, bytes) and is_esp(sealed) and not is_esp(tcp_frame(b"x"))
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    receiver = SecurityContexts(2)
    receiver.install_inbound(1, GCM)
    results = decrypt_frames(receiver, [tcp_frame(b"plain"), bytes(tampered), sealed, sealed])
    assert results[0] is None
    assert results[1] is IpsecDropReason.BAD_ICV
    assert isinstance(results[2], Opened) and results[2].frame == tcp_frame(b"hello")
    assert results[3] is IpsecDropReason.REPLAY
    assert receiver.drops == {"ipsec_bad_icv": 1, "ipsec_replay": 1}
    stats = repr(receiver.as_dict())
    assert KEY.hex() not in stats and KEY[:16].hex() not in stats


def test_a_request_needs_its_sequence_number() -> None:
    from netoffload.offload import RequestError

    with pytest.raises(RequestError, match="sequence number"):
        TxRequest(sa_handle=1)
    with pytest.raises(RequestError, match="go with an sa_handle"):
        TxRequest(esp_seq=1)
    assert TxRequest(sa_handle=1, esp_seq=5).tasks() == {Task.ENCRYPT}
