"""What ESP and AH security associations share (RFC 4301, 4302, 4303).

The per-SA state that is not crypto: the outbound sequence counter (32-bit,
or 64-bit with extended sequence numbers), the inbound anti-replay window
with RFC 4303 Appendix A's inference of the high-order bits, lifetimes in
bytes and packets with their soft and hard limits, counters, and the table
that finds an inbound SA by its SPI.

Nothing here reads a clock or does I/O. A soft lifetime limit is reported
as an event the owner takes with ``take_events()``; a hard limit stops the
SA. Drop reasons are stable names, shown beside a device's other drops.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeAlias, TypeVar

U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
#: Anti-replay window sizes accepted, in packets (Linux takes up to 4096 with ESN).
REPLAY_WINDOW_MIN = 64
REPLAY_WINDOW_MAX = 4096
#: The SPI values RFC 4303 section 2.1 reserves (0 is local use only; 1-255 IANA).
SPI_RESERVED_MAX = 255


class IpsecDropReason(enum.StrEnum):
    """Why an ESP or AH packet was not produced or not accepted. Values are stable names."""

    UNKNOWN_SPI = "ipsec_unknown_spi"
    REPLAY = "ipsec_replay"
    BAD_ICV = "ipsec_bad_icv"
    BAD_PADDING = "ipsec_bad_padding"
    TRUNCATED = "ipsec_truncated"
    LIFETIME_EXPIRED = "ipsec_lifetime_expired"
    SEQUENCE_EXHAUSTED = "ipsec_sequence_exhausted"
    #: The IP packet around the ESP/AH header, or the one inside it, is not valid.
    MALFORMED = "ipsec_malformed"
    #: No ESP/AH header where the SA expects one (an IKE packet on port 4500 included).
    NOT_IPSEC = "ipsec_not_ipsec"
    NAT_KEEPALIVE = "ipsec_nat_keepalive"
    #: A dummy packet (next header 59, RFC 4303 section 2.6): valid, and discarded.
    DUMMY = "ipsec_dummy"
    #: A fragment: transport mode protects whole datagrams; reassemble first.
    FRAGMENT = "ipsec_fragment"
    TOO_BIG = "ipsec_too_big"
    #: ESP in UDP for an SA without NAT traversal, or plain ESP for one with it.
    ENCAPSULATION_MISMATCH = "ipsec_encapsulation_mismatch"
    #: A tunnel-mode SA whose packet does not carry an IP packet.
    MODE_MISMATCH = "ipsec_mode_mismatch"
    #: A sequence number or IV the caller gave is out of range or the wrong size.
    BAD_REQUEST = "ipsec_bad_request"
    #: A header this engine does not protect (an IPv6 routing header still in transit, for AH).
    UNSUPPORTED = "ipsec_unsupported"


#: The name the ESP API uses for the same reasons.
EspDropReason = IpsecDropReason


class IpsecError(Exception):
    """A packet that cannot be protected or accepted; ``reason`` says why.

    Messages name SPIs, lengths and offsets, never key material.
    """

    def __init__(self, reason: IpsecDropReason, message: str, *, spi: int | None = None) -> None:
        self.reason = reason
        self.spi = spi
        super().__init__(message)


class EspError(IpsecError):
    """An ESP packet that cannot be built or accepted."""


class AhError(IpsecError):
    """An AH packet that cannot be built or accepted."""


def check_int(what: str, value: object, low: int, high: int) -> int:
    """``value`` when it is an int (not a bool) in ``low..high``, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} {value} is outside {low}..{high}")
    return value


@dataclass(frozen=True, slots=True)
class Lifetime:
    """SA lifetime limits (RFC 4301 section 4.4.2.1); ``None`` is no limit.

    Bytes are those of the IP packets the SA protects (before ESP/AH on
    output, after it on input). Reaching a soft limit raises an event for the
    owner to rekey; reaching a hard limit stops the SA.
    """

    soft_bytes: int | None = None
    hard_bytes: int | None = None
    soft_packets: int | None = None
    hard_packets: int | None = None

    def __post_init__(self) -> None:
        for name in ("soft_bytes", "hard_bytes", "soft_packets", "hard_packets"):
            value = getattr(self, name)
            if value is not None:
                check_int(f"lifetime {name}", value, 1, U64_MAX)
        for soft, hard in (
            (self.soft_bytes, self.hard_bytes),
            (self.soft_packets, self.hard_packets),
        ):
            if soft is not None and hard is not None and soft > hard:
                raise ValueError(f"a soft lifetime limit ({soft}) above the hard one ({hard})")


NO_LIFETIME = Lifetime()


@dataclass(frozen=True, slots=True)
class SoftLifetimeReached:
    """The SA reached a soft limit: the owner should rekey. Sent once per SA."""

    spi: int
    packets: int
    byte_count: int


