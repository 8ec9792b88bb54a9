"""Virtual machine queues (VMDq): guest windows, descriptor queues, steering, the NIC side.

What a NIC with VMDq pools does for a virtual switch, in software: each guest
owns a window of buffers (``window``), posts receive buffers through
descriptor queues (``queue``), and the NIC side (``engine.PoolEngine``) looks
each frame up in the switch's table (``steer``) and writes it straight into a
buffer of the right guest. The SoftNic firmware runs the engine for a SoftNic
uplink; ``netoffload.vswitch`` runs it for a Linux one.
"""

from netoffload.device.vmdq.engine import PoolCounters, PoolEngine, TxWork
from netoffload.device.vmdq.queue import (
    DESC,
    Queue,
    QueueLayout,
    Status,
    UnsafeMemory,
    map_sealed,
    sealed_memfd,
)
from netoffload.device.vmdq.steer import Kind, PortVlans, Steer, SteerError, SteeringTable
from netoffload.device.vmdq.window import (
    HEADROOM,
    GeometryError,
    WindowGeometry,
    guest_rings,
    nic_queues,
)

__all__ = [
    "DESC",
    "HEADROOM",
    "GeometryError",
    "Kind",
    "PoolCounters",
    "PoolEngine",
    "PortVlans",
    "Queue",
    "QueueLayout",
    "Status",
    "Steer",
    "SteerError",
    "SteeringTable",
    "TxWork",
    "UnsafeMemory",
    "WindowGeometry",
    "guest_rings",
    "map_sealed",
    "nic_queues",
    "sealed_memfd",
]
