"""Receive steering: DoS filtering, RSS and classification of one batch, as a device runs them.

A device that has CLASSIFICATION and/or DOS_FILTER enabled (or the host
fallback, for one that has not) runs ``Steering.steer`` on every received
batch, before checksum verification and assembly. The batch's header fields
are extracted once (``fields.extract``); then, in this order:

1. DoS filtering (DOS_FILTER): malformed frames, block lists and rate limits
   drop a frame, counted by reason (``dos_<reason>``); a SYN over its
   destination's SYN rate passes with the verdict ``SYN_COOKIE``, for the
   stack to answer with a SYN cookie;
2. RSS (CLASSIFICATION with hash types): the Toeplitz hash, its report
   (virtio's ``hash_report``) and the indirection table's queue;
3. classification rules (CLASSIFICATION): the first matching rule delivers
   the frame to a queue, marks it, mirrors it or drops it (counted per rule
   and as ``rule_drop``).

What a delivered frame carries up is a ``Steered`` row: its queue, and the
``RxInfo`` fields the device fills (``flow_hash``, ``hash_report``,
``queue``, ``mark``, ``verdict``, ``filter_rule``). ``filter_rule`` is the
DoS rule behind a ``SYN_COOKIE`` verdict, otherwise the classification rule
that decided the frame (``None`` when none did).

Rules are changed at run time with one-line text commands (``command``), the
words ``netoffload rules`` takes: an ethtool ntuple rule, or a DoS entry
(``dos block src-ip PREFIX``, ``dos allow dst-ip PREFIX``, ``dos limit
syn|source|destination|icmp RATE [burst N]``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

import numpy as np

from netoffload.engine.classify import NO_RULE, Classifier, RuleCounters, RuleError
from netoffload.engine.dosfilter import REASONS, DosFilter, DosVerdict, RateLimit
from netoffload.engine.fields import FrameBatch, extract
from netoffload.engine.ntuple import format_rule, parse_rule
from netoffload.engine.rss import ALL_HASH_TYPES, Rss
from netoffload.offload.caps import RssHashTypes
from netoffload.offload.extension import NO_INFO, FilterVerdict, HashReport, RxInfo

Buffer: TypeAlias = bytes | bytearray | memoryview

RULE_DROP = "rule_drop"
_LIMIT_KINDS = ("syn", "source", "destination", "icmp")


class SteeringError(ValueError):
    """A rules command that cannot be taken; the message is one line."""


@dataclass(frozen=True, slots=True)
class Steered:
    """One delivered frame (or mirrored copy): its index in the batch, queue and findings."""

    index: int
    queue: int
    info: RxInfo


@dataclass(slots=True)
class SteerOutcome:
    """Delivered frames in batch order (a mirrored copy right after its original), and the
    drops of this batch by reason."""

    rows: list[Steered]
    drops: Counter[str]


class Steering:
    """A device's receive steering state: the rules, the DoS filter, RSS; which are on."""

    def __init__(
        self,
        *,
        queues: int = 1,
        rule_slots: int = 1024,
        hash_types: RssHashTypes = ALL_HASH_TYPES,
        max_buckets: int = 65536,
    ) -> None:
        self.queues = max(1, queues)
        self.classifier = Classifier(max_rules=rule_slots)
        self.dos = DosFilter(max_buckets=max_buckets)
        self.rss = Rss(queues=self.queues, hash_types=hash_types)
        self.classify_on = False
        self.dos_on = False
        self._dos_text: dict[int, str] = {}

    @property
    def active(self) -> bool:
        return self.classify_on or self.dos_on

    @property
    def has_work(self) -> bool:
        """Whether a batch needs steering: rules, DoS entries, or queues to spread over."""
        dos = self.dos_on and bool(self._dos_text)
        return dos or (self.classify_on and (bool(len(self.classifier)) or self.queues > 1))

    def enable(self, *, classify: bool, dos: bool, hash_types: RssHashTypes | None = None) -> None:
        """Turn the tasks on or off (what the enabled records say)."""
        self.classify_on = classify
        self.dos_on = dos
        if hash_types is not None and hash_types != self.rss.hash_types:
            self.rss = Rss(table=self.rss.table, hash_types=hash_types)

    # -- the batch ------------------------------------------------------------------------
    def steer(self, frames: Sequence[Buffer], now_ns: int) -> SteerOutcome:
        """Filter, hash and classify ``frames``; never raises on a frame's content."""
        n = len(frames)
        drops: Counter[str] = Counter()
        if not n or not self.active:
            return SteerOutcome([Steered(i, 0, NO_INFO) for i in range(n)], drops)
        fields = extract(FrameBatch.from_frames(frames))
        keep = np.arange(n)
        verdict = np.zeros(n, dtype=np.uint8)
        dos_rule = np.full(n, NO_RULE, dtype=np.int64)
        if self.dos_on:
            result = self.dos.filter(fields, now_ns)
            dropped = (result.verdict == DosVerdict.DROP) | (
                result.verdict == DosVerdict.RATE_LIMITED
            )
            if dropped.any():
                reasons = result.reason[dropped].astype(np.int64)
                for r, count in zip(*np.unique(reasons, return_counts=True), strict=True):
                    drops[f"dos_{REASONS[int(r)].value}"] += int(count)
                keep = np.flatnonzero(~dropped)
                if not len(keep):
                    return SteerOutcome([], drops)
                fields = extract(FrameBatch.from_frames([frames[i] for i in keep.tolist()]))
            verdict = result.verdict[keep]
            dos_rule = result.rule[keep]
        if not self.classify_on:
            rows = [
                Steered(i, 0, _dos_info(int(v), int(r)))
                for i, v, r in zip(keep.tolist(), verdict.tolist(), dos_rule.tolist(), strict=True)
            ]
            return SteerOutcome(rows, drops)
        hashed = self.rss.hash_fields(fields)
        classes = self.classifier.classify(fields, default_queue=hashed.queue)
        if classes.drop.any():
            drops[RULE_DROP] += int(np.count_nonzero(classes.drop))
        rows = []
        for i, q, h, rep, rule, mark, mirror, drop, v, dr in zip(
            keep.tolist(),
            classes.queue.tolist(),
            hashed.hash.tolist(),
            hashed.report.tolist(),
            classes.rule.tolist(),
            classes.mark.tolist(),
            classes.mirror.tolist(),
            classes.drop.tolist(),
            verdict.tolist(),
            dos_rule.tolist(),
            strict=True,
        ):
            cookie = v == DosVerdict.SYN_COOKIE
            info = RxInfo(
                flow_hash=h if rep else None,
                hash_report=HashReport(rep),
                mark=None if mark < 0 else mark,
                verdict=FilterVerdict.SYN_COOKIE if cookie else FilterVerdict.PASS,
                filter_rule=dr if cookie and dr >= 0 else (None if rule < 0 else rule),
            )
            if not drop:
                queue = q % self.queues
                rows.append(Steered(i, queue, replace(info, queue=queue)))
            if mirror >= 0:
                queue = mirror % self.queues
                rows.append(Steered(i, queue, replace(info, queue=queue)))
        return SteerOutcome(rows, drops)

    # -- run-time configuration -----------------------------------------------------------
    def command(self, text: str) -> dict[str, Any]:
        """Run one rules command (``add WORDS``, ``del ID``, ``del dos ID``, ``list``)."""
        words = text.split()
        if not words:
            raise SteeringError("empty command: add, del or list")
        verb, rest = words[0], words[1:]
        try:
            if verb == "list":
                return {"rules": self.listing()}
            if verb == "add" and rest[:1] == ["dos"]:
                return {"added": self._add_dos(rest[1:]), "table": "dos"}
            if verb == "add":
                rule = parse_rule(" ".join(rest))
                for queue in (rule.action.queue, rule.action.mirror):
                    if queue is not None and queue >= self.queues:
                        raise SteeringError(f"queue {queue}: the device has {self.queues}")
                return {"added": self.classifier.add(rule), "table": "classify"}
            if verb == "del" and rest[:1] == ["dos"] and len(rest) == 2:
                rule_id = _rule_id(rest[1])
                try:
                    self.dos.remove(rule_id)
                except KeyError:
                    raise SteeringError(f"no dos rule {rule_id}") from None
                self._dos_text.pop(rule_id, None)
                return {"deleted": rule_id, "table": "dos"}
            if verb == "del" and len(rest) == 1:
                rule_id = _rule_id(rest[0])
                self.classifier.remove(rule_id)
                return {"deleted": rule_id, "table": "classify"}
        except RuleError as exc:
            raise SteeringError(str(exc).splitlines()[0]) from None
        raise SteeringError(f"{text.strip()!r}: expected add WORDS, del [dos] ID or list")

    def _add_dos(self, words: list[str]) -> int:
        usage = "dos block|allow src-ip|dst-ip PREFIX, or dos limit KIND RATE [burst N]"
        if len(words) == 3 and words[0] in ("block", "allow"):
            side = {"src-ip": "source", "dst-ip": "destination"}.get(words[1])
            if side is None:
                raise SteeringError(usage)
            try:
                add = self.dos.block if words[0] == "block" else self.dos.allow
                rule_id = add(words[2], side=side)
            except ValueError as exc:
                raise SteeringError(str(exc).splitlines()[0]) from None
        elif len(words) in (3, 5) and words[0] == "limit" and words[1] in _LIMIT_KINDS:
            rate = _count(words[2], "rate")
            burst = rate
            if len(words) == 5:
                if words[3] != "burst":
                    raise SteeringError(usage)
                burst = _count(words[4], "burst")
            try:
                limit = RateLimit(rate, burst)
            except ValueError as exc:
                raise SteeringError(str(exc)) from None
            kind = words[1]
            old = [rid for rid, text in self._dos_text.items() if text.startswith(f"limit {kind} ")]
            rule_id = {
                "syn": self.dos.limit_syn,
                "source": self.dos.limit_sources,
                "destination": self.dos.limit_destinations,
                "icmp": self.dos.limit_icmp,
            }[kind](limit)
            for rid in old:  # one limit per kind: the new one replaced it
                self._dos_text.pop(rid, None)
        else:
            raise SteeringError(usage)
        self._dos_text[rule_id] = " ".join(words)
        return rule_id

    def listing(self) -> list[dict[str, Any]]:
        """Every rule: table, id, text and counters, classification rules in the order tried."""
        out: list[dict[str, Any]] = []
        counters: dict[int, RuleCounters] = self.classifier.counters()
        for rule_id, rule in self.classifier.rules():
            c = counters.get(rule_id, RuleCounters())
            out.append(
                {
                    "table": "classify",
                    "id": rule_id,
                    "rule": format_rule(rule),
                    "hits": c.hits,
                    "drops": c.drops,
                    "bytes": c.bytes,
                }
            )
        for rule_id, text in sorted(self._dos_text.items()):
            out.append(
                {"table": "dos", "id": rule_id, "rule": text, "hits": self.dos.rule_hits[rule_id]}
            )
        return out

    def counters(self) -> dict[str, Any]:
        """DoS drops by reason, SYN cookies, and per-rule counters (for ``stats``)."""
        return {
            "dos_drops": dict(sorted(self.dos.drops.items())),
            "syn_cookies": self.dos.syn_cookies,
            "rules": self.listing(),
        }


