"""The offloadable tasks."""

from __future__ import annotations

import enum


class Task(enum.IntEnum):
    """A unit of per-packet work that a device may do for the host.

    The values are the task numbers of the binary capability chain; they
    never change once released.
    """

    CHECKSUM = 1
    ENCRYPT = 2
    DECRYPT = 3
    DIGEST = 4
    TCP_SEGMENTATION = 5
    UDP_SEGMENTATION = 6
    TCP_ASSEMBLY = 7
    UDP_ASSEMBLY = 8
    CLASSIFICATION = 9
    DOS_FILTER = 10
    TX_SCHEDULING = 11

    @property
    def label(self) -> str:
        """The name used on the command line and in JSON (``tcp_segmentation``)."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Task:
        """Parse a command-line task name; accepts ``-`` for ``_`` and any case."""
        key = label.strip().replace("-", "_").upper()
        try:
            return cls[key]
        except KeyError:
            names = ", ".join(t.label for t in cls)
            raise ValueError(f"unknown task {label!r}; tasks are: {names}") from None
