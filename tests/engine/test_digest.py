"""Message digest offload: AH against scapy both ways, the fields routers may change, AH's
inbound checks; and the plain digest task against Python's hmac module and RFC 3720's CRC32C
vectors."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.inet6 import (
    HBHOptUnknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    RouterAlert,
)
from scapy.layers.ipsec import AH
from scapy.layers.ipsec import SecurityAssociation as ScapySa
from scapy.layers.sctp import crc32c as scapy_crc32c
from scapy.packet import Raw

from netoffload.engine.digest import (
    AhSecurityAssociation,
    DigestError,
    DigestFailure,
    DigestKeys,
    ah_protect,
    ah_protect_batch,
    ah_verify,
    ah_verify_batch,
    compute_digest,
    crc32c,
    digest_batch,
    verify_digest,
)
from netoffload.engine.esp import EspMode, SaTable
from netoffload.engine.ipsec_sa import AhError, IpsecDropReason
from netoffload.offload.caps import DigestAlgorithm
from netoffload.offload.extension import DigestRequest
from netoffload.wire import Ipv4Packet
from tests.engine.ipsec_cases import DST4, SRC4, TUNNEL4, TUNNEL6, address

R = IpsecDropReason
KEY = bytes(range(100, 132))


def ah_pair(
    version: int, *, tunnel: bool = False, esn: bool = False, spi: int = 0x2000
) -> tuple[AhSecurityAssociation, Any]:
    """Our AH SA and scapy's for one case."""
    ours_kw: dict[str, Any] = {}
    theirs_kw: dict[str, Any] = {}
    if tunnel:
        src, dst = TUNNEL4 if version == 4 else TUNNEL6
        ours_kw = {"mode": EspMode.TUNNEL, "tunnel_src": src, "tunnel_dst": dst}
        outer = IP if version == 4 else IPv6
        theirs_kw["tunnel_header"] = outer(src=str(src), dst=str(dst))
    ours = AhSecurityAssociation(spi, KEY, esn=esn, **ours_kw)
    theirs = ScapySa(
        AH, spi=spi, auth_algo="SHA2-256-128", auth_key=KEY, esn_en=esn, esn=0, **theirs_kw
    )
    return ours, theirs


def inner(version: int, payload: bytes = b"authenticated") -> bytes:
    if version == 4:
        ip = IP(src=SRC4, dst=DST4, tos=0x28, ttl=17, options=[IPOption_Router_Alert()])
        return bytes(ip / UDP(sport=7, dport=9) / Raw(payload))
    ip6 = IPv6(src="fd00::1", dst="fd00::2", tc=0x28, fl=0x12345, hlim=17)
    hbh = IPv6ExtHdrHopByHop(options=[RouterAlert(), HBHOptUnknown(otype=0x3E, optdata=b"ab")])
    return bytes(ip6 / hbh / UDP(sport=7, dport=9) / Raw(payload))


def parse(data: bytes) -> Any:
    return IP(data) if data[0] >> 4 == 4 else IPv6(data)


@pytest.mark.parametrize("esn", [False, True], ids=["seq32", "esn"])
@pytest.mark.parametrize("tunnel", [False, True], ids=["transport", "tunnel"])
@pytest.mark.parametrize("version", [4, 6], ids=["v4", "v6"])
def test_ah_with_scapy_both_ways(version: int, tunnel: bool, esn: bool) -> None:
    ours, theirs = ah_pair(version, tunnel=tunnel, esn=esn)
    receiver = ours.twin()
    for payload in (b"", b"x", b"authenticated" * 20):
        plain = inner(version, payload)
        protected = ah_protect(ours, plain)
        assert bytes(theirs.decrypt(parse(protected))) == plain
        assert ah_verify(receiver, bytes(theirs.encrypt(parse(plain)))) == plain
    assert receiver.counters.packets == 3


def test_ah_header_layout() -> None:
    for version, length in ((4, 28), (6, 32)):  # IPv6 pads the ICV to 8-byte alignment
        ours, _ = ah_pair(version)
        protected = parse(ah_protect(ours, inner(version)))
        ah = protected[AH]
        assert (ah.spi, ah.seq, (ah.payloadlen + 2) * 4) == (0x2000, 1, length)
        assert ah.nh == 17
        if version == 6:  # after the hop-by-hop header, which routers read
            assert protected[IPv6ExtHdrHopByHop].nh == 51


@pytest.mark.parametrize("version", [4, 6])
def test_fields_that_change_in_transit_are_not_covered(version: int) -> None:
    ours, _ = ah_pair(version)
    protected = parse(ah_protect(ours, inner(version)))
    if version == 4:
        protected.ttl, protected.tos, protected.flags = 3, 0x2B, "DF"
        del protected.chksum
    else:
        protected.hlim, protected.tc, protected.fl = 3, 0x2B, 0x54321
        protected[IPv6ExtHdrHopByHop].options[1].optdata = b"zz"  # type 0x3E: may change
    out = parse(ah_verify(ours.twin(), bytes(protected)))
    assert not out.haslayer(AH)
    assert out[Raw].load == b"authenticated"
    if version == 4:  # handed up as they arrived
        assert (out.ttl, out.tos, out.flags) == (3, 0x2B, "DF")
        assert Ipv4Packet(memoryview(bytes(out))).verify_checksum()
    else:
        assert (out.hlim, out.tc, out.fl) == (3, 0x2B, 0x54321)
        assert out[IPv6ExtHdrHopByHop].options[1].optdata == b"zz"


