"""ECN (RFC 3168 §6.1): negotiation, ECT on new data only, ECE until CWR, one reduction
per window."""

from __future__ import annotations

from netoffload.stack.tcp import TcpConfig, TcpConnection

from .harness import ACK, CLIENT, CWR, ECE, MS, PSH, SYN, Impairment, Net, established_pair
from .script import Peer, establish_passive, new_listener, open_active


def ecn_peer_established(peer: Peer, config: TcpConfig) -> object:
    conn = open_active(peer, config)
    syn = peer.sent_out[0]
    assert syn.flags == SYN | ECE | CWR and not syn.ect  # an ECN-setup SYN, itself not ECT
    peer.send(peer.segment(SYN | ACK | ECE, options=peer.syn_options()))  # ECN-setup SYN-ACK
    (ack,) = peer.take()
    assert not ack.ect
    return conn


def test_negotiated_ecn_marks_new_data_only() -> None:
    peer = Peer(mss=1000, timestamps=False)
    conn = ecn_peer_established(peer, TcpConfig(ecn_request=True, timestamps=False, nodelay=True))
    assert conn.info().ecn  # type: ignore[attr-defined]
    conn.send(b"e" * 3000)  # type: ignore[attr-defined]
    (data,) = peer.take()
    assert data.ect and not data.retransmission
    peer.fire_timers()  # the tail loss probe: a retransmission, never ECT
    (again,) = peer.take()
    assert again.retransmission and not again.ect
    peer.send(peer.segment(ACK | PSH, b"reply"))
    out = peer.take()
    assert all(not s.ect for s in out if not s.payload)  # pure ACKs are not ECT


def test_no_ecn_unless_the_syn_ack_agrees() -> None:
    peer = Peer(mss=1000, timestamps=False)
    conn = open_active(peer, TcpConfig(ecn_request=True, timestamps=False))
    peer.send(peer.segment(SYN | ACK, options=peer.syn_options()))  # no ECE: not ECN-capable
    peer.take()
    assert not conn.info().ecn
    conn.send(b"x" * 100)
    (data,) = peer.take()
    assert not data.ect


def test_passive_open_agrees_to_ecn() -> None:
    peer = Peer(mss=1000)

    listener = new_listener(backlog=2)
    child = listener.on_segment(
        CLIENT, peer.segment(SYN | ECE | CWR, options=peer.syn_options()), peer.now
    )
    assert isinstance(child, TcpConnection)
    peer.conn = child
    peer.seq += 1
    (synack,) = peer.take()
    assert synack.flags == SYN | ACK | ECE
    # Without ecn_accept the same SYN gets a plain SYN-ACK.
    _, plain = establish_passive(Peer(mss=1000), TcpConfig(ecn_accept=False))
    assert not plain.info().ecn


def test_ce_is_echoed_as_ece_until_cwr_arrives() -> None:
    peer = Peer(mss=1000, timestamps=False)
    conn = ecn_peer_established(peer, TcpConfig(ecn_request=True, timestamps=False))
    peer.send(peer.segment(ACK | PSH, b"a" * 500, ce=True))
    (ack,) = peer.take()  # CE is acknowledged at once
    assert ack.flags & ECE
    peer.send(peer.segment(ACK | PSH, b"b" * 500))
    peer.fire_timers()
    (ack,) = peer.take()
    assert ack.flags & ECE  # still echoing
    peer.send(peer.segment(ACK | PSH | CWR, b"c" * 500))
    peer.fire_timers()
    (ack,) = peer.take()
    assert not ack.flags & ECE  # the sender reacted: stop
    assert conn.info().ce_in == 1


def test_ece_reduces_cwnd_once_per_window_and_sets_cwr_on_the_next_data() -> None:
    peer = Peer(mss=1000, timestamps=False)
    config = TcpConfig(ecn_request=True, timestamps=False, nodelay=True, initial_window_segments=20)
    conn = ecn_peer_established(peer, config)
    conn.send(b"d" * 10_000)
    (burst,) = peer.take()
    before = conn.info().cwnd_bytes
    peer.send(peer.segment(ACK | ECE, ack=burst.seq + 1000))
    after = conn.info()
    assert after.cwnd_bytes < before and after.ecn_reductions == 1
    # More ECE within the same window: no second reduction.
    peer.send(peer.segment(ACK | ECE, ack=burst.seq + 6000))
    assert conn.info().ecn_reductions == 1 and conn.info().cwnd_bytes == after.cwnd_bytes
    conn.send(b"n" * 1000)
    out = peer.take()
    assert out and out[0].flags & CWR and out[0].ect  # CWR on the first new data
    conn.send(b"m" * 1000)
    assert all(not s.flags & CWR for s in peer.take())
    # Once the window sent after the reduction is acknowledged, ECE counts again.
    peer.send(peer.segment(ACK | ECE, ack=(burst.seq + 12_000)))
    assert conn.info().ecn_reductions == 2


def test_ecn_marks_through_a_path_slow_the_sender_without_loss() -> None:
    config = TcpConfig(ecn_request=True)
    net, client, server = established_pair(config, forward=Impairment(ce=0.02), delay_ns=2 * MS)
    assert client.info().ecn and server.info().ecn
    data = bytes(3_000_000)
    pos = [0]

    def pump() -> None:
        pos[0] += client.send(memoryview(data)[pos[0] :])

    net.on_poll.insert(0, pump)
    assert net.run(lambda: len(net.data(net.server)) == len(data))
    info = client.info()
    assert info.ecn_reductions > 0 and info.retransmitted_segs == 0
    assert server.info().ce_in > 0
    assert isinstance(net, Net)
