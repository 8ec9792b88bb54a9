"""The send and receive rings against a plain byte-string model; a send ring in lent memory."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.stack.tcp.buffers import ReceiveBuffer, SendBuffer, SendMemory

START = (1 << 32) - 100  # unwrapped sequence numbers run past 2^32


@settings(max_examples=300)
@given(
    st.integers(1, 300),
    st.lists(st.tuples(st.sampled_from(["write", "release", "view"]), st.integers(0, 400))),
)
def test_send_ring_views_are_the_bytes_written_until_released(
    size: int, ops: list[tuple[str, int]]
) -> None:
    buf = SendBuffer(size, START)
    stream = bytearray()  # every byte ever written, stream[i] at seq START + i
    views: list[tuple[int, memoryview]] = []
    counter = 0
    for op, n in ops:
        if op == "write":
            data = bytes((counter + i) % 251 for i in range(n))
            counter += n
            free = buf.free()
            taken = buf.write(data)
            assert taken == min(n, free)
            stream += data[:taken]
            assert buf.used() <= size
        elif op == "release":
            seq = buf.head + n % (buf.tail - buf.head + 1)
            buf.release(seq)
            views = [(s, v) for s, v in views if s + len(v) > seq]
        else:
            if buf.tail == buf.head:
                continue
            seq = buf.head + n % (buf.tail - buf.head)
            view = buf.view(seq, buf.tail - seq)
            assert 0 < len(view) <= buf.tail - seq
            assert ((seq - START) % size) + len(view) <= size  # cut at the wrap, not copied
            views.append((seq, view))
        for seq, view in views:
            # Not yet released: the memory still holds what was written there.
            lo = max(seq, buf.head)
            assert bytes(view[lo - seq :]) == bytes(stream[lo - START : seq - START + len(view)])


class Lent:
    """Memory a device lent, whose bytes in ``reading`` it still reads (posted, not completed)."""

    def __init__(self, size: int) -> None:
        self.view = memoryview(bytearray(size))
        self.reading: set[int] = set()

    def settled(self, start: int, length: int) -> int:
        for k in range(length):
            if start + k in self.reading:
                return k
        return length

    def close(self) -> None:
        pass


def test_a_send_ring_in_lent_memory_writes_there_and_stops_at_bytes_still_read() -> None:
    memory = Lent(128)
    kept: SendMemory = memory
    buf = SendBuffer(100, START, kept)
    assert buf.write(b"a" * 100) == 100
    assert bytes(memory.view[:100]) == b"a" * 100 and bytes(buf.view(START, 100)) == b"a" * 100
    buf.release(START + 60)  # acknowledged; but the device still reads ring bytes 10 and 11
    memory.reading = {10, 11}
    assert buf.free() == 60 and buf.write(b"b" * 60) == 10 and buf.held_bytes == 50
    assert buf.write(b"c") == 0 and buf.held_bytes == 51
    memory.reading.clear()  # completed
    assert buf.write(b"d" * 60) == 50
    assert bytes(memory.view[:60]) == b"b" * 10 + b"d" * 50
    buf.release(START + 160)
    memory.reading = {20}  # past the wrap point: the second piece is checked too
    assert buf.write(b"e" * 80) == 60
    assert bytes(memory.view[:21]) == b"e" * 20 + b"d" and bytes(memory.view[60:100]) == b"e" * 40


@settings(max_examples=200)
@given(
    st.integers(8, 120),
    st.lists(
        st.tuples(
            st.sampled_from(["write", "release", "post", "complete"]),
            st.integers(0, 150),
            st.integers(0, 40),
        ),
        max_size=60,
    ),
)
def test_no_write_touches_a_byte_the_device_still_reads(
    size: int, ops: list[tuple[str, int, int]]
) -> None:
    memory = Lent(size)
    buf = SendBuffer(size, START, memory)
    stream = bytearray()
    counter = 0
    for op, a, b in ops:
        if op == "write":
            before = {i: memory.view[i] for i in memory.reading}
            data = bytes((counter + i) % 251 for i in range(a))
            counter += a
            taken = buf.write(data)
            assert taken <= min(a, buf.size)
            stream += data[:taken]
            assert {i: memory.view[i] for i in memory.reading} == before
        elif op == "release" and buf.tail > buf.head:
            buf.release(buf.head + a % (buf.tail - buf.head + 1))
        elif op == "post" and buf.tail > buf.head:
            # A descriptor for some unacknowledged bytes: the device reads them until completed.
            seq = buf.head + a % (buf.tail - buf.head)
            view = buf.view(seq, max(1, b))
            i = (seq - START) % size
            memory.reading |= set(range(i, i + len(view)))
        elif op == "complete":
            memory.reading = {i for i in memory.reading if i % 7 != a % 7}
        # What is not acknowledged is still the bytes written.
        if buf.tail > buf.head:
            held = bytes(buf.view(buf.head, buf.tail - buf.head))
            assert stream[buf.head - START :].startswith(held)


@settings(max_examples=300)
@given(
    st.integers(16, 200),
    st.lists(st.tuples(st.integers(0, 250), st.integers(1, 60), st.booleans()), max_size=60),
    st.integers(1, 8),
)
def test_receive_ring_reassembles_out_of_order_data(
    size: int, arrivals: list[tuple[int, int, bool]], max_ranges: int
) -> None:
    buf = ReceiveBuffer(size, START, max_ranges)
    stream = bytes(i % 253 for i in range(10_000))
    got = bytearray()
    for offset, length, read in arrivals:
        base = buf.nxt
        seq = base + offset % size
        end = min(seq + length, buf.read + size)  # the window: never past the ring
        if end <= seq:
            continue
        data = memoryview(stream[seq - START : end - START])
        if seq == buf.nxt:
            buf.append(data)
        else:
            verdict = buf.insert(seq, data)
            if verdict is None:
                assert len(buf.ooo) == max_ranges
        ranges = buf.ooo
        assert len(ranges) <= max_ranges
        assert buf.ooo_bytes == sum(e - s for s, e in ranges)
        assert all(a[1] < b[0] for a, b in pairwise(ranges))
        assert all(s > buf.nxt for s, _ in ranges)
        assert all(e <= buf.read + size for _, e in ranges)
        if read:
            got += buf.read_bytes(37)
        for s, e in buf.sack_blocks(4):
            assert [s, e] in ranges
    got += buf.read_bytes(1 << 20)
    assert bytes(got) == stream[: buf.nxt - START]


def test_read_into_crosses_the_wrap() -> None:
    buf = ReceiveBuffer(10, 5, 4)
    buf.append(memoryview(b"abcdefgh"))
    assert buf.read_bytes(6) == b"abcdef"
    buf.append(memoryview(b"ijklmn"))  # wraps
    target = bytearray(20)
    assert buf.read_into(memoryview(target)) == 8
    assert bytes(target[:8]) == b"ghijklmn"


def test_sack_blocks_most_recent_first() -> None:
    buf = ReceiveBuffer(1000, 0, 8)
    buf.insert(100, memoryview(b"x" * 10))
    buf.insert(300, memoryview(b"x" * 10))
    buf.insert(200, memoryview(b"x" * 10))
    assert buf.sack_blocks(3) == [(200, 210), (300, 310), (100, 110)]
    buf.insert(110, memoryview(b"x" * 5))  # grows the first range: it becomes most recent
    assert buf.sack_blocks(3) == [(100, 115), (200, 210), (300, 310)]
    assert buf.insert(102, memoryview(b"x")) is True  # a duplicate
    buf.append(memoryview(b"y" * 100))  # fills up to the first range
    assert buf.nxt == 115
    assert buf.sack_blocks(3) == [(200, 210), (300, 310)]
