"""Passive opens with Linux ``listen()`` backlog semantics."""

from __future__ import annotations

from ipaddress import IPv4Address

from netoffload.stack.tcp import (
    TcpConfig,
    TcpConnection,
    TcpListener,
    TcpSegmentOut,
    TcpState,
)

from .harness import ACK, MS, RST, SYN, S
from .script import Peer, new_listener


def listener(backlog: int, **config: object) -> TcpListener:
    return new_listener(backlog, TcpConfig(**config))  # type: ignore[arg-type]


def client(n: int) -> tuple[IPv4Address, int]:
    return (IPv4Address("198.18.0.1"), 30000 + n)


def half_open(lst: TcpListener, n: int) -> tuple[Peer, TcpConnection | TcpSegmentOut | None]:
    peer = Peer()
    result = lst.on_segment(client(n), peer.segment(SYN, options=peer.syn_options()), peer.now)
    if isinstance(result, TcpConnection):
        peer.conn = result
        peer.seq += 1
        peer.take()
    return peer, result


def test_syn_queue_holds_backlog_half_open_connections() -> None:
    lst = listener(backlog=3)
    results = [half_open(lst, i)[1] for i in range(5)]
    assert all(isinstance(r, TcpConnection) for r in results[:3])
    assert results[3:] == [None, None]  # dropped, no SYN cookies
    assert lst.syn_queue_len() == 3 and lst.stats()["syn_queue_overflows"] == 2


def test_accept_queue_holds_backlog_plus_one_then_syns_are_dropped() -> None:
    lst = listener(backlog=2)
    for i in range(3):
        peer, child = half_open(lst, i)
        assert isinstance(child, TcpConnection)
        peer.send(peer.segment(ACK))
        assert child.state is TcpState.ESTABLISHED
    assert lst.accept_queue_len() == 3  # Linux's sk_acceptq_is_full is "> backlog"
    assert half_open(lst, 3)[1] is None
    assert lst.stats()["listen_overflows"] == 1
    assert lst.accept() is not None
    assert isinstance(half_open(lst, 4)[1], TcpConnection)  # room again


def test_final_ack_is_dropped_while_the_accept_queue_is_full() -> None:
    lst = listener(backlog=2)
    for i in range(2):
        peer, _ = half_open(lst, i)
        peer.send(peer.segment(ACK))
    waiting = [half_open(lst, 10 + i) for i in range(2)]  # SYN queue: 2 = backlog
    assert lst.syn_queue_len() == 2
    first, _ = waiting[0]
    first.send(first.segment(ACK))
    assert lst.accept_queue_len() == 3
    second, child = waiting[1]
    assert isinstance(child, TcpConnection)
    second.tick(MS)
    second.send(second.segment(ACK))
    # Refused: the child stays half-open (tcp_abort_on_overflow = 0) ...
    assert child.state is TcpState.SYN_RECEIVED and lst.syn_queue_len() == 1
    assert child.info().drops == {"accept queue full": 1}
    assert second.take() == []
    # ... the application accepts one, the SYN,ACK goes again and the ACK completes it.
    assert lst.accept() is not None
    second.fire_timers()
    (synack,) = second.take()
    assert synack.flags == SYN | ACK
    second.send(second.segment(ACK))
    assert child.state is TcpState.ESTABLISHED and lst.accept_queue_len() == 3


def test_ack_to_a_listener_gets_a_reset_and_rst_is_dropped() -> None:
    lst = listener(backlog=4)
    peer = Peer()
    reply = lst.on_segment(client(1), peer.segment(ACK, ack=12345), peer.now)
    assert isinstance(reply, TcpSegmentOut) and (reply.seq, reply.flags) == (12345, RST)
    assert lst.on_segment(client(1), peer.segment(RST), peer.now) is None
    assert lst.on_segment(client(1), peer.segment(0), peer.now) is None
    assert lst.on_segment(client(1), peer.segment(SYN, options=b"\x02\x05"), peer.now) is None


def test_retransmitted_syn_gets_the_syn_ack_again_and_synack_retries_end_it() -> None:
    lst = listener(backlog=4, synack_retries=2)
    peer, child = half_open(lst, 1)
    assert isinstance(child, TcpConnection)
    first = peer.sent_out[-1]
    peer.send(peer.segment(SYN, seq=peer.seq - 1, options=peer.syn_options()), advance=False)
    (again,) = peer.take()
    assert again.flags == SYN | ACK and again.seq == first.seq
    gaps = []
    for _ in range(2):
        before = peer.now
        peer.fire_timers()
        gaps.append(peer.now - before)
        (rexmit,) = peer.take()
        assert rexmit.flags == SYN | ACK
    assert gaps == [S, 2 * S]  # the initial RTO, backed off
    peer.fire_timers()
    assert child.state is TcpState.CLOSED and lst.syn_queue_len() == 0


def test_closing_the_listener_resets_children_not_yet_accepted() -> None:
    lst = listener(backlog=4)
    peer, child = half_open(lst, 1)
    peer.send(peer.segment(ACK))
    _, child2 = half_open(lst, 2)
    lst.close()
    assert lst.state is TcpState.CLOSED
    assert child.state is TcpState.CLOSED and child2.state is TcpState.CLOSED  # type: ignore[union-attr]
    (rst,) = peer.take()
    assert rst.flags & RST
    # A closed listener answers like a closed port.
    reply = lst.on_segment(client(3), Peer().segment(SYN), 0)
    assert isinstance(reply, TcpSegmentOut) and reply.flags & RST
