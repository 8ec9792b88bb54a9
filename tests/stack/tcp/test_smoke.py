from __future__ import annotations

from netoffload.stack.tcp import TcpConfig, TcpState

from .harness import established_pair


def test_handshake_and_small_transfer() -> None:
    net, client, server = established_pair(TcpConfig())
    assert client.send(b"hello") == 5
    assert net.run(lambda: net.data(net.server) == b"hello")
    server.send(b"world")
    assert net.run(lambda: net.data(net.client) == b"world")
    client.close()
    assert net.run(lambda: server.state is TcpState.CLOSE_WAIT)
    server.close()
    assert net.run(lambda: client.state is TcpState.TIME_WAIT and server.state is TcpState.CLOSED)
