"""The loop that drives a ``Stack``: devices, timers, the load sampler, other descriptors.

The stack reads no clock and waits for nothing; this is where both happen.
One ``step``: poll the stack (everything the devices have), fire the timers
that are due, sample the load for the offload policy on its own interval,
then ``poll(2)`` on the devices' descriptors (and any the caller added) until
the next timer. ``run_until`` repeats steps until a condition holds.

For asyncio, ``attach`` registers the devices' descriptors with
``loop.add_reader`` and the stack's next deadline with ``loop.call_later``,
so a stack runs inside an asyncio program with no thread of its own (and
samples the load, given a sampler, as ``step`` does); ``kick()`` after an
application call (``send``, ``close``) gets its segments out at once.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from netoffload.policy import LoadSampler
from netoffload.stack.stack import Stack

MAX_WAIT_S = 0.2


@dataclass(slots=True)
class LoopStats:
    steps: int = 0
    waits: int = 0
    timers: int = 0
    samples: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class StackLoop:
    """Drives one stack; see the module docstring."""

    def __init__(
        self,
        stack: Stack,
        *,
        sampler: LoadSampler | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.stack = stack
        self.sampler = sampler
        self.clock = clock
        self.stats = LoopStats()
        self._extra: dict[int, Callable[[], object]] = {}
        self._poller = select.poll()
        self._devices = stack.filenos()
        for fd in self._devices:
            self._poller.register(fd, select.POLLIN)

    def watch(self, fd: int, on_ready: Callable[[], object], events: int = select.POLLIN) -> None:
        """Call ``on_ready`` when ``fd`` is ready (a control socket, standard input...)."""
        self._extra[fd] = on_ready
        self._poller.register(fd, events)

    def unwatch(self, fd: int) -> None:
        if self._extra.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def step(self, max_wait_s: float = MAX_WAIT_S) -> int:
        """One round; returns how many frames came in."""
        stack = self.stack
        self.stats.steps += 1
        now = self.clock()
        received = stack.poll(now)
        due = stack.next_timer_ns()
        if due is not None and due <= now:
            stack.on_timer(now)
            self.stats.timers += 1
            due = stack.next_timer_ns()
        if self.sampler is not None:
            queue = max((i.queue_fill() for i in stack.interfaces), default=0.0)
            sample = self.sampler.sample(now, queue)
            if sample is not None:
                stack.observe_load(sample)
                self.stats.samples += 1
        if received or any(i.backlog for i in stack.interfaces):
            timeout_s = 0.0 if received else 0.001
        else:
            timeout_s = max_wait_s
            if due is not None:
                timeout_s = min(timeout_s, max(0.0, (due - self.clock()) / 1e9))
        if timeout_s > 0 or self._extra:
            self.stats.waits += 1
            for fd, _ in self._poller.poll(timeout_s * 1000):
                callback = self._extra.get(fd)
                if callback is not None:
                    callback()
        return received

    def run_until(
        self,
        done: Callable[[], bool],
        timeout_s: float | None = None,
        max_wait_s: float = MAX_WAIT_S,
    ) -> bool:
        """Step until ``done()``; False when ``timeout_s`` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not done():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.step(max_wait_s)
        return True


class AsyncioDriver:
    """A stack driven by an asyncio loop: readers on its devices, ``call_later`` for its timers.

    ``on_poll``, when given, is called after every round (a reader fired, a timer
    fired, or a ``kick``): an application awaiting its connections sets an
    ``asyncio.Event`` there instead of polling on a timer of its own.
    """

    def __init__(
        self,
        stack: Stack,
        loop: asyncio.AbstractEventLoop,
        *,
        sampler: LoadSampler | None = None,
        on_poll: Callable[[], object] | None = None,
    ) -> None:
        self.stack = stack
        self.loop = loop
        self.sampler = sampler
        self.on_poll = on_poll
        self.stats = LoopStats()
        self._timer: asyncio.TimerHandle | None = None
        self._fds = list(stack.filenos())
        for fd in self._fds:
            loop.add_reader(fd, self.kick)
        self.kick()

    def kick(self) -> None:
        """Poll the stack now and re-arm its timer (call after any application call)."""
        stack = self.stack
        self.stats.steps += 1
        now = time.monotonic_ns()
        while stack.poll(now):
            now = time.monotonic_ns()
        due = stack.next_timer_ns()
        if due is not None and due <= now:
            stack.on_timer(now)
            self.stats.timers += 1
            due = stack.next_timer_ns()
        if self.sampler is not None:
            queue = max((i.queue_fill() for i in stack.interfaces), default=0.0)
            sample = self.sampler.sample(now, queue)
            if sample is not None:
                stack.observe_load(sample)
                self.stats.samples += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        backlog = any(i.backlog for i in stack.interfaces)
        if due is not None or backlog:
            delay = 0.001 if backlog else max(0.0, (due or now) - time.monotonic_ns()) / 1e9
            self._timer = self.loop.call_later(delay, self.kick)
        if self.on_poll is not None:
            self.on_poll()

    def close(self) -> None:
        for fd in self._fds:
            self.loop.remove_reader(fd)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def attach(
    stack: Stack,
    loop: asyncio.AbstractEventLoop | None = None,
    *,
    sampler: LoadSampler | None = None,
    on_poll: Callable[[], object] | None = None,
) -> AsyncioDriver:
    """Drive ``stack`` from an asyncio loop (the running one by default)."""
    return AsyncioDriver(
        stack, loop or asyncio.get_running_loop(), sampler=sampler, on_poll=on_poll
    )


def drain(loops: Iterable[StackLoop], rounds: int = 3) -> None:
    """A few non-blocking rounds of each loop (tests and shutdown)."""
    for _ in range(rounds):
        for loop in loops:
            loop.step(0.0)
