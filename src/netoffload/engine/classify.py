"""Packet classification: ntuple / rte_flow-style rules applied to a whole batch at once.

**Rules.** A ``Rule`` is a ``Match`` (conditions on header fields, all of
which must hold), an ``Action`` and a priority. Rules are kept in order of
(priority, rule id), lower first, and **the first rule that matches a frame
decides it alone** (as ethtool's ntuple rules: one rule per frame). Its
action has at most one fate and any number of modifiers:

* fate: ``queue`` N (deliver to queue N), ``drop``, or neither (the frame
  keeps the queue RSS chose: a rule with no fate shields the rules after it);
* ``mark`` V: the delivered frame (and its mirrored copy) carries V, which
  the device reports in ``RxInfo.mark``;
* ``mirror`` N: a copy of the frame is also delivered to queue N, even when
  the fate is ``drop`` (as tc's ``mirred mirror`` before a ``drop``);
* ``count``: the rule also counts the bytes it matched. Every rule counts
  its hits and its drops (a dropped frame has no ``RxInfo`` to carry the
  verdict, so the rule's drop counter is where it shows).

What a condition means on a frame whose headers are not all there is given
by ``fields`` (a condition on a layer that is not intact never holds): a rule
matches only a frame whose Ethernet header is intact; any IP condition needs
an intact IP header of the rule's version (a rule on an IPv4 address matches
IPv4 frames only); ports need a whole TCP or UDP header of an unfragmented
packet, TCP flags a whole TCP header.

**Batches** (the bit-vector scheme of Lakshman and Stiliadis). For every field
some rule constrains, a lookup table maps each value to the set of rules that
accept it, as a bit mask in rule order (64 rules a word): direct tables for
the fields of at most 17 bits, sorted interval bounds for addresses and MACs
(a ``searchsorted``). A batch's fields are extracted once (``fields.extract``);
each used field is then one lookup for the whole batch, the masks are ANDed,
and the lowest set bit of each frame's mask is the first rule that matches.
The cost grows with the fields the rules use, not with their number. A
condition a table cannot express exactly (an address mask that is not a
prefix, an IPv6 prefix longer than 63 bits) is narrowed by its interval and
then checked as a vector mask of its own.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine.fields import (
    NO_ADDRESS,
    NO_DSCP,
    NO_FLAGS,
    NO_U16,
    Fields,
    FrameBatch,
    extract,
)

IntArray: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
WordArray: TypeAlias = npt.NDArray[np.uint64]

#: ``Classification.rule`` of a frame no rule matched.
NO_RULE = -1
#: ``Classification.mark`` / ``mirror`` of a frame without one; ``queue`` of a dropped frame.
NONE = -1
MAX_MARK = 0xFFFFFFFF
MAX_QUEUE = 0xFFFF
TCP_FLAG_NAMES = ("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr")

_U64 = np.uint64
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
_V6_KEY = 1 << 63


class RuleError(ValueError):
    """A rule, or a change to a rule set, that cannot be taken."""


# -- conditions -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Masked:
    """``(field & mask) == (value & mask)``: the bits set in ``mask`` are compared."""

    value: int
    mask: int

    def __post_init__(self) -> None:
        if not (isinstance(self.value, int) and isinstance(self.mask, int)):
            raise RuleError("a masked value is two integers")
        object.__setattr__(self, "value", self.value & self.mask)  # one form per condition

    @classmethod
    def exact(cls, value: int, bits: int) -> Masked:
        return cls(value, (1 << bits) - 1)

    def matches(self, x: int) -> bool:
        return (x & self.mask) == self.value


@dataclass(frozen=True, slots=True)
class PortRange:
    """``lo <= port <= hi``."""

    lo: int
    hi: int

    def matches(self, x: int) -> bool:
        return self.lo <= x <= self.hi


PortMatch: TypeAlias = Masked | PortRange


@dataclass(frozen=True, slots=True)
class AddressMatch:
    """An address condition of one IP version: ``(address & mask) == (value & mask)``.

    ``mask`` is 32 bits wide for IPv4 and 128 for IPv6; a prefix is the usual
    case (``AddressMatch.parse("198.18.0.0/24")``) but any mask is allowed.
    """

    version: int
    value: int
    mask: int

    def __post_init__(self) -> None:
        if self.version not in (4, 6):
            raise RuleError(f"IP version {self.version} is neither 4 nor 6")
        top = (1 << self.bits) - 1
        if not (0 <= self.value <= top and 0 <= self.mask <= top):
            raise RuleError(f"address or mask does not fit IPv{self.version}")
        object.__setattr__(self, "value", self.value & self.mask)

    @property
    def bits(self) -> int:
        return 32 if self.version == 4 else 128

    @classmethod
    def parse(cls, text: str) -> AddressMatch:
        """``ADDRESS`` (a host) or ``ADDRESS/PREFIX`` (host bits may be set: they are masked)."""
        try:
            net = ip_network(text, strict=False)
        except ValueError:
            raise RuleError(f"{text!r} is not an address or a prefix") from None
        return cls(net.version, int(net.network_address), int(net.netmask))

    @property
    def prefix_len(self) -> int | None:
        """The prefix length when ``mask`` is a prefix, else ``None``."""
        inverted = ~self.mask & ((1 << self.bits) - 1)
        if inverted & (inverted + 1):
            return None
        return self.bits - inverted.bit_length()

    def matches(self, address: IPv4Address | IPv6Address) -> bool:
        return address.version == self.version and (int(address) & self.mask) == self.value

    def address(self, value: int) -> IPv4Address | IPv6Address:
        """``value`` as an address of this condition's version."""
        return IPv4Address(value) if self.version == 4 else IPv6Address(value)


