"""Denial-of-service filtering on receive: a verdict per frame, every drop counted by reason.

Checks run in this order; the first that decides a frame decides it:

1. **Malformed IP** (built in, ``rule`` is ``NO_RULE``), on frames whose
   EtherType is IPv4 or IPv6 (other frames pass: they are not IP's business):
   * ``malformed``: the IP header is not intact (see ``fields``);
   * ``bad_length``: an IPv4 total length below the header length or past
     the frame, an IPv6 payload length past the frame, a UDP length below 8
     or past the IP packet, a fragment that would end past 65,535 bytes (the
     "ping of death");
   * ``bad_header_length``: a TCP or UDP header cut short, a TCP data offset
     below 5 or past the IP packet (an IPv6 jumbogram, payload length 0, is
     not taken);
   * ``bad_tcp_flags``: no flags at all, SYN with FIN or RST, FIN with RST,
     or FIN, PSH and URG without ACK (the "Xmas" scan);
   * ``tiny_fragment`` (RFC 1858, RFC 7112): a later fragment at offset 8
     (offset field 1) of a TCP packet, a first fragment too short for its
     whole TCP / UDP / ICMP header, or a fragment other than the last whose
     data is not a multiple of 8 bytes;
   * ``land``: the source address is the destination address.
2. **Allow and block lists** of source (or destination) prefixes, longest
   prefix first: an allowed frame passes every later check; a blocked one is
   dropped (``blocked``).
3. **Rate limits**, token buckets (``rate_pps`` tokens a second, at most
   ``burst``; a frame takes one token): per source address (``source_rate``)
   and per destination address (``destination_rate``), ICMP / ICMPv6 per
   destination (``icmp_rate``); frames over a limit get ``RATE_LIMITED``.
   IPv6 buckets are kept per /63 (the address key of ``fields``).
4. **SYN flood**: TCP SYNs (without ACK) per destination over their limit get
   the verdict ``SYN_COOKIE``: they are passed up, and the stack answers them
   with a SYN cookie (``syncookie``) instead of keeping state.

Verdicts are ``DosVerdict`` values (``PASS``, ``DROP``, ``RATE_LIMITED`` as
``offload.FilterVerdict`` numbers them, and ``SYN_COOKIE``); ``rule`` is the id
of the list entry or limit that decided (``NO_RULE`` for a built-in check or a
pass), ``reason`` the index of the reason in ``REASONS`` (``NO_REASON`` for a pass).

Buckets live in sorted NumPy arrays: a batch's frames are grouped by key with
``np.unique``, every group's bucket is refilled and charged at once, and within
a group the first frames in batch order take the tokens. Time comes in as
integer nanoseconds and tokens are counted in nano-tokens, so that the
arithmetic is exact. A bucket that has refilled to its burst is the same as no
bucket and is forgotten first when the table is full; after those, the least
recently used.
"""

from __future__ import annotations

import enum
import itertools
from collections import Counter
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from netoffload.engine.classify import AddressMatch
from netoffload.engine.dissect import ETH_P_IP, ETH_P_IPV6
from netoffload.engine.fields import Fields, FrameBatch, extract

IntArray: TypeAlias = npt.NDArray[np.int64]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
U64Array: TypeAlias = npt.NDArray[np.uint64]

NO_RULE = -1
NO_REASON = -1
_NANO = 1_000_000_000
_V6_KEY = 1 << 63

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


class DosVerdict(enum.IntEnum):
    """What the device does with a frame (0..2 as ``offload.FilterVerdict``)."""

    PASS = 0
    DROP = 1
    RATE_LIMITED = 2
    SYN_COOKIE = 3


class DosReason(enum.StrEnum):
    """Why a frame was dropped, limited or sent to SYN cookies. Values are stable names."""

    MALFORMED = "malformed"
    BAD_LENGTH = "bad_length"
    BAD_HEADER_LENGTH = "bad_header_length"
    BAD_TCP_FLAGS = "bad_tcp_flags"
    TINY_FRAGMENT = "tiny_fragment"
    LAND = "land"
    BLOCKED = "blocked"
    SOURCE_RATE = "source_rate"
    DESTINATION_RATE = "destination_rate"
    ICMP_RATE = "icmp_rate"
    SYN_RATE = "syn_rate"


