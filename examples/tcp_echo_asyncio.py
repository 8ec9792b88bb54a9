"""Two user-level stacks on two SoftNics, driven by asyncio: a TCP echo of 1 MiB.

Run it with `python examples/tcp_echo_asyncio.py` (no privileges needed).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from ipaddress import IPv4Address

from netoffload.device.cable import Cable, Impairments
from netoffload.device.softnic import SoftNic
from netoffload.loop import attach
from netoffload.stack.stack import Stack
from netoffload.stack.tcp import PeerClosed, TcpState


async def main() -> None:
    data = os.urandom(1 << 20)
    with (
        Cable(Impairments(mtu=1500)) as cable,
        SoftNic(cable=cable.a, name="nic-a") as a,
        SoftNic(cable=cable.b, name="nic-b") as b,
    ):
        client, server = Stack(), Stack()
        client.add_interface(a, ["198.18.0.1/24"])  # enables the offloads the stack uses
        server.add_interface(b, ["198.18.0.2/24"])
        drivers = [attach(client), attach(server)]  # device readers + timers on this loop

        listeners = server.tcp_listen(7)
        conn = client.tcp_connect(IPv4Address("198.18.0.2"), 7, time.monotonic_ns()).conn
        echoed = bytearray()
        sent = 0
        peer = None
        while len(echoed) < len(data):
            if peer is None:
                peer = server.tcp_accept(listeners)
            if conn.state is TcpState.ESTABLISHED and sent < len(data):
                sent += conn.send(memoryview(data)[sent:])
            if peer is not None:
                while peer.conn.readable():  # the server echoes what it reads
                    peer.conn.send(peer.conn.recv(1 << 16))
            while conn.readable():
                echoed += conn.recv(1 << 16)
            for driver in drivers:
                driver.kick()  # our calls queued segments: send them now
            await asyncio.sleep(0)
        conn.shutdown_write()
        assert peer is not None
        while not any(isinstance(e, PeerClosed) for e in peer.events):
            drivers[0].kick()
            await asyncio.sleep(0.001)
        peer.conn.close()
        for driver in drivers:
            driver.kick()
            driver.close()
        same = hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()
        print(f"echoed {len(echoed):,} bytes, intact: {same}")
        print(f"client policy decisions: {dict(client.policy.decisions)}")
        print(f"client TCP: {client.tcp.as_dict()}")


if __name__ == "__main__":
    asyncio.run(main())
