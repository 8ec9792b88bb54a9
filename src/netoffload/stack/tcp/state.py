"""The connection states and every transition between them, in one table (RFC 9293 Figure 5)."""

from __future__ import annotations

from enum import Enum


class TcpState(Enum):
    """The states of RFC 9293 §3.3.2."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


class Trigger(Enum):
    """What moves a connection from one state to the next."""

    ACTIVE_OPEN = "active open"
    PASSIVE_OPEN = "passive open"
    RCV_SYN = "rcv SYN"
    RCV_SYN_ACK = "rcv SYN,ACK"
    RCV_ACK_OF_SYN = "rcv ACK of SYN"
    CLOSE = "CLOSE"
    RCV_FIN = "rcv FIN"
    RCV_ACK_OF_FIN = "rcv ACK of FIN"
    RCV_FIN_ACK_OF_FIN = "rcv FIN with ACK of FIN"
    TIMEOUT_2MSL = "2MSL timeout"
    #: Reset received, abort(), a timeout or a hard error: the TCB is deleted.
    DELETE = "delete TCB"


S = TcpState
T = Trigger

#: (state, trigger) -> next state. Nothing else changes a connection's state.
TRANSITIONS: dict[tuple[TcpState, Trigger], TcpState] = {
    (S.CLOSED, T.ACTIVE_OPEN): S.SYN_SENT,
    (S.CLOSED, T.PASSIVE_OPEN): S.LISTEN,
    (S.LISTEN, T.RCV_SYN): S.SYN_RECEIVED,
    (S.LISTEN, T.CLOSE): S.CLOSED,
    (S.SYN_SENT, T.RCV_SYN): S.SYN_RECEIVED,  # simultaneous open
    (S.SYN_SENT, T.RCV_SYN_ACK): S.ESTABLISHED,
    (S.SYN_SENT, T.CLOSE): S.CLOSED,
    (S.SYN_RECEIVED, T.RCV_ACK_OF_SYN): S.ESTABLISHED,
    (S.SYN_RECEIVED, T.CLOSE): S.FIN_WAIT_1,
    (S.SYN_RECEIVED, T.RCV_FIN): S.CLOSE_WAIT,
    (S.ESTABLISHED, T.CLOSE): S.FIN_WAIT_1,
    (S.ESTABLISHED, T.RCV_FIN): S.CLOSE_WAIT,
    (S.FIN_WAIT_1, T.RCV_ACK_OF_FIN): S.FIN_WAIT_2,
    (S.FIN_WAIT_1, T.RCV_FIN): S.CLOSING,  # simultaneous close
    (S.FIN_WAIT_1, T.RCV_FIN_ACK_OF_FIN): S.TIME_WAIT,
    (S.FIN_WAIT_2, T.RCV_FIN): S.TIME_WAIT,
    (S.CLOSING, T.RCV_ACK_OF_FIN): S.TIME_WAIT,
    (S.CLOSE_WAIT, T.CLOSE): S.LAST_ACK,
    (S.LAST_ACK, T.RCV_ACK_OF_FIN): S.CLOSED,
    (S.TIME_WAIT, T.TIMEOUT_2MSL): S.CLOSED,
}
for _state in TcpState:
    if _state is not S.CLOSED:
        TRANSITIONS.setdefault((_state, T.DELETE), S.CLOSED)
del _state

#: States in which both sides have exchanged SYNs (RFC 9293 §3.5).
SYNCHRONIZED = frozenset(
    {
        S.ESTABLISHED,
        S.FIN_WAIT_1,
        S.FIN_WAIT_2,
        S.CLOSE_WAIT,
        S.CLOSING,
        S.LAST_ACK,
        S.TIME_WAIT,
    }
)
#: States in which this end may still send data (its FIN is not yet queued).
CAN_SEND = frozenset({S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.CLOSE_WAIT})
#: States in which the peer may still send data (its FIN has not arrived).
CAN_RECEIVE = frozenset({S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})


def next_state(state: TcpState, trigger: Trigger) -> TcpState:
    """The state after ``trigger`` in ``state``; ``KeyError`` if the table has no such move."""
    return TRANSITIONS[(state, trigger)]
