"""Device names, the same in the CLI and the Python API.

``softnic``          a SoftNic with its default capabilities
``tap:NAME``         a TAP interface (created, or attached to if it exists)
``packet:IFNAME``    an existing interface through AF_PACKET rings
``xdp:IFNAME``       an existing interface through an AF_XDP socket and its UMEM
``IFNAME``           short for ``packet:IFNAME``
"""

from __future__ import annotations

from netoffload.device.base import Device, DeviceError

SCHEMES = ("softnic", "tap", "packet", "xdp")


def open_device(spec: str, *, data_path: bool = True) -> Device:
    """Open the device ``spec`` names; ``DeviceError`` (one line) when it cannot.

    ``data_path=False`` skips what only sending and receiving need (the
    AF_PACKET rings; the AF_XDP socket and its XDP program), for callers that
    only query or change capabilities.
    """
    spec = spec.strip()
    scheme, sep, rest = spec.partition(":")
    if not sep:
        if spec == "softnic":
            return _softnic()
        if spec in ("tap", "packet", "xdp"):
            raise DeviceError(f"{spec!r} needs an interface name: {spec}:NAME")
        scheme, rest = "packet", spec
    if not rest and scheme != "softnic":
        raise DeviceError(f"{spec!r} needs an interface name: {scheme}:NAME")
    if scheme == "softnic":
        if rest:
            raise DeviceError(f"softnic takes no name, got {spec!r}")
        return _softnic()
    if scheme == "tap":
        from netoffload.device.tap import TapDevice

        return TapDevice(rest)
    if scheme == "packet":
        from netoffload.device.packet import PacketDevice

        return PacketDevice(rest, rings=data_path)
    if scheme == "xdp":
        from netoffload.device.xdp import XdpDevice

        return XdpDevice(rest, data_path=data_path)
    raise DeviceError(
        f"unknown device {spec!r}; use softnic, tap:NAME, packet:IFNAME, xdp:IFNAME "
        "or an interface name"
    )


def _softnic() -> Device:
    from netoffload.device.softnic import SoftNic

    return SoftNic()
