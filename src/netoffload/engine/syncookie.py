"""SYN cookies as Linux makes them (net/ipv4/syncookies.c, net/ipv6/syncookies.c).

Over its SYN limit a listener keeps no state for a SYN: it answers with a
SYN-ACK whose initial sequence number *is* the state, and rebuilds the
connection from the ACK that comes back. The 32-bit cookie is Linux's:

    cookie = H0(addrs, ports) + client_isn + (count << 24)
             + ((H1(addrs, ports, count) + mss_index) & 0xFFFFFF)

``count`` is a minute counter (``now_ns`` // 60 s, Linux's
``tcp_cookie_time``), so a cookie is good in the minute it was made and the
next (``MAX_AGE`` 2); ``mss_index`` picks one of four MSS values (Linux's
``msstab`` for IPv4 and IPv6); H0 and H1 are keyed 32-bit hashes of the
addresses, the ports and (H1) the count. Linux uses SipHash with a boot-time
secret; here the keyed hash is BLAKE2s (``hashlib.blake2s`` with the secret as
key, a 4-byte digest, and ``person`` telling H0 from H1): a different function,
the same construction and the same guarantees (without the secret, a cookie
cannot be forged; a stale or altered one does not decode).

Check: on the ACK, ``cookie = ack - 1`` and ``client_isn = seq - 1``; ``decode``
gives the MSS back, or ``None`` for a forged, altered or stale cookie. TCP
options other than the MSS (window scale, SACK, which Linux keeps in the
timestamp) are not encoded.
"""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv6Address

#: Linux's msstab: the MSS values a cookie can carry (the largest not above the peer's).
MSS_TABLE_IPV4 = (536, 1300, 1440, 1460)
MSS_TABLE_IPV6 = (1220, 1420, 1440, 8940)
COOKIE_BITS = 24
COOKIE_MASK = (1 << COOKIE_BITS) - 1
PERIOD_NS = 60 * 1_000_000_000
#: A cookie is good in the period it was made and the next.
MAX_AGE = 2

Address = IPv4Address | IPv6Address | bytes


def _packed(address: Address) -> bytes:
    return address if isinstance(address, bytes) else address.packed


class SynCookies:
    """Make and check SYN cookies under one secret (at least 16 bytes, at most 32)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if not 16 <= len(secret) <= 32:
            raise ValueError("a SYN cookie secret has 16 to 32 bytes")
        self._secret = bytes(secret)

    def _hash(self, which: int, flow: bytes, count: int) -> int:
        h = hashlib.blake2s(
            flow + count.to_bytes(4, "big"),
            key=self._secret,
            digest_size=4,
            person=b"syncook" + bytes([which]),
        )
        return int.from_bytes(h.digest(), "big")

    @staticmethod
    def _flow(src: Address, dst: Address, sport: int, dport: int) -> bytes:
        s, d = _packed(src), _packed(dst)
        if len(s) != len(d) or len(s) not in (4, 16):
            raise ValueError("two IPv4 or two IPv6 addresses")
        return s + d + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")

    @staticmethod
    def mss_table(src: Address) -> tuple[int, ...]:
        return MSS_TABLE_IPV4 if len(_packed(src)) == 4 else MSS_TABLE_IPV6

    def encode(
        self,
        src: Address,
        dst: Address,
        sport: int,
        dport: int,
        *,
        client_isn: int,
        mss: int,
        now_ns: int,
    ) -> int:
        """The cookie (our initial sequence number) for a SYN from ``src:sport`` to ``dst:dport``.

        ``mss`` is the peer's; the cookie carries the largest table value not above it.
        """
        flow = self._flow(src, dst, sport, dport)
        table = self.mss_table(src)
        index = max((i for i, v in enumerate(table) if v <= mss), default=0)
        count = (now_ns // PERIOD_NS) & 0xFFFFFFFF
        return (
            self._hash(0, flow, 0)
            + client_isn
            + (count << COOKIE_BITS)
            + ((self._hash(1, flow, count) + index) & COOKIE_MASK)
        ) & 0xFFFFFFFF

    def decode(
        self,
        src: Address,
        dst: Address,
        sport: int,
        dport: int,
        *,
        client_isn: int,
        cookie: int,
        now_ns: int,
    ) -> int | None:
        """The MSS a cookie carries, or ``None`` when it is forged, altered or stale.

        From the ACK: ``cookie = ack - 1``, ``client_isn = seq - 1``.
        """
        flow = self._flow(src, dst, sport, dport)
        count = (now_ns // PERIOD_NS) & 0xFFFFFFFF
        rest = (cookie - self._hash(0, flow, 0) - client_isn) & 0xFFFFFFFF
        age = (count - (rest >> COOKIE_BITS)) & (0xFFFFFFFF >> COOKIE_BITS)
        if age >= MAX_AGE:
            return None
        index = (rest - self._hash(1, flow, (count - age) & 0xFFFFFFFF)) & COOKIE_MASK
        table = self.mss_table(src)
        return table[index] if index < len(table) else None
