"""Initial sequence numbers (RFC 6528) and timestamp offsets (RFC 7323 §7.1) from one secret."""

from __future__ import annotations

import hashlib
import random
from ipaddress import IPv4Address, IPv6Address

Endpoint = tuple[IPv4Address | IPv6Address, int]

_MASK32 = 0xFFFFFFFF
#: RFC 6528 §3: M is a timer that increments every 4 microseconds.
_TICK_NS = 4_000


def _connection_id(local: Endpoint, remote: Endpoint) -> bytes:
    return (
        local[0].packed
        + local[1].to_bytes(2, "big")
        + remote[0].packed
        + remote[1].to_bytes(2, "big")
    )


class IsnSource:
    """ISN = M + F(localip, localport, remoteip, remoteport, secretkey) (RFC 6528 §3).

    F is keyed BLAKE2s; the key comes from ``rng`` once. One source serves a
    whole stack, so that two incarnations of a 4-tuple get increasing ISNs.
    The same key, under another personalisation, gives each connection its
    timestamp offset, so TSval too increases across incarnations (RFC 7323
    §7.1 and Linux's ``secure_tcp_ts_off``).
    """

    __slots__ = ("_key",)

    def __init__(self, rng: random.Random) -> None:
        self._key = rng.getrandbits(256).to_bytes(32, "big")

    def _f(self, person: bytes, local: Endpoint, remote: Endpoint) -> int:
        digest = hashlib.blake2s(
            _connection_id(local, remote), key=self._key, digest_size=4, person=person
        ).digest()
        return int.from_bytes(digest, "big")

    def isn(self, local: Endpoint, remote: Endpoint, now_ns: int) -> int:
        """The initial sequence number for a connection opened at ``now_ns``."""
        return (now_ns // _TICK_NS + self._f(b"tcp-isn", local, remote)) & _MASK32

    def ts_offset(self, local: Endpoint, remote: Endpoint) -> int:
        """The offset added to this connection's timestamp clock."""
        return self._f(b"tcp-tsof", local, remote)
