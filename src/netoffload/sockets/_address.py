"""Socket addresses as the standard library spells them, and which path serves them.

``parse`` checks an address tuple the way ``socket`` does (the same
exception types and messages), ``resolve`` turns its host into an IP address
(``''`` is the wildcard), ``sockaddr`` formats one back for a family (an IPv4
address on an AF_INET6 socket is ``::ffff:a.b.c.d``). ``destination_reason``
and ``bind_reason`` are the transport selection: ``None`` when the user-level
stack serves the address, else the reason the OS does.
"""

from __future__ import annotations

import _socket
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from netoffload.stack._netaddr import IpAddress
from netoffload.stack.stack import Stack

AF_INET = _socket.AF_INET
AF_INET6 = _socket.AF_INET6
_BROADCAST = IPv4Address("255.255.255.255")


def parse(family: int, address: Any, what: str) -> tuple[str, int]:
    """``(host, port)`` from an AF_INET or AF_INET6 address tuple; ``TypeError`` or
    ``OverflowError`` as the standard library raises them."""
    name = "AF_INET" if family == AF_INET else "AF_INET6"
    size = (2,) if family == AF_INET else (2, 3, 4)
    if not isinstance(address, tuple) or len(address) not in size:
        shape = "a pair (host, port)" if family == AF_INET else "a tuple (host, port)"
        raise TypeError(f"{name} address must be {shape}, not {type(address).__name__}")
    host, port = address[0], address[1]
    if isinstance(host, bytes | bytearray):
        host = bytes(host).decode("idna")
    if not isinstance(host, str):
        raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
    if not 0 <= port <= 0xFFFF:
        raise OverflowError(f"{what}(): port must be 0-65535.")
    return host, port


def resolve(family: int, host: str, port: int, kind: int) -> IpAddress | None:
    """The IP address ``host`` names for ``family`` (``None``: the wildcard); names go
    through ``getaddrinfo`` (``socket.gaierror`` when they do not resolve)."""
    if host == "":
        return None
    if host == "<broadcast>":
        return _BROADCAST if family == AF_INET else None
    try:
        value = ip_address(host)
    except ValueError:
        infos = _socket.getaddrinfo(host, port, family, kind)
        value = ip_address(str(infos[0][4][0]).split("%")[0])
    if family == AF_INET and not isinstance(value, IPv4Address):
        raise _socket.gaierror(_socket.EAI_ADDRFAMILY, "Address family for hostname not supported")
    return value


def unmapped(address: IpAddress) -> IpAddress:
    """``::ffff:a.b.c.d`` as the IPv4 address it carries; anything else unchanged."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def sockaddr(family: int, address: IpAddress, port: int) -> tuple[Any, ...]:
    """The address tuple ``getsockname``, ``accept`` and ``recvfrom`` give for ``family``."""
    if family == AF_INET:
        return (str(address), port)
    if isinstance(address, IPv4Address):
        return (f"::ffff:{address}", port, 0, 0)
    return (str(address), port, 0, 0)


def wildcard(family: int) -> IpAddress:
    return IPv4Address(0) if family == AF_INET else IPv6Address(0)


def destination_reason(stack: Stack, address: IpAddress) -> str | None:
    """``None`` when the stack reaches ``address`` through its interfaces; else why not.

    The caller holds the runtime's lock (route lookups fill a cache).
    """
    if address.is_loopback:
        return "loopback"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address == _BROADCAST or stack.routes.is_broadcast(address):
        return "broadcast"
    if stack.routes.is_local(address):
        # The kernel routes it to the device, where the stack answers it.
        return "own_address"
    hop = stack.routes.lookup(address)
    if hop is None or hop.source is None:
        return "no_route"
    return None


def bind_reason(stack: Stack, address: IpAddress | None, versions: tuple[int, ...]) -> str | None:
    """``None`` when the stack can serve a socket bound to ``address`` (``None``: the
    wildcard, of the IP ``versions`` the socket takes); else why not."""
    if address is None or address.is_unspecified:
        if any(stack.addresses(v) for v in versions):
            return None
        return "no_address"
    if address.is_loopback:
        return "loopback"
    if stack.routes.is_local(address):
        return None
    return "not_a_stack_address"


def versions_for(family: int, v6only: bool) -> tuple[int, ...]:
    """The IP versions a wildcard socket of ``family`` serves."""
    if family == AF_INET:
        return (4,)
    return (6,) if v6only else (6, 4)