@pytest.mark.parametrize("version", [4, 6])
def test_immutable_changes_fail_the_icv(version: int) -> None:
    ours, _ = ah_pair(version)
    for change in ("dst", "payload", "option"):
        sender = ours.twin()
        protected = parse(ah_protect(sender, inner(version)))
        if change == "dst":
            protected.dst = "198.18.0.9" if version == 4 else "fd00::9"
        elif version == 4 and change == "option":
            protected.options = [IPOption_Router_Alert(alert=1)]  # router alert is immutable
        elif change == "option":
            protected[IPv6ExtHdrHopByHop].options[0].value = 1  # so is its value in IPv6
        if version == 4:
            del protected.chksum
        data = bytearray(bytes(protected))
        if change == "payload":
            data[-1] ^= 0x20
        with pytest.raises(AhError) as caught:
            ah_verify(sender.twin(), bytes(data))
        assert caught.value.reason is R.BAD_ICV, change


def test_mutable_ipv4_options_are_zeroed_whole() -> None:
    ours, theirs = ah_pair(4)
    plain = bytes(IP(src=SRC4, dst=DST4, options=[IPOption_RR(routers=["198.18.0.5"])]) / UDP())
    protected = parse(ah_protect(ours, plain))
    assert bytes(theirs.decrypt(protected.copy())) == plain
    protected.options = [IPOption_RR(routers=["198.18.0.6"], pointer=8)]  # recorded on the way
    del protected.chksum
    out = ah_verify(ours.twin(), bytes(protected))
    assert IP(out)[IP].options[0].routers == ["198.18.0.6"]


def test_routing_header_with_segments_left_is_not_supported() -> None:
    ours, _ = ah_pair(6)
    routed = bytes(
        IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrRouting(addresses=["fd00::3"], segleft=1)
        / UDP()
    )
    with pytest.raises(AhError) as caught:
        ah_protect(ours, routed)
    assert caught.value.reason is R.UNSUPPORTED
    done = bytes(
        IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrRouting(addresses=["fd00::3"], segleft=0)
        / IPv6ExtHdrDestOpt()
        / UDP()
    )
    _, theirs = ah_pair(6)
    assert bytes(theirs.decrypt(IPv6(ah_protect(ours, done)))) == done


def test_ah_inbound_checks() -> None:
    ours, _ = ah_pair(4)
    receiver = ours.twin()
    protected = ah_protect(ours, inner(4))
    ah_verify(receiver, protected)

    def reason(sa: AhSecurityAssociation | SaTable[AhSecurityAssociation], data: bytes) -> R:
        with pytest.raises(AhError) as caught:
            ah_verify(sa, data)
        return caught.value.reason

    assert reason(receiver, protected) is R.REPLAY
    tampered = bytearray(ah_protect(ours, inner(4)))
    tampered[-1] ^= 1
    assert reason(receiver, bytes(tampered)) is R.BAD_ICV
    assert reason(receiver, bytes(tampered)) is R.BAD_ICV  # the window did not move
    assert reason(receiver, inner(4)) is R.NOT_IPSEC
    cut = bytearray(protected[:40])
    Ipv4Packet(memoryview(cut)).total_len = 40
    assert reason(receiver, bytes(cut)) is R.TRUNCATED
    table: SaTable[AhSecurityAssociation] = SaTable()
    assert reason(table, protected) is R.UNKNOWN_SPI
    assert table.drops == {R.UNKNOWN_SPI.value: 1}
    table.install(ours.twin())
    assert ah_verify(table, protected) == inner(4)


def test_ah_batches() -> None:
    ours, _ = ah_pair(6, esn=True)
    batch = ah_protect_batch(ours, [inner(6), b"junk", inner(6, b"two")])
    assert batch.reasons == [None, R.MALFORMED, None]
    sealed = [bytes(p) for p in batch.packets if p is not None]
    back = ah_verify_batch(ours.twin(), [sealed[0], sealed[0], sealed[1]])
    assert back.reasons == [None, R.REPLAY, None]
    assert [bytes(p) for p in back.packets if p is not None] == [inner(6), inner(6, b"two")]


def test_ah_key_stays_out_of_repr_and_errors() -> None:
    ours, _ = ah_pair(4, tunnel=True)
    texts = [repr(ours), str(ours), repr(ours.config)]
    with pytest.raises(AhError) as caught:
        ah_verify(ours, b"\x45" + bytes(40))
    texts.append(str(caught.value))
    with pytest.raises(ValueError) as config:
        AhSecurityAssociation(0x2000, KEY[:-1])
    texts.append(str(config.value))
    for text in texts:
        assert KEY.hex() not in text and repr(KEY)[2:-1] not in text
    assert "tunnel" in repr(ours) and str(address("198.18.7.1")) in repr(ours)


