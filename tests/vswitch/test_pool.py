"""The ownership table: states, generations, quotas; batches against a plain reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.device.vmdq.queue import Status
from netoffload.vswitch.pool import BufferTable, Quota, State


def _a(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_a_receive_buffer_goes_posted_held_posted_with_a_new_generation_each_time() -> None:
    table = BufferTable(4, 2, Quota())
    checked = table.post(_a(0, 1), _a(0, 0))
    assert checked.ok.tolist() == [True, True] and checked.gens.tolist() == [1, 1]
    assert table.fill(_a(0), _a(1)).tolist() == [True]
    assert table.state[0] == State.HELD and (table.posted, table.held) == (1, 1)
    again = table.post(_a(0), _a(1))  # the release
    assert again.ok.tolist() == [True] and again.gens.tolist() == [2]
    assert (table.posted, table.held) == (2, 0)
    assert table.consistent()


def test_every_stale_or_foreign_descriptor_is_refused_with_its_reason() -> None:
    table = BufferTable(4, 2, Quota())
    table.post(_a(0, 1), _a(0, 0))
    table.fill(_a(0), _a(1))
    table.post(_a(0), _a(1))  # released once: generation 2, posted
    checked = table.post(_a(0, 1, 3, 4, 99), _a(1, 1, 7, 0, 0))
    assert checked.status.tolist() == [
        Status.STALE,  # the same release again
        Status.NOT_OWNED,  # right generation, but posted: not the guest's to give
        Status.STALE,  # a generation it never had
        Status.OUT_OF_RANGE,  # a transmit buffer on the receive ring
        Status.OUT_OF_RANGE,
    ]
    assert not checked.ok.any()
    assert table.fill(_a(1), _a(5)).tolist() == [False]  # the NIC side with a wrong one
    assert table.consistent()


def test_a_buffer_named_twice_in_one_batch_is_taken_once() -> None:
    table = BufferTable(4, 2, Quota())
    checked = table.post(_a(2, 2, 3), _a(0, 0, 0))
    assert checked.ok.tolist() == [True, False, True]
    assert checked.status.tolist() == [Status.OK, Status.STALE, Status.OK]
    assert table.posted == 2 and table.consistent()


def test_receive_buffers_beyond_the_quota_are_refused_releases_never() -> None:
    table = BufferTable(8, 1, Quota(rx_buffers=3))
    checked = table.post(_a(0, 1, 2, 3, 4), _a(0, 0, 0, 0, 0))
    assert checked.ok.tolist() == [True, True, True, False, False]
    assert set(checked.status[3:].tolist()) == {Status.OVER_QUOTA}
    table.fill(_a(0, 1, 2), _a(1, 1, 1))
    assert table.post(_a(0, 1, 2), _a(1, 1, 1)).ok.all()  # releasing is always allowed
    assert not table.post(_a(5), _a(0)).ok.any()
    assert table.consistent()


def test_frames_in_flight_are_bounded_by_the_quota_and_come_back() -> None:
    table = BufferTable(2, 4, Quota(tx_in_flight=2))
    checked = table.transmit(_a(2, 3, 4), _a(0, 0, 0))
    assert checked.ok.tolist() == [True, True, False]
    assert checked.status[2] == Status.OVER_QUOTA
    assert table.transmit(_a(2), _a(1)).status.tolist() == [Status.NOT_OWNED]  # in flight
    assert table.transmit(_a(0), _a(0)).status.tolist() == [Status.OUT_OF_RANGE]
    assert table.complete(_a(2, 3), _a(1, 1)).all()
    assert table.in_flight == 0
    assert table.transmit(_a(2), _a(0)).status.tolist() == [Status.STALE]
    assert table.transmit(_a(2), _a(1)).ok.all()
    assert table.consistent()


# -- against a reference: the rules of the module docstring, one descriptor at a time ----

RX, TX, QUOTA_RX, QUOTA_TX = 6, 3, 4, 2


class Reference:
    def __init__(self) -> None:
        self.state = {b: "guest" for b in range(RX + TX)}
        self.gen = dict.fromkeys(range(RX + TX), 0)

    def _count(self, *states: str) -> int:
        return sum(1 for s in self.state.values() if s in states)

    def post(self, pairs: list[tuple[int, int]]) -> list[Status]:
        out = []
        for b, g in pairs:
            if not 0 <= b < RX:
                out.append(Status.OUT_OF_RANGE)
            elif self.gen[b] != g:
                out.append(Status.STALE)
            elif self.state[b] not in ("guest", "held"):
                out.append(Status.NOT_OWNED)
            elif self.state[b] == "guest" and self._count("posted", "held") >= QUOTA_RX:
                out.append(Status.OVER_QUOTA)
            else:
                self.state[b] = "posted"
                self.gen[b] += 1
                out.append(Status.OK)
        return out

    def transmit(self, pairs: list[tuple[int, int]]) -> list[Status]:
        out = []
        for b, g in pairs:
            if not RX <= b < RX + TX:
                out.append(Status.OUT_OF_RANGE)
            elif self.gen[b] != g:
                out.append(Status.STALE)
            elif self.state[b] != "guest":
                out.append(Status.NOT_OWNED)
            elif self._count("flying") >= QUOTA_TX:
                out.append(Status.OVER_QUOTA)
            else:
                self.state[b] = "flying"
                self.gen[b] += 1
                out.append(Status.OK)
        return out

    def fill(self, b: int) -> None:
        if self.state.get(b) == "posted":
            self.state[b] = "held"

    def complete(self, b: int) -> None:
        if self.state.get(b) == "flying":
            self.state[b] = "guest"


_pairs = st.lists(st.tuples(st.integers(0, RX + TX), st.integers(0, 3)), max_size=6)
_op = st.one_of(
    st.tuples(st.just("post"), _pairs),
    st.tuples(st.just("transmit"), _pairs),
    st.tuples(st.just("fill"), st.integers(0, RX - 1)),
    st.tuples(st.just("complete"), st.integers(RX, RX + TX - 1)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=30))
def test_batches_decide_as_the_rules_do_one_descriptor_at_a_time(ops: list[tuple]) -> None:
    table = BufferTable(RX, TX, Quota(rx_buffers=QUOTA_RX, tx_in_flight=QUOTA_TX))
    ref = Reference()
    for op, arg in ops:
        if op in ("post", "transmit"):
            buffers = _a(*[b for b, _ in arg])
            gens = _a(*[g for _, g in arg])
            checked = getattr(table, op)(buffers, gens)
            assert checked.status.tolist() == getattr(ref, op)(arg), (op, arg)
        elif op == "fill":
            table.fill(_a(arg), _a(int(table.gen[arg])))
            ref.fill(arg)
        else:
            table.complete(_a(arg), _a(int(table.gen[arg])))
            ref.complete(arg)
        assert table.gen.tolist() == [ref.gen[b] for b in range(RX + TX)]
        assert table.consistent()
