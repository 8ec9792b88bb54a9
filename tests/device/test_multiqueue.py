"""Multi-queue SoftNic: RSS and the rules pick the queue; one stack worker per queue.

A SoftNic with 2 queues runs 2 firmware processes; two worker processes
(``netoffload.workers``) run a stack each on their own queue. 64 UDP flows
come in from the cable; each worker counts the datagrams of every flow it
saw. The prediction is the RSS specification's Toeplitz hash, computed bit by
bit with the scalar ``toeplitz_hash`` (checked against the specification's
vectors in ``tests/engine/test_rss.py``), and the default indirection table;
one flow is moved to the other queue by a classification rule.
"""

from __future__ import annotations

import multiprocessing.connection
import random
import time
from collections import Counter
from ipaddress import IPv4Address

from netoffload.device.base import Device
from netoffload.device.cable import Cable, Impairments
from netoffload.device.softnic import SoftNic
from netoffload.engine.rss import MICROSOFT_KEY, default_table, hash_input_ipv4, toeplitz_hash
from netoffload.loop import StackLoop
from netoffload.stack.stack import Stack
from netoffload.wire import EthernetRepr, Ipv4Repr, MacAddress, UdpRepr

FLOWS = 64
PER_FLOW = 8
PORT = 9000
SRC, DST = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
PEER_MAC = MacAddress(b"\x02\x00\x00\x00\x00\x99")


def _worker(index: int, device: Device, pipe: multiprocessing.connection.Connection) -> None:
    stack = Stack(rng=random.Random(index))
    stack.add_interface(device, [f"{DST}/24"])
    endpoint = stack.udp_open(4)
    stack.udp_bind(endpoint, None, PORT)
    loop = StackLoop(stack)
    counts: Counter[int] = Counter()
    pipe.send("ready")
    end = time.monotonic() + 120
    while time.monotonic() < end:
        loop.step(0.005)
        datagram = stack.udp_recv(endpoint)
        while datagram is not None:
            counts[datagram.src_port] += 1
            datagram = stack.udp_recv(endpoint)
        if pipe.poll():
            if pipe.recv() == "stop":
                break
            pipe.send(dict(counts))


def _frame(dst_mac: MacAddress, sport: int, seq: int) -> bytes:
    payload = seq.to_bytes(4, "big")
    udp = UdpRepr(sport, PORT)
    ip = Ipv4Repr(SRC, DST, 17, udp.buffer_len(len(payload)), dont_frag=True)
    eth = EthernetRepr(dst_mac, PEER_MAC, ethertype=0x0800)
    frame = bytearray(eth.header_len + ip.header_len + udp.buffer_len(len(payload)))
    eth.emit(frame)
    ip.emit(frame, eth.header_len)
    udp.emit(frame, eth.header_len + ip.header_len, payload=payload, src=SRC, dst=DST)
    return bytes(frame)


def test_two_queues_two_workers_follow_the_toeplitz_prediction() -> None:
    from netoffload.workers import QueueWorkers

    sports = [20000 + 37 * i for i in range(FLOWS)]
    table = default_table(2)
    predicted = {
        p: table[toeplitz_hash(MICROSOFT_KEY, hash_input_ipv4(SRC, DST, (p, PORT))) % len(table)]
        for p in sports
    }
    assert set(predicted.values()) == {0, 1}  # both queues have flows to carry
    # A rule beats RSS: one flow RSS puts on queue 0 goes to queue 1.
    steered = next(p for p in sports if predicted[p] == 0)
    predicted[steered] = 1
    with Cable(Impairments(mtu=None), seed=3) as cable:
        nic = SoftNic(cable=cable.a, name="mq-test", queues=2)
        nic.rules(f"add flow-type udp4 src-port {steered} action 1")
        with nic, QueueWorkers(nic, _worker) as workers:
            assert len(workers) == 2 and nic.queue_count == 2
            for index in range(2):
                assert workers.receive(index, 60) == "ready"
            frames = [_frame(nic.mac, p, k) for k in range(PER_FLOW) for p in sports]
            cable.b.send_batch(frames)
            assert cable.b.drain(10.0)
            counts: list[dict[int, int]] = [{}, {}]
            end = time.monotonic() + 60
            while sum(sum(c.values()) for c in counts) < FLOWS * PER_FLOW:
                assert time.monotonic() < end, counts
                time.sleep(0.05)
                for index in range(2):
                    workers.send(index, "report")
                    counts[index] = workers.receive(index, 30)
            for index in range(2):
                workers.send(index, "stop")
        # Each flow on one queue, every datagram of it there, the queue the hash predicts.
        assert not set(counts[0]) & set(counts[1])
        for index in range(2):
            expected = {p: PER_FLOW for p in sports if predicted[p] == index}
            assert counts[index] == expected
