"""Descriptor queues in shared memory, and the memory a peer hands over."""

from __future__ import annotations

import errno
import mmap
import os

import numpy as np
import pytest

from netoffload.device.vmdq.queue import (
    DESC,
    Queue,
    QueueLayout,
    UnsafeMemory,
    descs,
    map_sealed,
    sealed_memfd,
)


def _pair(capacity: int = 8) -> tuple[Queue, Queue, mmap.mmap]:
    layout = QueueLayout(("a", "b"), capacity)
    region = mmap.mmap(-1, layout.total_bytes)
    mem = memoryview(region)
    producer, consumer = layout.queues(mem)["a"], layout.queues(mem)["a"]
    return producer, consumer, region


def test_descriptors_go_through_in_order_across_the_wrap() -> None:
    producer, consumer, _ = _pair(8)
    seen = []
    for round_ in range(5):
        rows = descs(6)
        rows["buffer"] = np.arange(6) + 10 * round_
        rows["length"] = 60
        producer.put(rows)
        assert consumer.available() == 6
        got = consumer.take(4)
        got = np.concatenate([got, consumer.take()])
        seen += got["buffer"].tolist()
    assert seen == [b + 10 * r for r in range(5) for b in range(6)]


def test_a_full_queue_refuses_more() -> None:
    producer, _, _ = _pair(8)
    producer.put(descs(8))
    assert producer.space() == 0
    with pytest.raises(OverflowError):
        producer.put(descs(1))


def test_an_impossible_peer_index_reads_as_empty_and_marks_the_queue_broken() -> None:
    layout = QueueLayout(("a",), 8)
    region = mmap.mmap(-1, layout.total_bytes)
    consumer = layout.queues(memoryview(region))["a"]
    at = layout.index_offset(0)
    region[at : at + 4] = (1000).to_bytes(4, "little")  # the peer says 1000 entries
    assert consumer.available() == 0 and consumer.broken
    assert len(consumer.take()) == 0


def test_rewriting_our_own_index_in_shared_memory_changes_nothing_for_us() -> None:
    producer, consumer, region = _pair(8)
    rows = descs(3)
    rows["buffer"] = [1, 2, 3]
    producer.put(rows)
    assert consumer.take(1)["buffer"].tolist() == [1]
    at = QueueLayout(("a", "b"), 8).index_offset(0) + 64
    region[at : at + 4] = (0).to_bytes(4, "little")  # someone rewinds the consumer index
    assert consumer.take()["buffer"].tolist() == [2, 3]


def test_descriptors_are_copied_out_before_anyone_looks_at_them() -> None:
    producer, consumer, region = _pair(8)
    rows = descs(1)
    rows["length"] = 60
    producer.put(rows)
    got = consumer.take()
    start = QueueLayout(("a", "b"), 8).entries_offset(0)
    region[start + 12 : start + 16] = (10**6).to_bytes(4, "little")  # the peer rewrites it
    assert got["length"].tolist() == [60]


def test_sealed_memory_cannot_shrink_under_a_mapping() -> None:
    fd = sealed_memfd("test-sealed", 8192)
    try:
        region = map_sealed(fd, 8192)
        with pytest.raises(PermissionError) as info:
            os.ftruncate(fd, 4096)
        assert info.value.errno == errno.EPERM
        region[8191] = 1  # still mapped, still there
        region.close()
    finally:
        os.close(fd)


def test_memory_without_seals_or_too_small_is_refused() -> None:
    fd = os.memfd_create("test-unsealed", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, 8192)
        with pytest.raises(UnsafeMemory, match="not sealed"):
            map_sealed(fd, 8192)
    finally:
        os.close(fd)
    fd = sealed_memfd("test-small", 4096)
    try:
        with pytest.raises(UnsafeMemory, match="4096 bytes, 8192 needed"):
            map_sealed(fd, 8192)
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        with pytest.raises(UnsafeMemory):
            map_sealed(r, 4096)
    finally:
        os.close(r)
        os.close(w)


def test_a_descriptor_is_96_bytes_and_a_layout_pages() -> None:
    assert DESC.itemsize == 96
    layout = QueueLayout(("post", "rx", "tx", "done"), 256)
    assert layout.total_bytes % 4096 == 0
    assert layout.entries_offset(0) == 4096
    with pytest.raises(ValueError):
        QueueLayout(("a",), 100)