@dataclass(frozen=True, slots=True)
class HardLifetimeReached:
    """The SA reached a hard limit: from now on it refuses every packet."""

    spi: int
    packets: int
    byte_count: int


SaEvent: TypeAlias = SoftLifetimeReached | HardLifetimeReached


@dataclass(slots=True)
class SaCounters:
    """Packets and bytes an SA processed, and its drops by reason."""

    packets: int = 0
    byte_count: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: IpsecDropReason, count: int = 1) -> None:
        self.drops[reason.value] += count

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def as_dict(self) -> dict[str, object]:
        return {"packets": self.packets, "bytes": self.byte_count, "drops": dict(self.drops)}


class ReplayWindow:
    """The receiver's anti-replay window (RFC 4303 section 3.4.3 and Appendix A).

    ``top`` is the highest sequence number authenticated so far; bit ``k`` of
    the bitmap stands for ``top - k``. With ESN only the low 32 bits travel:
    ``infer`` rebuilds the full number from the window's position (Appendix
    A2.2). ``check`` is the pre-check before the ICV; ``update`` runs only
    after the ICV has passed.
    """

    __slots__ = ("_bits", "_mask", "esn", "size", "top")

    def __init__(self, size: int, *, esn: bool) -> None:
        self.size = check_int("replay window", size, REPLAY_WINDOW_MIN, REPLAY_WINDOW_MAX)
        self.esn = esn
        self.top = 0
        self._bits = 0
        self._mask = (1 << size) - 1

    def infer(self, seq_low: int) -> int | None:
        """The full sequence number of a packet whose low 32 bits are ``seq_low``.

        ``None`` when no sequence number can have them (below the first subspace).
        """
        if not self.esn:
            return seq_low
        w = self.size
        top_low = self.top & U32_MAX
        top_high = self.top >> 32
        if top_low >= w - 1:  # Case A: the window lies within one subspace
            high = top_high if seq_low >= top_low - w + 1 else top_high + 1
        else:  # Case B: the window spans two subspaces
            high = top_high - 1 if seq_low >= (top_low - w + 1) & U32_MAX else top_high
        if high < 0 or high > U32_MAX:
            return None
        return (high << 32) | seq_low

    def check(self, seq: int) -> bool:
        """True when ``seq`` is new: right of the window, or inside it and not yet seen."""
        if seq == 0:
            return False  # never sent: the first packet of an SA is number 1
        if seq > self.top:
            return True
        behind = self.top - seq
        return behind < self.size and not (self._bits >> behind) & 1

    def update(self, seq: int) -> None:
        """Record ``seq`` as received (only after its ICV has been verified)."""
        if seq > self.top:
            shift = seq - self.top
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self.top = seq
        else:
            self._bits |= 1 << (self.top - seq)

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, esn={self.esn}, top={self.top})"


