"""The binary capability chain.

Each record is a 16-byte little-endian header followed by its task buffer::

    u32 size         header size of this record's version (16 for version 1)
    u32 task         Task number
    u32 next_offset  from the start of this record to the next; 0 = last
    u32 buffer_len   length of the task buffer, which starts at ``size``

A reader accepts a larger ``size`` (a newer header: the extra bytes are
skipped) but never a smaller one. Offsets only move forward and a record
never overlaps the next, so a chain cannot loop; every length is checked
against the data before it is used.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import TypeAlias

from netoffload.offload.caps import RECORD_TYPES, CapabilityRecord, UnknownCapability
from netoffload.offload.errors import CapabilityError
from netoffload.offload.task import Task

AnyRecord: TypeAlias = CapabilityRecord | UnknownCapability

HEADER = struct.Struct("<IIII")
HEADER_SIZE = HEADER.size
RECORD_ALIGN = 4
MAX_RECORDS = 64
MAX_BUFFER = 4096


def _record_parts(record: AnyRecord) -> tuple[int, bytes]:
    if isinstance(record, UnknownCapability):
        return record.task_id, record.buffer
    return int(record.task), record.encode_buffer()


def encode_capabilities(records: Iterable[AnyRecord]) -> bytes:
    """Encode records as a chain, each record aligned to 4 bytes."""
    items = [_record_parts(r) for r in records]
    tasks = [t for t, _ in items]
    if len(set(tasks)) != len(tasks):
        raise CapabilityError("a chain holds at most one record per task")
    if len(items) > MAX_RECORDS:
        raise CapabilityError(f"a chain holds at most {MAX_RECORDS} records")
    out = bytearray()
    for i, (task, buffer) in enumerate(items):
        if len(buffer) > MAX_BUFFER:
            raise CapabilityError(
                f"task {task}: buffer of {len(buffer)} bytes exceeds {MAX_BUFFER}"
            )
        body = HEADER_SIZE + len(buffer)
        padded = body + (-body % RECORD_ALIGN)
        last = i == len(items) - 1
        out += HEADER.pack(HEADER_SIZE, task, 0 if last else padded, len(buffer))
        out += buffer
        if not last:
            out += bytes(padded - body)
    return bytes(out)


def decode_capabilities(data: bytes | bytearray | memoryview) -> list[AnyRecord]:
    """Decode a chain; any malformation raises ``CapabilityError`` and nothing else."""
    view = memoryview(data).cast("B")
    if len(view) == 0:
        return []
    records: list[AnyRecord] = []
    seen: set[int] = set()
    offset = 0
    while True:
        if len(records) >= MAX_RECORDS:
            raise CapabilityError(f"chain has more than {MAX_RECORDS} records")
        if offset + HEADER_SIZE > len(view):
            raise CapabilityError(f"record at offset {offset}: truncated header")
        size, task_id, next_offset, buffer_len = HEADER.unpack_from(view, offset)
        if size == 0:
            raise CapabilityError(f"record at offset {offset}: zero size")
        if size < HEADER_SIZE:
            raise CapabilityError(f"record at offset {offset}: size {size} below {HEADER_SIZE}")
        if buffer_len > MAX_BUFFER:
            raise CapabilityError(f"record at offset {offset}: buffer length {buffer_len} too long")
        end = offset + size + buffer_len
        if end > len(view):
            raise CapabilityError(
                f"record at offset {offset}: extends to {end}, past the chain's {len(view)} bytes"
            )
        if task_id in seen:
            raise CapabilityError(f"record at offset {offset}: task {task_id} appears twice")
        seen.add(task_id)
        buffer = view[offset + size : end]
        try:
            task = Task(task_id)
        except ValueError:
            records.append(UnknownCapability(task_id, bytes(buffer)))
        else:
            try:
                records.append(RECORD_TYPES[task].decode_buffer(buffer))
            except CapabilityError as exc:
                raise CapabilityError(f"record at offset {offset}: {exc}") from None
        if next_offset == 0:
            if end + (-end % RECORD_ALIGN) < len(view):
                raise CapabilityError(f"{len(view) - end} bytes after the last record")
            return records
        if next_offset < size + buffer_len:
            raise CapabilityError(
                f"record at offset {offset}: next offset {next_offset} overlaps the record"
            )
        offset += next_offset
        if offset >= len(view):
            raise CapabilityError(
                f"record at offset {offset - next_offset}: next record is past the end"
            )
