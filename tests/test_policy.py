"""The offload policy: always, never, adaptive (with hysteresis), its counts, the sampler,
and a stack that switches between device and host in the middle of a transfer."""

from __future__ import annotations

import itertools
import math
import os
import time
from ipaddress import IPv4Address
from typing import Any

import pytest

from netoffload.device.softnic import SoftNic
from netoffload.loop import StackLoop
from netoffload.policy import (
    DEFAULT_SAMPLE_INTERVAL_NS,
    Decision,
    LoadSample,
    LoadSampler,
    OffloadPolicy,
    PolicyMode,
)
from netoffload.stack.stack import Stack
from netoffload.stack.tcp import PeerClosed, TcpState
from netoffload.stack.tcp_layer import TcpHandle
from tests.stack.kernel_peer import OURS_B, stack_pair

BUSY = LoadSample(system_cpu=0.9, process_cpu=0.2, device_queue=0.0)
IDLE_DEEP = LoadSample(system_cpu=0.1, process_cpu=0.1, device_queue=0.9)
IDLE_SHALLOW = LoadSample(system_cpu=0.1, process_cpu=0.1, device_queue=0.1)
MIDDLE_DEEP = LoadSample(system_cpu=0.45, process_cpu=0.2, device_queue=0.9)
EVERY_SAMPLE = [BUSY, IDLE_DEEP, IDLE_SHALLOW, MIDDLE_DEEP, BUSY, IDLE_DEEP]


# -- OffloadPolicy ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "decision"), [(PolicyMode.ALWAYS, Decision.DEVICE), (PolicyMode.NEVER, Decision.HOST)]
)
def test_always_and_never_never_switch(mode: PolicyMode, decision: Decision) -> None:
    policy = OffloadPolicy(mode)
    assert policy.current is decision
    for sample in EVERY_SAMPLE:
        assert policy.observe(sample) is decision
        assert policy.decide(3) is decision
    assert policy.switches == 0
    assert policy.decisions == {decision.value: 3 * len(EVERY_SAMPLE)}
    assert policy.last_sample == EVERY_SAMPLE[-1]


def test_the_mode_may_be_given_as_its_name() -> None:
    assert OffloadPolicy("never").mode is PolicyMode.NEVER
    assert OffloadPolicy("adaptive").current is Decision.DEVICE  # it starts offloading


def test_adaptive_hands_work_to_the_host_when_idle_with_a_deep_queue() -> None:
    policy = OffloadPolicy(PolicyMode.ADAPTIVE)
    assert policy.observe(IDLE_DEEP) is Decision.HOST
    assert policy.current is Decision.HOST and policy.switches == 1


def test_adaptive_hands_work_to_the_device_when_busy() -> None:
    policy = OffloadPolicy(PolicyMode.ADAPTIVE)
    policy.observe(IDLE_DEEP)
    # The busier of the system and this process counts.
    assert policy.observe(LoadSample(0.1, 0.95, 0.9)) is Decision.DEVICE
    assert policy.switches == 2
    assert policy.observe(IDLE_DEEP) is Decision.HOST
    assert policy.observe(LoadSample(0.95, 0.1, 0.9)) is Decision.DEVICE  # a deep queue or not
    assert policy.switches == 4


def test_adaptive_holds_its_choice_between_the_thresholds() -> None:
    policy = OffloadPolicy(PolicyMode.ADAPTIVE, busy_above=0.6, idle_below=0.3, queue_deep=0.5)
    # From DEVICE: idle but a shallow queue, or neither busy nor idle: it stays.
    for sample in (IDLE_SHALLOW, MIDDLE_DEEP, LoadSample(0.6, 0.0, 1.0), LoadSample(0.3, 0, 1)):
        assert policy.observe(sample) is Decision.DEVICE
    assert policy.switches == 0
    policy.observe(IDLE_DEEP)
    # From HOST: the same in-between loads keep it on the host.
    for sample in (IDLE_SHALLOW, MIDDLE_DEEP, LoadSample(0.6, 0.0, 0.0), LoadSample(0.3, 0, 0)):
        assert policy.observe(sample) is Decision.HOST
    assert policy.switches == 1
    # A queue exactly at the threshold is not deep; one just past it is.
    policy = OffloadPolicy(PolicyMode.ADAPTIVE, queue_deep=0.5)
    assert policy.observe(LoadSample(0.0, 0.0, 0.5)) is Decision.DEVICE
    assert policy.observe(LoadSample(0.0, 0.0, 0.51)) is Decision.HOST