class SaBase:
    """Sequence numbers, the replay window, lifetimes and counters of one SA.

    An SA is one-way (RFC 4301): an outbound SA uses the sequence counter,
    an inbound one the window. Both live here, so one object can serve
    either side; lifetimes and counters then add up both directions.
    """

    __slots__ = (
        "_events",
        "_hard_reached",
        "_next_seq",
        "_soft_reached",
        "counters",
        "esn",
        "lifetime",
        "spi",
        "window",
    )

    error: ClassVar[type[IpsecError]] = IpsecError

    def __init__(
        self,
        spi: int,
        *,
        esn: bool,
        replay_window: int,
        lifetime: Lifetime | None,
        initial_sequence: int,
    ) -> None:
        self.spi = check_int("SPI", spi, SPI_RESERVED_MAX + 1, U32_MAX)
        if not isinstance(esn, bool):
            raise ValueError("esn is a boolean")
        self.esn = esn
        self.window = ReplayWindow(replay_window, esn=esn)
        if lifetime is not None and not isinstance(lifetime, Lifetime):
            raise ValueError(f"lifetime must be a Lifetime, not {type(lifetime).__name__}")
        self.lifetime = lifetime or NO_LIFETIME
        self._next_seq = check_int("initial sequence number", initial_sequence, 1, self.seq_max)
        self.counters = SaCounters()
        self._events: list[SaEvent] = []
        self._soft_reached = False
        self._hard_reached = False

    # --- outbound: the host owns the sequence numbers -------------------------

    @property
    def seq_max(self) -> int:
        """The last sequence number this SA may send (it never cycles, RFC 4303 3.3.3)."""
        return U64_MAX if self.esn else U32_MAX

    @property
    def next_seq(self) -> int:
        """The sequence number the next ``next_sequence()`` returns."""
        return self._next_seq

    def next_sequence(self) -> int:
        """Allocate the next outbound sequence number."""
        seq = self._next_seq
        if seq > self.seq_max:
            raise self.error(
                IpsecDropReason.SEQUENCE_EXHAUSTED,
                f"SA {self.spi:#010x} has used its last sequence number: rekey",
                spi=self.spi,
            )
        self._next_seq = seq + 1
        return seq

    def allocate(self, count: int) -> range:
        """Allocate ``count`` consecutive outbound sequence numbers."""
        start = self._next_seq
        if count < 0 or start + count - 1 > self.seq_max:
            raise self.error(
                IpsecDropReason.SEQUENCE_EXHAUSTED,
                f"SA {self.spi:#010x} has no {count} sequence numbers left: rekey",
                spi=self.spi,
            )
        self._next_seq = start + count
        return range(start, start + count)

    def check_sequence(self, seq: int) -> None:
        """Raise unless ``seq`` is a sequence number this SA can send."""
        if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= self.seq_max:
            raise self.error(
                IpsecDropReason.BAD_REQUEST,
                f"sequence number {seq!r} is outside 1..{self.seq_max:#x} for SA {self.spi:#010x}",
                spi=self.spi,
            )

    # --- lifetimes -------------------------------------------------------------

    @property
    def soft_expired(self) -> bool:
        """True once a soft limit has been reached (the owner should rekey)."""
        return self._soft_reached

    @property
    def hard_expired(self) -> bool:
        """True once a hard limit has been reached; the SA then refuses every packet."""
        return self._hard_reached

    def take_events(self) -> list[SaEvent]:
        """The lifetime events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def admit(self) -> None:
        """Raise unless the SA may process another packet."""
        if self._hard_reached:
            raise self.error(
                IpsecDropReason.LIFETIME_EXPIRED,
                f"SA {self.spi:#010x} reached its hard lifetime",
                spi=self.spi,
            )

    def room(self, packets: int, nbytes: int) -> bool:
        """True when ``packets`` more packets of ``nbytes`` in all cannot reach a hard limit
        before the last of them (so none of them needs a per-packet check)."""
        if self._hard_reached:
            return False
        life = self.lifetime
        c = self.counters
        if life.hard_packets is not None and c.packets + packets - 1 >= life.hard_packets:
            return False
        return life.hard_bytes is None or c.byte_count + nbytes - 1 < life.hard_bytes

    def account(self, packets: int, nbytes: int) -> None:
        """Count processed packets and bytes; raise the lifetime events they cross."""
        c = self.counters
        c.packets += packets
        c.byte_count += nbytes
        life = self.lifetime
        if life is NO_LIFETIME:
            return
        if not self._soft_reached and (
            (life.soft_packets is not None and c.packets >= life.soft_packets)
            or (life.soft_bytes is not None and c.byte_count >= life.soft_bytes)
        ):
            self._soft_reached = True
            self._events.append(SoftLifetimeReached(self.spi, c.packets, c.byte_count))
        if not self._hard_reached and (
            (life.hard_packets is not None and c.packets >= life.hard_packets)
            or (life.hard_bytes is not None and c.byte_count >= life.hard_bytes)
        ):
            self._hard_reached = True
            self._events.append(HardLifetimeReached(self.spi, c.packets, c.byte_count))

    def drop(self, reason: IpsecDropReason) -> None:
        self.counters.drop(reason)


SaT = TypeVar("SaT", bound=SaBase)


class SaTable(Generic[SaT]):
    """Inbound SAs by SPI (RFC 4301 section 4.1: the SPI alone finds a unicast SA).

    ``drops`` counts what no SA can be charged with: unknown SPIs and packets
    that were not ESP/AH at all.
    """

    __slots__ = ("_by_spi", "drops")

    def __init__(self) -> None:
        self._by_spi: dict[int, SaT] = {}
        self.drops: Counter[str] = Counter()

    def install(self, sa: SaT) -> None:
        """Add ``sa``; its SPI must be free."""
        if sa.spi in self._by_spi:
            raise ValueError(f"SPI {sa.spi:#010x} is already installed")
        self._by_spi[sa.spi] = sa

    def remove(self, spi: int) -> SaT | None:
        """Remove and return the SA with ``spi`` (``None`` when there is none)."""
        return self._by_spi.pop(spi, None)

    def lookup(self, spi: int) -> SaT | None:
        """The SA with ``spi``, or ``None``."""
        return self._by_spi.get(spi)

    def drop(self, reason: IpsecDropReason) -> None:
        self.drops[reason.value] += 1

    def __len__(self) -> int:
        return len(self._by_spi)

    def __iter__(self) -> Iterator[SaT]:
        return iter(list(self._by_spi.values()))

    def __contains__(self, spi: object) -> bool:
        return spi in self._by_spi

    def __repr__(self) -> str:
        spis = ", ".join(f"{s:#010x}" for s in sorted(self._by_spi))
        return f"SaTable([{spis}])"
