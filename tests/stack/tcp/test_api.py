"""The application side, events, errors, payload ownership, ICMP and the path MTU."""

from __future__ import annotations

import errno

import pytest

from netoffload.stack.tcp import (
    Closed,
    DataReceived,
    Established,
    IcmpErrorKind,
    PeerClosed,
    Reset,
    SendSpaceFreed,
    TcpConfig,
    TcpError,
    TcpState,
    TimedOut,
    Unreachable,
)

from .harness import ACK, FIN, MS, PSH, RST, SYN, Impairment, established_pair
from .script import Peer, drain, establish_active, open_active

M32 = 0xFFFFFFFF


def test_recv_semantics_eagain_data_eof() -> None:
    peer = Peer()
    conn = establish_active(peer)
    assert [type(e) for e in drain(conn)] == [Established]
    with pytest.raises(TcpError) as err:
        conn.recv(10)
    assert err.value.errno == errno.EAGAIN
    peer.send(peer.segment(ACK | PSH, b"hello"))
    assert [type(e) for e in drain(conn)] == [DataReceived]  # edge-triggered
    peer.send(peer.segment(ACK | PSH, b" world"))
    assert drain(conn) == []  # still not empty: no second event
    buf = bytearray(4)
    assert conn.recv_into(buf) == 4 and buf == b"hell"
    assert conn.recv(100) == b"o world"
    peer.send(peer.segment(FIN | ACK))
    assert [type(e) for e in drain(conn)] == [PeerClosed]
    assert conn.recv(100) == b"" and conn.recv_into(bytearray(3)) == 0  # EOF
    assert conn.state is TcpState.CLOSE_WAIT
    conn.send(b"still writable")  # half-closed: our side may still send
    assert peer.take()[0].payload


def test_send_fills_the_buffer_then_space_is_freed() -> None:
    peer = Peer(mss=1000, timestamps=False)
    conn = establish_active(peer, TcpConfig(send_buffer_bytes=5000, timestamps=False))
    drain(conn)
    assert conn.send(b"a" * 8000) == 5000
    assert conn.send_space() == 0 and conn.send(b"b") == 0
    (seg,) = peer.take()
    assert len(seg.payload) == 5000
    peer.send(peer.segment(ACK, ack=seg.seq + 2000))
    assert [type(e) for e in drain(conn)] == [SendSpaceFreed]
    assert conn.send_space() == 2000


def test_payload_is_a_view_of_the_send_buffer_kept_until_acknowledged() -> None:
    peer = Peer(mss=1000, timestamps=False)
    conn = establish_active(peer, TcpConfig(send_buffer_bytes=4000, timestamps=False))
    conn.send(b"1" * 3000)
    (seg,) = peer.take()
    view = seg.payload
    assert isinstance(view, memoryview) and bytes(view) == b"1" * 3000
    peer.send(peer.segment(ACK, ack=seg.seq + 1000))
    # 1000 bytes freed: the new write lands there, in the ring, not on unacked bytes.
    assert conn.send(b"2" * 5000) == 2000
    assert bytes(view[1000:]) == b"1" * 2000  # the unacknowledged part is intact
    out = peer.take()
    # The ring wrapped: two segments, cut at the wrap point rather than copied.
    assert [len(s.payload) for s in out] == [1000, 1000]
    assert all(isinstance(s.payload, memoryview) for s in out)
    assert bytes(out[0].payload) + bytes(out[1].payload) == b"2" * 2000


def test_wrong_state_calls_raise_typed_errors() -> None:
    peer = Peer()
    conn = open_active(peer)
    with pytest.raises(TcpError) as err:
        conn.shutdown_write()
    assert err.value.errno == errno.ENOTCONN
    assert conn.send(b"queued before establishment") > 0
    peer.send(peer.segment(SYN | ACK, options=peer.syn_options()))
    (data,) = [s for s in peer.take() if s.payload]
    assert bytes(data.payload) == b"queued before establishment"
    conn.shutdown_write()
    with pytest.raises(TcpError) as err:
        conn.send(b"x")
    assert err.value.errno == errno.EPIPE
    assert conn.send_space() == 0
    conn.close()
    with pytest.raises(TcpError) as err:
        conn.recv(1)
    assert err.value.errno == errno.EBADF
    with pytest.raises(TcpError) as err:
        conn.recv(-1)
    assert err.value.errno == errno.EINVAL
    with pytest.raises(TcpError):
        conn.set_keepalive(True, idle_ns=0)


def test_reset_by_peer_reports_econnreset_once() -> None:
    peer = Peer()
    conn = establish_active(peer)
    peer.send(peer.segment(ACK | PSH, b"last words"))
    peer.send(peer.segment(RST))
    kinds = [type(e) for e in drain(conn)]
    assert kinds[-2:] == [Reset, Closed]
    assert Reset().errno == errno.ECONNRESET
    assert conn.recv(100) == b"last words"  # what had arrived is still readable
    with pytest.raises(TcpError) as err:
        conn.recv(100)
    assert err.value.errno == errno.ECONNRESET
    assert conn.recv(100) == b""
    with pytest.raises(TcpError) as err:
        conn.send(b"x")
    assert err.value.errno == errno.EPIPE