def test_a_load_that_flaps_inside_the_band_does_not_flap_the_decision() -> None:
    policy = OffloadPolicy(PolicyMode.ADAPTIVE)
    for i in range(100):
        policy.observe(LoadSample(0.31 + (i % 2) * 0.28, 0.0, (i % 3) / 2))
    assert policy.switches == 0 and policy.current is Decision.DEVICE


def test_decisions_are_counted_per_packet() -> None:
    policy = OffloadPolicy(PolicyMode.ADAPTIVE)
    assert policy.decide(5) is Decision.DEVICE
    policy.decide(0)  # a batch with nothing offloadable is not a decision
    policy.observe(IDLE_DEEP)
    assert policy.decide(7) is Decision.HOST
    assert policy.decide(1) is Decision.HOST
    policy.observe(BUSY)
    policy.decide(2)
    assert policy.decisions == {"device": 7, "host": 8}


def test_as_dict() -> None:
    policy = OffloadPolicy("adaptive")
    assert policy.as_dict() == {
        "mode": "adaptive",
        "current": "device",
        "decisions": {},
        "switches": 0,
        "last_sample": None,
    }
    policy.decide(4)
    policy.observe(IDLE_DEEP)
    policy.decide(2)
    assert policy.as_dict() == {
        "mode": "adaptive",
        "current": "host",
        "decisions": {"device": 4, "host": 2},
        "switches": 1,
        "last_sample": {"system_cpu": 0.1, "process_cpu": 0.1, "device_queue": 0.9},
    }


@pytest.mark.parametrize(
    "thresholds",
    [
        {"busy_above": 0.2, "idle_below": 0.3},  # idle above busy
        {"idle_below": -0.1},
        {"busy_above": 1.5},
        {"busy_above": math.nan},
        {"queue_deep": -0.5},
        {"queue_deep": 1.5},
        {"queue_deep": math.nan},
    ],
)
def test_bad_thresholds_raise(thresholds: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OffloadPolicy("adaptive", **thresholds)


def test_an_unknown_mode_raises() -> None:
    with pytest.raises(ValueError):
        OffloadPolicy("sometimes")


# -- LoadSampler ------------------------------------------------------------------------


def test_the_sampler_samples_once_per_interval() -> None:
    sampler = LoadSampler(interval_ns=50_000_000)
    now = time.monotonic_ns()
    first = sampler.sample(now, device_queue=0.25)
    assert isinstance(first, LoadSample)
    assert first.device_queue == 0.25
    assert 0.0 <= first.system_cpu <= 1.0 and 0.0 <= first.process_cpu <= 1.0
    assert sampler.sample(now + 1) is None
    assert sampler.sample(now + 49_999_999) is None
    second = sampler.sample(now + 50_000_000, device_queue=0.5)
    assert isinstance(second, LoadSample) and second.device_queue == 0.5
    assert sampler.sample(now + 50_000_001) is None
    assert LoadSampler().interval_ns == DEFAULT_SAMPLE_INTERVAL_NS


def test_the_sampler_sees_this_process_working() -> None:
    sampler = LoadSampler(interval_ns=1)
    start = time.monotonic_ns()
    sampler.sample(start)
    cpu_end, wall_end = time.process_time() + 0.05, time.monotonic() + 5
    while time.process_time() < cpu_end and time.monotonic() < wall_end:
        pass  # 50 ms of this process's CPU
    sample = sampler.sample(time.monotonic_ns())
    assert sample is not None and 0.0 < sample.process_cpu <= 1.0


# -- a stack switching mid-transfer -----------------------------------------------------


def _counters(stack: Stack) -> dict[str, int]:
    """What each side has done so far: the host's checksums and segments, the device's
    segmentation, the TCP layer's super-packets."""
    iface = stack.interfaces[0]
    device = iface.device
    assert isinstance(device, SoftNic)
    stats: Any = stack.as_dict()
    host = iface.host.stats
    return {
        "host_checksum": host.tasks.get("checksum", 0),
        "host_choice": sum(n for k, n in host.fallbacks.items() if k.endswith("/host_choice")),
        "device_segmentation": device.stats().tasks.get("tcp_segmentation", 0),
        "super_packets": stats["tcp"]["super_packets_out"],
        "device_decisions": stats["policy"]["decisions"].get("device", 0),
        "host_decisions": stats["policy"]["decisions"].get("host", 0),
    }


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in before}


