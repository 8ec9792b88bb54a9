"""Errors of the offload contract."""

from __future__ import annotations


class OffloadError(Exception):
    """Base of every error the offload contract raises."""


class CapabilityError(OffloadError):
    """A capability chain or record is malformed (truncated, looping, overlong...)."""


class SelectionError(OffloadError):
    """A selection asks a device for something it did not advertise or cannot change."""


class VirtioHdrError(OffloadError):
    """A virtio_net_hdr cannot be read or written (wrong size, field out of range)."""


class RequestError(OffloadError):
    """A per-packet request (``TxRequest`` and its parts) holds a value no device can take."""
