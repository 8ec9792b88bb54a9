"""ESP (RFC 4303): protect and unprotect whole IPv4 and IPv6 packets.

Transport and tunnel mode; AES-GCM (RFC 4106), ChaCha20-Poly1305 (RFC 7634)
and AES-CBC with HMAC-SHA-256-128 (RFC 3602, 4868); 32-bit or extended
sequence numbers; UDP encapsulation for NAT traversal (RFC 3948). The
ciphers are the ``cryptography`` package's (OpenSSL).

Outbound, ``encrypt_with(sa, packet, seq, iv)`` is the whole operation with
the sequence number and IV given: the form a device runs when the host
allocated them. ``encrypt(sa, packet)`` allocates them from the SA first.
The ESP header, IV, padding and trailer are written around the payload in
one buffer and the payload is encrypted in place there (``encrypt_into``);
``encrypt_batch`` does a batch, equal-length packets as matrix rows.

Inbound, ``decrypt`` takes one SA or a ``SaTable`` and runs RFC 4303
section 3.4's checks in order: find the SA by SPI, pre-check the replay
window, verify the ICV, and only then update the window, read the padding
and next header and rebuild the packet. For AES-CBC the HMAC is checked
before a byte is decrypted; for the AEADs verification and decryption are
one call (RFC 4303 3.4.4.2), and its output is not looked at unless the tag
was right. Every refusal is an ``EspError`` with a ``reason`` and is counted
on the SA (or on the table when no SA is known); the batch forms return the
reasons instead of raising.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from hmac import compare_digest
from typing import Final, NamedTuple, TypeAlias

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from netoffload.engine.esp_rows import (
    BE16,
    MIN_ROWS,
    V4_MASK,
    V4_WHOLE,
    ByteMatrix,
    row_slices,
    rows_eligible,
    seal_rows,
)
from netoffload.engine.esp_sa import (
    ESP_HEADER_LEN,
    ICV_LEN,
    NAT_T_PORT,
    SALT_LEN,
    UDP_HEADER_LEN,
    EspAlgorithm,
    EspConfig,
    EspMode,
    NatTraversal,
    SecurityAssociation,
)
from netoffload.engine.ipsec_ip import (
    IP_MAX_LEN,
    IPPROTO_ESP,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    IPPROTO_NONE,
    IPPROTO_UDP,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    UnsupportedHeaderError,
    ecn_decapsulate,
    inbound_layout,
    inner_packet_len,
    inner_tos,
    outbound_layout,
    quick_layout,
    set_transport_header,
    truncated,
    tunnel_protocol,
)
from netoffload.engine.ipsec_sa import (
    U32_MAX,
    EspDropReason,
    EspError,
    HardLifetimeReached,
    IpsecDropReason,
    Lifetime,
    SaCounters,
    SaEvent,
    SaTable,
    SoftLifetimeReached,
)
from netoffload.wire._view import byte_view
from netoffload.wire.error import WireError
from netoffload.wire.udp import UdpPacket

__all__ = [
    "NAT_T_PORT",
    "EspAlgorithm",
    "EspBatch",
    "EspConfig",
    "EspDropReason",
    "EspError",
    "EspMode",
    "HardLifetimeReached",
    "Lifetime",
    "NatTraversal",
    "SaCounters",
    "SaEvent",
    "SaTable",
    "SecurityAssociation",
    "SoftLifetimeReached",
    "decrypt",
    "decrypt_batch",
    "encrypt",
    "encrypt_batch",
    "encrypt_with",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
#: Where inbound packets are looked up: one SA, or a table of them by SPI.
Inbound: TypeAlias = SecurityAssociation | SaTable[SecurityAssociation]

_ESP = struct.Struct("!II")
_AAD_ESN = struct.Struct("!IQ")
_UDP = struct.Struct("!HHHH")
_U16 = struct.Struct("!H")
_NON_ESP_MARKER: Final = b"\x00\x00\x00\x00"
_NAT_KEEPALIVE: Final = 0xFF
#: The default padding (RFC 4303 2.4): 1, 2, 3, ...
_PADDING: Final = tuple(bytes(range(1, n + 1)) for n in range(256))
#: Padding, pad length and next header, by pad length (up to an AES block) and next header.
_TRAILERS: Final = tuple(
    tuple(_PADDING[pad] + bytes((pad, next_header)) for next_header in range(256))
    for pad in range(16)
)


class RowBlock(NamedTuple):
    """Packets ``members[j]`` (in batch order) are rows ``rows[j]`` of ``arena``: the packet
    of row ``r`` starts ``headroom`` bytes into ``arena[r * stride :]`` and is ``length`` long."""

    arena: bytearray | memoryview
    stride: int
    length: int
    members: list[int]
    rows: Sequence[int]


@dataclass(frozen=True, slots=True)
class EspBatch:
    """What a batch became: packet ``i``, or ``reasons[i]``, why it was dropped.

    Packets made one by one are in ``singles``; equal-length packets made as
    matrix rows stay in their ``blocks`` (one buffer each) until asked for.
    ``framed(i)`` is packet ``i`` with ``headroom`` free bytes in front (for a
    link header), ``packet(i)`` the packet alone: both views, no copy.
    """

    reasons: list[IpsecDropReason | None]
    headroom: int = 0
    singles: dict[int, bytearray] = field(default_factory=dict)
    blocks: list[RowBlock] = field(default_factory=list)
    # Packet index -> (block, row), built the first time ``framed`` needs it.
    _rows_of: dict[int, tuple[RowBlock, int]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __len__(self) -> int:
        return len(self.reasons)

    def framed(self, i: int) -> memoryview | None:
        """Packet ``i`` with its headroom, or ``None`` when it was dropped."""
        single = self.singles.get(i)
        if single is not None:
            return memoryview(single)
        if self.blocks and not self._rows_of:
            for block in self.blocks:
                self._rows_of.update(
                    (member, (block, row))
                    for member, row in zip(block.members, block.rows, strict=True)
                )
        found = self._rows_of.get(i)
        if found is None:
            return None
        block, row = found
        start = row * block.stride
        return memoryview(block.arena)[start : start + self.headroom + block.length]

    def packet(self, i: int) -> memoryview | None:
        """Packet ``i``, or ``None`` when it was dropped."""
        view = self.framed(i)
        return None if view is None else view[self.headroom :]

    @property
    def packets(self) -> list[memoryview | None]:
        """Every packet in batch order (``None`` where one was dropped)."""
        out: list[memoryview | None] = [None] * len(self.reasons)
        h = self.headroom
        for i, single in self.singles.items():
            out[i] = memoryview(single)[h:]
        for block in self.blocks:
            base = memoryview(block.arena)
            stride = block.stride
            n = block.length
            starts = (r * stride + h for r in block.rows)
            views: list[memoryview | None] = [base[s : s + n] for s in starts]
            if len(views) == len(out):
                return views  # one block holds the whole batch
            for i, view in zip(block.members, views, strict=True):
                out[i] = view
        return out

    @property
    def accepted(self) -> int:
        """How many packets came out."""
        return sum(r is None for r in self.reasons)


# --- outbound ------------------------------------------------------------------------


def _cbc_icv(sa: SecurityAssociation, covered: memoryview, seq: int) -> bytes:
    """HMAC-SHA-256-128 over the ESP header, IV and ciphertext, then (with ESN) the
    high-order 32 bits of the sequence number, which are not sent (RFC 4303 2.2.1)."""
    assert sa._hmac is not None
    mac = sa._hmac.copy()
    mac.update(covered)
    if sa.esn:
        mac.update((seq >> 32).to_bytes(4, "big"))
    return mac.finalize()[:ICV_LEN]


def _seal(
    sa: SecurityAssociation, packet: Buffer, seq: int, iv: bytes, headroom: int
) -> tuple[bytearray, int]:
    """The ESP packet (``headroom`` bytes first) and the protected packet's length."""
    view = packet if type(packet) is memoryview else byte_view(packet)
    outer = sa._outer
    try:
        if outer is not None:
            end = inner_packet_len(view)
            protocol = tunnel_protocol(view)
            keep = 0
            version = outer.version
            front = outer.header_len
        else:
            layout = quick_layout(view) or outbound_layout(view)
            if layout.fragment:
                raise EspError(
                    IpsecDropReason.FRAGMENT,
                    "transport mode protects whole packets: reassemble this fragment first",
                    spi=sa.spi,
                )
            end = layout.end
            protocol = layout.protocol
            keep = front = layout.offset
            version = layout.version
    except (WireError, UnsupportedHeaderError) as err:
        raise EspError(
            IpsecDropReason.MALFORMED, f"not an IP packet ESP can protect: {err}", spi=sa.spi
        ) from None
    nat_t = sa._nat_t
    if nat_t is not None:
        front += UDP_HEADER_LEN
    iv_len = len(iv)
    plen = end - keep
    pad = -(plen + 2) % sa._align
    ct = headroom + front + ESP_HEADER_LEN + iv_len  # where the ciphertext starts in ``out``
    tag = ct + plen + pad + 2  # and where the ICV does
    total = tag + ICV_LEN - headroom
    if total > IP_MAX_LEN + (IPV6_HEADER_LEN if version == 6 else 0):
        raise EspError(
            IpsecDropReason.TOO_BIG, f"{total} bytes with ESP: too big for IP", spi=sa.spi
        )

    out = bytearray(headroom + total)
    pkt = memoryview(out)
    ip_protocol = IPPROTO_UDP if nat_t is not None else IPPROTO_ESP
    if outer is not None:
        tos, dont_frag = inner_tos(view)
        outer.write(pkt[headroom:], total, ip_protocol, tos=tos, dont_frag=dont_frag, ident=seq)
    elif headroom:
        pkt[headroom : headroom + keep] = view[:keep]
        set_transport_header(pkt[headroom:], layout, total, ip_protocol)
    else:
        pkt[:keep] = view[:keep]
        set_transport_header(out, layout, total, ip_protocol)
    esp = headroom + front
    if nat_t is not None:
        udp_len = total - front + UDP_HEADER_LEN
        _UDP.pack_into(out, esp - UDP_HEADER_LEN, nat_t.src_port, nat_t.dst_port, udp_len, 0)
    _ESP.pack_into(out, esp, sa.spi, seq & U32_MAX)
    pkt[ct - iv_len : ct] = iv
    trailer = ct + plen
    pkt[ct:trailer] = view[keep:end]
    pkt[trailer:tag] = _TRAILERS[pad][protocol]
    if sa._aead is not None:
        aad = _AAD_ESN.pack(sa.spi, seq) if sa.esn else _ESP.pack(sa.spi, seq & U32_MAX)
        sa._aead.encrypt_into(sa._salt + iv, pkt[ct:tag], aad, pkt[ct : tag + ICV_LEN])
    else:
        assert sa._aes is not None
        encryptor = Cipher(sa._aes, modes.CBC(iv)).encryptor()
        # update_into wants a block of room past the data: the ICV's place gives it.
        encryptor.update_into(pkt[ct:tag], pkt[ct : tag + ICV_LEN])
        encryptor.finalize()
        pkt[tag : tag + ICV_LEN] = _cbc_icv(sa, pkt[esp:tag], seq)
    if nat_t is not None and version == 6:
        # A zero UDP checksum is not allowed over IPv6 (RFC 8200 8.1); Linux fills it in too.
        udp = UdpPacket(pkt[esp - UDP_HEADER_LEN : headroom + total])
        o = headroom
        udp.fill_checksum(bytes(pkt[o + 8 : o + 24]), bytes(pkt[o + 24 : o + 40]))
    return out, end