# --- the plain digest task ---------------------------------------------------------------


def test_crc32c_vectors() -> None:
    # RFC 3720 Appendix B.4.
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    assert crc32c(b"123456789") == 0xE3069283


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_crc32c_agrees_with_scapy(data: bytes) -> None:
    # scapy's is byte-swapped: SCTP sends the CRC's least significant byte first.
    assert crc32c(data) == int.from_bytes(scapy_crc32c(data).to_bytes(4, "little"), "big")


_HMACS = {
    DigestAlgorithm.HMAC_SHA1_96: ("sha1", 12),
    DigestAlgorithm.HMAC_SHA256_128: ("sha256", 16),
    DigestAlgorithm.HMAC_SHA512_256: ("sha512", 32),
}


@settings(max_examples=150, deadline=None)
@given(
    algorithm=st.sampled_from(list(_HMACS)),
    key=st.binary(min_size=1, max_size=80),
    packet=st.binary(min_size=40, max_size=300),
    data=st.data(),
)
def test_keyed_digest_agrees_with_python_hmac(
    algorithm: DigestAlgorithm, key: bytes, packet: bytes, data: st.DataObject
) -> None:
    name, n = _HMACS[algorithm]
    start = data.draw(st.integers(0, len(packet) - n - 1))
    length = data.draw(st.integers(0, len(packet) - n - start))
    at = data.draw(st.integers(start + length, len(packet) - n))
    keys = DigestKeys()
    keys.install(7, algorithm, key)
    request = DigestRequest(algorithm, 7, start, length, at)
    buf = bytearray(packet)
    value = compute_digest(keys, request, buf)
    expected = hmac.new(key, packet[start : start + length], getattr(hashlib, name)).digest()[:n]
    assert value == expected
    assert bytes(buf) == packet[:at] + expected + packet[at + n :]
    verify_digest(keys, request, bytes(buf))


def test_digest_failures() -> None:
    keys = DigestKeys()
    keys.install(1, DigestAlgorithm.HMAC_SHA256_128, b"secret-digest-key")
    packet = bytearray(100)

    def failure(request: DigestRequest, data: bytearray | bytes = packet) -> DigestFailure:
        with pytest.raises(DigestError) as caught:
            if isinstance(data, bytes):
                verify_digest(keys, request, data)
            else:
                compute_digest(keys, request, data)
        assert "secret-digest-key" not in str(caught.value)
        return caught.value.reason

    sha256 = DigestAlgorithm.HMAC_SHA256_128
    assert failure(DigestRequest(sha256, 2, 0, 10, 50)) is DigestFailure.UNKNOWN_KEY
    assert failure(DigestRequest(DigestAlgorithm.HMAC_SHA1_96, 1, 0, 10, 50)) is (
        DigestFailure.ALGORITHM_MISMATCH
    )
    assert failure(DigestRequest(sha256, 1, 0, 101, 0)) is DigestFailure.OUT_OF_BOUNDS
    assert failure(DigestRequest(sha256, 1, 0, 10, 90)) is DigestFailure.OUT_OF_BOUNDS
    assert failure(DigestRequest(sha256, 1, 0, 20, 10)) is DigestFailure.OVERLAP
    good = DigestRequest(sha256, 1, 0, 20, 20)
    compute_digest(keys, good, packet)
    tampered = bytearray(packet)
    tampered[3] ^= 1
    assert failure(good, bytes(tampered)) is DigestFailure.MISMATCH
    assert keys.revoke(1) and not keys.revoke(1)
    assert failure(good) is DigestFailure.UNKNOWN_KEY
    assert "secret" not in repr(keys)


def test_digest_batch_and_crc_without_key() -> None:
    keys = DigestKeys()
    keys.install(3, DigestAlgorithm.HMAC_SHA512_256, b"k")
    packets = [bytearray(b"123456789" + bytes(40)) for _ in range(3)]
    requests = [
        DigestRequest(DigestAlgorithm.CRC32C, 0, 0, 9, 9),  # no key needed
        DigestRequest(DigestAlgorithm.HMAC_SHA512_256, 3, 0, 9, 9),
        DigestRequest(DigestAlgorithm.HMAC_SHA512_256, 4, 0, 9, 9),
    ]
    assert digest_batch(keys, packets, requests) == [None, None, DigestFailure.UNKNOWN_KEY]
    assert packets[0][9:13] == (0xE3069283).to_bytes(4, "big")
    assert bytes(packets[1][9:41]) == hmac.new(b"k", b"123456789", "sha512").digest()[:32]
    with pytest.raises(ValueError, match="takes no key"):
        keys.install(5, DigestAlgorithm.CRC32C, b"k")