def test_a_transfer_stays_exact_while_the_policy_moves_device_host_device() -> None:
    data = os.urandom(6_000_000)
    third = len(data) // 3
    with stack_pair(41, policies=("adaptive", "always")) as (sa, sb):
        loop_a, loop_b = StackLoop(sa), StackLoop(sb)
        listeners = sb.tcp_listen(5400)
        client = sa.tcp_connect(IPv4Address(OURS_B), 5400, time.monotonic_ns())
        server: list[TcpHandle] = []
        got = bytearray()
        sent = 0
        marks = [_counters(sa)]
        end = time.monotonic() + 60

        def done() -> bool:
            nonlocal sent
            assert time.monotonic() < end, (len(got), sent, client.state)
            loop_b.step(0.0)
            if not server:
                handle = sb.tcp_accept(listeners)
                if handle is not None:
                    server.append(handle)
                return False
            conn = server[0].conn
            while conn.readable():
                got.extend(conn.recv(1 << 20))
            if sent < len(data) and client.state is TcpState.ESTABLISHED:
                # Bounded by the switch points, so each phase sends its own third.
                limit = third * len(marks)
                sent += client.conn.send(memoryview(data)[sent : min(limit, sent + (1 << 18))])
                if sent == len(data):
                    client.conn.shutdown_write()
            if len(marks) < 3 and len(got) >= third * len(marks):
                marks.append(_counters(sa))
                # The host idle and the device's queue deep: host; then the host busy: device.
                sa.observe_load(IDLE_DEEP if len(marks) == 2 else BUSY)
            return len(got) == len(data) and any(
                isinstance(e, PeerClosed) for e in server[0].events
            )

        loop_a.run_until(done, max_wait_s=0.002)
        marks.append(_counters(sa))
        policy: Any = sa.as_dict()["policy"]
    assert len(got) == len(data) and bytes(got) == data
    assert policy["mode"] == "adaptive" and policy["switches"] == 2
    assert policy["current"] == "device"
    assert policy["decisions"]["device"] > 0 and policy["decisions"]["host"] > 0
    on_device, on_host, back_on_device = (_grown(a, b) for a, b in itertools.pairwise(marks))
    # Device phases: super-packets cut by the device, decisions for it, none for the host.
    for phase in (on_device, back_on_device):
        assert phase["device_decisions"] > 0 and phase["host_decisions"] == 0
        assert phase["super_packets"] > 0 and phase["device_segmentation"] > 0
        assert phase["host_choice"] == 0
    # Host phase: MSS-sized segments only, each checksummed here by the host's choice.
    assert on_host["host_decisions"] > 0 and on_host["device_decisions"] == 0
    assert on_host["super_packets"] == 0
    assert on_host["host_checksum"] > 0 and on_host["host_choice"] > 0
    assert sa.interfaces[0].segmentation.tcp4  # back on the device, segmentation too