@dataclass(frozen=True, slots=True)
class Match:
    """What a frame must have for a rule to apply; ``None`` is "any"."""

    ingress_queue: int | None = None
    dst_mac: Masked | None = None
    src_mac: Masked | None = None
    vlan: Masked | None = None  # the outermost tag's TCI
    ethertype: Masked | None = None  # behind the VLAN tags
    ip_version: int | None = None
    src: AddressMatch | None = None
    dst: AddressMatch | None = None
    proto: Masked | None = None
    sport: PortMatch | None = None
    dport: PortMatch | None = None
    tcp_flags: Masked | None = None
    dscp: Masked | None = None

    def __post_init__(self) -> None:
        if self.ingress_queue is not None and not 0 <= self.ingress_queue <= MAX_QUEUE:
            raise RuleError(f"ingress queue {self.ingress_queue} not in 0..{MAX_QUEUE}")
        for name, bits, value in (
            ("destination MAC", 48, self.dst_mac),
            ("source MAC", 48, self.src_mac),
            ("VLAN TCI", 16, self.vlan),
            ("EtherType", 16, self.ethertype),
            ("protocol", 8, self.proto),
            ("source port", 16, self.sport),
            ("destination port", 16, self.dport),
            ("TCP flags", 8, self.tcp_flags),
            ("DSCP", 6, self.dscp),
        ):
            _check_bits(name, bits, value)
        versions = {a.version for a in (self.src, self.dst) if a is not None}
        if self.ip_version is not None:
            if self.ip_version not in (4, 6):
                raise RuleError(f"IP version {self.ip_version} is neither 4 nor 6")
            versions.add(self.ip_version)
        if len(versions) > 1:
            raise RuleError("the rule mixes IPv4 and IPv6")

    @property
    def version(self) -> int | None:
        """The IP version the rule implies (given, or its addresses'), if any."""
        for a in (self.src, self.dst):
            if a is not None:
                return a.version
        return self.ip_version

    @property
    def needs_ip(self) -> bool:
        return self.version is not None or any(
            c is not None for c in (self.proto, self.sport, self.dport, self.tcp_flags, self.dscp)
        )


def _check_bits(name: str, bits: int, cond: Masked | PortRange | None) -> None:
    if cond is None:
        return
    top = (1 << bits) - 1
    values = (cond.value, cond.mask) if isinstance(cond, Masked) else (cond.lo, cond.hi)
    if not all(isinstance(v, int) and 0 <= v <= top for v in values):
        raise RuleError(f"{name} does not fit in {bits} bits")
    if isinstance(cond, PortRange) and cond.lo > cond.hi:
        raise RuleError(f"{name} range {cond.lo}-{cond.hi} is empty")


