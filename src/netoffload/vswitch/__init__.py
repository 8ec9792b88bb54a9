"""A virtual switch that hands guests their packets in buffers they own, without copying.

Each guest is a process with its own window (``port.GuestPort``, a
``Device`` a netoffload stack runs on) and rings. The switch
(``switch.VSwitch``) moves descriptors between the guests' rings and the NIC
side's queues, checked against its ownership table (``pool``); the NIC side
(the SoftNic firmware, or the switch itself for a Linux uplink, ``uplink``)
writes each frame straight into a buffer the right guest posted, by the
switch's MAC/VLAN table (``demux``).
"""

from netoffload.device.vmdq.steer import PortVlans
from netoffload.device.vmdq.window import WindowGeometry
from netoffload.vswitch.demux import Demux
from netoffload.vswitch.pool import BufferTable, Quota, State
from netoffload.vswitch.port import DescriptorError, GuestPort
from netoffload.vswitch.switch import Guest, GuestConfig, GuestState, SwitchConfig, VSwitch
from netoffload.vswitch.uplink import LinuxUplink, SoftNicUplink, Uplink

__all__ = [
    "BufferTable",
    "Demux",
    "DescriptorError",
    "Guest",
    "GuestConfig",
    "GuestPort",
    "GuestState",
    "LinuxUplink",
    "PortVlans",
    "Quota",
    "SoftNicUplink",
    "State",
    "SwitchConfig",
    "Uplink",
    "VSwitch",
    "WindowGeometry",
]
