"""SoftNic: a software NIC whose firmware runs in its own process.

The host and the firmware share a pool of buffers and four rings (see
``layout``); the firmware (``firmware``) runs the offload engine on the
tasks the host enabled and moves frames to and from a ``Cable``.
"""

from netoffload.device.softnic.layout import Geometry
from netoffload.device.softnic.nic import SoftNic, default_capabilities, softnic_pair

__all__ = ["Geometry", "SoftNic", "default_capabilities", "softnic_pair"]
