"""Security contexts by handle: the SAs a device (or the host fallback) holds, and the
per-frame encrypt and decrypt it runs with them.

The seeds' rule: a security context is handed over once and then referred to
by a handle. An outbound SA arrives with the first packet that uses it (its
``TxRequest`` carries the whole ``EspConfig`` beside the handle) and is
installed under that handle; later packets carry the handle alone. Inbound
SAs have no first packet: they are installed with ``install_inbound``, found
by SPI when ESP arrives. ``revoke`` removes an SA either way. A handle that is
out of range, unknown or revoked costs the packet (counted), never the device.

The host owns sequence numbers and IVs: every outbound request carries the
sequence number of its first segment (``TxRequest.esp_seq``) and the device
uses ``seq``, ``seq + 1``, ... for the segments it cuts, with the IV the SA
derives from each (``SecurityAssociation.iv_for``). Whichever side encrypts a
packet, its nonces are the ones the host allocated, so a per-packet choice
between host and device never reuses one.

``encode_config`` / ``decode_config`` carry a context across a process
boundary (a SoftNic's control channel, or the headroom of the first packet's
transmit slot) as a fixed binary layout; keys travel there and nowhere else.
"""

from __future__ import annotations

import contextlib
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address
from typing import Final, TypeAlias

from netoffload.engine.dissect import DissectError, l3_offset
from netoffload.engine.esp import decrypt_batch, encrypt_with
from netoffload.engine.esp_sa import (
    EspAlgorithm,
    EspConfig,
    EspMode,
    NatTraversal,
    SecurityAssociation,
)
from netoffload.engine.ipsec_sa import EspError, IpsecDropReason, Lifetime, SaTable
from netoffload.engine.txpath import transmit
from netoffload.offload.packet import Packet
from netoffload.offload.stats import DropReason
from netoffload.offload.task import Task

Buffer: TypeAlias = bytes | bytearray | memoryview

ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
IPPROTO_ESP: Final = 50
IPPROTO_UDP: Final = 17
_ENCRYPT: Final = frozenset({Task.ENCRYPT})

# -- the context on the wire ---------------------------------------------------------
#
#   u8 version (1), u8 algorithm, u8 mode, u8 flags (ESN, NAT-T, tunnel v6, lifetime)
#   u32 spi, u16 replay_window, u16 nat-t src port, u16 nat-t dst port,
#   u8 key length, u8 auth key length, 16-byte tunnel src, 16-byte tunnel dst,
#   4 x u64 lifetime (soft bytes, hard bytes, soft packets, hard packets; 0 = none),
#   key, auth key.

_HEAD = struct.Struct("<BBBBIHHHBB16s16sQQQQ")
_VERSION = 1
_ESN, _NAT_T, _TUNNEL_V6, _LIFETIME = 0x01, 0x02, 0x04, 0x08
_MODES = {EspMode.TRANSPORT: 0, EspMode.TUNNEL: 1}
_MODE_OF = {v: k for k, v in _MODES.items()}


def encode_config(config: EspConfig) -> bytes:
    """``config`` in its binary layout (keys included: for the device only)."""
    flags = 0
    if config.esn:
        flags |= _ESN
    sport = dport = 0
    if config.nat_t is not None:
        flags |= _NAT_T
        sport, dport = config.nat_t.src_port, config.nat_t.dst_port
    src = dst = bytes(16)
    if config.mode is EspMode.TUNNEL:
        assert config.tunnel_src is not None and config.tunnel_dst is not None
        if isinstance(config.tunnel_src, IPv6Address):
            flags |= _TUNNEL_V6
        src = config.tunnel_src.packed.ljust(16, b"\0")
        dst = config.tunnel_dst.packed.ljust(16, b"\0")
    life = config.lifetime
    limits = (0, 0, 0, 0)
    if life is not None:
        flags |= _LIFETIME
        limits = (
            life.soft_bytes or 0,
            life.hard_bytes or 0,
            life.soft_packets or 0,
            life.hard_packets or 0,
        )
    auth = config.auth_key or b""
    head = _HEAD.pack(
        _VERSION, int(config.algorithm), _MODES[config.mode], flags, config.spi,
        config.replay_window, sport, dport, len(config.key), len(auth), src, dst, *limits,
    )  # fmt: skip
    return head + config.key + auth