def _seal_counted(
    sa: SecurityAssociation, packet: Buffer, seq: int, iv: Buffer, headroom: int
) -> bytearray:
    try:
        if sa._hard_reached:
            sa.admit()
        if type(seq) is not int or not 0 < seq <= sa.seq_max:
            sa.check_sequence(seq)
        if type(iv) is not bytes:
            iv = bytes(iv) if isinstance(iv, bytes | bytearray | memoryview) else b""
        if len(iv) != sa._iv_len:
            raise EspError(
                IpsecDropReason.BAD_REQUEST,
                f"SA {sa.spi:#010x} takes a {sa._iv_len}-byte IV",
                spi=sa.spi,
            )
        out, protected = _seal(sa, packet, seq, iv, headroom)
    except EspError as err:
        sa.drop(err.reason)
        raise
    sa.account(1, protected)
    return out


def encrypt_with(sa: SecurityAssociation, ip_packet: Buffer, seq: int, iv: Buffer) -> bytes:
    """``ip_packet`` protected by ``sa`` with sequence number ``seq`` and IV ``iv``.

    The host allocates both (``sa.next_sequence()``, ``sa.iv_for(seq)``) and
    hands them to whichever side encrypts, so no (SA, IV) pair is used twice.
    """
    return bytes(_seal_counted(sa, ip_packet, seq, iv, 0))