#: ``DosResult.reason`` indexes this tuple.
REASONS = tuple(DosReason)
_INDEX = {reason: i for i, reason in enumerate(REASONS)}


@dataclass(frozen=True, slots=True, eq=False)
class DosResult:
    """Per frame: verdict (``DosVerdict``), deciding rule id, reason index."""

    verdict: npt.NDArray[np.uint8]
    rule: IntArray
    reason: npt.NDArray[np.int8]

    def __len__(self) -> int:
        return len(self.verdict)

    def reasons(self) -> list[DosReason | None]:
        """Every frame's reason as a ``DosReason`` (``None`` for a pass)."""
        return [None if r < 0 else REASONS[r] for r in self.reason.tolist()]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket's refill rate (tokens a second) and size."""

    rate_pps: int
    burst: int

    def __post_init__(self) -> None:
        if not (isinstance(self.rate_pps, int) and 1 <= self.rate_pps <= 10**9):
            raise ValueError("a rate is a whole number of packets a second, 1..10**9")
        if not (isinstance(self.burst, int) and 1 <= self.burst <= 10**9):
            raise ValueError("a burst is 1..10**9 packets")


class TokenBuckets:
    """One token bucket per key, for whole batches of keys at one instant."""

    __slots__ = ("_keys", "_last", "_tokens", "limit", "max_buckets")

    def __init__(self, limit: RateLimit, *, max_buckets: int = 65536) -> None:
        self.limit = limit
        self.max_buckets = max_buckets
        self._keys = np.zeros(0, dtype=np.uint64)
        self._tokens = np.zeros(0, dtype=np.int64)  # nano-tokens
        self._last = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._keys)

    def take(self, keys: U64Array, now_ns: int) -> BoolArray:
        """Charge one token per entry of ``keys`` (in order); which got one."""
        m = len(keys)
        if not m:
            return np.zeros(0, dtype=bool)
        rate, full = self.limit.rate_pps, self.limit.burst * _NANO
        # One stable sort groups the keys and keeps batch order within each group.
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        first = np.ones(m, dtype=bool)
        np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        group = np.cumsum(first) - 1
        unique = ordered[starts]
        counts = np.diff(np.append(starts, m))
        at = np.searchsorted(self._keys, unique)
        found = at < len(self._keys)
        found[found] = self._keys[at[found]] == unique[found]
        tokens = np.full(len(unique), full, dtype=np.int64)
        if found.any():
            old = at[found]
            elapsed = np.minimum(np.maximum(now_ns - self._last[old], 0), full // rate + 1)
            tokens[found] = np.minimum(full, self._tokens[old] + elapsed * rate)
        granted = np.minimum(counts, tokens // _NANO)
        tokens -= granted * _NANO
        # Within a key, the first frames in batch order take the tokens.
        allowed = np.empty(m, dtype=bool)
        allowed[order] = np.arange(m) - starts[group] < granted[group]
        if found.any():
            self._tokens[at[found]] = tokens[found]
            self._last[at[found]] = now_ns
        new = ~found
        if new.any():
            self._insert(unique[new], tokens[new], at[new], now_ns)
        return allowed

    def _insert(self, keys: U64Array, tokens: IntArray, at: IntArray, now_ns: int) -> None:
        self._keys = np.insert(self._keys, at, keys)
        self._tokens = np.insert(self._tokens, at, tokens)
        self._last = np.insert(self._last, at, np.full(len(keys), now_ns, dtype=np.int64))
        if len(self._keys) > self.max_buckets:
            self._evict(now_ns)

    def _evict(self, now_ns: int) -> None:
        rate, full = self.limit.rate_pps, self.limit.burst * _NANO
        elapsed = np.minimum(np.maximum(now_ns - self._last, 0), full // rate + 1)
        keep = self._tokens + elapsed * rate < full  # a full bucket is no bucket
        if np.count_nonzero(keep) > self.max_buckets:
            # Still too many: keep the most recently used.
            recent = np.argsort(-self._last, kind="stable")[: self.max_buckets]
            keep = np.zeros(len(self._keys), dtype=bool)
            keep[recent] = True
        self._keys, self._tokens, self._last = (
            self._keys[keep],
            self._tokens[keep],
            self._last[keep],
        )


class _Limit:
    __slots__ = ("buckets", "reason", "rule_id")

    def __init__(self, rule_id: int, reason: DosReason, limit: RateLimit, max_buckets: int) -> None:
        self.rule_id = rule_id
        self.reason = reason
        self.buckets = TokenBuckets(limit, max_buckets=max_buckets)


def _span(cond: AddressMatch) -> tuple[int, int, int]:
    """(first key, last key, prefix length) of a prefix in the address key space of ``fields``."""
    plen = cond.prefix_len
    if plen is None:
        raise ValueError("list entries are prefixes")
    if cond.version == 4:
        return cond.value, cond.value | (~cond.mask & 0xFFFFFFFF), plen
    if plen > 63:
        raise ValueError("IPv6 list entries are prefixes of at most 63 bits")
    hi, hi_mask = cond.value >> 64, cond.mask >> 64
    top = hi | (~hi_mask & 0xFFFFFFFFFFFFFFFF)
    return _V6_KEY | (hi >> 1), _V6_KEY | (top >> 1), plen


class DosFilter:
    """Allow / block lists, rate limits, SYN-flood and malformed-packet checks for batches."""

    def __init__(self, *, max_buckets: int = 65536) -> None:
        self.max_buckets = max_buckets
        self._ids = itertools.count(1)
        self._entries: dict[int, tuple[bool, str, AddressMatch]] = {}  # id -> (allow, side, prefix)
        self._lookup: dict[str, tuple[U64Array, IntArray, IntArray, BoolArray]] | None = None
        self._limits: dict[str, _Limit] = {}
        self.drops: Counter[str] = Counter()  # by reason: frames dropped or limited
        self.syn_cookies = 0  # SYNs sent to SYN cookies
        self.rule_hits: Counter[int] = Counter()

    # -- configuration --------------------------------------------------------------------
    def block(self, prefix: str | AddressMatch, *, side: str = "source") -> int:
        """Drop frames from (or to, ``side="destination"``) a prefix; returns the entry's id."""
        return self._entry(False, prefix, side)

    def allow(self, prefix: str | AddressMatch, *, side: str = "source") -> int:
        """Let frames from (or to) a prefix skip the lists and limits; returns the entry's id."""
        return self._entry(True, prefix, side)

    def _entry(self, allow: bool, prefix: str | AddressMatch, side: str) -> int:
        if side not in ("source", "destination"):
            raise ValueError("side is 'source' or 'destination'")
        cond = AddressMatch.parse(prefix) if isinstance(prefix, str) else prefix
        _span(cond)
        rule_id = next(self._ids)
        self._entries[rule_id] = (allow, side, cond)
        self._lookup = None
        return rule_id

    def limit_sources(self, limit: RateLimit) -> int:
        """Rate-limit every source address; returns the limit's id."""
        return self._limit("source", DosReason.SOURCE_RATE, limit)

    def limit_destinations(self, limit: RateLimit) -> int:
        """Rate-limit every destination address; returns the limit's id."""
        return self._limit("destination", DosReason.DESTINATION_RATE, limit)

    def limit_icmp(self, limit: RateLimit) -> int:
        """Rate-limit ICMP and ICMPv6 per destination; returns the limit's id."""
        return self._limit("icmp", DosReason.ICMP_RATE, limit)

    def limit_syn(self, limit: RateLimit) -> int:
        """SYNs per destination over ``limit`` get SYN cookies; returns the limit's id."""
        return self._limit("syn", DosReason.SYN_RATE, limit)

    def _limit(self, kind: str, reason: DosReason, limit: RateLimit) -> int:
        rule_id = next(self._ids)
        self._limits[kind] = _Limit(rule_id, reason, limit, self.max_buckets)
        return rule_id

    def remove(self, rule_id: int) -> None:
        """Remove a list entry or a limit."""
        if rule_id in self._entries:
            del self._entries[rule_id]
            self._lookup = None
            return
        for kind, lim in list(self._limits.items()):
            if lim.rule_id == rule_id:
                del self._limits[kind]
                return
        raise KeyError(rule_id)

    def _tables(self) -> dict[str, tuple[U64Array, IntArray, IntArray, BoolArray]]:
        """Per side: interval bounds, the deciding entry's position per interval (longest
        prefix, then lowest id; 0 for none), the entry ids by position, whether each allows.
        """
        if self._lookup is None:
            self._lookup = {}
            for side in ("source", "destination"):
                entries = [(rid, c) for rid, (_, s, c) in self._entries.items() if s == side]
                if not entries:
                    continue
                spans = [(rid, *_span(c)) for rid, c in entries]
                cuts = {lo for _, lo, _, _ in spans} | {hi + 1 for _, _, hi, _ in spans}
                bounds = np.array(sorted(c for c in cuts | {0} if c < 1 << 64), dtype=np.uint64)
                starts = bounds.tolist()
                # Row i + 1 is the interval from bounds[i]: searchsorted(..., "right") indexes it.
                best = np.zeros(len(bounds) + 1, dtype=np.int64)
                ids = [NO_RULE]
                for rid, lo, hi, _ in sorted(spans, key=lambda s: (s[3], -s[0])):
                    i = starts.index(lo)
                    j = starts.index(hi + 1) if hi + 1 < 1 << 64 else len(starts)
                    best[i + 1 : j + 1] = len(ids)
                    ids.append(rid)
                allows = np.array([False] + [self._entries[r][0] for r in ids[1:]])
                self._lookup[side] = (bounds, best, np.array(ids, dtype=np.int64), allows)
        return self._lookup

    # -- batches --------------------------------------------------------------------------
    def filter(self, fields: Fields, now_ns: int) -> DosResult:
        """The verdict on every frame of a batch arriving at ``now_ns``."""
        n = len(fields)
        verdict = np.zeros(n, dtype=np.uint8)
        rule = np.full(n, NO_RULE, dtype=np.int64)
        reason = np.full(n, NO_REASON, dtype=np.int8)
        open_ = np.ones(n, dtype=bool)  # not decided yet

        def decide(
            mask: BoolArray, why: DosReason, what: DosVerdict, rid: int | None = NO_RULE
        ) -> None:
            """Decide the open frames of ``mask``; ``rid`` None: ``rule`` is already set."""
            mask = mask & open_
            if not mask.any():
                return
            verdict[mask] = what
            reason[mask] = _INDEX[why]
            if rid is not None:
                rule[mask] = rid
            open_[mask] = False
            count = int(np.count_nonzero(mask))
            if what is DosVerdict.SYN_COOKIE:
                self.syn_cookies += count
            else:
                self.drops[why.value] += count
            if rid is not None and rid != NO_RULE:
                self.rule_hits[rid] += count

        for why, mask in _malformed(fields):
            decide(mask, why, DosVerdict.DROP)
        ip = fields.version != 0
        for side in ("source", "destination"):
            table = self._tables().get(side)
            if table is None:
                continue
            bounds, best, ids, allows = table
            key = fields.src_key if side == "source" else fields.dst_key
            entry = best[np.searchsorted(bounds, key, side="right")] * (ip & open_)
            if not entry.any():
                continue
            hits = np.bincount(entry, minlength=len(ids))
            for pos in np.flatnonzero(hits[1:]).tolist():
                self.rule_hits[int(ids[pos + 1])] += int(hits[pos + 1])
            allowed = allows[entry]
            open_ &= ~allowed
            blocked = (entry != 0) & ~allowed
            if blocked.any():
                rule[blocked] = ids[entry[blocked]]
                decide(blocked, DosReason.BLOCKED, DosVerdict.DROP, None)
        icmp = (fields.proto == 1) | (fields.proto == 58)
        syn = fields.tcp & ((fields.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
        for kind, key, eligible, what in (
            ("source", fields.src_key, ip, DosVerdict.RATE_LIMITED),
            ("destination", fields.dst_key, ip, DosVerdict.RATE_LIMITED),
            ("icmp", fields.dst_key, ip & icmp, DosVerdict.RATE_LIMITED),
            ("syn", fields.dst_key, syn, DosVerdict.SYN_COOKIE),
        ):
            lim = self._limits.get(kind)
            if lim is None:
                continue
            rows = np.flatnonzero(eligible & open_)
            if not len(rows):
                continue
            allowed = lim.buckets.take(key[rows], now_ns)
            over = np.zeros(n, dtype=bool)
            over[rows[~allowed]] = True
            decide(over, lim.reason, what, lim.rule_id)
        return DosResult(verdict, rule, reason)

    def filter_batch(self, batch: FrameBatch, now_ns: int) -> DosResult:
        """``filter`` of a batch, its fields extracted first."""
        return self.filter(extract(batch), now_ns)


def _bad_flags_table() -> npt.NDArray[np.bool_]:
    flags = np.arange(256)
    fin, syn, rst = (flags & TCP_FIN) != 0, (flags & TCP_SYN) != 0, (flags & TCP_RST) != 0
    xmas = (flags & (TCP_FIN | TCP_PSH | TCP_URG)) == (TCP_FIN | TCP_PSH | TCP_URG)
    bad: npt.NDArray[np.bool_] = (
        ((flags & 0x3F) == 0)
        | (syn & (fin | rst))
        | (fin & rst)
        | (xmas & ((flags & TCP_ACK) == 0))
    )
    return bad


# By TCP flags byte: an impossible combination. By protocol: the header a first fragment needs.
_BAD_FLAGS = _bad_flags_table()
_HEADER_NEED = np.full(256, 0, dtype=np.int64)
_HEADER_NEED[[6, 17, 1, 58]] = [20, 8, 8, 8]
_U32 = np.dtype("=u4")
_U64 = np.dtype("=u8")


def _malformed(f: Fields) -> list[tuple[DosReason, BoolArray]]:
    """(reason, frames) of every built-in check, in the order they are applied."""
    et = f.ethertype
    ip_type = f.l2 & ((et == ETH_P_IP) | (et == ETH_P_IPV6))
    version = f.version
    is4, is6 = version == 4, version == 6
    ip = is4 | is6
    room = f.length - f.l3
    ip_len = f.ip_len
    ip_end = f.l3 + ip_len
    bad_len = (is4 & ((ip_len < f.ihl) | (ip_len > room))) | (is6 & (ip_len > room))
    udp = ip & (f.proto == 17) & ~f.fragment
    udp_len = (f.l4_head[:, 4].astype(np.int64) << 8) | f.l4_head[:, 5]
    bad_len |= udp & f.l4_ok & ((udp_len < 8) | (f.l4 + udp_len > ip_end))
    tcp_proto = ip & (f.proto == 6) & ~f.fragment
    doff = (f.l4_head[:, 12] >> 4).astype(np.int64) * 4
    bad_header = (tcp_proto & (~f.tcp | (f.l4 + doff > ip_end))) | (udp & ~f.l4_ok)
    flags = f.tcp_flags
    bad_flags = f.tcp & _BAD_FLAGS[flags & 0xFF]
    tiny = np.zeros(len(f), dtype=bool)
    if f.fragment.any():
        frag = f.fragment
        data = ip_end - f.l4
        bad_len |= frag & (f.frag_offset * 8 + data > 65535)
        first = frag & (f.frag_offset == 0)
        tiny = frag & (
            ((f.proto == 6) & (f.frag_offset == 1))
            | (first & (data < _HEADER_NEED[f.proto]))
            | (f.more_fragments & (data % 8 != 0))
        )
    land = is4 & (f.ip[:, 12:16].view(_U32)[:, 0] == f.ip[:, 16:20].view(_U32)[:, 0])
    if is6.any():
        words = f.ip[:, 8:40].view(_U64)
        same6 = (words[:, 0] == words[:, 2]) & (words[:, 1] == words[:, 3])
        land |= is6 & same6
    return [
        (DosReason.MALFORMED, ip_type & ~ip),
        (DosReason.BAD_LENGTH, bad_len),
        (DosReason.BAD_HEADER_LENGTH, bad_header),
        (DosReason.BAD_TCP_FLAGS, bad_flags),
        (DosReason.TINY_FRAGMENT, tiny),
        (DosReason.LAND, land),
    ]
