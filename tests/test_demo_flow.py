"""The demo flow's UDP stream tags: written as a matrix, read back wherever they point."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from netoffload.demo.flow import UDP_TAG, _read_tagged, _write_tagged


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5000), st.integers(9, 600), st.integers(0, 300), st.booleans())
def test_tagged_round_trip(size: int, step: int, start: int, shuffle: bool) -> None:
    stream = memoryview(bytes((i * 7 + 3) % 251 for i in range(start + size)))
    count = -(-size // step)
    body = bytearray(size + UDP_TAG.size * count)
    _write_tagged(body, 0, stream, start, size, step=step)
    width = step + UDP_TAG.size
    datagrams = [bytes(body[i : i + width]) for i in range(0, len(body), width)]
    for k, datagram in enumerate(datagrams):
        assert UDP_TAG.unpack_from(datagram)[0] == start + k * step
    if shuffle:
        # Out of order: the matrix fast path must notice and fall back. A short
        # datagram stays last, as in a coalesced super-packet (a short one ends it).
        full = [d for d in datagrams if len(d) == width]
        datagrams = full[::-1] + datagrams[len(full) :]
    dest = np.zeros(start + size, dtype=np.uint8)
    placed = _read_tagged(b"".join(datagrams), width, dest)
    assert placed == size
    assert dest[start:].tobytes() == bytes(stream[start:])
