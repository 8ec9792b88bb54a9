"""Zero-copy header views, checked header values, checksums, capture files."""

from netoffload.wire.error import WireError

__all__ = ["WireError"]
