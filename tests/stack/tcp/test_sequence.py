"""Sequence numbers across 2^32, out-of-order FINs, and TIME-WAIT handing a SYN over."""

from __future__ import annotations

import random

from netoffload.stack.tcp import IsnSource, PeerClosed, TcpConfig, TcpState

from .harness import ACK, FIN, PSH, Impairment, Net, S, established_pair
from .script import Peer, establish_active


class NearWrap(IsnSource):
    """ISNs just below 2^32, so that both directions wrap early in the transfer."""

    def isn(self, local: object, remote: object, now_ns: int) -> int:  # type: ignore[override]
        return 0xFFFFFFFF - 5000 - (hash(local) & 0xFF)


def test_transfer_across_the_sequence_wrap_with_loss() -> None:
    net = Net(seed=21, forward=Impairment(loss=0.05, reorder=0.05), backward=Impairment(loss=0.05))
    net.isn = NearWrap(random.Random(1))
    config = TcpConfig(send_buffer_bytes=256 << 10, recv_buffer_bytes=256 << 10)
    net.listen(config)
    client = net.connect(config)
    assert net.run(lambda: bool(net.server.accepted))
    server = net.server.accepted[0]
    up = random.Random(1).randbytes(2_000_000)
    down = random.Random(2).randbytes(500_000)
    pos = {"up": 0, "down": 0}

    def pump() -> None:
        if client.state is TcpState.ESTABLISHED and pos["up"] < len(up):
            pos["up"] += client.send(memoryview(up)[pos["up"] :])
        if server.state is TcpState.ESTABLISHED and pos["down"] < len(down):
            pos["down"] += server.send(memoryview(down)[pos["down"] :])

    net.on_poll.insert(0, pump)
    assert net.run(
        lambda: net.data(net.server) == up and net.data(net.client) == down, max_ns=900 * S
    )
    assert client.info().retransmitted_segs > 0 and server.info().retransmitted_segs > 0


def test_fin_before_a_hole_is_held_until_the_hole_fills() -> None:
    peer = Peer(mss=1000, timestamps=False)
    conn = establish_active(peer)
    start = peer.seq
    # Data 1000..2000 with FIN arrives before 0..1000.
    peer.send(peer.segment(ACK | FIN | PSH, b"b" * 1000, seq=start + 1000), advance=False)
    assert conn.state is TcpState.ESTABLISHED and conn.readable() == 0
    peer.send(peer.segment(ACK | PSH, b"a" * 1000, seq=start))
    assert conn.state is TcpState.CLOSE_WAIT
    assert conn.recv(3000) == b"a" * 1000 + b"b" * 1000
    events = []
    while (e := conn.next_event()) is not None:
        events.append(type(e))
    assert PeerClosed in events
    (ack,) = [s for s in peer.take() if s.ack == (start + 2001) & 0xFFFFFFFF]
    assert ack.flags & ACK


def test_time_wait_hands_a_new_syn_to_the_listener() -> None:
    config = TcpConfig(time_wait_ns=60 * S)
    net, client, server = established_pair(config)
    server.close()  # the server closes first: it ends in TIME-WAIT
    assert net.run(lambda: client.state is TcpState.CLOSE_WAIT)
    client.close()
    assert net.run(lambda: server.state is TcpState.TIME_WAIT and client.state is TcpState.CLOSED)
    net.now += 5 * S
    again = net.connect(config)  # same 4-tuple, later ISN and timestamps
    assert net.run(lambda: again.state is TcpState.ESTABLISHED and len(net.server.accepted) == 2)
    assert server.state is TcpState.CLOSED
    fresh = net.server.accepted[1]
    again.send(b"second life")
    assert net.run(lambda: fresh.readable() == 11 or net.data(net.server) == b"second life")