def decode_config(data: Buffer) -> EspConfig:
    """The context ``encode_config`` wrote; ``ValueError`` for anything else (never a key
    in the message)."""
    view = memoryview(data).cast("B")
    if len(view) < _HEAD.size:
        raise ValueError(f"a security context needs {_HEAD.size} bytes, not {len(view)}")
    (
        version, algorithm, mode, flags, spi, window, sport, dport, key_len, auth_len,
        src, dst, soft_b, hard_b, soft_p, hard_p,
    ) = _HEAD.unpack_from(view)  # fmt: skip
    if version != _VERSION:
        raise ValueError(f"unknown security context version {version}")
    if len(view) != _HEAD.size + key_len + auth_len:
        raise ValueError("security context length does not match its key lengths")
    if mode not in _MODE_OF:
        raise ValueError(f"unknown ESP mode {mode}")
    key = bytes(view[_HEAD.size : _HEAD.size + key_len])
    auth = bytes(view[_HEAD.size + key_len :]) if auth_len else None
    tunnel_src = tunnel_dst = None
    esp_mode = _MODE_OF[mode]
    if esp_mode is EspMode.TUNNEL:
        width = 16 if flags & _TUNNEL_V6 else 4
        tunnel_src, tunnel_dst = ip_address(src[:width]), ip_address(dst[:width])
    lifetime = None
    if flags & _LIFETIME:
        lifetime = Lifetime(soft_b or None, hard_b or None, soft_p or None, hard_p or None)
    try:
        alg = EspAlgorithm(algorithm)
    except ValueError:
        raise ValueError(f"unknown ESP algorithm {algorithm}") from None
    return EspConfig(
        spi=spi,
        algorithm=alg,
        key=key,
        auth_key=auth,
        mode=esp_mode,
        tunnel_src=tunnel_src,
        tunnel_dst=tunnel_dst,
        esn=bool(flags & _ESN),
        replay_window=window,
        nat_t=NatTraversal(sport, dport) if flags & _NAT_T else None,
        lifetime=lifetime,
    )


@dataclass(slots=True)
class _Slot:
    config: EspConfig
    sa: SecurityAssociation
    inbound: bool


class SecurityContexts:
    """The SAs one side (a device, or the host fallback) holds, by handle ``0..handles-1``.

    Outbound SAs are installed from a packet's context; inbound ones with
    ``install_inbound`` and found by SPI. ``drops`` counts packets refused
    for want of an SA (unknown, revoked or out-of-range handles, unknown
    SPIs) and every other ESP drop by its reason.
    """

    def __init__(self, handles: int) -> None:
        if handles < 0:
            raise ValueError("the number of handles must not be negative")
        self.handles = handles
        self._slots: dict[int, _Slot] = {}
        self.inbound: SaTable[SecurityAssociation] = SaTable()
        self.drops: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, handle: object) -> bool:
        return handle in self._slots

    def _check(self, handle: int) -> None:
        if isinstance(handle, bool) or not isinstance(handle, int):
            raise ValueError(f"a handle is an integer, not {type(handle).__name__}")
        if not 0 <= handle < self.handles:
            raise ValueError(f"handle {handle} is outside 0..{self.handles - 1}")

    def install_outbound(self, handle: int, config: EspConfig) -> SecurityAssociation:
        """Install ``config`` under ``handle`` (what the first packet's context does).

        The same context again keeps the SA (its counters); a different one
        replaces it, as a rekey under a reused handle does.
        """
        self._check(handle)
        slot = self._slots.get(handle)
        if slot is not None and not slot.inbound and slot.config == config:
            return slot.sa
        self.revoke(handle)
        sa = SecurityAssociation.from_config(config)
        self._slots[handle] = _Slot(config, sa, False)
        return sa

    def install_inbound(self, handle: int, config: EspConfig) -> SecurityAssociation:
        """Install an inbound SA under ``handle``; ESP with its SPI is decrypted with it."""
        self._check(handle)
        self.revoke(handle)
        if config.spi in self.inbound:
            raise ValueError(f"SPI {config.spi:#010x} is already installed")
        sa = SecurityAssociation.from_config(config)
        self.inbound.install(sa)
        self._slots[handle] = _Slot(config, sa, True)
        return sa

    def revoke(self, handle: int) -> bool:
        """Remove the SA under ``handle``; False when there was none."""
        slot = self._slots.pop(handle, None)
        if slot is None:
            return False
        if slot.inbound:
            self.inbound.remove(slot.config.spi)
        return True

    def outbound(self, handle: int) -> SecurityAssociation | None:
        slot = self._slots.get(handle)
        return None if slot is None or slot.inbound else slot.sa

    def config(self, handle: int) -> EspConfig | None:
        slot = self._slots.get(handle)
        return None if slot is None else slot.config

    def handle_of_spi(self, spi: int) -> int | None:
        for handle, slot in self._slots.items():
            if slot.inbound and slot.config.spi == spi:
                return handle
        return None

    def drop(self, reason: IpsecDropReason) -> None:
        self.drops[reason.value] += 1

    def as_dict(self) -> dict[str, object]:
        """Counts only: never a key."""
        return {
            "handles": self.handles,
            "installed": len(self._slots),
            "outbound": sum(1 for s in self._slots.values() if not s.inbound),
            "inbound": sum(1 for s in self._slots.values() if s.inbound),
            "drops": dict(sorted(self.drops.items())),
            "sas": {
                str(h): {"spi": f"{s.config.spi:#010x}", "inbound": s.inbound}
                | s.sa.counters.as_dict()
                for h, s in sorted(self._slots.items())
            },
        }