class Fate(enum.Enum):
    """What happens to a matching frame."""

    DEFAULT = "default"  # the queue RSS chose
    QUEUE = "queue"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Action:
    """A rule's fate and modifiers (see the module doc for how they combine)."""

    fate: Fate = Fate.DEFAULT
    queue: int | None = None  # with Fate.QUEUE
    mark: int | None = None
    mirror: int | None = None
    count: bool = False

    def __post_init__(self) -> None:
        if (self.fate is Fate.QUEUE) != (self.queue is not None):
            raise RuleError("a queue number goes with the queue fate, and only with it")
        for name, value, top in (
            ("queue", self.queue, MAX_QUEUE),
            ("mirror queue", self.mirror, MAX_QUEUE),
            ("mark", self.mark, MAX_MARK),
        ):
            if value is not None and not (isinstance(value, int) and 0 <= value <= top):
                raise RuleError(f"{name} {value} not in 0..{top}")

    @classmethod
    def deliver(cls, queue: int, **modifiers: int | bool | None) -> Action:
        return cls(Fate.QUEUE, queue, **modifiers)  # type: ignore[arg-type]

    @classmethod
    def drop(cls, **modifiers: int | bool | None) -> Action:
        return cls(Fate.DROP, None, **modifiers)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Rule:
    """Match, action, priority (lower first; ethtool's ``loc``)."""

    match: Match
    action: Action
    priority: int = 0


@dataclass(slots=True)
class RuleCounters:
    """Frames a rule decided, frames it dropped, and (with ``count``) their bytes."""

    hits: int = 0
    drops: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class Classification:
    """Per frame of a batch: the deciding rule and what it decided.

    ``rule`` is the rule id (``NO_RULE`` when none matched), ``queue`` the
    delivery queue (``NONE`` when dropped), ``drop`` whether dropped, ``mark``
    the mark (``NONE`` without one), ``mirror`` the queue of a mirrored copy
    (``NONE`` without one).
    """

    rule: IntArray
    queue: IntArray
    drop: BoolArray
    mark: IntArray
    mirror: IntArray

    def __len__(self) -> int:
        return len(self.rule)


# -- the compiled rule set ------------------------------------------------------------

Column: TypeAlias = Callable[[Fields], IntArray]
_Residual: TypeAlias = tuple[int, int, Callable[["_Batch"], BoolArray]]


class _Batch:
    """Per-batch columns the dimensions read, each made at most once."""

    __slots__ = ("_cache", "fields")

    def __init__(self, fields: Fields) -> None:
        self.fields = fields
        self._cache: dict[str, npt.NDArray[np.generic]] = {}

    def meta(self) -> IntArray:
        """``version * 256 + proto`` (version 0, 4 or 6): the index of the meta table."""
        got = self._cache.get("meta")
        if got is None:
            f = self.fields
            got = f.version * 256 + f.proto
            self._cache["meta"] = got
        return got  # type: ignore[return-value]

    def words(self, which: str, version: int) -> tuple[WordArray, WordArray]:
        """(high, low) 64-bit words of every frame's source or destination address, read as
        an address of ``version`` (IPv4: high 0, low the address). Rows of the other
        version hold meaningless values: a residual test only ever narrows rows its rule's
        interval lookup has let through, which are of its version.
        """
        key = f"{which}{version}"
        got = self._cache.get(key + "hi")
        if got is None:
            f = self.fields
            if version == 4:
                at = 12 if which == "src" else 16
                lo = f.ip[:, at : at + 4].view(">u4")[:, 0].astype(np.uint64)
                hi = np.zeros(len(lo), dtype=np.uint64)
            else:
                at = 8 if which == "src" else 24
                hi = f.ip[:, at : at + 8].view(">u8")[:, 0].astype(np.uint64)
                lo = f.ip[:, at + 8 : at + 16].view(">u8")[:, 0].astype(np.uint64)
            self._cache[key + "hi"], self._cache[key + "lo"] = hi, lo
            return hi, lo
        return got, self._cache[key + "lo"]  # type: ignore[return-value]


@dataclass(slots=True)
class _Table:
    """A direct lookup: ``masks[column(fields)]``."""

    column: Column
    masks: WordArray  # (domain, words)


@dataclass(slots=True)
class _Intervals:
    """An interval lookup: ``masks[searchsorted(bounds, column, 'right')]``."""

    column: Callable[[Fields], WordArray]
    bounds: WordArray
    masks: WordArray


