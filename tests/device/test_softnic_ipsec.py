"""IPsec through SoftNics: contexts by handle, segment-and-encrypt in the firmware, decrypt
before assembly, and the host fallback doing the same work with the same nonces."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySa
from scapy.layers.l2 import Ether

from netoffload.device.cable import Impairments
from netoffload.device.softnic import SoftNic, softnic_pair
from netoffload.engine.esp_sa import EspAlgorithm, EspConfig
from netoffload.host import HostOffload
from netoffload.offload import (
    CryptoStatus,
    DropReason,
    Packet,
    Selection,
    Task,
    TxRequest,
)
from netoffload.wire import IpProtocol
from tests.engine.builders import as_partial

KEY = bytes(range(16)) + b"salt"
OUT = EspConfig(spi=0x1001, algorithm=EspAlgorithm.AES_GCM, key=KEY)
MSS = 1400  # leaves room for ESP's 36 bytes in a 1500-byte MTU


def tcp_frame(payload: bytes, seq: int = 1) -> bytes:
    pkt = (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="198.18.0.1", dst="198.18.0.2")
        / TCP(sport=1, dport=2, seq=seq, flags="A")
        / payload
    )
    return as_partial(bytes(pkt))[0]  # the pseudo-header seed: the engine finishes it


SEG = TxRequest.segment_l4(l4_offset=34, protocol=IpProtocol.TCP, ip_version=4, mss=MSS)


@pytest.fixture
def nics() -> Iterator[tuple[SoftNic, SoftNic]]:
    with softnic_pair(Impairments(mtu=1500), names=("ips-a", "ips-b")) as (a, b):
        for nic in (a, b):
            nic.enable(Selection.everything(nic.capabilities()))
        yield a, b


def receive_all(host: HostOffload, wanted: int, timeout_s: float = 10.0) -> list[Packet]:
    got: list[Packet] = []
    end = time.monotonic() + timeout_s
    while sum(len(p.data) - 54 for p in got) < wanted and time.monotonic() < end:
        packets = host.recv(64)
        got += [Packet(bytes(p.data), p.tx, p.rx) for p in packets]
        host.release(packets)
        if not packets:
            host.device.wait(0.05)
    return got


@pytest.mark.parametrize("sender_allow", [None, frozenset()], ids=["nic-encrypts", "host"])
@pytest.mark.parametrize("receiver_decrypts", [True, False], ids=["nic-decrypts", "host"])
def test_a_super_packet_is_cut_encrypted_and_opened_whichever_side_works(
    nics: tuple[SoftNic, SoftNic],
    sender_allow: frozenset[Task] | None,
    receiver_decrypts: bool,
) -> None:
    a, b = nics
    if not receiver_decrypts:
        b.enable(Selection(r for r in b.enabled().values() if r.task is not Task.DECRYPT))
    tx = HostOffload(a, allow=sender_allow)
    rx = HostOffload(b)
    rx.install_sa(7, OUT)
    payload = bytes(range(256)) * 40  # 10240 bytes: 8 segments of 1400
    first = tcp_frame(payload[:5000], seq=1)
    second = tcp_frame(payload[5000:], seq=5001)
    tx.send(
        [
            Packet(first, SEG.encrypted(3, 1, OUT)),  # the context rides the first packet
            Packet(second, SEG.encrypted(3, 5)),  # then the handle alone
        ]
    )
    assert tx.flush()
    got = receive_all(rx, len(payload))
    assert b"".join(bytes(p.data[54:]) for p in got) == payload
    assert all(p.rx.crypto is CryptoStatus.DECRYPTED and p.rx.sa_handle == 7 for p in got)
    sender, receiver = a.stats(), b.stats()
    if sender_allow is None:
        assert sender.tasks[Task.ENCRYPT.label] == 2 and tx.stats.tasks == {}
    else:
        assert Task.ENCRYPT.label not in sender.tasks and tx.stats.tasks[Task.ENCRYPT.label] == 2
    if receiver_decrypts:
        assert receiver.tasks[Task.DECRYPT.label] == 8  # each segment, before assembly
        assert receiver.tasks[Task.TCP_ASSEMBLY.label] >= 2
    else:
        assert rx.stats.tasks[Task.DECRYPT.label] >= 1
    assert a.cable_counters().get("mtu_exceeded", 0) == 0


def test_the_host_fallback_and_the_nic_use_the_host_nonces(nics: tuple[SoftNic, SoftNic]) -> None:
    """A flow that moves between the NIC and the host mid-way: every ESP packet on the wire
    has the sequence number (so the GCM nonce) the host allocated, and none repeats."""
    a, b = nics
    tx = HostOffload(a)
    seqs: list[int] = []
    next_seq = 1
    for k in range(6):
        tx.allow = None if k % 2 == 0 else frozenset()  # device, host, device, ...
        frame = tcp_frame(bytes([k]) * 3000, seq=1 + 3000 * k)
        request = SEG.encrypted(0, next_seq, OUT if k == 0 else None)
        next_seq += 3  # 3000 bytes at MSS 1400: three segments
        tx.send([Packet(frame, request)])
        assert tx.flush()
    a.flush()
    end = time.monotonic() + 10
    theirs = ScapySa(ESP, spi=OUT.spi, crypt_algo="AES-GCM", crypt_key=KEY)
    while len(seqs) < 18 and time.monotonic() < end:
        packets = b.recv(64)  # no inbound SA installed in B: the ESP arrives as it was sent
        for packet in packets:
            esp = Ether(bytes(packet.data))
            seqs.append(esp[ESP].seq)
            assert theirs.decrypt(esp[IP])[TCP]  # scapy opens every one
        b.release(packets)
        if not packets:
            b.wait(0.05)
    assert sorted(seqs) == list(range(1, 19)) and len(set(seqs)) == 18


def test_a_handle_the_nic_never_heard_of_gets_its_context_attached(
    nics: tuple[SoftNic, SoftNic],
) -> None:
    """The first packet under a handle went through the host; the next one goes to the NIC,
    which must still be given the context: the host attaches it."""
    a, b = nics
    tx = HostOffload(a, allow=frozenset())
    rx = HostOffload(b)
    rx.install_sa(1, OUT)
    tx.send([Packet(tcp_frame(b"x" * 100), TxRequest().encrypted(2, 1, OUT))])
    tx.allow = None
    tx.send([Packet(tcp_frame(b"y" * 100, seq=101), TxRequest().encrypted(2, 2))])
    assert tx.flush()
    got = receive_all(rx, 200)
    assert [bytes(p.data[54:]) for p in got] == [b"x" * 100, b"y" * 100]
    assert a.stats().tasks[Task.ENCRYPT.label] == 1


def test_stale_and_foreign_handles_are_counted_drops(nics: tuple[SoftNic, SoftNic]) -> None:
    a, _ = nics
    tx = HostOffload(a)
    tx.send([Packet(tcp_frame(b"z"), TxRequest().encrypted(5, 1, OUT))])
    tx.revoke_sa(5)
    tx.send([Packet(tcp_frame(b"z"), TxRequest().encrypted(5, 2))])  # revoked
    tx.send([Packet(tcp_frame(b"z"), TxRequest().encrypted(9, 1))])  # never installed
    assert tx.flush()
    a.flush()
    drops = {**a.stats().drops, **tx.stats.drops}
    assert drops.get(DropReason.IPSEC_UNKNOWN_SPI.value, 0) == 2
    a.send([Packet(tcp_frame(b"z"), TxRequest().encrypted(5000, 1))])  # outside 0..1023
    a.flush()
    assert a.stats().drops[DropReason.OUTSIDE_CAPABILITY.value] == 1


def test_inbound_sas_install_and_revoke_in_the_firmware(nics: tuple[SoftNic, SoftNic]) -> None:
    from netoffload.device.base import DeviceError
    from netoffload.offload import SelectionError

    _, b = nics
    b.install_sa(3, OUT)
    b.stats()
    assert b.ipsec_counters()["inbound"] == 1
    with pytest.raises((DeviceError, SelectionError), match="outside"):
        b.install_sa(4096, OUT)
    b.revoke_sa(3)
    b.stats()
    assert b.ipsec_counters()["inbound"] == 0
    assert KEY.hex() not in repr(b.ipsec_counters())
