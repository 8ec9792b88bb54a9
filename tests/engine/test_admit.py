"""Per-packet admission: enabled records are limits, checked for every packet."""

from __future__ import annotations

from netoffload.engine.admit import Limits, Refusal
from netoffload.engine.pipeline import transmit
from netoffload.offload import (
    ChecksumCaps,
    ChecksumFlags,
    IpVersions,
    Packet,
    Selection,
    Task,
    TcpSegmentationCaps,
    TxRequest,
    UdpSegmentationCaps,
)
from netoffload.wire import IpProtocol
from tests.engine.builders import as_partial, tcp4, tcp6, udp4, udp6

ALL_TX = (
    ChecksumFlags.IPV4_HEADER
    | ChecksumFlags.TCP_IPV4
    | ChecksumFlags.UDP_IPV4
    | ChecksumFlags.TCP_IPV6
    | ChecksumFlags.UDP_IPV6
)
BOTH = IpVersions.IPV4 | IpVersions.IPV6
DATA = bytes(range(256)) * 200


def _limits(*records: object) -> Limits:
    return Limits.from_records(Selection(records).values())  # type: ignore[arg-type]


def _tso(frame: bytes, version: int, mss: int = 1000, ecn: bool = False) -> TxRequest:
    l4 = 14 + (20 if version == 4 else 40)
    return TxRequest.segment_l4(
        l4_offset=l4, protocol=IpProtocol.TCP, ip_version=version, mss=mss, ecn=ecn
    )


def test_ipv4_only_tso_refuses_an_ipv6_super_packet() -> None:
    limits = _limits(ChecksumCaps(tx=ALL_TX), TcpSegmentationCaps(versions=IpVersions.IPV4))
    v6, _, _ = as_partial(tcp6(DATA[:5000]))
    v4, _, _ = as_partial(tcp4(DATA[:5000]))
    refused = limits.admit(v6, _tso(v6, 6))
    assert refused.tasks == frozenset()
    assert refused.refused == ((Task.TCP_SEGMENTATION, Refusal.IP_VERSION),)
    accepted = limits.admit(v4, _tso(v4, 4))
    assert accepted.tasks == {Task.CHECKSUM, Task.TCP_SEGMENTATION} and not accepted.refused


def test_max_segments_is_a_limit() -> None:
    limits = _limits(ChecksumCaps(tx=ALL_TX), TcpSegmentationCaps(max_segments=8))
    frame, _, _ = as_partial(tcp4(DATA[:20000]))
    assert limits.admit(frame, _tso(frame, 4)).refused == (
        (Task.TCP_SEGMENTATION, Refusal.TOO_MANY_SEGMENTS),
    )
    small, _, _ = as_partial(tcp4(DATA[:8000]))
    assert not limits.admit(small, _tso(small, 4)).refused


def test_min_segments_and_size_are_limits() -> None:
    frame, _, _ = as_partial(tcp4(DATA[:3000]))
    fewest = _limits(ChecksumCaps(tx=ALL_TX), TcpSegmentationCaps(min_segments=4))
    assert fewest.admit(frame, _tso(frame, 4)).refused == (
        (Task.TCP_SEGMENTATION, Refusal.TOO_FEW_SEGMENTS),
    )
    smallest = _limits(ChecksumCaps(tx=ALL_TX), TcpSegmentationCaps(max_size_bytes=2000))
    assert smallest.admit(frame, _tso(frame, 4)).refused == (
        (Task.TCP_SEGMENTATION, Refusal.TOO_LARGE),
    )


def test_a_payload_that_fits_one_segment_goes_out_whole_without_a_fallback() -> None:
    limits = _limits(ChecksumCaps(tx=ALL_TX))  # no segmentation at all
    frame, _, _ = as_partial(tcp4(DATA[:900]))
    verdict = limits.admit(frame, _tso(frame, 4, mss=1000))
    assert not verdict.refused
    assert verdict.tasks == {Task.CHECKSUM}
    assert verdict.request.segmentation is None and verdict.request.checksum is not None


