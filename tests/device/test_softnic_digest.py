"""The digest task through SoftNics: a keyed digest over a byte range written into the frame
first, then segmentation and checksums over it, by the firmware or by the host; keys by
handle; unknown handles and refused algorithms."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from netoffload.device.cable import Impairments
from netoffload.device.softnic import SoftNic, softnic_pair
from netoffload.engine.digest import DigestFailure
from netoffload.host import HostOffload
from netoffload.offload import (
    ChecksumStatus,
    DigestAlgorithm,
    DigestCaps,
    DropReason,
    Packet,
    Selection,
    SelectionError,
    Task,
    TxRequest,
)
from netoffload.offload.extension import DigestRequest
from netoffload.wire import IpProtocol
from tests.engine.builders import as_partial

KEY = b"digest key, never shown"
HEADERS = 14 + 20 + 20  # where the TCP payload starts
SLOT = 16  # HMAC-SHA-256-128


def frame_with_slot(data: bytes) -> bytes:
    """A TCP frame whose payload is a zeroed digest slot, then ``data``."""
    pkt = (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="198.18.0.1", dst="198.18.0.2")
        / TCP(sport=1, dport=2, seq=1, flags="A")
        / (bytes(SLOT) + data)
    )
    return as_partial(bytes(pkt))[0]


def request(data: bytes, handle: int = 3) -> TxRequest:
    """Cut at MSS 1400 and checksum, after an HMAC of ``data`` is written in its slot."""
    seg = TxRequest.segment_l4(l4_offset=34, protocol=IpProtocol.TCP, ip_version=4, mss=1400)
    digest = DigestRequest(
        DigestAlgorithm.HMAC_SHA256_128, handle, HEADERS + SLOT, len(data), HEADERS
    )
    return replace(seg, digest=digest)


def expected(data: bytes) -> bytes:
    return hmac.new(KEY, data, hashlib.sha256).digest()[:SLOT]


@pytest.fixture
def nics() -> Iterator[tuple[SoftNic, SoftNic]]:
    with softnic_pair(Impairments(mtu=1500), names=("dig-a", "dig-b")) as (a, b):
        for nic in (a, b):
            nic.enable(Selection.everything(nic.capabilities()))
        yield a, b


def payload_received(b: SoftNic, wanted: int, timeout_s: float = 10.0) -> tuple[bytes, bool]:
    """The TCP payload bytes B received (assembled or not), and whether every packet's
    checksum was verified."""
    rx = HostOffload(b)
    got = bytearray()
    verified = True
    end = time.monotonic() + timeout_s
    while len(got) < wanted and time.monotonic() < end:
        packets = rx.recv(64)
        for p in packets:
            got += bytes(p.data[HEADERS:])
            verified = verified and p.rx.l4 is ChecksumStatus.VERIFIED
        rx.release(packets)
        if not packets:
            b.wait(0.05)
    return bytes(got), verified


@pytest.mark.parametrize("allow", [None, frozenset()], ids=["nic", "host"])
def test_the_digest_is_written_first_and_the_segments_checksums_cover_it(
    nics: tuple[SoftNic, SoftNic], allow: frozenset[Task] | None
) -> None:
    a, b = nics
    tx = HostOffload(a, allow=allow)
    tx.install_digest_key(3, DigestAlgorithm.HMAC_SHA256_128, KEY)
    data = bytes(range(256)) * 20
    tx.send([Packet(frame_with_slot(data), request(data))])
    assert tx.flush()
    a.flush()
    got, verified = payload_received(b, SLOT + len(data))
    assert got == expected(data) + data
    assert verified  # the checksums were computed over the digest, not the zeroed slot
    done_by = a.stats().tasks if allow is None else tx.stats.tasks
    assert done_by[Task.DIGEST.label] == 1
    assert done_by[Task.TCP_SEGMENTATION.label] == 1
    other = tx.stats.tasks if allow is None else a.stats().tasks
    assert Task.DIGEST.label not in other


@pytest.mark.parametrize("allow", [None, frozenset()], ids=["nic", "host"])
def test_an_unknown_or_revoked_key_is_a_counted_drop(
    nics: tuple[SoftNic, SoftNic], allow: frozenset[Task] | None
) -> None:
    a, _ = nics
    tx = HostOffload(a, allow=allow)
    tx.install_digest_key(3, DigestAlgorithm.HMAC_SHA256_128, KEY)
    tx.revoke_digest_key(3)
    tx.send([Packet(frame_with_slot(b"x" * 100), request(b"x" * 100))])  # revoked
    tx.send([Packet(frame_with_slot(b"y" * 100), request(b"y" * 100, handle=7))])  # never held
    assert tx.flush()
    a.flush()
    drops = a.stats().drops if allow is None else tx.stats.drops
    assert drops[DropReason.DIGEST_UNKNOWN_KEY.value] == 2
    assert a.stats().tx_packets == 0


def test_an_algorithm_the_nic_was_not_given_is_done_by_the_host(
    nics: tuple[SoftNic, SoftNic],
) -> None:
    a, b = nics
    a.enable(
        Selection(
            [r for r in a.enabled().values() if r.task is not Task.DIGEST]
            + [DigestCaps(algorithms=DigestAlgorithm.CRC32C, max_keys=16)]
        )
    )
    tx = HostOffload(a)
    tx.install_digest_key(3, DigestAlgorithm.HMAC_SHA256_128, KEY)  # the host holds it
    data = b"z" * 3000
    tx.send([Packet(frame_with_slot(data), request(data))])
    assert tx.flush()
    a.flush()
    got, _ = payload_received(b, SLOT + len(data))
    assert got == expected(data) + data
    assert tx.stats.fallbacks["digest/algorithm"] == 1
    assert tx.stats.tasks[Task.DIGEST.label] == 1
    with pytest.raises(SelectionError, match="not enabled"):
        a.install_digest_key(3, DigestAlgorithm.HMAC_SHA256_128, KEY)
    with pytest.raises(SelectionError, match="outside"):
        a.install_digest_key(16, DigestAlgorithm.CRC32C, KEY)


def test_keys_stay_in_the_nic(nics: tuple[SoftNic, SoftNic]) -> None:
    a, _ = nics
    tx = HostOffload(a)
    tx.install_digest_key(3, DigestAlgorithm.HMAC_SHA512_256, KEY)
    text = repr(tx.digest_keys) + repr(a.stats()) + repr(tx.stats) + repr(a)
    assert KEY.hex() not in text and KEY.decode() not in text
    assert "HMAC_SHA512_256" in repr(tx.digest_keys)


def test_every_digest_failure_is_a_device_drop_reason() -> None:
    for failure in DigestFailure:
        assert DropReason(failure.value).value == failure.value
