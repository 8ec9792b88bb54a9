"""The interface every device driver implements.

A device answers "what can you do" with capability records, enables what a
``Selection`` asks for (and nothing it did not advertise), and moves
batches of ``Packet`` objects: ``send`` carries each packet's ``TxRequest``
down, ``recv`` returns frames with their ``RxInfo``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from types import TracebackType

from netoffload.offload import (
    AnyRecord,
    CapabilityRecord,
    CapabilityStatus,
    DeviceStats,
    Packet,
    Selection,
)


class DeviceError(Exception):
    """The device failed or refused: I/O error, no such interface, not permitted,
    firmware crashed. The message is one line, fit for a user."""


class Device(abc.ABC):
    """A network device driven by the host: query, enable, send and receive batches."""

    name: str

    @abc.abstractmethod
    def capabilities(self) -> list[AnyRecord]:
        """The capability records the device advertises (the decoded chain)."""

    @abc.abstractmethod
    def enabled(self) -> Selection:
        """What is enabled now."""

    @abc.abstractmethod
    def enable(self, selection: Selection) -> Selection:
        """Enable exactly ``selection`` (tasks absent from it are disabled).

        Raises ``SelectionError`` when it asks for anything not advertised or
        not changeable; returns what is enabled afterwards.
        """

    def status(self) -> list[CapabilityStatus]:
        """Each advertised task with what is enabled and whether it can be changed."""
        on = self.enabled()
        return [
            CapabilityStatus(record, on.get(record.task), True)
            for record in self.capabilities()
            if isinstance(record, CapabilityRecord)
        ]

    @abc.abstractmethod
    def send(self, batch: Sequence[Packet]) -> int:
        """Queue a batch for transmission; returns how many packets were accepted."""

    @abc.abstractmethod
    def recv(self, max_packets: int = 64) -> list[Packet]:
        """Up to ``max_packets`` received packets; never blocks (empty list if none)."""

    @abc.abstractmethod
    def fileno(self) -> int:
        """A file descriptor that polls readable when ``recv`` has packets."""

    @abc.abstractmethod
    def stats(self) -> DeviceStats:
        """A snapshot of the device's counters."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device; idempotent."""

    def __enter__(self) -> Device:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
