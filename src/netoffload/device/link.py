"""Interface link facts through the classic ``ifreq`` ioctls: flags, MTU, MAC, up/down.

Each call works on the network namespace of the socket it is issued on: by
default a new one in the calling thread's namespace, or ``sock`` -- for
example a device's own AF_PACKET socket, which stays in the namespace it
was made in whatever thread asks later.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from netoffload.device.base import DeviceError
from netoffload.wire import MacAddress

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
SIOCGIFINDEX = 0x8933

IFF_UP = 0x1
IFF_RUNNING = 0x40

_IFREQ = struct.Struct("16sH")
_IFREQ_SIZE = 40
_IFNAMSIZ = 16


def ifreq(name: str, flags: int = 0, *, allow_empty: bool = False) -> bytearray:
    """A ``struct ifreq`` for ``name`` with a 16-bit field after the name; checks the name.

    ``allow_empty``: an empty name lets the kernel choose one (TUNSETIFF).
    """
    raw = name.encode()
    if (
        (not raw and not allow_empty)
        or len(raw) >= _IFNAMSIZ
        or b"/" in raw
        or b"\0" in raw
        or b" " in raw
    ):
        raise DeviceError(f"invalid interface name {name!r}")
    buf = bytearray(_IFREQ_SIZE)
    _IFREQ.pack_into(buf, 0, raw, flags)
    return buf


def _ioctl(name: str, request: int, buf: bytearray, sock: socket.socket | None) -> bytearray:
    own = sock is None
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if sock is None else sock
    try:
        fcntl.ioctl(s.fileno(), request, buf, True)
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            raise DeviceError(f"no such interface {name!r}") from None
        raise DeviceError(f"{name}: {os.strerror(exc.errno or 0)}") from None
    finally:
        if own:
            s.close()
    return buf


def interface_exists(name: str) -> bool:
    """True when ``name`` is an interface in the calling thread's namespace."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def interface_flags(name: str, sock: socket.socket | None = None) -> int:
    """The interface's IFF_* flags."""
    buf = _ioctl(name, SIOCGIFFLAGS, ifreq(name), sock)
    return int(struct.unpack_from("H", buf, _IFNAMSIZ)[0])


def interface_up(name: str, sock: socket.socket | None = None) -> bool:
    """Administratively up and with carrier (IFF_UP and IFF_RUNNING)."""
    flags = interface_flags(name, sock)
    return flags & (IFF_UP | IFF_RUNNING) == IFF_UP | IFF_RUNNING


def interface_index(name: str, sock: socket.socket | None = None) -> int:
    """The interface's index (in the namespace of ``sock``)."""
    buf = _ioctl(name, SIOCGIFINDEX, ifreq(name), sock)
    return int(struct.unpack_from("i", buf, _IFNAMSIZ)[0])


def interface_mtu(name: str, sock: socket.socket | None = None) -> int:
    """The interface's MTU (bytes after the Ethernet header)."""
    buf = _ioctl(name, SIOCGIFMTU, ifreq(name), sock)
    return int(struct.unpack_from("i", buf, _IFNAMSIZ)[0])


def interface_mac(name: str, sock: socket.socket | None = None) -> MacAddress:
    """The interface's hardware address."""
    buf = _ioctl(name, SIOCGIFHWADDR, ifreq(name), sock)
    # struct sockaddr: sa_family (2 bytes), then the address bytes.
    return MacAddress(bytes(buf[_IFNAMSIZ + 2 : _IFNAMSIZ + 8]))


def set_link_up(name: str, up: bool = True, sock: socket.socket | None = None) -> None:
    """SIOCSIFFLAGS IFF_UP on ``name`` (or clear it)."""
    current = interface_flags(name, sock)
    wanted = current | IFF_UP if up else current & ~IFF_UP
    _ioctl(name, SIOCSIFFLAGS, ifreq(name, wanted), sock)