def _rule_id(word: str) -> int:
    try:
        value = int(word, 0)
    except ValueError:
        raise SteeringError(f"{word!r} is not a rule id") from None
    if value < 0:
        raise SteeringError("rule ids are not negative")
    return value


def _count(word: str, what: str) -> int:
    try:
        value = int(word, 0)
    except ValueError:
        raise SteeringError(f"{what}: {word!r} is not a number") from None
    if value < 1:
        raise SteeringError(f"{what} must be at least 1")
    return value


_DOS_INFO: dict[tuple[int, int], RxInfo] = {}


def _dos_info(verdict: int, rule: int) -> RxInfo:
    """The ``RxInfo`` of a frame only the DoS filter looked at (few distinct values)."""
    key = (verdict, rule)
    info = _DOS_INFO.get(key)
    if info is None:
        if verdict == DosVerdict.SYN_COOKIE:
            info = RxInfo(verdict=FilterVerdict.SYN_COOKIE, filter_rule=rule if rule >= 0 else None)
        else:
            info = NO_INFO
        if len(_DOS_INFO) < 4096:
            _DOS_INFO[key] = info
    return info


def merge_steering(found: RxInfo, steered: RxInfo) -> RxInfo:
    """``found`` (what checksum and assembly reported) with the steering fields added."""
    if steered is NO_INFO:
        return found
    return replace(
        found,
        flow_hash=steered.flow_hash,
        hash_report=steered.hash_report,
        queue=steered.queue,
        mark=steered.mark,
        verdict=steered.verdict,
        filter_rule=steered.filter_rule,
    )


__all__ = [
    "RULE_DROP",
    "SteerOutcome",
    "Steered",
    "Steering",
    "SteeringError",
    "merge_steering",
]
