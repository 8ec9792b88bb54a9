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


def test_syn_queue_holds_backlog_half_open_connections_then_cookies_answer() -> None:
    lst = listener(backlog=3)
    results = [half_open(lst, i)[1] for i in range(5)]
    assert all(isinstance(r, TcpConnection) for r in results[:3])
    # Over the backlog: a stateless SYN,ACK whose sequence number is the cookie.
    for r in results[3:]:
        assert isinstance(r, TcpSegmentOut) and r.flags == SYN | ACK
        assert r.options == bytes((2, 4, 0x05, 0xB4))  # MSS only: no wscale, SACK, timestamps
    assert lst.syn_queue_len() == 3 and lst.stats()["syn_queue_overflows"] == 2
    assert lst.stats()["syn_cookies_sent"] == 2


def _cookie_syn_ack(lst: TcpListener, peer: Peer, n: int) -> TcpSegmentOut:
    reply = lst.on_segment(
        client(n), peer.segment(SYN, options=peer.syn_options()), peer.now, cookie=True
    )
    assert isinstance(reply, TcpSegmentOut)
    assert reply.ack == (peer.seq + 1) & 0xFFFFFFFF
    return reply


def test_an_ack_with_a_good_cookie_opens_an_established_child() -> None:
    lst = listener(backlog=4)
    peer = Peer(timestamps=False, sack=False, wscale=None)
    synack = _cookie_syn_ack(lst, peer, 1)
    assert lst.syn_queue_len() == 0  # the device's verdict: no state for this SYN
    peer.seq = (peer.seq + 1) & 0xFFFFFFFF
    peer.rcv_nxt = (synack.seq + 1) & 0xFFFFFFFF
    child = lst.on_segment(client(1), peer.segment(ACK, b"hello"), peer.now + MS)
    assert isinstance(child, TcpConnection)
    assert child.state is TcpState.ESTABLISHED
    assert child.readable() and child.recv(100) == b"hello"
    assert lst.accept() is child
    assert lst.stats()["syn_cookies_accepted"] == 1


def test_a_forged_or_altered_cookie_earns_a_reset_and_no_state() -> None:
    lst = listener(backlog=4)
    peer = Peer(timestamps=False, sack=False, wscale=None)
    synack = _cookie_syn_ack(lst, peer, 2)
    peer.seq = (peer.seq + 1) & 0xFFFFFFFF
    wrong = lst.on_segment(client(2), peer.segment(ACK, ack=synack.seq + 2), peer.now)
    assert isinstance(wrong, TcpSegmentOut) and wrong.flags & RST
    other = lst.on_segment(client(3), peer.segment(ACK, ack=synack.seq + 1), peer.now)
    assert isinstance(other, TcpSegmentOut) and other.flags & RST  # another client's port
    assert lst.syn_queue_len() == 0 and lst.accept_queue_len() == 0
    assert lst.stats()["syn_cookies_failed"] == 2


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