def _meta_pred(m: Match) -> BoolArray:
    """Over ``version * 256 + proto`` (version 0 without an intact IP header, 4 or 6)."""
    version = np.arange(_META) // 256
    proto = np.arange(_META) % 256
    ok: BoolArray = (version == 0) | (version == 4) | (version == 6)
    if m.needs_ip:
        ok &= (version != 0) if m.version is None else version == m.version
    if m.proto is not None:
        ok &= (proto & m.proto.mask) == m.proto.value
    return ok


_META = 7 * 256


def _masked_pred(cond: Masked | PortRange, domain: int) -> BoolArray:
    values = np.arange(domain, dtype=np.int64)
    if isinstance(cond, PortRange):
        ok: BoolArray = (values >= cond.lo) & (values <= cond.hi)
    else:
        ok = (values & cond.mask) == (cond.value & cond.mask)
    return ok


def _with_absent(pred: BoolArray) -> BoolArray:
    """``pred`` with one more entry, False: the index of an absent field."""
    return np.concatenate([pred, np.zeros(1, dtype=bool)])


def _set_bits(masks: WordArray, rows: BoolArray | slice, position: int) -> None:
    masks[rows, position >> 6] |= _U64(1 << (position & 63))


class _Compiled:
    """The lookup structures of one rule set (rebuilt whenever the set changes)."""

    def __init__(self, rules: list[tuple[int, Rule]]) -> None:
        self.ids = np.array([rid for rid, _ in rules], dtype=np.int64)
        r = len(rules)
        self.words = max(1, -(-r // 64))
        w = self.words
        self.tables: list[_Table] = []
        self.intervals: list[_Intervals] = []
        self.residuals: list[_Residual] = []
        self.queue_rules = np.zeros((MAX_QUEUE + 1, w), dtype=np.uint64)
        self.uses_queue = False

        meta = np.zeros((_META, w), dtype=np.uint64)
        for pos, (_, rule) in enumerate(rules):
            _set_bits(meta, _meta_pred(rule.match), pos)
        self.meta = meta

        def table(name: str, domain: int, column: Column, absent: bool) -> None:
            conds = [getattr(rule.match, name) for _, rule in rules]
            if all(c is None for c in conds):
                return
            size = domain + (1 if absent else 0)
            masks = np.zeros((size, w), dtype=np.uint64)
            for pos, cond in enumerate(conds):
                if cond is None:
                    _set_bits(masks, slice(None), pos)
                else:
                    pred = _masked_pred(cond, domain)
                    _set_bits(masks, _with_absent(pred) if absent else pred, pos)
            self.tables.append(_Table(column, masks))

        table("sport", 1 << 16, _sport, True)
        table("dport", 1 << 16, _dport, True)
        table("tcp_flags", 1 << 8, _tcp_flags, True)
        table("dscp", 1 << 6, _dscp, True)
        table("ethertype", 1 << 16, _ethertype, False)
        table("vlan", 1 << 16, _vlan, True)

        if any(rule.match.ingress_queue is not None for _, rule in rules):
            self.uses_queue = True
            for pos, (_, rule) in enumerate(rules):
                q = rule.match.ingress_queue
                _set_bits(self.queue_rules, slice(None) if q is None else slice(q, q + 1), pos)

        for which in ("src", "dst"):
            self._addresses(rules, which)
        for which in ("dst_mac", "src_mac"):
            self._macs(rules, which)

        # One more entry in each: what a frame no rule matched gets.
        actions = [rule.action for _, rule in rules]
        self.ids = np.array([*self.ids.tolist(), NO_RULE], dtype=np.int64)
        self.fate_queue = np.array(
            [a.queue if a.fate is Fate.QUEUE else NONE for a in actions] + [NONE], dtype=np.int64
        )
        self.fate_drop = np.array([a.fate is Fate.DROP for a in actions] + [False], dtype=bool)
        self.mark = np.array([NONE if a.mark is None else a.mark for a in actions] + [NONE])
        self.mirror = np.array([NONE if a.mirror is None else a.mirror for a in actions] + [NONE])
        self.count_bytes = np.array([a.count for a in actions] + [False], dtype=bool)
        self.rules = r
        self.any_drop = bool(self.fate_drop.any())
        self.any_count = bool(self.count_bytes.any())

    def _intervals(
        self, spans: list[tuple[int, int] | None], column: Callable[[Fields], WordArray]
    ) -> None:
        """An interval dimension from per-rule inclusive spans (``None``: any value)."""
        if all(s is None for s in spans):
            return
        cuts = {0}
        for s in spans:
            if s is not None:
                cuts.add(s[0])
                if s[1] < (1 << 64) - 1:
                    cuts.add(s[1] + 1)
        bounds = np.array(sorted(cuts), dtype=np.uint64)
        starts = [int(b) for b in bounds]
        # Row i + 1 is the interval from bounds[i]: searchsorted(..., "right") indexes it.
        masks = np.zeros((len(bounds) + 1, self.words), dtype=np.uint64)
        for pos, s in enumerate(spans):
            if s is None:
                _set_bits(masks, slice(1, None), pos)
            else:
                lo = starts.index(s[0])
                hi = len(starts) if s[1] == (1 << 64) - 1 else starts.index(s[1] + 1)
                _set_bits(masks, slice(lo + 1, hi + 1), pos)
        self.intervals.append(_Intervals(column, bounds, masks))

    def _addresses(self, rules: list[tuple[int, Rule]], which: str) -> None:
        spans: list[tuple[int, int] | None] = []
        for pos, (_, rule) in enumerate(rules):
            cond: AddressMatch | None = getattr(rule.match, which)
            if cond is None:
                spans.append(None)
                continue
            plen = cond.prefix_len
            if cond.version == 4:
                if plen is None:
                    spans.append((0, 0xFFFFFFFF))
                    self._residual(pos, which, cond)
                else:
                    base = cond.value & cond.mask
                    spans.append((base, base | (~cond.mask & 0xFFFFFFFF)))
                continue
            hi_value, hi_mask = cond.value >> 64, cond.mask >> 64
            if plen is not None and plen <= 63:
                base = hi_value & hi_mask
                top = base | (~hi_mask & _ALL_INT)
                spans.append((_V6_KEY | (base >> 1), _V6_KEY | (top >> 1)))
                continue
            if plen is not None:  # 64..128: the first 63 bits exactly, the rest as a residual
                base = hi_value & hi_mask
                spans.append((_V6_KEY | (base >> 1), _V6_KEY | (base >> 1)))
            else:
                spans.append((_V6_KEY, (1 << 64) - 1))
            self._residual(pos, which, cond)
        self._intervals(spans, _src_key if which == "src" else _dst_key)

    def _residual(self, pos: int, which: str, cond: AddressMatch) -> None:
        value, mask = cond.value & cond.mask, cond.mask
        hv, hm = _U64(value >> 64), _U64(mask >> 64)
        lv, lm = _U64(value & _ALL_INT), _U64(mask & _ALL_INT)

        version = cond.version

        def test(batch: _Batch) -> BoolArray:
            hi, lo = batch.words(which, version)
            ok: BoolArray = ((lo & lm) == lv) & ((hi & hm) == hv)
            return ok

        self.residuals.append((pos >> 6, pos & 63, test))

    def _macs(self, rules: list[tuple[int, Rule]], which: str) -> None:
        spans: list[tuple[int, int] | None] = []
        for pos, (_, rule) in enumerate(rules):
            cond: Masked | None = getattr(rule.match, which)
            if cond is None:
                spans.append(None)
                continue
            mask = cond.mask & _MAC_ALL
            inverted = ~mask & _MAC_ALL
            base = cond.value & mask
            if inverted & (inverted + 1) == 0:
                spans.append((base, base | inverted))
                continue
            spans.append((0, _MAC_ALL))
            column = _dst_mac if which == "dst_mac" else _src_mac
            m, v = _U64(mask), _U64(base)

            self.residuals.append((pos >> 6, pos & 63, _mac_test(column, m, v)))
        self._intervals(spans, _dst_mac if which == "dst_mac" else _src_mac)

    def match(self, fields: Fields, ingress_queue: int | IntArray) -> WordArray:
        """Every frame's mask of matching rules, ``(n, words)``."""
        batch = _Batch(fields)
        bits: WordArray = self.meta[batch.meta()]
        if not fields.l2.all():
            bits[~fields.l2] = 0  # a rule matches only an intact Ethernet header
        for t in self.tables:
            bits &= t.masks[t.column(fields)]
        for iv in self.intervals:
            bits &= iv.masks[np.searchsorted(iv.bounds, iv.column(fields), side="right")]
        if self.uses_queue:
            if isinstance(ingress_queue, (int, np.integer)):
                bits &= self.queue_rules[int(ingress_queue)]
            else:
                bits &= self.queue_rules[np.asarray(ingress_queue, dtype=np.int64)]
        for word, bit, test in self.residuals:
            mask = _U64(1 << bit)
            if not (bits[:, word] & mask).any():
                continue  # no frame left for the check to narrow
            ok = test(batch)
            bits[:, word] &= np.where(ok, _ALL, ~mask)
        return bits


_ALL_INT = (1 << 64) - 1
_MAC_ALL = (1 << 48) - 1


def _mac_test(
    column: Callable[[Fields], WordArray], mask: np.uint64, value: np.uint64
) -> Callable[[_Batch], BoolArray]:
    def test(batch: _Batch) -> BoolArray:
        ok: BoolArray = (column(batch.fields) & mask) == value
        return ok

    return test


def _sport(f: Fields) -> IntArray:
    return f.sport


def _dport(f: Fields) -> IntArray:
    return f.dport


def _tcp_flags(f: Fields) -> IntArray:
    return f.tcp_flags


def _dscp(f: Fields) -> IntArray:
    return f.dscp


def _ethertype(f: Fields) -> IntArray:
    return f.ethertype


def _vlan(f: Fields) -> IntArray:
    return f.vlan


def _src_key(f: Fields) -> WordArray:
    return f.src_key


def _dst_key(f: Fields) -> WordArray:
    return f.dst_key


def _dst_mac(f: Fields) -> WordArray:
    return f.dst_mac


def _src_mac(f: Fields) -> WordArray:
    return f.src_mac


def first_set_bit(bits: WordArray) -> tuple[IntArray, BoolArray]:
    """(index of the lowest set bit, any bit set) of every row of ``(n, words)`` masks."""
    n, words = bits.shape
    if words == 1:
        x = bits[:, 0]
        word = np.zeros(n, dtype=np.int64)
    else:
        nonzero = bits != 0
        word = nonzero.argmax(axis=1).astype(np.int64)
        x = bits[np.arange(n), word]
    matched: BoolArray = x != 0
    low = x & (~x + _U64(1))
    # A power of two converts to float64 exactly: its biased exponent is the bit's index.
    exponent = (low.astype(np.float64).view(np.int64) >> 52) - 1023
    index: IntArray = exponent if words == 1 else word * 64 + exponent
    return index, matched


class Classifier:
    """A rule set that classifies whole batches; rules are added and removed at run time.

    ``max_rules`` bounds the set (a device's ``ClassificationCaps.rule_slots``).
    """

    def __init__(self, rules: Iterable[Rule] = (), *, max_rules: int = 1024) -> None:
        self.max_rules = max_rules
        self._rules: dict[int, Rule] = {}
        self._counters: dict[int, RuleCounters] = {}
        self._ids = itertools.count(1)
        self._compiled: _Compiled | None = None
        self._hits = np.zeros(0, dtype=np.int64)
        self._drops = np.zeros(0, dtype=np.int64)
        self._bytes = np.zeros(0, dtype=np.int64)
        for rule in rules:
            self.add(rule)

    # -- the rule set ---------------------------------------------------------------------
    def add(self, rule: Rule, rule_id: int | None = None) -> int:
        """Add ``rule``; returns its id (``rule_id`` when given, which must be free)."""
        if len(self._rules) >= self.max_rules:
            raise RuleError(f"the rule set is full ({self.max_rules} rules)")
        if rule_id is None:
            rule_id = next(self._ids)
            while rule_id in self._rules:
                rule_id = next(self._ids)
        elif rule_id in self._rules:
            raise RuleError(f"rule {rule_id} exists")
        elif rule_id < 0:
            raise RuleError("rule ids are not negative")
        self._fold()
        self._rules[rule_id] = rule
        self._counters[rule_id] = RuleCounters()
        self._compiled = None
        return rule_id

    def remove(self, rule_id: int) -> Rule:
        """Remove rule ``rule_id`` and its counters; returns the rule."""
        if rule_id not in self._rules:
            raise RuleError(f"no rule {rule_id}")
        self._fold()
        del self._counters[rule_id]
        self._compiled = None
        return self._rules.pop(rule_id)

    def rules(self) -> list[tuple[int, Rule]]:
        """(id, rule) in the order they are tried."""
        return sorted(self._rules.items(), key=lambda item: (item[1].priority, item[0]))

    def __len__(self) -> int:
        return len(self._rules)

    def counters(self) -> dict[int, RuleCounters]:
        """Per rule id: hits, drops, bytes (a snapshot)."""
        self._fold()
        return {rid: RuleCounters(c.hits, c.drops, c.bytes) for rid, c in self._counters.items()}

    def _fold(self) -> None:
        """Move the batch counters of the compiled order into the per-id counters."""
        compiled = self._compiled
        if compiled is None or not compiled.rules:
            return
        for rid, hits, drops, nbytes in zip(
            compiled.ids[: compiled.rules].tolist(),
            self._hits.tolist(),
            self._drops.tolist(),
            self._bytes.tolist(),
            strict=True,
        ):
            c = self._counters[rid]
            c.hits += hits
            c.drops += drops
            c.bytes += nbytes
        self._hits[:] = 0
        self._drops[:] = 0
        self._bytes[:] = 0

    def _compile(self) -> _Compiled:
        compiled = self._compiled
        if compiled is None:
            compiled = _Compiled(self.rules())
            self._compiled = compiled
            r = compiled.rules
            self._hits = np.zeros(r, dtype=np.int64)
            self._drops = np.zeros(r, dtype=np.int64)
            self._bytes = np.zeros(r, dtype=np.int64)
        return compiled

    # -- batches --------------------------------------------------------------------------
    def classify(
        self,
        fields: Fields,
        *,
        ingress_queue: int | IntArray = 0,
        default_queue: int | IntArray = 0,
    ) -> Classification:
        """Classify every frame of a batch (``fields`` from ``fields.extract``).

        ``default_queue`` is the queue of a frame no rule sends elsewhere
        (RSS's choice, per frame or one for all); ``ingress_queue`` the queue
        the frames came in on.
        """
        n = len(fields)
        compiled = self._compile()
        if not compiled.rules or not n:
            none = np.full(n, NONE, dtype=np.int64)
            default = np.broadcast_to(np.asarray(default_queue, dtype=np.int64), (n,)).copy()
            return Classification(none.copy(), default, np.zeros(n, dtype=bool), none.copy(), none)
        bits = compiled.match(fields, ingress_queue)
        first, matched = first_set_bit(bits)
        r = compiled.rules
        # Position r of every per-rule array is "no rule matched".
        first[~matched] = r
        rule = compiled.ids[first]
        fate = compiled.fate_queue[first]
        queue = np.where(fate >= 0, fate, default_queue)
        mark = compiled.mark[first]
        mirror = compiled.mirror[first]
        self._hits += np.bincount(first, minlength=r + 1)[:r]
        if compiled.any_drop:
            drop = compiled.fate_drop[first]
            queue[drop] = NONE
            self._drops += np.bincount(first[drop], minlength=r + 1)[:r]
        else:
            drop = np.zeros(n, dtype=bool)
        if compiled.any_count:
            counted = compiled.count_bytes[first]
            self._bytes += np.bincount(
                first[counted], weights=fields.length[counted], minlength=r + 1
            )[:r].astype(np.int64)
        return Classification(rule, queue, drop, mark, mirror)

    def classify_batch(
        self,
        batch: FrameBatch,
        *,
        ingress_queue: int | IntArray = 0,
        default_queue: int | IntArray = 0,
    ) -> Classification:
        """``classify`` of a batch, its fields extracted first."""
        return self.classify(
            extract(batch), ingress_queue=ingress_queue, default_queue=default_queue
        )


__all__ = [
    "NONE",
    "NO_ADDRESS",
    "NO_DSCP",
    "NO_FLAGS",
    "NO_RULE",
    "NO_U16",
    "Action",
    "AddressMatch",
    "Classification",
    "Classifier",
    "Fate",
    "Masked",
    "Match",
    "PortMatch",
    "PortRange",
    "Rule",
    "RuleCounters",
    "RuleError",
    "first_set_bit",
]