# -- per frame ------------------------------------------------------------------------


def encrypt_frame(
    contexts: SecurityContexts, frame: Buffer, handle: int, seq: int
) -> bytes | IpsecDropReason:
    """``frame`` (Ethernet, then IPv4 or IPv6) with its IP packet protected by the outbound
    SA under ``handle`` with sequence number ``seq``; or why it was dropped (counted)."""
    sa = contexts.outbound(handle)
    if sa is None:
        contexts.drop(IpsecDropReason.UNKNOWN_SPI)
        return IpsecDropReason.UNKNOWN_SPI
    try:
        l3, _ = l3_offset(frame)
    except DissectError:
        contexts.drop(IpsecDropReason.MALFORMED)
        return IpsecDropReason.MALFORMED
    view = memoryview(frame).cast("B")
    try:
        sa.check_sequence(seq)
        sealed = encrypt_with(sa, view[l3:], seq, sa.iv_for(seq))
    except EspError as exc:
        contexts.drop(exc.reason)
        return exc.reason
    head = bytearray(view[:l3])
    ethertype = ETH_P_IP if sealed[0] >> 4 == 4 else ETH_P_IPV6
    head[l3 - 2 : l3] = ethertype.to_bytes(2, "big")  # a tunnel may change the IP version
    return bytes(head) + sealed


@dataclass(slots=True)
class SealedOutcome:
    """What ``transmit_encrypted`` made: ``frames[k]`` came from input ``sources[k]``; every
    input is in ``sources`` or in ``drops`` (with the reason), never both."""

    frames: list[bytes] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)
    drops: list[tuple[int, DropReason]] = field(default_factory=list)
    tasks: Counter[Task] = field(default_factory=Counter)


def transmit_encrypted(packets: Sequence[Packet], contexts: SecurityContexts) -> SealedOutcome:
    """Every task each packet asks for, in one pass per packet: segment, fill the
    checksums, then encrypt each segment with the packet's SA (``esp_seq``, ``esp_seq + 1``,
    ... in segment order), as an inline IPsec NIC does. A packet's context, when it carries
    one, is installed under its handle first."""
    out = SealedOutcome()
    plain = []
    for packet in packets:
        req = packet.tx
        context = req.sa_context
        if context is not None and req.sa_handle is not None and isinstance(context, EspConfig):
            # An out-of-range handle installs nothing: the packet is dropped below as unknown.
            with contextlib.suppress(ValueError):
                contexts.install_outbound(req.sa_handle, context)
        plain.append(req.tasks() - _ENCRYPT)
    outcome = transmit(packets, plain)
    failed = {i for i, _ in outcome.drops}
    out.drops.extend(outcome.drops)
    segment_of: dict[int, int] = {}
    sealed: dict[int, list[bytes]] = {}
    for k, made in enumerate(outcome.packets):
        i = outcome.sources[k]
        if i in failed:
            continue
        req = packets[i].tx
        if made.tx.tasks() - _ENCRYPT:
            failed.add(i)
            out.drops.append((i, DropReason.TASK_NOT_ENABLED))
            continue
        index = segment_of.get(i, 0)
        segment_of[i] = index + 1
        if req.sa_handle is None:
            sealed.setdefault(i, []).append(bytes(made.data))
            continue
        assert req.esp_seq is not None
        frame = encrypt_frame(contexts, made.data, req.sa_handle, req.esp_seq + index)
        if isinstance(frame, IpsecDropReason):
            failed.add(i)
            out.drops.append((i, DropReason(frame.value)))
            continue
        sealed.setdefault(i, []).append(frame)
    for i in range(len(packets)):
        if i in failed or i not in sealed:
            continue
        frames = sealed[i]
        out.frames.extend(frames)
        out.sources.extend([i] * len(frames))
        req = packets[i].tx
        for task in req.tasks():
            out.tasks[task] += 1
    out.drops.sort()
    return out