def test_ecn_needs_its_flag() -> None:
    limits = _limits(ChecksumCaps(tx=ALL_TX), TcpSegmentationCaps(versions=BOTH))
    frame, _, _ = as_partial(tcp4(DATA[:5000], flags="AC"))
    assert limits.admit(frame, _tso(frame, 4, ecn=True)).refused == (
        (Task.TCP_SEGMENTATION, Refusal.ECN),
    )


def test_checksum_flags_per_protocol_and_version() -> None:
    limits = _limits(ChecksumCaps(tx=ChecksumFlags.TCP_IPV4 | ChecksumFlags.UDP_IPV6))
    cases = [
        (tcp4(b"x" * 10), IpProtocol.TCP, 34, True),
        (udp4(b"x" * 10), IpProtocol.UDP, 34, False),
        (tcp6(b"x" * 10), IpProtocol.TCP, 54, False),
        (udp6(b"x" * 10), IpProtocol.UDP, 54, True),
    ]
    for frame, protocol, l4, allowed in cases:
        partial, _, _ = as_partial(frame)
        verdict = limits.admit(partial, TxRequest.checksum_l4(l4_offset=l4, protocol=protocol))
        assert (verdict.tasks == {Task.CHECKSUM}) is allowed
        assert verdict.refused == (() if allowed else ((Task.CHECKSUM, Refusal.PROTOCOL),))


def test_a_refused_checksum_moves_segmentation_to_the_host_too() -> None:
    limits = _limits(
        ChecksumCaps(tx=ChecksumFlags.UDP_IPV4), TcpSegmentationCaps(), UdpSegmentationCaps()
    )
    frame, _, _ = as_partial(tcp4(DATA[:5000]))
    verdict = limits.admit(frame, _tso(frame, 4))
    assert verdict.tasks == frozenset()
    assert verdict.refused == ((Task.CHECKSUM, Refusal.PROTOCOL),)


def test_the_hosts_choice_is_its_own_reason() -> None:
    limits = _limits(ChecksumCaps(tx=ALL_TX), TcpSegmentationCaps())
    frame, _, _ = as_partial(tcp4(DATA[:5000]))
    verdict = limits.admit(frame, _tso(frame, 4), allow=frozenset({Task.TCP_SEGMENTATION}))
    # Checksums kept on the host force the segmentation there too.
    assert verdict.tasks == frozenset()
    assert set(verdict.refused) == {
        (Task.CHECKSUM, Refusal.HOST_CHOICE),
        (Task.TCP_SEGMENTATION, Refusal.HOST_CHOICE),
    }


def test_unparsable_frames_are_left_to_the_engine() -> None:
    # A record with a limit that needs the frame read: it cannot be, so no device takes it.
    v4_only = _limits(ChecksumCaps(tx=ALL_TX), TcpSegmentationCaps(versions=IpVersions.IPV4))
    verdict = v4_only.admit(b"\x00" * 40, _tso(b"", 4))
    assert verdict.refused == ((Task.TCP_SEGMENTATION, Refusal.UNPARSABLE),)
    # A record no 40-byte frame can exceed: admitted unread; the engine gives the reason.
    wide = _limits(ChecksumCaps(tx=ALL_TX), TcpSegmentationCaps())
    verdict = wide.admit(b"\x00" * 40, _tso(b"", 4))
    assert not verdict.refused and Task.TCP_SEGMENTATION in verdict.tasks
    out = transmit([Packet(b"\x00" * 40, verdict.request)], verdict.tasks)
    assert out.drops and not out.packets


def test_unlimited_is_the_hosts_engine() -> None:
    limits = Limits.unlimited()
    frame, _, _ = as_partial(tcp6(DATA[:60000]))
    verdict = limits.admit(frame, _tso(frame, 6, mss=100))
    assert verdict.tasks == {Task.CHECKSUM, Task.TCP_SEGMENTATION} and not verdict.refused
