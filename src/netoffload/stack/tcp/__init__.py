"""TCP: the sans-I/O connection core, listeners, congestion control and loss recovery.

Modules, each with one responsibility:

``connection``  the public ``TcpConnection`` (application side, path, metrics)
``input``       segment arrival: header prediction and RFC 9293 §3.10.7 per state
``output``      ``poll_transmit``: handshake, super-packets, retransmissions, ACKs, probes
``ack``         ACK processing: RTT, congestion control, SACK, RACK-TLP, recovery
``recv``        receive buffer, advertised window, delayed ACKs, SACK blocks out
``timers``      the one deadline and what each timer does
``tcb``         the control block: every field and the shared helpers
``scoreboard``  what is in flight, as ranges; RACK loss detection
``buffers``     the send and receive rings
``listener``    passive opens with Linux backlog semantics
``options``     the fast option parser and encoders
``rtt``         RFC 6298 estimator; ``isn``: RFC 6528 ISNs; ``reset``: RST for a closed port
``state``       the states and the one transition table; ``events``, ``errors``, ``config``,
                ``info``, ``segment``: the values that cross the API
``congestion/`` NewReno and CUBIC behind one interface
"""

from netoffload.stack.tcp.config import TcpConfig
from netoffload.stack.tcp.congestion import CongestionControl, Cubic, NewReno
from netoffload.stack.tcp.connection import TcpConnection
from netoffload.stack.tcp.errors import IcmpErrorKind, TcpError
from netoffload.stack.tcp.events import (
    Closed,
    DataReceived,
    Established,
    PeerClosed,
    Refused,
    Reset,
    SendSpaceFreed,
    TcpEvent,
    TimedOut,
    Unreachable,
)
from netoffload.stack.tcp.info import TcpInfo
from netoffload.stack.tcp.isn import IsnSource
from netoffload.stack.tcp.listener import TcpListener
from netoffload.stack.tcp.reset import reset_for
from netoffload.stack.tcp.segment import TcpSegmentIn, TcpSegmentOut
from netoffload.stack.tcp.state import TcpState

__all__ = [
    "Closed",
    "CongestionControl",
    "Cubic",
    "DataReceived",
    "Established",
    "IcmpErrorKind",
    "IsnSource",
    "NewReno",
    "PeerClosed",
    "Refused",
    "Reset",
    "SendSpaceFreed",
    "TcpConfig",
    "TcpConnection",
    "TcpError",
    "TcpEvent",
    "TcpInfo",
    "TcpListener",
    "TcpSegmentIn",
    "TcpSegmentOut",
    "TcpState",
    "TimedOut",
    "Unreachable",
    "reset_for",
]
