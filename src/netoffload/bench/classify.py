"""`netoffload bench classify`: RSS, 20-rule classification and DoS filtering, packets per second.

The input is what a receive ring holds: 1024 frames in fixed-size slots of one
buffer pool (a SoftNic pool's layout), IPv4 and IPv6, TCP and UDP, from many
flows. Every measured call starts from the ring (``FrameBatch.from_ring``) and
includes field extraction, on one thread pinned to one core, best of several
repetitions. Side by side, in the same run:

* RSS: the batch path against a loop that dissects each frame and runs the
  specification's bit loop (``toeplitz_hash``);
* classification with 20 rules (IPv4 and IPv6 prefixes, ports, ranges,
  protocols, DSCP, TCP flags) against a plain loop that parses each frame with
  the wire views and tries the rules one by one;
* DoS filtering (20 blocked prefixes, per-source, SYN and ICMP limits, every
  malformed check) on the batch against the same filter called frame by frame.

The vectorised and the per-frame results are checked to agree.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv6Address

import numpy as np
from rich.console import Console
from rich.table import Table

from netoffload.bench import number, one_core
from netoffload.engine.classify import Classifier, Fate, Rule
from netoffload.engine.dissect import DissectError, dissect
from netoffload.engine.dosfilter import DosFilter, RateLimit
from netoffload.engine.fields import FrameBatch, extract
from netoffload.engine.ntuple import parse_rule
from netoffload.engine.rss import MICROSOFT_KEY, Rss, toeplitz_hash
from netoffload.progress import NO_PROGRESS, Progress
from netoffload.wire import (
    EthernetFrame,
    EthernetRepr,
    Ipv4Packet,
    Ipv4Repr,
    Ipv6Packet,
    Ipv6Repr,
    MacAddress,
    TcpFlags,
    TcpPacket,
    TcpRepr,
    UdpPacket,
    UdpRepr,
    WireError,
)

BATCH_FRAMES = 1024
SLOT_BYTES = 2048
HEADROOM = 128
#: Issue acceptance target, million packets per second on one core (RSS, classification).
TARGET_MPPS = 5.0

RULES = (
    "flow-type tcp4 src-ip 198.18.0.0/24 dst-port 80 action 1",
    "flow-type tcp4 src-ip 198.18.1.0/24 dst-port 443 action 2 mark 7",
    "flow-type udp4 dst-port 53 action 3",
    "flow-type tcp4 dst-ip 198.19.0.0/16 dst-port 8000-8999 action 1",
    "flow-type ip4 src-ip 198.18.9.0/24 action drop",
    "flow-type tcp4 tcp-flags syn/syn,ack dst-port 22 action 0 mark 22",
    "flow-type udp4 src-port 1024-2047 dst-ip 198.19.1.0/24 action 2",
    "flow-type ip4 dscp 46 action 3 mark 46",
    "flow-type tcp4 src-ip 198.18.2.0/23 dst-port 5201 action 2 count",
    "flow-type udp4 dst-port 4789 action 1 mirror 3",
    "flow-type tcp6 src-ip fd00:1::/48 dst-port 80 action 1",
    "flow-type tcp6 src-ip fd00:2::/48 dst-port 443 action 2 mark 8",
    "flow-type udp6 dst-port 53 action 3",
    "flow-type tcp6 dst-ip fd00:99::/32 dst-port 8000-8999 action 1",
    "flow-type ip6 src-ip fd00:dead::/32 action drop",
    "flow-type tcp6 tcp-flags syn/syn,ack dst-port 22 action 0",
    "flow-type udp6 src-port 1024-2047 dst-ip fd00:99:1::/48 action 2",
    "flow-type ip6 dscp 46 action 3",
    "flow-type udp6 dst-ip fd00:5::1 action 2 count",
    "flow-type ip6 l4proto 58 action 0",
)
_MACS = (MacAddress.parse("02:00:00:00:00:02"), MacAddress.parse("02:00:00:00:00:01"))


def build_frames(count: int, seed: int = 10) -> list[bytes]:
    """``count`` frames of many flows: IPv4 and IPv6 (half each), TCP mostly, some UDP."""
    rng = random.Random(seed)
    frames = []
    for i in range(count):
        v6 = i % 2 == 1
        udp = rng.random() < 0.3
        sport = rng.randrange(1024, 65536)
        dport = rng.choice((80, 443, 22, 53, 5201, 8080, 8443, 4789))
        payload = bytes(rng.randrange(0, 64))
        if udp:
            l4: TcpRepr | UdpRepr = UdpRepr(sport, dport)
        else:
            flags = TcpFlags.SYN if rng.random() < 0.1 else TcpFlags.ACK | TcpFlags.PSH
            l4 = TcpRepr(sport, dport, rng.getrandbits(32), 1, flags, 65535)
        proto = 17 if udp else 6
        l4_len = l4.buffer_len(len(payload))
        src: IPv4Address | IPv6Address
        dst: IPv4Address | IPv6Address
        if v6:
            src6 = IPv6Address(f"fd00:{rng.randrange(1, 6):x}::{rng.getrandbits(16):x}")
            dst6 = IPv6Address(f"fd00:99:{rng.randrange(3):x}::{rng.getrandbits(16):x}")
            ip: Ipv4Repr | Ipv6Repr = Ipv6Repr(src6, dst6, proto, l4_len)
            src, dst = src6, dst6
            eth = EthernetRepr(*_MACS, ethertype=0x86DD)
        else:
            src4 = IPv4Address(f"198.18.{rng.randrange(12)}.{rng.randrange(1, 255)}")
            dst4 = IPv4Address(f"198.19.{rng.randrange(3)}.{rng.randrange(1, 255)}")
            ip = Ipv4Repr(src4, dst4, proto, l4_len, dont_frag=True)
            src, dst = src4, dst4
            eth = EthernetRepr(*_MACS, ethertype=0x0800)
        frame = bytearray(eth.header_len + ip.header_len + l4_len)
        eth.emit(frame)
        ip.emit(frame, eth.header_len)
        l4.emit(frame, eth.header_len + ip.header_len, payload=payload, src=src, dst=dst)
        frames.append(bytes(frame))
    return frames


def ring(frames: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pool, starts, lengths): the frames in fixed-size slots, as a receive ring holds them."""
    pool = np.zeros(len(frames) * SLOT_BYTES, dtype=np.uint8)
    starts = np.arange(len(frames), dtype=np.int64) * SLOT_BYTES + HEADROOM
    for start, frame in zip(starts.tolist(), frames, strict=True):
        pool[start : start + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
    lengths = np.array([len(f) for f in frames], dtype=np.int64)
    return pool, starts, lengths


# -- the per-frame loops -------------------------------------------------------------------


def reference_classify(rules: list[tuple[int, Rule]], frames: Sequence[bytes]) -> list[int]:
    """Plain Python: parse every frame with the wire views, try the rules in order (rule ids)."""
    out = []
    for frame in frames:
        found = -1
        fields = _plain_fields(frame)
        if fields is not None:
            for rid, rule in rules:
                if _holds(rule, fields):
                    found = rid
                    break
        out.append(found)
    return out


def _plain_fields(frame: bytes) -> dict[str, object] | None:
    try:
        eth = EthernetFrame.checked(frame)
        payload = eth.payload
        f: dict[str, object] = {"version": None}
        if eth.ethertype == 0x0800:
            ip4 = Ipv4Packet.checked(payload)
            f.update(version=4, src=ip4.src, dst=ip4.dst, proto=ip4.protocol, dscp=ip4.dscp)
            l4 = ip4.payload
        elif eth.ethertype == 0x86DD:
            ip6 = Ipv6Packet.checked(payload)
            f.update(version=6, src=ip6.src, dst=ip6.dst, proto=ip6.next_header)
            f["dscp"] = ip6.traffic_class >> 2
            l4 = ip6.payload
        else:
            return f
        if f["proto"] == 6:
            tcp = TcpPacket.checked(l4, options=False)
            f.update(sport=tcp.src_port, dport=tcp.dst_port, flags=int(tcp.flags) & 0xFF)
        elif f["proto"] == 17:
            udp = UdpPacket.checked(l4)
            f.update(sport=udp.src_port, dport=udp.dst_port)
    except WireError:
        return None
    return f


def _holds(rule: Rule, f: dict[str, object]) -> bool:
    m = rule.match
    if m.version is not None and f["version"] != m.version:
        return False
    for cond, key in ((m.proto, "proto"), (m.sport, "sport"), (m.dport, "dport"), (m.dscp, "dscp")):
        if cond is not None:
            value = f.get(key)
            if not isinstance(value, int) or not cond.matches(value):
                return False
    if m.tcp_flags is not None:
        flags = f.get("flags")
        if not isinstance(flags, int) or not m.tcp_flags.matches(flags):
            return False
    for acond, key in ((m.src, "src"), (m.dst, "dst")):
        if acond is not None:
            addr = f.get(key)
            if not isinstance(addr, IPv4Address | IPv6Address) or not acond.matches(addr):
                return False
    return True


def reference_rss(frames: Sequence[bytes]) -> list[int]:
    """Per frame: dissect, build the specification's input, run the bit loop."""
    out = []
    for frame in frames:
        try:
            d = dissect(frame)
        except DissectError:
            out.append(0)
            continue
        if d.version == 4:
            data = bytes(frame[d.l3 + 12 : d.l3 + 20])
        else:
            data = bytes(frame[d.l3 + 8 : d.l3 + 40])
        if d.l4_header_len and not d.fragment:
            data += bytes(frame[d.l4 : d.l4 + 4])
        out.append(toeplitz_hash(MICROSOFT_KEY, data))
    return out


def dos_filter() -> DosFilter:
    """The benchmark's filter: 20 blocked prefixes, generous limits, every malformed check."""
    f = DosFilter()
    for i in range(10):
        f.block(f"198.18.{200 + i}.0/24")
        f.block(f"fd00:{0xBAD0 + i:x}::/32")
    f.limit_sources(RateLimit(1_000_000, 10_000))
    f.limit_syn(RateLimit(1_000_000, 10_000))
    f.limit_icmp(RateLimit(1_000_000, 10_000))
    return f


# -- measuring ------------------------------------------------------------------------------


def _mpps(call: Callable[[], object], frames: int, budget_ns: int, repetitions: int) -> float:
    """Million frames a second for ``call`` handling ``frames`` frames, the best repetition."""
    call()  # warm up
    start = time.perf_counter_ns()
    call()
    once = max(time.perf_counter_ns() - start, 1)
    iterations = max(1, budget_ns // once)
    best = math.inf
    for _ in range(repetitions):
        start = time.perf_counter_ns()
        for _ in range(iterations):
            call()
        best = min(best, (time.perf_counter_ns() - start) / iterations)
    return frames / best * 1000.0


def run(quick: bool, progress: Progress = NO_PROGRESS) -> dict[str, object]:
    """Measure and return the JSON result (rates in million packets per second)."""
    progress.stage("classify", 7)
    budget_ns = 20_000_000 if quick else 100_000_000
    repetitions = 5 if quick else 15
    reference_frames = 64 if quick else 256
    frames = build_frames(BATCH_FRAMES)
    pool, starts, lengths = ring(frames)
    rss = Rss(queues=4)
    classifier = Classifier(parse_rule(text) for text in RULES)
    rules = classifier.rules()
    dos = dos_filter()
    now = [0]

    def batch() -> FrameBatch:
        return FrameBatch.from_ring(pool, starts, lengths)

    def do_extract() -> object:
        return extract(batch())

    def do_rss() -> object:
        return rss.hash_fields(extract(batch()))

    def do_classify() -> object:
        fields = extract(batch())
        return classifier.classify(fields, default_queue=rss.hash_fields(fields).queue)

    def do_classify_only() -> object:
        return classifier.classify(extract(batch()))

    def do_dos() -> object:
        now[0] += 1_000_000
        return dos.filter(extract(batch()), now[0])

    some = frames[:reference_frames]
    some_batches = [
        FrameBatch.from_ring(pool, starts[i : i + 1], lengths[i : i + 1]) for i in range(len(some))
    ]

    def do_dos_per_frame() -> object:
        now[0] += 1_000_000
        return [dos.filter(extract(b), now[0]) for b in some_batches]

    fields = extract(batch())
    got_rules = classifier.classify(fields).rule.tolist()
    hashes = rss.hash_fields(fields).hash.tolist()
    agree = got_rules[:reference_frames] == reference_classify(rules, some) and hashes[
        :reference_frames
    ] == reference_rss(some)
    with one_core():
        extract_mpps = _mpps(do_extract, BATCH_FRAMES, budget_ns, repetitions)
        progress.update(1)
        rss_mpps = _mpps(do_rss, BATCH_FRAMES, budget_ns, repetitions)
        progress.update(2)
        classify_mpps = _mpps(do_classify_only, BATCH_FRAMES, budget_ns, repetitions)
        classify_rss_mpps = _mpps(do_classify, BATCH_FRAMES, budget_ns, repetitions)
        progress.update(3)
        dos_mpps = _mpps(do_dos, BATCH_FRAMES, budget_ns, repetitions)
        progress.update(4)
        ref_classify = _mpps(lambda: reference_classify(rules, some), len(some), budget_ns, 3)
        progress.update(5)
        ref_rss = _mpps(lambda: reference_rss(some), len(some), budget_ns, 3)
        progress.update(6)
        dos_per_frame = _mpps(do_dos_per_frame, len(some), budget_ns, 3)
        progress.update(7)
    verdicts = dos.filter(extract(batch()), now[0] + 1).verdict
    return {
        "rss_mpps": rss_mpps,
        "classify_mpps": classify_mpps,
        "classify_with_rss_mpps": classify_rss_mpps,
        "dosfilter_mpps": dos_mpps,
        "extract_mpps": extract_mpps,
        "reference_classify_mpps": ref_classify,
        "reference_rss_mpps": ref_rss,
        "dosfilter_per_frame_mpps": dos_per_frame,
        "classify_ratio_vs_reference": classify_mpps / ref_classify,
        "rss_ratio_vs_reference": rss_mpps / ref_rss,
        "dosfilter_ratio_vs_per_frame": dos_mpps / dos_per_frame,
        "rules": len(rules),
        "rules_with_fate": sum(1 for _, r in rules if r.action.fate is not Fate.DEFAULT),
        "batch_frames": BATCH_FRAMES,
        "reference_frames": len(some),
        "matched_fraction": float(np.mean(np.array(got_rules) >= 0)),
        "dosfilter_passed_fraction": float(np.mean(verdicts == 0)),
        "repetitions": repetitions,
        "results_agree": agree,
        "target_mpps": TARGET_MPPS,
        "quick": quick,
    }


def render(result: dict[str, object], console: Console) -> None:
    """Print the result as a table."""
    table = Table(
        title=(
            f"Receive classification, one core, ring batches of {result['batch_frames']} frames "
            f"(field extraction included; best of {result['repetitions']} runs)"
        )
    )
    table.add_column("task")
    table.add_column("batch Mpps", justify="right")
    table.add_column("per-frame loop Mpps", justify="right")
    table.add_column("batch / loop", justify="right")
    table.add_column("target Mpps", justify="right")
    rows = (
        ("RSS (Toeplitz, queue)", "rss_mpps", "reference_rss_mpps", "rss_ratio_vs_reference", True),
        (
            f"classification, {result['rules']} rules",
            "classify_mpps",
            "reference_classify_mpps",
            "classify_ratio_vs_reference",
            True,
        ),
        (
            "DoS filtering",
            "dosfilter_mpps",
            "dosfilter_per_frame_mpps",
            "dosfilter_ratio_vs_per_frame",
            False,
        ),
    )
    target = number(result, "target_mpps")
    for label, key, ref_key, ratio_key, targeted in rows:
        rate = number(result, key)
        mark = ("[green]met[/]" if rate >= target else "[red]missed[/]") if targeted else ""
        table.add_row(
            label,
            f"{rate:.2f}",
            f"{number(result, ref_key):.3f}",
            f"{number(result, ratio_key):.0f}x",
            f"{target:.1f} {mark}" if targeted else "",
        )
    table.add_row("field extraction alone", f"{number(result, 'extract_mpps'):.2f}", "", "", "")
    table.add_row(
        "classification + RSS default queue",
        f"{number(result, 'classify_with_rss_mpps'):.2f}",
        "",
        "",
        "",
    )
    console.print(table)
    if not result["results_agree"]:
        console.print("[red]the batch results and the per-frame loops disagree[/]")