def encrypt(sa: SecurityAssociation, ip_packet: Buffer) -> bytes:
    """``ip_packet`` (a whole IPv4 or IPv6 packet) protected by ``sa``."""
    try:
        sa.admit()
        seq = sa.next_sequence()
    except EspError as err:
        sa.drop(err.reason)
        raise
    return encrypt_with(sa, ip_packet, seq, sa.iv_for(seq))


def encrypt_batch(
    sa: SecurityAssociation,
    packets: Sequence[Buffer] | ByteMatrix,
    *,
    seqs: Sequence[int] | None = None,
    ivs: Sequence[bytes] | None = None,
    headroom: int = 0,
) -> EspBatch:
    """``encrypt`` (or, with ``seqs`` and ``ivs``, ``encrypt_with``) over a batch.

    ``packets`` is a list of packets, or a 2-D uint8 matrix whose rows are
    packets of one length (the segments of a super-packet, say), which are
    taken in with one copy. Without ``seqs`` the SA allocates them; without
    ``ivs`` each is ``sa.iv_for(seq)``. Packets that cannot be protected get a
    reason instead.
    """
    if isinstance(packets, np.ndarray) and (packets.ndim != 2 or packets.dtype != np.uint8):
        raise ValueError("a matrix of packets is 2-D uint8, one packet per row")
    k = len(packets)
    if ivs is not None and (seqs is None or len(ivs) != k):
        raise ValueError("ivs need seqs, one of each per packet")
    if seqs is not None and len(seqs) != k:
        raise ValueError("one sequence number per packet")
    if headroom < 0:
        raise ValueError("headroom cannot be negative")
    batch = EspBatch([None] * k, headroom)
    given: Sequence[int] | None = seqs
    if given is None and not sa.hard_expired:
        try:
            given = sa.allocate(k)
        except EspError:
            given = None  # not enough left for all: per packet, until they run out
    done: set[int] | range = set()
    if given is not None:
        done = _rows(sa, packets, seqs=given, ivs=ivs, batch=batch)
    if len(done) == k:
        return batch
    reasons = batch.reasons
    singles = batch.singles
    for i in range(k):
        if i in done:
            continue
        packet = packets[i]
        if isinstance(packet, np.ndarray):
            packet = np.ascontiguousarray(packet).data
        try:
            if given is None:
                try:
                    sa.admit()
                    seq = sa.next_sequence()
                except EspError as err:
                    sa.drop(err.reason)
                    raise
            else:
                seq = given[i]
            if ivs is not None:
                iv: Buffer = ivs[i]
            elif type(seq) is int and 1 <= seq <= sa.seq_max:
                iv = sa.iv_for(seq)
            else:
                iv = b""  # the sequence number is refused first
            singles[i] = _seal_counted(sa, packet, seq, iv, headroom)
        except EspError as err:
            reasons[i] = err.reason
    return batch