def test_refused_connect() -> None:
    peer = Peer()
    conn = open_active(peer)
    syn = peer.sent_out[0]
    # A RST without an acceptable ACK is ignored; with one it is a refusal.
    peer.send(peer.segment(RST | ACK, ack=syn.seq + 5))
    assert conn.state is TcpState.SYN_SENT
    peer.send(peer.segment(RST | ACK, ack=syn.seq + 1))
    events = drain(conn)
    assert events[-1] == Closed() and events[-2].errno == errno.ECONNREFUSED  # type: ignore[attr-defined]
    with pytest.raises(TcpError) as err:
        conn.recv(1)
    assert err.value.errno == errno.ECONNREFUSED


def test_bad_ack_in_syn_sent_is_answered_with_a_reset() -> None:
    peer = Peer()
    conn = open_active(peer)
    peer.send(peer.segment(ACK, ack=12345), advance=False)
    (rst,) = peer.take()
    assert (rst.seq, rst.flags) == (12345, RST)  # <SEQ=SEG.ACK><CTL=RST>
    assert conn.state is TcpState.SYN_SENT


def test_close_with_unread_data_sends_a_reset() -> None:
    peer = Peer()
    conn = establish_active(peer)
    peer.send(peer.segment(ACK | PSH, b"unread"))
    conn.close()
    (rst,) = peer.take()
    assert rst.flags & RST and rst.seq == peer.rcv_nxt
    assert conn.state is TcpState.CLOSED and isinstance(drain(conn)[-1], Closed)


def test_data_after_close_resets_the_connection() -> None:
    peer = Peer()
    conn = establish_active(peer)
    conn.close()
    (fin,) = peer.take()
    peer.send(peer.segment(ACK | PSH, b"too late", ack=fin.seq + 1))
    assert conn.state is TcpState.CLOSED
    assert any(s.flags & RST for s in peer.take())


def test_abort_sends_a_reset_and_closes() -> None:
    peer = Peer()
    conn = establish_active(peer)
    conn.abort()
    assert conn.state is TcpState.CLOSED and conn.has_output()
    assert drain(conn)[-1:] != [Closed()]  # Closed waits until the RST has gone out
    (rst,) = peer.take()
    assert rst.flags & RST
    assert drain(conn)[-1] == Closed() and not conn.has_output()
    assert conn.next_timer_ns() is None


def test_unreachable_during_the_handshake_aborts() -> None:
    peer = Peer()
    conn = open_active(peer)
    conn.on_icmp_error(IcmpErrorKind.HOST_UNREACHABLE, peer.now)
    events = drain(conn)
    assert events[-2] == Unreachable(IcmpErrorKind.HOST_UNREACHABLE)
    assert events[-2].errno == errno.EHOSTUNREACH  # type: ignore[attr-defined]
    assert events[-1] == Closed() and conn.state is TcpState.CLOSED


def test_icmp_when_established_is_soft_and_reported_by_the_timeout() -> None:
    peer = Peer(timestamps=False, sack=False)
    conn = establish_active(peer, TcpConfig(retries=2, timestamps=False, sack=False))
    conn.send(b"x" * 100)
    (data,) = peer.take()
    conn.on_icmp_error(IcmpErrorKind.NET_UNREACHABLE, peer.now, seq=(data.seq + 10**6) & M32)
    assert conn.info().drops == {"ICMP for a sequence number not in flight": 1}  # RFC 5927
    conn.on_icmp_error(IcmpErrorKind.NET_UNREACHABLE, peer.now, seq=data.seq)
    assert conn.state is TcpState.ESTABLISHED
    for _ in range(3):
        peer.fire_timers()
        peer.take()
    events = drain(conn)
    timed_out = next(e for e in events if isinstance(e, TimedOut))
    assert timed_out.errno == errno.ENETUNREACH


def test_path_mtu_drop_lowers_the_mss_and_resends_at_once() -> None:
    peer = Peer(mss=1460, timestamps=False)
    conn = establish_active(peer, TcpConfig(timestamps=False))
    conn.send(b"m" * 5000)
    (burst,) = peer.take()
    assert burst.mss == 1460
    conn.set_path_mtu(1280, 40)  # an ICMP packet-too-big for an IPv4 path
    out = peer.take()
    assert out and all(s.retransmission and s.mss == 1240 for s in out)
    assert sum(len(s.payload) for s in out) == 5000
    assert conn.info().mss_bytes == 1240 and conn.info().rtos == 0
    conn.set_path_mtu(9000, 40)  # never raised by an ICMP
    assert conn.info().mss_bytes == 1240


def test_transfer_through_a_smaller_mtu_than_announced() -> None:
    net, client, _ = established_pair(TcpConfig(), forward=Impairment(mtu=1280), delay_ns=MS)
    data = bytes(range(256)) * 4000
    client.send(data)
    assert net.run(lambda: net.data(net.server) == data)
    assert client.info().mss_bytes == 1280 - 40 - 12


def test_idle_connection_has_no_timer_and_no_output() -> None:
    _, client, server = established_pair(TcpConfig())
    for conn in (client, server):
        assert conn.next_timer_ns() is None and not conn.has_output()
