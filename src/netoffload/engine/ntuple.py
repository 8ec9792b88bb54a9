"""Classification rules as text, in ethtool's ntuple terms (``ethtool -N DEV flow-type ...``).

``parse_rule`` reads one rule, ``format_rule`` writes one back (what it writes
parses to an equal rule). Words, in any order after an optional flow type:

=============================  ==================================================
``flow-type T``                ``ether``, ``ip4``, ``tcp4``, ``udp4``, ``ip6``,
                               ``tcp6``, ``udp6``: the IP version and protocol it
                               implies (``ether``: none)
``src MAC`` / ``dst MAC``      source / destination MAC (also ``src-mac``,
                               ``dst-mac``)
``proto N``                    EtherType behind the VLAN tags
``vlan N``                     the outermost VLAN tag's TCI
``src-ip A`` / ``dst-ip A``    an address, or a prefix ``A/LEN``
``l4proto N``                  IP protocol (with ``ip4`` / ``ip6``)
``src-port P`` / ``dst-port``  a port, or a range ``LO-HI`` (with ``ip4`` /
                               ``ip6`` or no flow type: TCP or UDP)
``tcp-flags V[/M]``            flags (``syn,ack`` or a number) that must be set,
                               among those in M (default: V)
``dscp N``                     DSCP (0..63)
``ingress-queue N``            the queue the frame came in on
``loc N``                      priority: lower first (default 0)
``action N``                   deliver to queue N; ``action -1`` or
                               ``action drop`` drops (also ``queue N``, ``drop``)
``mark V``                     mark the frame with V (0..2**32-1)
``mirror N``                   a copy to queue N too
``count``                      count the rule's bytes as well as its hits
=============================  ==================================================

Every value condition but ``src-port`` / ``dst-port`` ranges and prefixes may be
followed by ``m MASK`` as in ethtool: **the bits set in MASK are ignored**
(``src-ip 198.18.0.0 m 0.0.0.255`` is ``src-ip 198.18.0.0/24``). Numbers may be
decimal or ``0x`` hexadecimal. A malformed rule raises ``RuleSyntaxError`` (a
``ValueError``) whose message is one line naming the offending word.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from netoffload.engine.classify import (
    TCP_FLAG_NAMES,
    Action,
    AddressMatch,
    Fate,
    Masked,
    Match,
    PortMatch,
    PortRange,
    Rule,
    RuleError,
)
from netoffload.wire import MacAddress, WireError

__all__ = ["FLOW_TYPES", "RuleSyntaxError", "format_rule", "parse_rule"]

IPPROTO_TCP = 6
IPPROTO_UDP = 17
#: Flow type -> (IP version, protocol) it implies.
FLOW_TYPES: dict[str, tuple[int | None, int | None]] = {
    "ether": (None, None),
    "ip4": (4, None),
    "tcp4": (4, IPPROTO_TCP),
    "udp4": (4, IPPROTO_UDP),
    "ip6": (6, None),
    "tcp6": (6, IPPROTO_TCP),
    "udp6": (6, IPPROTO_UDP),
}
_ALIASES = {"src-mac": "src", "dst-mac": "dst", "queue": "action"}


class RuleSyntaxError(RuleError):
    """A rule's text that does not parse; the message is one line."""


def _int(word: str, what: str, top: int) -> int:
    try:
        value = int(word, 0)
    except ValueError:
        raise RuleSyntaxError(f"{what}: {word!r} is not a number") from None
    if not 0 <= value <= top:
        raise RuleSyntaxError(f"{what}: {value} is not in 0..{top}")
    return value


def _mac(word: str, what: str) -> int:
    try:
        return int.from_bytes(MacAddress.parse(word).octets, "big")
    except (WireError, ValueError):
        raise RuleSyntaxError(f"{what}: {word!r} is not a MAC address") from None


def _flags(word: str) -> int:
    if word[:1].isdigit():
        return _int(word, "tcp-flags", 0xFF)
    value = 0
    for name in filter(None, word.lower().split(",")):
        if name not in TCP_FLAG_NAMES:
            raise RuleSyntaxError(f"tcp-flags: {name!r} is not one of {', '.join(TCP_FLAG_NAMES)}")
        value |= 1 << TCP_FLAG_NAMES.index(name)
    return value


class _Words:
    def __init__(self, text: str) -> None:
        self.words = text.split()
        self.at = 0

    def next(self, what: str) -> str:
        if self.at >= len(self.words):
            raise RuleSyntaxError(f"{what}: a value is missing")
        word = self.words[self.at]
        self.at += 1
        return word

    def ignore_mask(self, what: str, parse: Any, bits: int) -> int | None:
        """The ``m MASK`` after a value as a mask of the bits to compare, if there is one."""
        if self.at < len(self.words) and self.words[self.at] == "m":
            self.at += 1
            ignored: int = parse(self.next(f"{what} m"))
            return ~ignored & ((1 << bits) - 1)
        return None