def _rows(
    sa: SecurityAssociation,
    packets: Sequence[Buffer] | ByteMatrix,
    *,
    seqs: Sequence[int],
    ivs: Sequence[bytes] | None,
    batch: EspBatch,
) -> set[int] | range:
    """Encrypt the equal-length groups of ``packets`` as matrix rows; which were done."""
    k = len(packets)
    if k < MIN_ROWS or not rows_eligible(sa):
        return set()
    if isinstance(packets, np.ndarray):
        lengths = [packets.shape[1]]
        total = packets.size
    else:
        lengths = list(map(len, packets))
        total = sum(lengths)
    if not sa.room(k, total):
        return set()  # a hard limit falls inside this batch: the per-packet path stops there
    if isinstance(packets, np.ndarray) or lengths.count(lengths[0]) == k:
        groups = {lengths[0]: list(range(k))}
    else:
        groups = {}
        for i, n in enumerate(lengths):
            groups.setdefault(n, []).append(i)
    done: set[int] = set()
    done_bytes = 0
    iv_len = sa.config.iv_len
    for length, members in groups.items():
        if len(members) < MIN_ROWS:
            continue
        if isinstance(seqs, range):
            seq_array = np.arange(seqs.start, seqs.start + k, dtype=np.uint64)
            if len(members) < k:
                seq_array = seq_array[members]
        else:
            chosen = [seqs[i] for i in members]
            if not all(type(v) is int and 1 <= v <= sa.seq_max for v in chosen):
                continue
            seq_array = np.array(chosen, dtype=np.uint64)
        iv_blob = None
        if ivs is not None:
            chosen_ivs = [ivs[i] for i in members]
            if not all(isinstance(v, bytes) and len(v) == iv_len for v in chosen_ivs):
                continue
            iv_blob = b"".join(chosen_ivs)
        # (A matrix is always one whole group.)
        group = packets if len(members) == k else [packets[i] for i in members]
        sealed = seal_rows(sa, group, seq_array, ivs=iv_blob, headroom=batch.headroom)
        if sealed is None:
            continue
        if sealed.done.all():
            rows: Sequence[int] = range(len(members))
        else:
            rows = np.flatnonzero(sealed.done).tolist()
            members = [members[r] for r in rows]
        batch.blocks.append(RowBlock(sealed.arena, sealed.stride, sealed.length, members, rows))
        if len(members) == k:
            sa.account(k, total)
            return range(k)
        done.update(members)
        done_bytes += len(members) * length
    if done:
        sa.account(len(done), done_bytes)
    return done


