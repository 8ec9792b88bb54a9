"""Hypothesis strategies for receive batches: flows of TCP segments, bent here and there.

A batch is a few flows of one header layout (as a receive batch mostly is),
now and then a flow of another; each flow a run of segments, some of them
tweaked so that one GRO rule or another comes into play; the flows in bursts,
round robin, or shuffled (each flow keeping its order).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from hypothesis import strategies as st

from tests.engine.segments import Seg

_TWEAKS = [
    "gap", "psh", "fin", "syn", "rst", "urg", "cwr", "ece", "ack", "window", "timestamp",
    "ttl", "tos", "nodf", "id_jump", "short", "long", "empty", "corrupt", "ipopts", "pad",
    "cut",
]  # fmt: skip
# What the column path may hand to the scalar engine: another layout in a flow, an IP
# ID repeated in an incrementing flow, a short segment after a short one, a ninth flow
# (a frame with another VLAN id or flow label is a flow of its own).
_IRREGULAR = ["hbh", "id_same", "add_vlan", "add_timestamp", "flowlabel", "vlan"]
_FLAG = {"psh": 0x18, "fin": 0x11, "syn": 0x12, "rst": 0x14, "urg": 0x30, "cwr": 0x90, "ece": 0x50}


@st.composite
def _flow(draw: st.DrawFn, number: int, layout: dict[str, Any], regular: bool) -> list[Seg]:
    kind = layout["kind"]
    size = draw(st.sampled_from([1448, 1448, 1000, 200, 1]))
    count = draw(st.integers(1, 40))
    fixed = kind == "tcp4" and draw(st.booleans())
    seq = draw(st.integers(0, 0xFFFFFFFF))
    ip_id = draw(st.integers(0, 0xFFFF))
    rate = draw(st.sampled_from([0, 0.02, 0.1, 0.4]))
    rnd = draw(st.randoms(use_true_random=False))
    segs: list[Seg] = []
    for i in range(count):
        base = Seg(flow=number, seq=seq, size=size, ip_id=ip_id if fixed else ip_id + i, **layout)
        if rnd.random() < rate:
            tweak = rnd.choice(_TWEAKS if regular or rnd.random() < 0.8 else _IRREGULAR)
            if not (regular and tweak in ("short", "empty") and segs and segs[-1].size < size):
                base = _tweak(base, tweak, rnd)
        segs.append(base)
        seq = (seq + base.size) & 0xFFFFFFFF
    return segs


def _tweak(s: Seg, tweak: str, rnd: random.Random) -> Seg:
    r = dataclasses.replace
    if tweak in _FLAG:
        return r(s, flags=_FLAG[tweak])
    changes: dict[str, Any] = {
        "gap": {"seq": s.seq + rnd.choice([1, 1448, -1])},
        "ack": {"ack": 2},
        "window": {"window": 100},
        "timestamp": {"timestamp": None if s.timestamp is None else 99},
        "add_timestamp": {"timestamp": 99 if s.timestamp is None else None},
        "ttl": {"ttl": 63},
        "tos": {"tos": 4},
        "nodf": {"df": False},
        "id_jump": {"ip_id": s.ip_id + rnd.choice([2, 0x8000])},
        "id_same": {"ip_id": s.ip_id - 1},
        "short": {"size": rnd.randrange(0, max(1, s.size))},
        "long": {"size": s.size + rnd.choice([1, 100])},
        "empty": {"size": 0},
        "corrupt": {"corrupt": True},
        "pad": {"pad": rnd.choice([1, 2, 6])},
        "cut": {"cut": rnd.choice([1, 10, s.size + 10])},
        "ipopts": {"ip_options": True},
        "flowlabel": {"flow_label": 1},
        "vlan": {"vlan": None if s.vlan is None else 9},
        "add_vlan": {"vlan": 9 if s.vlan is None else None},
        "hbh": {"hop_by_hop": True},
    }
    return r(s, **changes[tweak])


_LAYOUT = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["tcp4", "tcp4", "tcp4", "tcp6"]),
        "timestamp": st.sampled_from([None, 5]),
        "vlan": st.sampled_from([None, None, 3]),
    }
)


@st.composite
def receive_batches(draw: st.DrawFn, *, regular: bool = False) -> list[Seg]:
    """Flows of one layout (as a receive batch mostly is), now and then one of another.

    A ``regular`` batch is one the column path decides itself: TCP only, at
    most eight flows, and none of the ``_IRREGULAR`` tweaks.
    """
    layout = draw(_LAYOUT)
    count = draw(st.integers(1, 8))
    flows = [draw(_flow(n, layout, regular)) for n in range(count)]
    if draw(st.integers(0, 3)) == 0 and not (regular and count == 8):
        kinds = (
            _LAYOUT if regular else _LAYOUT | st.sampled_from([{"kind": "udp4"}, {"kind": "udp6"}])
        )
        flows.append(draw(_flow(len(flows), draw(kinds), regular)))
    order = draw(st.sampled_from(["runs", "round robin", "random"]))
    if order == "runs":
        return [s for f in flows for s in f]
    if order == "round robin":
        return [f[i] for i in range(max(map(len, flows))) for f in flows if i < len(f)]
    rnd = draw(st.randoms(use_true_random=False))
    cursors = [0] * len(flows)
    out = []
    while any(c < len(f) for c, f in zip(cursors, flows, strict=True)):
        k = rnd.choice([j for j, f in enumerate(flows) if cursors[j] < len(f)])
        out.append(flows[k][cursors[k]])
        cursors[k] += 1
    return out
