"""The SoftNic control channel: one request, one reply, over a SOCK_SEQPACKET pair.

A request is one opcode byte and a payload; a reply is one status byte and
a payload. Capabilities travel as the binary capability chain, both ways.
"""

from __future__ import annotations

import enum


class Op(bytes, enum.Enum):
    """Requests the host sends the firmware."""

    READY = b"R"  # firmware -> host, once, after start-up
    QUERY = b"Q"  # reply: the advertised capability chain
    ENABLED = b"N"  # reply: the enabled capability chain
    ENABLE = b"E"  # payload: a chain; reply: the enabled chain, or a refusal
    STATS = b"S"  # reply: JSON counters
    FLUSH = b"F"  # reply once every posted transmit descriptor is on the wire
    INSTALL_SA = b"I"  # payload: u32 handle + an inbound SA's context (engine.ipsec_offload)
    REVOKE_SA = b"V"  # payload: u32 handle
    INSTALL_DIGEST_KEY = b"D"  # payload: u32 handle, u32 algorithm, the key
    REVOKE_DIGEST_KEY = b"d"  # payload: u32 handle
    RULES = b"U"  # payload: a rules command (engine.steer); reply: JSON
    STOP = b"X"  # the firmware exits


class Status(bytes, enum.Enum):
    """First byte of every reply."""

    OK = b"K"
    REFUSED = b"!"  # payload: a one-line reason (the selection was not allowed)
    MALFORMED = b"?"  # payload: a one-line reason (the request could not be parsed)


MAX_MESSAGE = 1 << 20