# --- inbound -------------------------------------------------------------------------


def _reject(
    owner: SecurityAssociation | SaTable[SecurityAssociation],
    reason: IpsecDropReason,
    message: str,
    spi: int | None = None,
) -> EspError:
    owner.drop(reason)
    return EspError(reason, message, spi=spi)


def _encap_ports(inbound: Inbound) -> set[int]:
    if isinstance(inbound, SaTable):
        return {sa.nat_t.dst_port for sa in inbound if sa.nat_t is not None}
    return set() if inbound.nat_t is None else {inbound.nat_t.dst_port}


def _open(inbound: Inbound, packet: Buffer) -> bytearray:
    """The packet ``packet`` protected, or ``EspError``: RFC 4303 3.4's steps in order."""
    view = byte_view(packet)
    try:
        layout = quick_layout(view) or inbound_layout(view)
    except (WireError, UnsupportedHeaderError) as err:
        reason = IpsecDropReason.TRUNCATED if truncated(view) else IpsecDropReason.MALFORMED
        raise _reject(inbound, reason, f"not an IP packet: {err}") from None
    if layout.fragment:
        raise _reject(inbound, IpsecDropReason.FRAGMENT, "a fragment: reassemble it before ESP")
    end = layout.end
    at = layout.offset
    encapsulated = layout.protocol == IPPROTO_UDP
    if encapsulated:
        if end - at < UDP_HEADER_LEN:
            raise _reject(inbound, IpsecDropReason.TRUNCATED, "UDP header cut short")
        _, dst_port, udp_len, _ = _UDP.unpack_from(view, at)
        if dst_port not in _encap_ports(inbound):
            raise _reject(inbound, IpsecDropReason.NOT_IPSEC, f"UDP to port {dst_port} is not ESP")
        if udp_len < UDP_HEADER_LEN or at + udp_len > end:
            raise _reject(inbound, IpsecDropReason.MALFORMED, f"UDP length {udp_len} does not fit")
        end = at + udp_len
        esp = at + UDP_HEADER_LEN
        if end - esp == 1 and view[esp] == _NAT_KEEPALIVE:
            raise _reject(inbound, IpsecDropReason.NAT_KEEPALIVE, "a NAT-keepalive")
        if view[esp : esp + 4].tobytes() == _NON_ESP_MARKER:
            raise _reject(inbound, IpsecDropReason.NOT_IPSEC, "the non-ESP marker (IKE)")
    elif layout.protocol == IPPROTO_ESP:
        esp = at
    else:
        raise _reject(inbound, IpsecDropReason.NOT_IPSEC, f"protocol {layout.protocol} is not ESP")
    if end - esp < ESP_HEADER_LEN:
        raise _reject(inbound, IpsecDropReason.TRUNCATED, f"{end - esp} bytes of ESP")
    spi, seq_low = _ESP.unpack_from(view, esp)

    # 1. The SA, by SPI.
    if isinstance(inbound, SaTable):
        found = inbound.lookup(spi)
    else:
        found = inbound if inbound.spi == spi else None
    if found is None:
        raise _reject(inbound, IpsecDropReason.UNKNOWN_SPI, f"no SA has SPI {spi:#010x}", spi)
    sa = found
    if encapsulated != (sa._nat_t is not None):
        raise _reject(
            sa,
            IpsecDropReason.ENCAPSULATION_MISMATCH,
            f"SA {spi:#010x}: wrong UDP encapsulation",
            spi,
        )
    if sa._hard_reached:
        raise _reject(sa, IpsecDropReason.LIFETIME_EXPIRED, f"SA {spi:#010x} has expired", spi)
    aead = sa._aead
    align = sa._align
    ct = esp + ESP_HEADER_LEN + sa._iv_len
    icv = end - ICV_LEN
    ctl = icv - ct
    if ctl < (2 if aead is not None else align):
        raise _reject(
            sa, IpsecDropReason.TRUNCATED, f"{end - esp} bytes of ESP for SA {spi:#010x}", spi
        )
    if aead is None and ctl % align:
        raise _reject(sa, IpsecDropReason.MALFORMED, f"{ctl} bytes of AES-CBC ciphertext", spi)

    # 2. The replay pre-check, with the high-order bits inferred under ESN.
    seq = sa.window.infer(seq_low)
    if seq is None or not sa.window.check(seq):
        raise _reject(
            sa, IpsecDropReason.REPLAY, f"SA {spi:#010x}: sequence number {seq_low} replayed", spi
        )

    # 3. The ICV (and, AEAD, decryption in the same call).
    tunnel = sa._outer is not None
    keep = 0 if tunnel else at
    iv = view[esp + ESP_HEADER_LEN : ct].tobytes()
    if aead is not None:
        out = bytearray(keep + ctl)
        aad = _AAD_ESN.pack(spi, seq) if sa.esn else _ESP.pack(spi, seq_low)
        with memoryview(out) as target:
            try:
                aead.decrypt_into(sa._salt + iv, view[ct:end], aad, target[keep:])
            except InvalidTag:
                target[keep:] = bytes(ctl)  # nothing unverified stays behind
                raise _reject(
                    sa, IpsecDropReason.BAD_ICV, f"SA {spi:#010x}: ICV mismatch", spi
                ) from None
    else:
        assert sa._aes is not None
        if not compare_digest(_cbc_icv(sa, view[esp:icv], seq), view[icv:end]):
            raise _reject(sa, IpsecDropReason.BAD_ICV, f"SA {spi:#010x}: ICV mismatch", spi)
        out = bytearray(keep + ctl + align - 1)
        decryptor = Cipher(sa._aes, modes.CBC(iv)).decryptor()
        with memoryview(out) as target:
            decryptor.update_into(view[ct:icv], target[keep:])
        decryptor.finalize()
        del out[keep + ctl :]

    # 4. The window moves only now.
    sa.window.update(seq)

    plain_end = keep + ctl
    pad = out[plain_end - 2]
    next_header = out[plain_end - 1]
    inner_end = plain_end - 2 - pad
    if inner_end < keep or out[inner_end : plain_end - 2] != _PADDING[pad]:
        raise _reject(
            sa, IpsecDropReason.BAD_PADDING, f"SA {spi:#010x}: padding is not 1, 2, 3...", spi
        )
    if next_header == IPPROTO_NONE:
        raise _reject(sa, IpsecDropReason.DUMMY, f"SA {spi:#010x}: a dummy packet", spi)
    if tunnel:
        if next_header not in (IPPROTO_IPIP, IPPROTO_IPV6):
            raise _reject(
                sa, IpsecDropReason.MODE_MISMATCH, f"next header {next_header} in tunnel mode", spi
            )
        try:
            with memoryview(out) as inner:
                wanted = IPPROTO_IPIP if inner_end and inner[0] >> 4 == 4 else IPPROTO_IPV6
                inner_len = inner_packet_len(inner[:inner_end])
        except WireError as err:
            raise _reject(sa, IpsecDropReason.MALFORMED, f"the inner packet: {err}", spi) from None
        if wanted != next_header:
            raise _reject(
                sa,
                IpsecDropReason.MALFORMED,
                "the inner packet's version is not its next header",
                spi,
            )
        del out[inner_len:]  # anything after the inner packet is TFC padding (RFC 4303 2.7)
        ecn_decapsulate(view, out)
    else:
        del out[inner_end:]
        out[:keep] = view[:keep]
        set_transport_header(out, layout, len(out), next_header)
    sa.account(1, len(out))
    return out


