"""Message digest offload: AH (RFC 4302) and a keyed digest over a byte range.

AH with HMAC-SHA-256-128 (RFC 4868), in transport and tunnel mode over IPv4
and IPv6: the ICV covers the whole packet with the fields that routers may
change zeroed (RFC 4302 3.3.3.1; see ``ipsec_ip.zero_mutable_fields``), and
with ESN the high-order sequence bits appended. Inbound checks run in RFC
4302 3.4's order: SA by SPI, replay pre-check, ICV, window update.

The plain digest task computes what a ``DigestRequest`` asks for: a digest
over ``[start, start + length)`` of a packet, written at ``result_offset``,
with a key the device holds under ``key_handle`` (``DigestKeys``).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from hmac import compare_digest
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, Final, NamedTuple, TypeAlias

import google_crc32c
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from netoffload.engine.esp import EspBatch
from netoffload.engine.esp_sa import EspMode
from netoffload.engine.ipsec_ip import (
    IPPROTO_AH,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    IPV6_HEADER_LEN,
    IpLayout,
    OuterHeader,
    UnsupportedHeaderError,
    inbound_layout,
    inner_packet_len,
    inner_tos,
    outbound_layout,
    set_transport_header,
    truncated,
    tunnel_protocol,
    zero_mutable_fields,
)
from netoffload.engine.ipsec_sa import (
    REPLAY_WINDOW_MAX,
    REPLAY_WINDOW_MIN,
    SPI_RESERVED_MAX,
    U32_MAX,
    AhError,
    IpsecDropReason,
    Lifetime,
    SaBase,
    SaTable,
    check_int,
)
from netoffload.offload.caps import DigestAlgorithm
from netoffload.offload.extension import DigestRequest
from netoffload.offload.packet import Packet
from netoffload.offload.stats import DropReason
from netoffload.offload.task import Task
from netoffload.wire._view import byte_view
from netoffload.wire.ah import FIXED_LEN as AH_FIXED_LEN
from netoffload.wire.ah import AhPacket
from netoffload.wire.error import WireError

__all__ = [
    "AH_ICV_LEN",
    "AhConfig",
    "AhSecurityAssociation",
    "DigestError",
    "DigestFailure",
    "DigestKeys",
    "DigestPass",
    "ah_protect",
    "ah_protect_batch",
    "ah_protect_with",
    "ah_verify",
    "ah_verify_batch",
    "compute_digest",
    "crc32c",
    "digest_batch",
    "digest_len",
    "digest_pass",
    "verify_digest",
]

Buffer: TypeAlias = bytes | bytearray | memoryview

AH_ICV_LEN: Final = 16
HMAC_SHA256_KEY_LEN: Final = 32
_AH_HEADER = struct.Struct("!BBHII")


# --- AH --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AhConfig:
    """Everything that defines an AH SA (HMAC-SHA-256-128). The key stays out of repr."""

    spi: int
    auth_key: bytes = field(repr=False)
    mode: EspMode = EspMode.TRANSPORT
    tunnel_src: IPv4Address | IPv6Address | None = None
    tunnel_dst: IPv4Address | IPv6Address | None = None
    esn: bool = False
    replay_window: int = 64
    lifetime: Lifetime | None = None

    def __post_init__(self) -> None:
        check_int("SPI", self.spi, SPI_RESERVED_MAX + 1, U32_MAX)
        check_int("replay window", self.replay_window, REPLAY_WINDOW_MIN, REPLAY_WINDOW_MAX)
        if not isinstance(self.auth_key, bytes | bytearray | memoryview):
            raise ValueError("the authentication key must be bytes")
        object.__setattr__(self, "auth_key", bytes(self.auth_key))
        if len(self.auth_key) != HMAC_SHA256_KEY_LEN:
            raise ValueError(
                f"HMAC-SHA-256-128 takes a 32-byte key, not {len(self.auth_key)} bytes"
            )
        if not isinstance(self.mode, EspMode):
            raise ValueError("mode must be an EspMode")
        if self.mode is EspMode.TUNNEL:
            src, dst = self.tunnel_src, self.tunnel_dst
            if not (
                (isinstance(src, IPv4Address) and isinstance(dst, IPv4Address))
                or (isinstance(src, IPv6Address) and isinstance(dst, IPv6Address))
            ):
                raise ValueError("tunnel mode needs tunnel_src and tunnel_dst of one IP version")
        elif self.tunnel_src is not None or self.tunnel_dst is not None:
            raise ValueError("tunnel endpoints are for tunnel mode only")


class AhSecurityAssociation(SaBase):
    """An AH SA with HMAC-SHA-256-128: ``config`` plus sequence numbers, window, lifetimes."""

    __slots__ = ("_hmac", "_outer", "config")

    error: ClassVar[type[AhError]] = AhError

    def __init__(
        self,
        spi: int,
        auth_key: bytes,
        *,
        mode: EspMode = EspMode.TRANSPORT,
        tunnel_src: IPv4Address | IPv6Address | None = None,
        tunnel_dst: IPv4Address | IPv6Address | None = None,
        esn: bool = False,
        replay_window: int = 64,
        lifetime: Lifetime | None = None,
        initial_sequence: int = 1,
    ) -> None:
        config = AhConfig(
            spi=spi,
            auth_key=auth_key,
            mode=mode,
            tunnel_src=tunnel_src,
            tunnel_dst=tunnel_dst,
            esn=esn,
            replay_window=replay_window,
            lifetime=lifetime,
        )
        super().__init__(
            config.spi,
            esn=config.esn,
            replay_window=config.replay_window,
            lifetime=config.lifetime,
            initial_sequence=initial_sequence,
        )
        self.config = config
        self._hmac = crypto_hmac.HMAC(config.auth_key, hashes.SHA256())
        self._outer: OuterHeader | None = None
        if config.mode is EspMode.TUNNEL:
            assert config.tunnel_src is not None and config.tunnel_dst is not None
            self._outer = OuterHeader(config.tunnel_src, config.tunnel_dst)

    @classmethod
    def from_config(cls, config: AhConfig, *, initial_sequence: int = 1) -> AhSecurityAssociation:
        """A fresh SA (new counters, empty window) with ``config``."""
        return cls(
            config.spi,
            config.auth_key,
            mode=config.mode,
            tunnel_src=config.tunnel_src,
            tunnel_dst=config.tunnel_dst,
            esn=config.esn,
            replay_window=config.replay_window,
            lifetime=config.lifetime,
            initial_sequence=initial_sequence,
        )

    def twin(self) -> AhSecurityAssociation:
        """A fresh SA with the same configuration: the other end of this one."""
        return AhSecurityAssociation.from_config(self.config)

    def __repr__(self) -> str:
        c = self.config
        tunnel = f", tunnel {c.tunnel_src} -> {c.tunnel_dst}" if c.mode is EspMode.TUNNEL else ""
        return (
            f"AhSecurityAssociation(spi={c.spi:#010x}, HMAC_SHA256_128, {c.mode.value}{tunnel}, "
            f"esn={c.esn}, window={c.replay_window}, next_seq={self.next_seq})"
        )

    __str__ = __repr__


#: Where inbound AH packets are looked up: one SA, or a table of them by SPI.
AhInbound: TypeAlias = AhSecurityAssociation | SaTable[AhSecurityAssociation]


def _ah_len(version: int) -> int:
    """AH header length: 12 fixed bytes and the ICV, padded to 8 bytes over IPv6 (RFC 4302 2.2)."""
    n = AH_FIXED_LEN + AH_ICV_LEN
    return n + (-n % 8 if version == 6 else 0)


def _icv(sa: AhSecurityAssociation, packet: memoryview, layout: IpLayout, seq: int) -> bytes:
    """The ICV of ``packet`` (AH at ``layout.offset``, its ICV field counted as zero)."""
    scratch = bytearray(packet)
    zero_mutable_fields(scratch, layout)
    icv_at = layout.offset + AH_FIXED_LEN
    scratch[icv_at : icv_at + AH_ICV_LEN] = bytes(AH_ICV_LEN)
    mac = sa._hmac.copy()
    mac.update(scratch)
    if sa.esn:
        mac.update((seq >> 32).to_bytes(4, "big"))
    return mac.finalize()[:AH_ICV_LEN]


def _protect(sa: AhSecurityAssociation, packet: Buffer, seq: int) -> tuple[bytearray, int]:
    view = byte_view(packet)
    outer = sa._outer
    try:
        if outer is not None:
            end = inner_packet_len(view)
            protocol = tunnel_protocol(view)
            keep = 0
            version = outer.version
            front = outer.header_len
        else:
            layout = outbound_layout(view)
            if layout.fragment:
                raise AhError(IpsecDropReason.FRAGMENT, "AH protects whole packets", spi=sa.spi)
            end, protocol, keep, version = (
                layout.end,
                layout.protocol,
                layout.offset,
                layout.version,
            )
            front = keep
    except (WireError, UnsupportedHeaderError) as err:
        raise AhError(
            IpsecDropReason.MALFORMED, f"not an IP packet AH can protect: {err}", spi=sa.spi
        ) from None
    ah_len = _ah_len(version)
    total = front + ah_len + end - keep
    if total > 0xFFFF + (IPV6_HEADER_LEN if version == 6 else 0):
        raise AhError(IpsecDropReason.TOO_BIG, f"{total} bytes with AH: too big for IP", spi=sa.spi)
    out = bytearray(total)
    if outer is not None:
        tos, dont_frag = inner_tos(view)
        outer.write(memoryview(out), total, IPPROTO_AH, tos=tos, dont_frag=dont_frag, ident=seq)
        out_layout = IpLayout(version, front, IPPROTO_AH, 9 if version == 4 else 6, total, False)
    else:
        out[:keep] = view[:keep]
        set_transport_header(out, layout, total, IPPROTO_AH)
        out_layout = layout._replace(protocol=IPPROTO_AH, end=total)
    _AH_HEADER.pack_into(out, front, protocol, ah_len // 4 - 2, 0, sa.spi, seq & U32_MAX)
    out[front + ah_len :] = view[keep:end]
    try:
        icv = _icv(sa, memoryview(out), out_layout, seq)
    except (WireError, UnsupportedHeaderError) as err:
        raise AhError(
            IpsecDropReason.UNSUPPORTED, f"cannot compute the AH ICV: {err}", spi=sa.spi
        ) from None
    out[front + AH_FIXED_LEN : front + AH_FIXED_LEN + AH_ICV_LEN] = icv
    return out, end


def ah_protect_with(sa: AhSecurityAssociation, ip_packet: Buffer, seq: int) -> bytes:
    """``ip_packet`` with an AH header for sequence number ``seq`` (allocated by the host)."""
    try:
        sa.admit()
        sa.check_sequence(seq)
        out, protected = _protect(sa, ip_packet, seq)
    except AhError as err:
        sa.drop(err.reason)
        raise
    sa.account(1, protected)
    return bytes(out)


def ah_protect(sa: AhSecurityAssociation, ip_packet: Buffer) -> bytes:
    """``ip_packet`` (a whole IPv4 or IPv6 packet) authenticated by ``sa``."""
    try:
        sa.admit()
        seq = sa.next_sequence()
    except AhError as err:
        sa.drop(err.reason)
        raise
    return ah_protect_with(sa, ip_packet, seq)


def _reject(
    owner: AhSecurityAssociation | SaTable[AhSecurityAssociation],
    reason: IpsecDropReason,
    message: str,
    spi: int | None = None,
) -> AhError:
    owner.drop(reason)
    return AhError(reason, message, spi=spi)


def _verify(inbound: AhInbound, packet: Buffer) -> bytearray:
    view = byte_view(packet)
    try:
        layout = inbound_layout(view)
    except (WireError, UnsupportedHeaderError) as err:
        reason = IpsecDropReason.TRUNCATED if truncated(view) else IpsecDropReason.MALFORMED
        raise _reject(inbound, reason, f"not an IP packet: {err}") from None
    if layout.fragment:
        raise _reject(inbound, IpsecDropReason.FRAGMENT, "a fragment: reassemble it before AH")
    if layout.protocol != IPPROTO_AH:
        raise _reject(inbound, IpsecDropReason.NOT_IPSEC, f"protocol {layout.protocol} is not AH")
    at, end = layout.offset, layout.end
    try:
        ah = AhPacket.checked(view[at:end])
    except WireError as err:
        raise _reject(inbound, IpsecDropReason.TRUNCATED, f"AH header: {err}") from None
    spi = ah.spi
    if isinstance(inbound, SaTable):
        found = inbound.lookup(spi)
    else:
        found = inbound if inbound.spi == spi else None
    if found is None:
        raise _reject(inbound, IpsecDropReason.UNKNOWN_SPI, f"no SA has SPI {spi:#010x}", spi)
    sa = found
    if sa.hard_expired:
        raise _reject(sa, IpsecDropReason.LIFETIME_EXPIRED, f"SA {spi:#010x} has expired", spi)
    ah_len = ah.header_len
    if ah_len != _ah_len(layout.version):
        raise _reject(sa, IpsecDropReason.MALFORMED, f"AH of {ah_len} bytes for a 16-byte ICV", spi)
    seq = sa.window.infer(ah.sequence_number)
    if seq is None or not sa.window.check(seq):
        raise _reject(sa, IpsecDropReason.REPLAY, f"SA {spi:#010x}: sequence number replayed", spi)
    try:
        icv = _icv(sa, view[:end], layout, seq)
    except (WireError, UnsupportedHeaderError) as err:
        raise _reject(
            sa, IpsecDropReason.UNSUPPORTED, f"cannot compute the AH ICV: {err}", spi
        ) from None
    if not compare_digest(icv, view[at + AH_FIXED_LEN : at + AH_FIXED_LEN + AH_ICV_LEN]):
        raise _reject(sa, IpsecDropReason.BAD_ICV, f"SA {spi:#010x}: ICV mismatch", spi)
    sa.window.update(seq)
    next_header = ah.next_header
    if sa.config.mode is EspMode.TUNNEL:
        if next_header not in (IPPROTO_IPIP, IPPROTO_IPV6):
            raise _reject(
                sa, IpsecDropReason.MODE_MISMATCH, f"next header {next_header} in tunnel mode", spi
            )
        inner = view[at + ah_len : end]
        try:
            inner_len = inner_packet_len(inner)
            if tunnel_protocol(inner) != next_header:
                raise WireError("the inner packet's version is not its next header", 0)
        except WireError as err:
            raise _reject(sa, IpsecDropReason.MALFORMED, f"the inner packet: {err}", spi) from None
        out = bytearray(inner[:inner_len])
    else:
        out = bytearray(end - ah_len)
        out[:at] = view[:at]
        out[at:] = view[at + ah_len : end]
        set_transport_header(out, layout, len(out), next_header)
    sa.account(1, len(out))
    return out


def ah_verify(sa: AhInbound, ip_packet: Buffer) -> bytes:
    """The packet without its AH header (tunnel mode: the inner packet), or ``AhError``."""
    return bytes(_verify(sa, ip_packet))


def ah_protect_batch(sa: AhSecurityAssociation, packets: Sequence[Buffer]) -> EspBatch:
    """``ah_protect`` over a batch: each packet, or the reason it was not protected."""
    batch = EspBatch([None] * len(packets))
    for i, packet in enumerate(packets):
        try:
            batch.singles[i] = bytearray(ah_protect(sa, packet))
        except AhError as err:
            batch.reasons[i] = err.reason
    return batch


def ah_verify_batch(sa: AhInbound, packets: Sequence[Buffer]) -> EspBatch:
    """``ah_verify`` over a batch: each packet, or the reason it was dropped."""
    batch = EspBatch([None] * len(packets))
    for i, packet in enumerate(packets):
        try:
            batch.singles[i] = _verify(sa, packet)
        except AhError as err:
            batch.reasons[i] = err.reason
    return batch


# --- the plain digest task -------------------------------------------------------------


class DigestFailure(enum.StrEnum):
    """Why a digest request was not done. Values are stable names."""

    UNKNOWN_KEY = "digest_unknown_key"
    ALGORITHM_MISMATCH = "digest_algorithm_mismatch"
    OUT_OF_BOUNDS = "digest_out_of_bounds"
    OVERLAP = "digest_overlap"
    MISMATCH = "digest_mismatch"


class DigestError(Exception):
    """A digest request that cannot be done; ``reason`` says why (never the key)."""

    def __init__(self, reason: DigestFailure, message: str) -> None:
        self.reason = reason
        super().__init__(message)


_HASHES: Final = {
    DigestAlgorithm.HMAC_SHA1_96: (hashes.SHA1, 12),
    DigestAlgorithm.HMAC_SHA256_128: (hashes.SHA256, 16),
    DigestAlgorithm.HMAC_SHA512_256: (hashes.SHA512, 32),
}
_CRC32C_LEN: Final = 4


def digest_len(algorithm: DigestAlgorithm) -> int:
    """Bytes the digest of ``algorithm`` takes where it is written."""
    if algorithm is DigestAlgorithm.CRC32C:
        return _CRC32C_LEN
    if algorithm not in _HASHES:
        raise DigestError(DigestFailure.ALGORITHM_MISMATCH, f"no digest algorithm {algorithm!r}")
    return _HASHES[algorithm][1]


def crc32c(data: Buffer) -> int:
    """CRC-32C (Castagnoli, RFC 3720 B.4), as iSCSI and SCTP use it (``google-crc32c``'s
    C implementation, with the CPU's CRC instruction where it has one)."""
    return int(google_crc32c.value(bytes(data)))


class DigestKeys:
    """The digest keys a device holds, by handle. Keys never appear in repr or errors."""

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: dict[int, tuple[DigestAlgorithm, crypto_hmac.HMAC]] = {}

    def install(self, handle: int, algorithm: DigestAlgorithm, key: bytes) -> None:
        """Hold ``key`` for ``algorithm`` under ``handle`` (replacing what was there)."""
        check_int("digest key handle", handle, 0, U32_MAX)
        if algorithm not in _HASHES:
            raise ValueError(f"{algorithm!r} takes no key (or is not one digest algorithm)")
        if not isinstance(key, bytes | bytearray | memoryview) or not key:
            raise ValueError("a digest key is a non-empty bytes value")
        self._keys[handle] = (algorithm, crypto_hmac.HMAC(bytes(key), _HASHES[algorithm][0]()))

    def revoke(self, handle: int) -> bool:
        """Forget the key under ``handle``; False when there was none."""
        return self._keys.pop(handle, None) is not None

    def _mac(self, handle: int, algorithm: DigestAlgorithm) -> crypto_hmac.HMAC:
        held = self._keys.get(handle)
        if held is None:
            raise DigestError(DigestFailure.UNKNOWN_KEY, f"no digest key under handle {handle}")
        if held[0] is not algorithm:
            raise DigestError(
                DigestFailure.ALGORITHM_MISMATCH,
                f"the key under handle {handle} is for {held[0].name}, not {algorithm.name}",
            )
        return held[1].copy()

    def __contains__(self, handle: object) -> bool:
        return handle in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        held = ", ".join(f"{h}: {a.name}" for h, (a, _) in sorted(self._keys.items()))
        return f"DigestKeys({{{held}}})"


def _digest(keys: DigestKeys, request: DigestRequest, packet: memoryview) -> tuple[bytes, int]:
    n = digest_len(request.algorithm)
    start, end = request.start, request.start + request.length
    at = request.result_offset
    if end > len(packet) or at + n > len(packet):
        raise DigestError(
            DigestFailure.OUT_OF_BOUNDS,
            f"bytes {start}..{end} and a digest at {at} do not fit a {len(packet)}-byte packet",
        )
    if at < end and start < at + n and request.length:
        raise DigestError(DigestFailure.OVERLAP, "the digest would be written over what it covers")
    covered = packet[start:end]
    if request.algorithm is DigestAlgorithm.CRC32C:
        return crc32c(covered).to_bytes(_CRC32C_LEN, "big"), at
    mac = keys._mac(request.key_handle, request.algorithm)
    mac.update(covered)
    return mac.finalize()[:n], at


def compute_digest(
    keys: DigestKeys, request: DigestRequest, packet: bytearray | memoryview
) -> bytes:
    """Do ``request`` on ``packet``: write the digest at ``result_offset`` and return it.

    CRC-32C needs no key (``key_handle`` is ignored) and is written big-endian.
    """
    view = byte_view(packet)
    if view.readonly:
        raise ValueError("the digest is written into the packet: give a writable buffer")
    value, at = _digest(keys, request, view)
    view[at : at + len(value)] = value
    return value


def verify_digest(keys: DigestKeys, request: DigestRequest, packet: Buffer) -> None:
    """Raise ``DigestError`` unless the digest at ``result_offset`` is the right one."""
    view = byte_view(packet)
    value, at = _digest(keys, request, view)
    if not compare_digest(value, view[at : at + len(value)]):
        raise DigestError(DigestFailure.MISMATCH, "the digest does not match")


def digest_batch(
    keys: DigestKeys, packets: Sequence[bytearray | memoryview], requests: Sequence[DigestRequest]
) -> list[DigestFailure | None]:
    """``compute_digest`` on each packet with its request: ``None`` where it was done."""
    if len(packets) != len(requests):
        raise ValueError("one request per packet")
    out: list[DigestFailure | None] = []
    for packet, request in zip(packets, requests, strict=True):
        try:
            compute_digest(keys, request, packet)
            out.append(None)
        except DigestError as err:
            out.append(err.reason)
    return out


class DigestPass(NamedTuple):
    """What ``digest_pass`` left: the packets still to send, each with its task set (the
    digested ones without ``DIGEST``, their requests without the digest), the drops
    (input index and reason) and how many digests were computed."""

    packets: list[Packet]
    tasks: list[frozenset[Task]]
    drops: list[tuple[int, DropReason]]
    done: int


def digest_pass(
    keys: DigestKeys, packets: Sequence[Packet], tasks: Sequence[frozenset[Task]]
) -> DigestPass:
    """The digest task of a transmit batch, done first: each packet whose ``tasks`` name
    ``DIGEST`` gets its digest written into a copy of its frame, so that checksums,
    segmentation and encryption that follow cover it. The others pass unchanged."""
    if not any(Task.DIGEST in t for t in tasks):
        return DigestPass(list(packets), list(tasks), [], 0)
    out: list[Packet] = []
    out_tasks: list[frozenset[Task]] = []
    drops: list[tuple[int, DropReason]] = []
    done = 0
    for i, (packet, wanted) in enumerate(zip(packets, tasks, strict=True)):
        request = packet.tx.digest
        if Task.DIGEST not in wanted or request is None:
            out.append(packet)
            out_tasks.append(wanted)
            continue
        frame = bytearray(packet.frame())
        try:
            compute_digest(keys, request, frame)
        except DigestError as err:
            drops.append((i, DropReason(err.reason.value)))
            continue
        done += 1
        out.append(Packet(frame, replace(packet.tx, digest=None), packet.rx))
        out_tasks.append(wanted - {Task.DIGEST})
    return DigestPass(out, out_tasks, drops, done)
