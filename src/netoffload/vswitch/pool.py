"""Who holds each buffer of each guest's window: the switch's ownership table.

Every buffer of a guest's window is, at any moment, in exactly one state:

* receive buffers ``[0, rx_buffers)``: ``GUEST`` (the guest has it and has
  not posted it), ``POSTED`` (handed to the NIC side, which may write into
  it), ``HELD`` (filled and delivered: the guest holds it until it posts it
  again, which is how it releases it);
* transmit buffers ``[rx_buffers, buffers)``: ``GUEST`` or ``IN_FLIGHT``
  (posted for sending; back to ``GUEST`` when the NIC side is done).

Each buffer has a generation, bumped at every hand-over, and every
descriptor names one: a descriptor whose generation is not the buffer's now
is stale (a second release, a buffer sent twice, a descriptor from before the
guest's window was reclaimed) and is refused. A guest holds at most
``quota.rx_buffers`` receive buffers in the switch (posted or held) and has
at most ``quota.tx_in_flight`` frames in flight; what goes beyond is refused,
and costs no other guest anything.

Batches are checked as a whole with NumPy (one pass per batch, not per
descriptor), with the result of checking them one after the other: a batch
that names a buffer twice (which only a confused guest sends) is checked a
descriptor at a time. Nothing here does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from netoffload.device.vmdq.queue import Status

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class State(enum.IntEnum):
    GUEST = 0
    POSTED = 1
    HELD = 2
    IN_FLIGHT = 3


@dataclass(frozen=True, slots=True)
class Quota:
    """What one guest may take of the switch."""

    rx_buffers: int = 64  # receive buffers posted or held at once
    tx_in_flight: int = 64  # frames sent and not yet given back
    ring_entries: int = 512  # entries per ring of its own
    macs: int = 8  # source MACs learned from it

    def __post_init__(self) -> None:
        for name in ("rx_buffers", "tx_in_flight", "ring_entries", "macs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"quota {name} must be a positive integer, not {value!r}")

    def as_dict(self) -> dict[str, int]:
        return {
            "rx_buffers": self.rx_buffers,
            "tx_in_flight": self.tx_in_flight,
            "ring_entries": self.ring_entries,
            "macs": self.macs,
        }


@dataclass(slots=True)
class Checked:
    """A batch after checking: which descriptors were taken, with their new generations,
    and why each other one was refused (``Status.OK`` where taken)."""

    ok: BoolArray
    gens: IntArray
    status: IntArray

    @property
    def taken(self) -> int:
        return int(self.ok.sum())


class BufferTable:
    """The states and generations of one guest's buffers (see the module docstring)."""

    def __init__(self, rx_buffers: int, tx_buffers: int, quota: Quota) -> None:
        self.rx_buffers = rx_buffers
        self.tx_buffers = tx_buffers
        self.quota = quota
        n = rx_buffers + tx_buffers
        self.state = np.zeros(n, dtype=np.uint8)
        self.gen = np.zeros(n, dtype=np.int64)
        self.posted = 0
        self.held = 0
        self.in_flight = 0

    @property
    def buffers(self) -> int:
        return self.rx_buffers + self.tx_buffers

    def _check(
        self, buffers: IntArray, gens: IntArray, low: int, high: int, states: tuple[State, ...]
    ) -> tuple[BoolArray, IntArray, IntArray]:
        """Range, generation and state of each descriptor of a batch that names every
        buffer at most once. Returns (ok, index clipped into range, status)."""
        n = len(buffers)
        status = np.full(n, int(Status.OK), dtype=np.int64)
        inside = (buffers >= low) & (buffers < high)
        status[~inside] = Status.OUT_OF_RANGE
        index = np.where(inside, buffers, low)
        current = self.gen[index]
        fresh = inside & (current == gens)
        status[inside & ~fresh] = Status.STALE
        state = self.state[index]
        allowed = np.isin(state, [int(s) for s in states])
        status[fresh & ~allowed] = Status.NOT_OWNED
        return fresh & allowed, index, status

    @staticmethod
    def _repeats(buffers: IntArray) -> bool:
        return len(buffers) > 1 and len(np.unique(buffers)) < len(buffers)

    def _one_by_one(
        self, check: Callable[[IntArray, IntArray], Checked], buffers: IntArray, gens: IntArray
    ) -> Checked:
        """A batch that names a buffer twice, checked a descriptor at a time (so a later
        descriptor sees what an earlier one did): only a confused guest sends one."""
        parts = [check(buffers[i : i + 1], gens[i : i + 1]) for i in range(len(buffers))]
        return Checked(
            np.concatenate([p.ok for p in parts]),
            np.concatenate([p.gens for p in parts]),
            np.concatenate([p.status for p in parts]),
        )

    # -- receive buffers --------------------------------------------------------------
    def post(self, buffers: IntArray, gens: IntArray) -> Checked:
        """A guest posts receive buffers (new ones, or held ones it releases)."""
        if self._repeats(buffers):
            return self._one_by_one(self.post, buffers, gens)
        ok, index, status = self._check(
            buffers, gens, 0, self.rx_buffers, (State.GUEST, State.HELD)
        )
        was_held = ok & (self.state[index] == State.HELD)
        new = np.flatnonzero(ok & ~was_held)
        room = self.quota.rx_buffers - (self.posted + self.held)
        if len(new) > room:
            over = new[max(room, 0) :]
            ok[over] = False
            status[over] = Status.OVER_QUOTA
            was_held &= ok
        taken = index[ok]
        self.gen[taken] += 1
        self.state[taken] = State.POSTED
        released = int(was_held.sum())
        self.held -= released
        self.posted += len(taken)
        return Checked(ok, self.gen[index], status)

    def fill(self, buffers: IntArray, gens: IntArray) -> BoolArray:
        """The NIC side filled posted buffers: each becomes held (if the descriptor is right)."""
        if self._repeats(buffers):
            return np.array(
                [self.fill(buffers[i : i + 1], gens[i : i + 1])[0] for i in range(len(buffers))],
                dtype=bool,
            )
        ok, index, _ = self._check(buffers, gens, 0, self.rx_buffers, (State.POSTED,))
        taken = index[ok]
        self.state[taken] = State.HELD
        self.posted -= len(taken)
        self.held += len(taken)
        return ok

    def unfill(self, buffers: IntArray) -> IntArray:
        """Held buffers that could not be delivered go back to the NIC side; new generations."""
        self.gen[buffers] += 1
        self.state[buffers] = State.POSTED
        self.held -= len(buffers)
        self.posted += len(buffers)
        return self.gen[buffers]

    # -- transmit buffers -------------------------------------------------------------
    def transmit(self, buffers: IntArray, gens: IntArray) -> Checked:
        """A guest sends frames from its transmit buffers."""
        if self._repeats(buffers):
            return self._one_by_one(self.transmit, buffers, gens)
        ok, index, status = self._check(
            buffers, gens, self.rx_buffers, self.buffers, (State.GUEST,)
        )
        chosen = np.flatnonzero(ok)
        room = self.quota.tx_in_flight - self.in_flight
        if len(chosen) > room:
            over = chosen[max(room, 0) :]
            ok[over] = False
            status[over] = Status.OVER_QUOTA
        taken = index[ok]
        self.gen[taken] += 1
        self.state[taken] = State.IN_FLIGHT
        self.in_flight += len(taken)
        return Checked(ok, self.gen[index], status)

    def complete(self, buffers: IntArray, gens: IntArray) -> BoolArray:
        """The NIC side is done with transmit buffers: the guest has them again."""
        if self._repeats(buffers):
            return np.array(
                [
                    self.complete(buffers[i : i + 1], gens[i : i + 1])[0]
                    for i in range(len(buffers))
                ],
                dtype=bool,
            )
        ok, index, _ = self._check(buffers, gens, self.rx_buffers, self.buffers, (State.IN_FLIGHT,))
        taken = index[ok]
        self.state[taken] = State.GUEST
        self.in_flight -= len(taken)
        return ok

    # -- counts -------------------------------------------------------------------------
    def counts(self) -> dict[str, Any]:
        return {
            "rx_buffers": self.rx_buffers,
            "tx_buffers": self.tx_buffers,
            "posted": self.posted,
            "held": self.held,
            "in_flight": self.in_flight,
            "quota": self.quota.as_dict(),
        }

    def consistent(self) -> bool:
        """The counters agree with the states (a check for tests and the stats)."""
        rx = self.state[: self.rx_buffers]
        tx = self.state[self.rx_buffers :]
        return (
            int((rx == State.POSTED).sum()) == self.posted
            and int((rx == State.HELD).sum()) == self.held
            and int((tx == State.IN_FLIGHT).sum()) == self.in_flight
            and not (rx == State.IN_FLIGHT).any()
            and not np.isin(tx, [State.POSTED, State.HELD]).any()
        )