def decrypt(sa: Inbound, ip_packet: Buffer) -> bytes:
    """The packet ``ip_packet`` protects (tunnel mode: the inner packet), or ``EspError``.

    ``sa`` is the SA the packet must belong to, or a ``SaTable`` to find it in.
    """
    return bytes(_open(sa, ip_packet))


def decrypt_batch(sa: Inbound, packets: Sequence[Buffer]) -> EspBatch:
    """``decrypt`` over a batch: each packet, or the reason it was dropped.

    Equal-length groups of plain ESP (transport mode, an AEAD, no UDP
    encapsulation, IPv4 without options or IPv6 without extension headers)
    are opened as the rows of one buffer: the same checks in the same order,
    one AEAD call per packet in place, the headers rewritten all at once.
    """
    batch = EspBatch([None] * len(packets))
    done: set[int] = set()
    if len(packets) >= MIN_ROWS:
        lengths = list(map(len, packets))
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            groups.setdefault(n, []).append(i)
        for members in groups.values():
            if len(members) >= MIN_ROWS:
                done.update(_open_rows(sa, packets, members, batch))
    for i, packet in enumerate(packets):
        if i in done:
            continue
        try:
            batch.singles[i] = _open(sa, packet)
        except EspError as err:
            batch.reasons[i] = err.reason
    return batch