def _masked(words: _Words, what: str, bits: int, value: int, parse: Any) -> Masked:
    mask = words.ignore_mask(what, parse, bits)
    return Masked(value, (1 << bits) - 1 if mask is None else mask)


def _address(words: _Words, what: str, word: str) -> AddressMatch:
    if "/" in word:
        try:
            return AddressMatch.parse(word)
        except RuleError:
            raise RuleSyntaxError(f"{what}: {word!r} is not an address or a prefix") from None
    try:
        addr = ip_address(word)
    except ValueError:
        raise RuleSyntaxError(f"{what}: {word!r} is not an address or a prefix") from None
    bits = 32 if addr.version == 4 else 128

    def parse(text: str) -> int:
        try:
            mask = ip_address(text)
        except ValueError:
            raise RuleSyntaxError(f"{what} m: {text!r} is not an address mask") from None
        if mask.version != addr.version:
            raise RuleSyntaxError(f"{what} m: {text!r} is not an IPv{addr.version} mask")
        return int(mask)

    mask = words.ignore_mask(what, parse, bits)
    return AddressMatch(addr.version, int(addr), (1 << bits) - 1 if mask is None else mask)


def _port(words: _Words, what: str, word: str) -> PortMatch:
    if "-" in word.lstrip("-"):
        lo_text, _, hi_text = word.partition("-")
        lo, hi = _int(lo_text, what, 0xFFFF), _int(hi_text, what, 0xFFFF)
        if lo > hi:
            raise RuleSyntaxError(f"{what}: the range {word} is empty")
        return PortRange(lo, hi)
    value = _int(word, what, 0xFFFF)
    return _masked(words, what, 16, value, lambda t: _int(t, f"{what} m", 0xFFFF))


def parse_rule(text: str) -> Rule:
    """The rule that ``text`` (ethtool ntuple words, see the module doc) describes."""
    words = _Words(text)
    if not words.words:
        raise RuleSyntaxError("empty rule")
    match: dict[str, Any] = {}
    fate, queue = Fate.DEFAULT, None
    modifiers: dict[str, Any] = {}
    priority = 0
    flow: str | None = None
    seen: set[str] = set()
    while words.at < len(words.words):
        key = words.next("rule")
        key = _ALIASES.get(key, key)
        if key in seen:
            raise RuleSyntaxError(f"{key}: given twice")
        seen.add(key)
        if key == "flow-type":
            flow = words.next(key)
            if flow not in FLOW_TYPES:
                raise RuleSyntaxError(f"flow-type: {flow!r} is not one of {', '.join(FLOW_TYPES)}")
        elif key in ("src", "dst"):
            value = _mac(words.next(key), key)
            match[key + "_mac"] = _masked(words, key, 48, value, lambda t, k=key: _mac(t, k + " m"))
        elif key in ("proto", "vlan", "l4proto", "dscp"):
            bits = {"proto": 16, "vlan": 16, "l4proto": 8, "dscp": 6}[key]
            top = (1 << bits) - 1
            value = _int(words.next(key), key, top)
            masked = _masked(words, key, bits, value, lambda t, k=key, b=top: _int(t, k + " m", b))
            match[{"proto": "ethertype", "l4proto": "proto"}.get(key, key)] = masked
        elif key in ("src-ip", "dst-ip"):
            match[key[:3]] = _address(words, key, words.next(key))
        elif key in ("src-port", "dst-port"):
            match[key[0] + "port"] = _port(words, key, words.next(key))
        elif key == "tcp-flags":
            value_text, _, mask_text = words.next(key).partition("/")
            value = _flags(value_text)
            mask = _flags(mask_text) if mask_text else value
            if value & ~mask:
                raise RuleSyntaxError("tcp-flags: a flag that must be set is not in the mask")
            match["tcp_flags"] = Masked(value, mask)
        elif key == "ingress-queue":
            match["ingress_queue"] = _int(words.next(key), key, 0xFFFF)
        elif key == "loc":
            priority = _int(words.next(key), key, 0xFFFFFFFF)
        elif key == "action":
            word = words.next(key)
            if word in ("drop", "-1"):
                if "drop" in seen:
                    raise RuleSyntaxError("drop: given twice")
                fate = Fate.DROP
            else:
                fate, queue = Fate.QUEUE, _int(word, key, 0xFFFF)
        elif key == "drop":
            if fate is not Fate.DEFAULT:
                raise RuleSyntaxError("drop: the rule has an action already")
            fate = Fate.DROP
        elif key == "mark":
            modifiers["mark"] = _int(words.next(key), key, 0xFFFFFFFF)
        elif key == "mirror":
            modifiers["mirror"] = _int(words.next(key), key, 0xFFFF)
        elif key == "count":
            modifiers["count"] = True
        else:
            raise RuleSyntaxError(f"{key!r} is not a rule word")
    if "drop" in seen and "action" in seen:
        raise RuleSyntaxError("drop: the rule has an action already")
    if flow is not None:
        version, proto = FLOW_TYPES[flow]
        if version is not None:
            match["ip_version"] = version
        if proto is not None:
            if "proto" in match:
                raise RuleSyntaxError(f"l4proto: flow-type {flow} sets the protocol")
            match["proto"] = Masked.exact(proto, 8)
        if flow == "ether" and any(
            k in match for k in ("src", "dst", "proto", "sport", "dport", "dscp", "tcp_flags")
        ):
            raise RuleSyntaxError("flow-type ether: IP words need an IP flow type")
    if "tcp_flags" in match and "proto" in match and match["proto"] != Masked.exact(6, 8):
        raise RuleSyntaxError("tcp-flags: the rule is not for TCP")
    try:
        return Rule(Match(**match), Action(fate, queue, **modifiers), priority)
    except RuleError as exc:
        raise RuleSyntaxError(str(exc).splitlines()[0]) from None


