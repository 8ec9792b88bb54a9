"""GRO: the Linux merge rules, the completed header, and GSO as its exact inverse."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from netoffload.engine.gro import assemble, coalesce
from netoffload.engine.gso import segment, segment_request
from netoffload.offload.extension import GsoType, TxRequest
from netoffload.offload.virtio import VirtioNetHdr
from netoffload.wire.checksum import pseudo_header_sum
from tests.engine.builders import tcp4, tcp6, udp4, udp6
from tests.engine.gro_reference import reference_assemble

MSS = 1000
DATA = bytes((i * 13 + 5) % 256 for i in range(70000))


def flow4(count: int, *, last: int = MSS, id0: int = 10, **kw: Any) -> list[bytes]:
    """A TCP/IPv4 flow of ``count`` segments (the last of ``last`` bytes)."""
    out = []
    for i in range(count):
        size = last if i == count - 1 else MSS
        out.append(tcp4(DATA[i * MSS : i * MSS + size], seq=1000 + i * MSS, ip_id=id0 + i, **kw))
    return out


def sizes(frames: list[bytes]) -> list[int]:
    return [h.gso_size and len(b) for h, b in coalesce(frames)]


def counts(frames: list[bytes]) -> list[int]:
    return [u.segments for u in assemble(frames)]


def roundtrip(frames: list[bytes]) -> list[bytes]:
    return [f for h, b in coalesce(frames) for f in segment(b, h)]


def test_merged_header_is_what_linux_writes_on_a_tap_read() -> None:
    frames = flow4(5, last=300, flags="A")
    ((h, b),) = coalesce(frames)
    assert h == VirtioNetHdr(
        flags=1, gso_type=1, hdr_len=54, gso_size=MSS, csum_start=34, csum_offset=16
    )
    p = Ether(b)
    assert p[IP].len == len(b) - 14 and p[IP].id == 10
    ip = p[IP].copy()
    del ip.chksum
    assert p[IP].chksum == IP(bytes(ip))[IP].chksum
    # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum for the new length.
    expected = pseudo_header_sum(bytes(b[26:30]), bytes(b[30:34]), 6, len(b) - 34)
    assert p[TCP].chksum == expected
    assert bytes(p[TCP].payload) == DATA[: 4 * MSS + 300]
    assert roundtrip(frames) == frames


def test_unmerged_frames_pass_unchanged_with_data_valid() -> None:
    frames = [tcp4(b"x" * 10, flags="PA"), udp4(b"y" * 10, sport=9)]
    out = coalesce(frames)
    assert [b for _, b in out] == frames
    assert all(h == VirtioNetHdr(flags=2) for h, _ in out)


def test_psh_merges_and_ends() -> None:
    frames = flow4(3, flags="A")
    frames[1] = tcp4(DATA[MSS : 2 * MSS], seq=1000 + MSS, ip_id=11, flags="PA")
    assert counts(frames) == [2, 1]
    ((_h, b), _) = coalesce(frames)
    assert Ether(b)[TCP].flags == "PA"
    assert roundtrip(frames) == frames


def test_short_segment_merges_and_ends() -> None:
    frames = [*flow4(2, last=10), tcp4(DATA[:MSS], seq=1000 + MSS + 10, ip_id=12)]
    assert counts(frames) == [2, 1]


def test_longer_segment_does_not_merge() -> None:
    frames = [tcp4(DATA[:500], ip_id=1), tcp4(DATA[:600], seq=1500, ip_id=2)]
    assert counts(frames) == [1, 1]


def test_seq_gap_ack_window_options_ttl_tos_df_do_not_merge() -> None:
    base = dict(seq=1000 + MSS, ip_id=11)
    variants: list[dict[str, Any]] = [
        {"seq": 1000 + MSS + 1},
        {"ack": 2},
        {"window": 1},
        {"options": [("NOP", None)] * 4},
        {"ttl": 1},
        {"tos": 4},
        {"df": False},
        {"ip_id": 13},
    ]
    for change in variants:
        second = tcp4(DATA[MSS : 2 * MSS], **{**base, **change})
        assert counts([*flow4(1), second]) == [1, 1], change


def test_cwr_starts_a_new_super_packet_with_the_ecn_bit() -> None:
    frames = flow4(2) + [
        tcp4(DATA[:MSS], seq=1000 + 2 * MSS + i * MSS, ip_id=12 + i, flags="CA" if i == 0 else "A")
        for i in range(3)
    ]
    out = coalesce(frames)
    assert [h.gso_type for h, _ in out] == [1, 0x81]
    assert roundtrip(frames) == frames


def test_fixed_id_flow_merges_and_keeps_its_id() -> None:
    frames = [tcp4(DATA[:MSS], seq=1000 + i * MSS, ip_id=5) for i in range(4)]
    (unit,) = assemble(frames)
    assert unit.segments == 4 and unit.assembled is not None and unit.assembled.fixed_id
    req = TxRequest(checksum=unit.checksum_partial, segmentation=unit.assembled)
    assert segment_request(unit.data, req) == frames


def test_fixed_id_needs_df() -> None:
    frames = [tcp4(DATA[:MSS], seq=1000 + i * MSS, ip_id=5, df=False) for i in range(2)]
    assert counts(frames) == [1, 1]


def test_bad_checksum_is_passed_up_and_does_not_flush_the_flow() -> None:
    frames = flow4(3)
    bad = bytearray(frames[1])
    bad[-1] ^= 0xFF
    out = assemble([frames[0], bytes(bad), frames[2]])
    # The bad frame goes up alone at once; the held first frame stays held and
    # cannot take the third (sequence gap), which then starts its own.
    assert [(u.index, u.segments, u.validated) for u in out] == [
        (1, 1, False),
        (0, 1, True),
        (2, 1, True),
    ]


def test_ip_options_and_ipv4_padding_are_not_merged() -> None:
    opts = [
        tcp4(DATA[:MSS], seq=1000 + i * MSS, ip_id=1 + i, ip_options=b"\x01" * 4) for i in range(2)
    ]
    assert counts(opts) == [1, 1]
    padded = [f + b"\x00\x00" for f in flow4(2)]
    assert counts(padded) == [1, 1]
    assert [u.validated for u in assemble(padded)] == [False, False]


def test_flows_interleave_and_are_flushed_oldest_first() -> None:
    a = flow4(3, sport=1)
    b = flow4(3, sport=2)
    frames = [a[0], b[0], a[1], b[1], a[2], b[2]]
    out = assemble(frames)
    assert [(u.index, u.segments) for u in out] == [(0, 3), (1, 3)]


def test_at_most_eight_flows_are_held() -> None:
    frames = [flow4(1, sport=100 + i)[0] for i in range(9)]
    out = assemble(frames)
    assert [u.index for u in out] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    frames.append(tcp4(DATA[MSS : 2 * MSS], seq=1000 + MSS, ip_id=11, sport=100))
    assert next(u.segments for u in assemble(frames)) == 1  # flow 100 was flushed early


def test_size_limit_is_64k_of_ip() -> None:
    frames = flow4(70)
    out = assemble(frames)
    assert all(len(u.data) - 14 <= 65535 for u in out)
    assert out[0].segments == (65535 - 40) // MSS
    assert roundtrip(frames) == frames


def test_tcp6() -> None:
    frames = [tcp6(DATA[i * MSS : (i + 1) * MSS], seq=1000 + i * MSS) for i in range(4)]
    ((h, _b),) = coalesce(frames)
    assert (h.gso_type, h.csum_start, h.hdr_len) == (4, 54, 74)
    assert roundtrip(frames) == frames
    other = tcp6(DATA[4 * MSS : 5 * MSS], seq=1000 + 4 * MSS, fl=7)  # flow label: other flow
    assert counts([*frames, other]) == [4, 1]


def test_udp_rules() -> None:
    same = [udp4(DATA[:500], ip_id=1 + i) for i in range(3)]
    shorter = udp4(DATA[:100], ip_id=4)
    after = udp4(DATA[:500], ip_id=5)
    assert counts([*same, shorter, after]) == [4, 1]
    larger = udp4(DATA[:600], ip_id=4)
    assert counts([*same, larger]) == [3, 1]
    ((h, b), _) = coalesce([*same, shorter, after])
    assert (h.gso_type, h.gso_size, h.csum_offset, h.hdr_len) == (5, 500, 6, 42)
    assert Ether(b)[UDP].len == len(b) - 34
    assert roundtrip([*same, shorter, after]) == [*same, shorter, after]


def test_udp_at_most_64_segments_and_zero_checksum() -> None:
    frames = [udp6(DATA[:100]) for _ in range(70)]
    assert counts(frames) == [64, 6]
    zero = bytearray(udp4(b"abc"))
    zero[40:42] = b"\x00\x00"
    out = assemble([bytes(zero), bytes(zero)])
    assert [u.segments for u in out] == [1, 1]


def test_tcp_only_or_udp_only() -> None:
    frames = [*flow4(2), *[udp4(DATA[:100], ip_id=50 + i) for i in range(2)]]
    assert [u.segments for u in assemble(frames, udp=False)] == [1, 1, 2]
    assert [u.segments for u in assemble(frames, tcp=False)] == [1, 1, 2]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["tcp4", "tcp6", "udp4", "udp6"]),
            st.integers(1, 30),
            st.integers(1, 1400),
            st.integers(0, 1400),
            st.sampled_from(["A", "PA", "FA"]),
        ),
        min_size=1,
        max_size=3,
    ),
    st.randoms(use_true_random=False),
)
def test_segment_inverts_coalesce(flows: list[tuple[str, int, int, int, str]], rnd: Any) -> None:
    """``[f for h, b in coalesce(x) for f in segment(b, h)] == x`` for mergeable flows."""
    per_flow: list[list[bytes]] = []
    for n, (kind, count, mss, last, end_flags) in enumerate(flows):
        sport = 1000 + n
        frames = []
        for i in range(count):
            size = (last or mss) if i == count - 1 else mss
            size = min(size, mss)
            data = DATA[i * mss : i * mss + size]
            flags = end_flags if i == count - 1 else "A"
            if kind == "tcp4":
                frames.append(tcp4(data, seq=7 + i * mss, ip_id=100 + i, flags=flags, sport=sport))
            elif kind == "tcp6":
                frames.append(tcp6(data, seq=7 + i * mss, flags=flags, sport=sport))
            elif kind == "udp4":
                frames.append(udp4(data, ip_id=100 + i, sport=sport))
            else:
                frames.append(udp6(data, sport=sport))
        per_flow.append(frames)
    # Interleave the flows, keeping each flow's order.
    merged: list[bytes] = []
    cursors = [0] * len(per_flow)
    while any(c < len(f) for c, f in zip(cursors, per_flow, strict=True)):
        k = rnd.choice([j for j, f in enumerate(per_flow) if cursors[j] < len(f)])
        merged.append(per_flow[k][cursors[k]])
        cursors[k] += 1
    out = coalesce(merged)
    back = [f for h, b in out for f in segment(b, h)]
    # Per flow, the frames come back in order (flows may be reordered between each other).
    for n, frames in enumerate(per_flow):
        sport = (1000 + n).to_bytes(2, "big")
        mine = [f for f in back if _sport(f) == sport]
        assert mine == frames
    assert sorted(back) == sorted(merged)
    assert all(h.gso_type in (0, GsoType.TCPV4, GsoType.TCPV6, GsoType.UDP_L4) for h, _ in out)


def _sport(frame: bytes) -> bytes:
    l4 = 34 if frame[12:14] == b"\x08\x00" else 54
    return frame[l4 : l4 + 2]


# One frame of a messy receive batch: (flow, step, tweak, tweak argument).
_TWEAKS = [
    "none", "gap", "flags", "ttl", "tos", "nodf", "id", "fixed_id", "ack", "window", "options",
    "short", "long", "empty", "corrupt", "pad", "truncate", "ipopts", "vlan", "flowlabel",
]  # fmt: skip
messy_frame = st.tuples(
    st.sampled_from(["tcp4", "tcp6", "udp4", "udp6"]),
    st.integers(0, 2),
    st.sampled_from(_TWEAKS),
    st.integers(0, 7),
)


def _messy(kind: str, flow: int, step: int, tweak: str, arg: int) -> bytes:
    """Frame ``step`` of a flow, bent by ``tweak`` so that some merge rule is exercised."""
    size = {"short": 1 + arg * 50, "long": MSS + 1 + arg, "empty": 0}.get(tweak, MSS)
    seq = 5000 + step * MSS + (arg + 1 if tweak == "gap" else 0)
    ip_id = {"id": step + 9 + arg, "fixed_id": 3}.get(tweak, 10 + step)
    data = DATA[step * MSS : step * MSS + size]
    sport = 2000 + flow
    flags = ["A", "PA", "FA", "SA", "RA", "UA", "CA", "EA"][arg] if tweak == "flags" else "A"
    options = (
        [("NOP", None), ("NOP", None), ("Timestamp", (arg, 1))] if tweak == "options" else None
    )
    if kind == "tcp4":
        frame = tcp4(
            data, seq=seq, ip_id=ip_id, flags=flags, sport=sport, options=options,
            ttl=63 if tweak == "ttl" else 64, tos=4 if tweak == "tos" else 0,
            df=tweak != "nodf", ack=2 if tweak == "ack" else 1,
            window=100 if tweak == "window" else 8192,
            ip_options=b"\x01\x01\x01\x00" if tweak == "ipopts" else None,
            vlan=arg if tweak == "vlan" else None,
        )  # fmt: skip
    elif kind == "tcp6":
        frame = tcp6(
            data, seq=seq, flags=flags, sport=sport, options=options,
            hlim=63 if tweak == "ttl" else 64, tc=4 if tweak == "tos" else 0,
            fl=arg if tweak == "flowlabel" else 0, ack=2 if tweak == "ack" else 1,
        )  # fmt: skip
    elif kind == "udp4":
        frame = udp4(data, ip_id=ip_id, sport=sport)
    else:
        frame = udp6(data, sport=sport)
    if tweak == "corrupt":
        frame = frame[:-1] + bytes([frame[-1] ^ 1]) if len(frame) > 60 else frame[:40]
    elif tweak == "pad":
        frame += bytes(arg + 1)
    elif tweak == "truncate":
        frame = frame[: 14 + 8 * arg]
    return frame


@settings(max_examples=300, deadline=None)
@given(
    batch=st.lists(messy_frame, max_size=40),
    views=st.booleans(),
    tcp=st.booleans(),
    udp=st.booleans(),
    max_segments=st.none() | st.integers(1, 6),
    max_flows=st.integers(1, 8),
    max_size=st.sampled_from([65536, 5000]),
)
def test_assemble_equals_the_per_frame_reference(
    *,
    batch: list[tuple[str, int, str, int]],
    views: bool,
    tcp: bool,
    udp: bool,
    max_segments: int | None,
    max_flows: int,
    max_size: int,
) -> None:
    steps: dict[tuple[str, int], int] = {}
    frames: list[bytes | memoryview] = []
    for kind, flow, tweak, arg in batch:
        step = steps.get((kind, flow), 0)
        steps[kind, flow] = step + 1
        frame = _messy(kind, flow, step, tweak, arg)
        frames.append(memoryview(frame) if views else frame)
    kw: dict[str, Any] = {
        "tcp": tcp,
        "udp": udp,
        "max_segments": max_segments,
        "max_flows": max_flows,
        "max_size": max_size,
    }
    ours = [
        (bytes(u.data), u.index, u.segments, u.version, u.protocol, u.validated, u.assembled,
         u.checksum_partial)
        for u in assemble(frames, **kw)
    ]  # fmt: skip
    theirs = [
        (bytes(u.data), u.index, u.segments, u.version, u.protocol, u.validated, u.assembled,
         u.checksum_partial)
        for u in reference_assemble(frames, **kw)
    ]  # fmt: skip
    assert ours == theirs
