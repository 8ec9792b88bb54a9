"""The per-packet offload decision: the device or the host, from the then-current needs.

The mission's task offload is dynamic (seed 000, claim 1.4): whether a packet's
work is offloaded is decided from the host's current state. A busy CPU hands
its per-packet work to the device; an idle CPU may do the work itself when the
device is the bottleneck (its queue is deep). The frames on the wire are the
same either way, because the host runs the same engine.

* ``always`` -- every enabled offload is used.
* ``never`` -- everything is done on the host (the device only moves frames).
* ``adaptive`` -- the device while the host's CPU is busy (above
  ``busy_above``); the host when the CPU is idle (below ``idle_below``) and
  the device's queue is deep (above ``queue_deep``); otherwise the last
  choice stands (hysteresis, so the decision does not flap).

The policy itself reads no clock and samples nothing: ``LoadSampler`` reads
the load (psutil's system CPU and this process's CPU times) on a timer, never
per packet, and hands a ``LoadSample`` to ``observe``; a test drives
``observe`` directly. Every decision is counted per packet.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from dataclasses import dataclass

import psutil

DEFAULT_SAMPLE_INTERVAL_NS = 10_000_000  # 10 ms


class PolicyMode(enum.StrEnum):
    ALWAYS = "always"
    NEVER = "never"
    ADAPTIVE = "adaptive"


class Decision(enum.StrEnum):
    """Who does a packet's offloadable work."""

    DEVICE = "device"
    HOST = "host"


@dataclass(frozen=True, slots=True)
class LoadSample:
    """The load when sampled: CPU busy fractions (0..1) and the device queue's fill (0..1)."""

    system_cpu: float
    process_cpu: float
    device_queue: float = 0.0


class OffloadPolicy:
    """Decides per packet batch, counts per packet; see the module docstring."""

    def __init__(
        self,
        mode: PolicyMode | str = PolicyMode.ALWAYS,
        *,
        busy_above: float = 0.6,
        idle_below: float = 0.3,
        queue_deep: float = 0.5,
    ) -> None:
        self.mode = PolicyMode(mode)
        if not 0.0 <= idle_below <= busy_above <= 1.0:
            raise ValueError("need 0 <= idle_below <= busy_above <= 1")
        if not 0.0 <= queue_deep <= 1.0:
            raise ValueError("need 0 <= queue_deep <= 1 (the device queue's fill)")
        self.busy_above = busy_above
        self.idle_below = idle_below
        self.queue_deep = queue_deep
        self.decisions: Counter[str] = Counter()
        self.switches = 0
        self.last_sample: LoadSample | None = None
        self._current = Decision.HOST if self.mode is PolicyMode.NEVER else Decision.DEVICE

    @property
    def current(self) -> Decision:
        """What the next packets get."""
        return self._current

    def observe(self, sample: LoadSample) -> Decision:
        """Take a load sample (``adaptive`` may change its choice); the choice now."""
        self.last_sample = sample
        if self.mode is not PolicyMode.ADAPTIVE:
            return self._current
        busy = max(sample.system_cpu, sample.process_cpu)
        wanted = self._current
        if busy > self.busy_above:
            wanted = Decision.DEVICE
        elif busy < self.idle_below and sample.device_queue > self.queue_deep:
            wanted = Decision.HOST
        if wanted is not self._current:
            self._current = wanted
            self.switches += 1
        return self._current

    def decide(self, packets: int) -> Decision:
        """The choice for a batch of ``packets`` that ask for offloadable work (counted)."""
        decision = self._current
        if packets:
            self.decisions[decision.value] += packets
        return decision

    def as_dict(self) -> dict[str, object]:
        sample = self.last_sample
        return {
            "mode": self.mode.value,
            "current": self._current.value,
            "decisions": dict(sorted(self.decisions.items())),
            "switches": self.switches,
            "last_sample": None
            if sample is None
            else {
                "system_cpu": sample.system_cpu,
                "process_cpu": sample.process_cpu,
                "device_queue": sample.device_queue,
            },
        }


class LoadSampler:
    """Reads the load every ``interval_ns`` (psutil and process CPU times): the loop's job.

    ``sample(now_ns, device_queue)`` returns a ``LoadSample`` when the interval
    has passed since the last one, else ``None``; it never blocks.
    """

    def __init__(self, interval_ns: int = DEFAULT_SAMPLE_INTERVAL_NS) -> None:
        self.interval_ns = interval_ns
        self._next_ns = 0
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        psutil.cpu_percent(interval=None)  # the first call only starts psutil's window

    def sample(self, now_ns: int, device_queue: float = 0.0) -> LoadSample | None:
        if now_ns < self._next_ns:
            return None
        self._next_ns = now_ns + self.interval_ns
        cpu, wall = time.process_time(), time.perf_counter()
        elapsed = wall - self._wall0
        process = (cpu - self._cpu0) / elapsed if elapsed > 0 else 0.0
        self._cpu0, self._wall0 = cpu, wall
        system = psutil.cpu_percent(interval=None) / 100.0
        return LoadSample(system, min(1.0, process), device_queue)
