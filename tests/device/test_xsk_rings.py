"""AF_XDP ring arithmetic and the redirect program's bytes, without a kernel.

The rings are laid out as the kernel lays them out (``linux/if_xdp.h``:
producer and consumer words, then the entries); the program bytes are the
eBPF instruction encoding (Documentation/bpf/standardization/instruction-set.rst:
opcode, dst_reg in the low nibble and src_reg in the high nibble, 16-bit
offset, 32-bit immediate, little-endian).
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from netoffload.device.bpf import redirect_program
from netoffload.device.xsk import DescRing, Ring

PRODUCER, CONSUMER, DESC = 0, 64, 128


def _memory(size: int, entry_bytes: int) -> bytearray:
    return bytearray(DESC + size * entry_bytes)


def test_the_redirect_program_is_the_six_instructions() -> None:
    program = redirect_program(0x2A)
    assert program.hex(" ", 8).split(" ") == [
        "6112100000000000",  # r2 = *(u32 *)(r1 + 16)    ctx->rx_queue_index
        "181100002a000000",  # r1 = map fd 42 (ld_imm64, src_reg 1: BPF_PSEUDO_MAP_FD)
        "0000000000000000",  # ... its upper 32 bits
        "b703000002000000",  # r3 = 2                    XDP_PASS when the slot is empty
        "8500000033000000",  # call 51                   bpf_redirect_map
        "9500000000000000",  # exit
    ]


def test_a_producer_wraps_its_index_at_two_to_the_32() -> None:
    mem = _memory(8, 8)
    struct.pack_into("=I", mem, PRODUCER, 0xFFFFFFFE)
    struct.pack_into("=I", mem, CONSUMER, 0xFFFFFFFE)
    ring = Ring(mem, producer=PRODUCER, consumer=CONSUMER, desc=DESC, size=8)
    assert ring.free() == 8
    slots = ring.slots(5)
    assert slots.tolist() == [6, 7, 0, 1, 2]
    ring.addr[slots] = [10, 11, 12, 13, 14]
    ring.publish(5)
    assert struct.unpack_from("=I", mem, PRODUCER)[0] == 3
    assert ring.free() == 3 and ring.pending() == 5
    struct.pack_into("=I", mem, CONSUMER, 1)  # the other side took three
    assert ring.free() == 6 and ring.pending() == 2
    assert struct.unpack_from("=8Q", mem, DESC) == (12, 13, 14, 0, 0, 0, 10, 11)


def test_a_consumer_never_believes_more_than_the_ring_holds() -> None:
    mem = _memory(4, 8)
    ring = Ring(mem, producer=PRODUCER, consumer=CONSUMER, desc=DESC, size=4)
    assert ring.available() == 0
    struct.pack_into("=I", mem, PRODUCER, 1000)  # a producer index far ahead: a lie
    assert ring.available() == 4
    struct.pack_into("=I", mem, PRODUCER, 3)
    assert ring.available() == 3
    assert ring.peek(3).tolist() == [0, 1, 2]
    ring.consume(3)
    assert struct.unpack_from("=I", mem, CONSUMER)[0] == 3
    assert ring.peek(2).tolist() == [3, 0]


def test_descriptors_have_the_kernels_layout() -> None:
    mem = _memory(4, 16)
    ring = DescRing(mem, producer=PRODUCER, consumer=CONSUMER, desc=DESC, size=4)
    slots = ring.slots(2)
    ring.addr[slots] = [0x1234_5678_9ABC, 4096]
    ring.len[slots] = [1514, 60]
    ring.options[slots] = 0
    ring.publish(2)
    # struct xdp_desc { __u64 addr; __u32 len; __u32 options; }
    assert struct.unpack_from("=QII", mem, DESC) == (0x1234_5678_9ABC, 1514, 0)
    assert struct.unpack_from("=QII", mem, DESC + 16) == (4096, 60, 0)
    assert ring.addr.dtype == np.dtype("<u8") and ring.len.dtype == np.dtype("<u4")


@pytest.mark.parametrize("size", [0, 3, 6])
def test_a_ring_is_a_power_of_two(size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        Ring(_memory(8, 8), producer=PRODUCER, consumer=CONSUMER, desc=DESC, size=size)