_V4_FIRST = np.dtype(">u8")


def _open_rows(
    inbound: Inbound, packets: Sequence[Buffer], members: list[int], batch: EspBatch
) -> list[int]:
    """Open ``members`` (packets of one length) as rows; the members it dealt with (opened,
    or refused with their reason). The others are left to ``_open``."""
    first = byte_view(packets[members[0]])
    length = len(first)
    version = first[0] >> 4 if length else 0
    h = IPV4_HEADER_LEN if version == 4 else IPV6_HEADER_LEN if version == 6 else 0
    if not h or length < h + ESP_HEADER_LEN:
        return []
    spi = int.from_bytes(first[h : h + 4], "big")
    sa = inbound.lookup(spi) if isinstance(inbound, SaTable) else inbound
    if sa is None or sa.spi != spi or not rows_eligible(sa):
        return []
    aead = sa._aead
    assert aead is not None
    ct = h + ESP_HEADER_LEN + sa._iv_len
    ctl = length - ct - ICV_LEN
    if ctl < 2 or not sa.room(len(members), len(members) * length):
        return []
    k = len(members)
    arena = bytearray(k * length)
    view = memoryview(arena)
    for start, i in zip(range(0, k * length, length), members, strict=True):
        view[start : start + length] = packets[i]
    m = np.frombuffer(arena, dtype=np.uint8).reshape(k, length)
    # Which rows are plain ESP of this SA, before anything is decrypted.
    if version == 4:
        head = np.ascontiguousarray(m[:, :8]).view(_V4_FIRST)[:, 0]
        ok = (head & V4_MASK) == (V4_WHOLE | np.uint64(length) << np.uint64(32))
        ok &= m[:, 9] == IPPROTO_ESP
    else:
        payload_len = m[:, 4].astype(np.int64) << 8 | m[:, 5]
        ok = (m[:, 0] >> 4 == 6) & (payload_len == length - h) & (m[:, 6] == IPPROTO_ESP)
    ok &= np.ascontiguousarray(m[:, h : h + 4]).view(">u4")[:, 0] == spi
    rows = np.flatnonzero(ok).tolist()
    if len(rows) < MIN_ROWS:
        return []
    seq_low = np.ascontiguousarray(m[:, h + 4 : h + 8]).view(">u4")[:, 0].tolist()
    # Each row's nonce (salt, then the IV it carries) and AAD (SPI and sequence number as
    # they travel; with ESN the inferred high half joins them in the loop), cut apart at once.
    nonce_len = SALT_LEN + sa._iv_len
    fronts = np.empty((k, nonce_len + ESP_HEADER_LEN), dtype=np.uint8)
    fronts[:, :SALT_LEN] = np.frombuffer(sa._salt, dtype=np.uint8)
    fronts[:, SALT_LEN:nonce_len] = m[:, h + ESP_HEADER_LEN : ct]
    fronts[:, nonce_len:] = m[:, h : h + ESP_HEADER_LEN]
    cut = struct.Struct(f"{nonce_len}s{ESP_HEADER_LEN}s" * k).unpack(fronts.tobytes())
    nonces, aads = cut[0::2], cut[1::2]
    texts, sealed_at = row_slices(k, length, ct, ctl, ctl + ICV_LEN)
    window = sa.window
    infer, check, update = window.infer, window.check, window.update
    decrypt_into = aead.decrypt_into
    esn = sa.esn
    reasons = batch.reasons
    opened: list[int] = []
    for r in rows:
        # 2. The replay pre-check (the SA was found by its SPI above).
        seq = infer(seq_low[r])
        if seq is None or not check(seq):
            reasons[members[r]] = _reject(sa, IpsecDropReason.REPLAY, "replayed", spi).reason
            continue
        # 3. The ICV, decrypting in place.
        plain = view[texts[r]]
        try:
            decrypt_into(
                nonces[r], view[sealed_at[r]], _AAD_ESN.pack(spi, seq) if esn else aads[r], plain
            )
        except InvalidTag:
            plain[:] = bytes(ctl)  # nothing unverified stays behind
            reasons[members[r]] = _reject(sa, IpsecDropReason.BAD_ICV, "ICV", spi).reason
            continue
        # 4. The window moves only now.
        update(seq)
        opened.append(r)
    handled = [members[r] for r in rows]
    if not opened:
        return handled
    # The trailers, all at once: pad length, next header, the padding itself.
    o = np.array(opened, dtype=np.int64)
    pads = m[o, ct + ctl - 2]
    next_headers = m[o, ct + ctl - 1]
    good = np.ones(len(o), dtype=np.bool_)
    for pad in np.unique(pads).tolist():
        chosen = pads == pad
        if pad > ctl - 2:
            good[chosen] = False
            continue
        if pad:
            tail = m[o[chosen], ct + ctl - 2 - pad : ct + ctl - 2]
            good[chosen] = (tail == np.frombuffer(_PADDING[pad], dtype=np.uint8)).all(axis=1)
    dummy = next_headers == IPPROTO_NONE
    for r, bad_pad, is_dummy in zip(opened, (~good).tolist(), dummy.tolist(), strict=True):
        if bad_pad:
            reasons[members[r]] = _reject(sa, IpsecDropReason.BAD_PADDING, "padding", spi).reason
        elif is_dummy:
            reasons[members[r]] = _reject(sa, IpsecDropReason.DUMMY, "dummy", spi).reason
    keep = good & ~dummy
    o, pads, next_headers = o[keep], pads[keep], next_headers[keep]
    if not len(o):
        return handled
    # The headers, moved up against the plaintext and patched: length, protocol, checksum.
    words = np.ascontiguousarray(m[o, :h]).view(BE16).astype(np.int64)
    new_len = h + ctl - 2 - pads.astype(np.int64)
    if version == 4:
        words[:, 1] = new_len
        words[:, 4] = (words[:, 4] & 0xFF00) | next_headers
        words[:, 5] = 0
        total = words.sum(axis=1)
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        words[:, 5] = 0xFFFF - total
    else:
        words[:, 2] = new_len - h
        words[:, 3] = (next_headers.astype(np.int64) << 8) | (words[:, 3] & 0xFF)
    m[o, ct - h : ct] = words.astype(BE16).view(np.uint8).reshape(len(o), h)
    shift = ct - h
    lengths = new_len.tolist()
    common = max(set(lengths), key=lengths.count)
    in_block = [int(r) for r, n in zip(o.tolist(), lengths, strict=True) if n == common]
    for r, n in zip(o.tolist(), lengths, strict=True):
        if n != common:  # another padding length than most: a packet of its own
            start = r * length + shift
            batch.singles[members[r]] = bytearray(arena[start : start + n])
    if in_block:
        batch.blocks.append(
            RowBlock(view[shift:], length, common, [members[r] for r in in_block], in_block)
        )
    sa.account(len(lengths), sum(lengths))
    return handled
