"""Device drivers: each maps its native features onto the offload contract."""

from netoffload.device.base import Device, DeviceError

__all__ = ["Device", "DeviceError"]