def _num(value: int) -> str:
    return str(value)


def _mask_words(cond: Masked, bits: int, show: Callable[[int], str]) -> str:
    full = (1 << bits) - 1
    text = show(cond.value)
    if cond.mask != full:
        text += " m " + show(~cond.mask & full)
    return text


def _mac_text(value: int) -> str:
    return str(MacAddress(value.to_bytes(6, "big")))


def _address_text(cond: AddressMatch) -> str:
    plen = cond.prefix_len
    full = (1 << cond.bits) - 1
    if plen == cond.bits:
        return str(cond.address(cond.value))
    if plen is not None:
        return f"{cond.address(cond.value)}/{plen}"
    ignored: IPv4Address | IPv6Address = cond.address(~cond.mask & full)
    return f"{cond.address(cond.value)} m {ignored}"


def _port_text(cond: PortMatch) -> str:
    if isinstance(cond, PortRange):
        return f"{cond.lo}-{cond.hi}"
    return _mask_words(cond, 16, _num)


def format_rule(rule: Rule) -> str:
    """``rule`` as text that ``parse_rule`` reads back to an equal rule."""
    m, a = rule.match, rule.action
    out: list[str] = []
    proto = m.proto
    version = m.ip_version
    flow = None
    if version is not None and proto in (
        Masked.exact(IPPROTO_TCP, 8),
        Masked.exact(IPPROTO_UDP, 8),
    ):
        assert proto is not None
        flow = ("tcp" if proto.value == IPPROTO_TCP else "udp") + str(version)
        proto = None
    elif version is not None:
        flow = f"ip{version}"
    if flow is not None:
        out += ["flow-type", flow]
    if m.dst_mac is not None:
        out += ["dst", _mask_words(m.dst_mac, 48, _mac_text)]
    if m.src_mac is not None:
        out += ["src", _mask_words(m.src_mac, 48, _mac_text)]
    if m.ethertype is not None:
        out += ["proto", _mask_words(m.ethertype, 16, hex)]
    if m.vlan is not None:
        out += ["vlan", _mask_words(m.vlan, 16, hex)]
    if m.src is not None:
        out += ["src-ip", _address_text(m.src)]
    if m.dst is not None:
        out += ["dst-ip", _address_text(m.dst)]
    if proto is not None:
        out += ["l4proto", _mask_words(proto, 8, _num)]
    if m.sport is not None:
        out += ["src-port", _port_text(m.sport)]
    if m.dport is not None:
        out += ["dst-port", _port_text(m.dport)]
    if m.tcp_flags is not None:
        out += ["tcp-flags", f"{m.tcp_flags.value:#04x}/{m.tcp_flags.mask:#04x}"]
    if m.dscp is not None:
        out += ["dscp", _mask_words(m.dscp, 6, _num)]
    if m.ingress_queue is not None:
        out += ["ingress-queue", str(m.ingress_queue)]
    if not out:
        out += ["flow-type", "ether"]
    if a.fate is Fate.QUEUE:
        out += ["action", str(a.queue)]
    elif a.fate is Fate.DROP:
        out += ["action", "drop"]
    if a.mark is not None:
        out += ["mark", str(a.mark)]
    if a.mirror is not None:
        out += ["mirror", str(a.mirror)]
    if a.count:
        out.append("count")
    if rule.priority:
        out += ["loc", str(rule.priority)]
    return " ".join(out)