@dataclass(frozen=True, slots=True)
class Opened:
    """A frame ``decrypt_frames`` opened: the frame with the protected packet in place of
    the ESP one, and the handle of the SA that opened it."""

    frame: bytes
    handle: int


def is_esp(frame: Buffer, nat_t_ports: frozenset[int] = frozenset()) -> bool:
    """True when ``frame`` carries ESP (IP protocol 50, or UDP to a NAT-T port)."""
    try:
        l3, ethertype = l3_offset(frame)
    except DissectError:
        return False
    view = memoryview(frame).cast("B")
    if ethertype == ETH_P_IP and len(view) >= l3 + 20:
        proto = view[l3 + 9]
        l4 = l3 + (view[l3] & 0x0F) * 4
    elif ethertype == ETH_P_IPV6 and len(view) >= l3 + 40:
        proto = view[l3 + 6]
        l4 = l3 + 40
    else:
        return False
    if proto == IPPROTO_ESP:
        return True
    if proto == IPPROTO_UDP and nat_t_ports and len(view) >= l4 + 8:
        return ((view[l4 + 2] << 8) | view[l4 + 3]) in nat_t_ports
    return False


def decrypt_frames(
    contexts: SecurityContexts, frames: Sequence[Buffer]
) -> list[Opened | IpsecDropReason | None]:
    """For each frame: ``Opened`` when an inbound SA opened it, the reason when it was ESP
    and was refused (counted), ``None`` when it was not ESP for us (left as it is)."""
    out: list[Opened | IpsecDropReason | None] = [None] * len(frames)
    if not len(contexts.inbound):
        return out
    ports = frozenset(
        sa.config.nat_t.dst_port for sa in contexts.inbound if sa.config.nat_t is not None
    )
    picked = [i for i, f in enumerate(frames) if is_esp(f, ports)]
    if not picked:
        return out
    heads: list[int] = []
    packets: list[memoryview] = []
    for i in picked:
        l3, _ = l3_offset(frames[i])
        heads.append(l3)
        packets.append(memoryview(frames[i]).cast("B")[l3:])
    batch = decrypt_batch(contexts.inbound, packets)
    for k, i in enumerate(picked):
        reason = batch.reasons[k]
        if reason is not None:
            if reason is IpsecDropReason.NOT_IPSEC or reason is IpsecDropReason.NAT_KEEPALIVE:
                continue  # not ESP after all (or a keepalive): the stack sees it as it came
            contexts.drop(reason)
            out[i] = reason
            continue
        inner = batch.packet(k)
        assert inner is not None
        spi = int.from_bytes(_spi_of(packets[k]), "big")
        handle = contexts.handle_of_spi(spi)
        l3 = heads[k]
        head = bytearray(memoryview(frames[i]).cast("B")[:l3])
        ethertype = ETH_P_IP if inner[0] >> 4 == 4 else ETH_P_IPV6
        head[l3 - 2 : l3] = ethertype.to_bytes(2, "big")
        out[i] = Opened(bytes(head) + bytes(inner), -1 if handle is None else handle)
    return out


def _spi_of(packet: memoryview) -> bytes:
    """The SPI of an ESP packet (after its IP header, and a UDP header for NAT-T)."""
    if packet[0] >> 4 == 4:
        l4 = (packet[0] & 0x0F) * 4
        proto = packet[9]
    else:
        l4, proto = 40, packet[6]
    if proto == IPPROTO_UDP:
        l4 += 8
    return bytes(packet[l4 : l4 + 4])


__all__ = [
    "Opened",
    "SealedOutcome",
    "SecurityContexts",
    "decode_config",
    "decrypt_frames",
    "encode_config",
    "encrypt_frame",
    "is_esp",
    "transmit_encrypted",
]
