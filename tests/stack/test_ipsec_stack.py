"""Security policies in the stack: TCP, UDP and ICMP over ESP between two stacks on SoftNics,
the NIC or the host doing the crypto, MSS lowered for ESP, unprotected traffic refused."""

from __future__ import annotations

import json
import logging
import os
import time
from ipaddress import IPv4Address

import pytest

from netoffload.device.cable import Impairments
from netoffload.device.softnic import SoftNic
from netoffload.engine.esp_sa import EspAlgorithm, EspConfig, EspMode
from netoffload.loop import StackLoop, drain
from netoffload.offload import Task
from netoffload.stack.ipsec import SecurityPolicy, Selector
from netoffload.stack.stack import Stack
from tests.stack.kernel_peer import OURS_A, OURS_B, stack_pair, two_way_transfer

A_TO_B = EspConfig(spi=0x100, algorithm=EspAlgorithm.AES_GCM, key=bytes(range(16)) + b"salt")
B_TO_A = EspConfig(spi=0x200, algorithm=EspAlgorithm.AES_GCM, key=bytes(range(1, 17)) + b"tlas")


def protect(sa: Stack, sb: Stack, **selector: object) -> None:
    """Both ends of one policy: A sends with A_TO_B and wants B_TO_A, B the other way."""
    sa.add_security_policy(
        SecurityPolicy(
            Selector.parse(local=OURS_A, remote=OURS_B, **selector),  # type: ignore[arg-type]
            outbound=A_TO_B,
            inbound=B_TO_A,
        )
    )
    sb.add_security_policy(
        SecurityPolicy(
            Selector.parse(local=OURS_B, remote=OURS_A, **selector),  # type: ignore[arg-type]
            outbound=B_TO_A,
            inbound=A_TO_B,
        )
    )


def nic_tasks(stack: Stack) -> dict[str, int]:
    device = stack.interfaces[0].device
    assert isinstance(device, SoftNic)
    return dict(device.stats().tasks)


@pytest.mark.parametrize("policy", ["always", "never"], ids=["nic-crypto", "host-crypto"])
def test_20_mb_of_tcp_over_esp_arrive_byte_exact(policy: str) -> None:
    up, down = os.urandom(20_000_000), os.urandom(1_000_000)
    with stack_pair(41, Impairments(mtu=1500), policies=(policy, policy)) as (sa, sb):
        protect(sa, sb, protocol="tcp")
        got_b, got_a, client, _ = two_way_transfer(sa, sb, up, down)
        assert got_b == up and got_a == down
        # ESP's overhead came off the MSS, so every encrypted segment fit the 1500-byte wire.
        assert client.conn.info().mss_bytes <= 1500 - 20 - 20 - 12 - A_TO_B.max_overhead
        for stack in (sa, sb):
            device = stack.interfaces[0].device
            assert isinstance(device, SoftNic)
            device.stats()
            assert device.cable_counters().get("mtu_exceeded", 0) == 0
            ipsec = stack.as_dict()["ipsec"]
            assert isinstance(ipsec, dict) and ipsec["protected_out"] > 0
            assert ipsec["protected_in"] > 0 and ipsec["drops"] == {}
        a_tasks, b_tasks = nic_tasks(sa), nic_tasks(sb)
        if policy == "always":
            assert a_tasks[Task.ENCRYPT.label] > 0 and b_tasks[Task.DECRYPT.label] > 0
            assert b_tasks[Task.TCP_ASSEMBLY.label] > 0  # decrypted before assembly
        else:
            assert Task.ENCRYPT.label not in a_tasks and Task.DECRYPT.label not in b_tasks
            host = sa.interfaces[0].host.stats.tasks
            assert host[Task.ENCRYPT.label] > 0


def test_udp_and_ping_are_protected_and_unprotected_traffic_is_refused() -> None:
    with stack_pair(42, Impairments(mtu=1500)) as (sa, sb):
        protect(sa, sb)  # every protocol between the two addresses
        la, lb = StackLoop(sa), StackLoop(sb)
        rx = sb.udp_open(4)
        sb.udp_bind(rx, None, 7000)
        tx = sa.udp_open(4)
        sa.udp_bind(tx, None, 0)
        datagrams = [bytes([i]) * 1400 for i in range(20)]
        sa.udp_send(tx, datagrams, IPv4Address(OURS_B), 7000, time.monotonic_ns())
        got: list[bytes] = []
        ping = sa.ping(IPv4Address(OURS_B), time.monotonic_ns(), count=2, interval_ns=10_000_000)
        end = time.monotonic() + 10
        while (len(got) < 20 or not ping.done) and time.monotonic() < end:
            la.step(0.002)
            lb.step(0.002)
            while (d := sb.udp_recv(rx)) is not None:
                got.append(bytes(d.payload))
        assert got == datagrams
        assert ping.summary().received == 2
        assert sa.as_dict()["ipsec"]["protected_out"] >= 3  # type: ignore[index]
        # A forgets its policy and sends in the clear: B's policy still wants A's UDP
        # protected, so the datagram is refused and counted, never delivered.
        plain = sa.udp_open(4)
        sa.udp_bind(plain, None, 0)
        sa.ipsec.policies.clear()
        sa.udp_send(plain, [b"clear"], IPv4Address(OURS_B), 7000, time.monotonic_ns())
        drain([la, lb], rounds=20)
        time.sleep(0.05)
        drain([la, lb], rounds=20)
        assert sb.udp_recv(rx) is None
        assert sb.stats.drops["ipsec_policy"] >= 1


def test_tunnel_mode_between_two_gateways() -> None:
    tunnel = {
        "mode": EspMode.TUNNEL,
        "tunnel_src": IPv4Address(OURS_A),
        "tunnel_dst": IPv4Address(OURS_B),
    }
    back = {**tunnel, "tunnel_src": IPv4Address(OURS_B), "tunnel_dst": IPv4Address(OURS_A)}
    out = EspConfig(spi=0x300, algorithm=EspAlgorithm.CHACHA20_POLY1305, key=bytes(36), **tunnel)
    ret = EspConfig(spi=0x301, algorithm=EspAlgorithm.CHACHA20_POLY1305, key=bytes(36), **back)
    with stack_pair(43, Impairments(mtu=1500)) as (sa, sb):
        sel_a = Selector.parse(local=OURS_A, remote=OURS_B, protocol="tcp")
        sel_b = Selector.parse(local=OURS_B, remote=OURS_A, protocol="tcp")
        sa.add_security_policy(SecurityPolicy(sel_a, outbound=out, inbound=ret))
        sb.add_security_policy(SecurityPolicy(sel_b, outbound=ret, inbound=out))
        data = os.urandom(2_000_000)
        got_b, got_a, _, _ = two_way_transfer(sa, sb, data, b"")
        assert got_b == data and got_a == b""


def test_no_key_shows_in_stats_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Keys reach the NIC inside a context and go no further: not into the stacks' or the
    NICs' statistics, the reprs of policies and stacks, or the log."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with stack_pair(43, Impairments(mtu=1500)) as (sa, sb):
        protect(sa, sb)
        la, lb = StackLoop(sa), StackLoop(sb)
        rx = sb.udp_open(4)
        sb.udp_bind(rx, None, 7001)
        tx = sa.udp_open(4)
        sa.udp_bind(tx, None, 0)
        sa.udp_send(tx, [b"x" * 1000] * 4, IPv4Address(OURS_B), 7001, time.monotonic_ns())
        got = 0
        end = time.monotonic() + 10
        while got < 4 and time.monotonic() < end:
            la.step(0.002)
            lb.step(0.002)
            while sb.udp_recv(rx) is not None:
                got += 1
        assert got == 4
        for stack in (sa, sb):
            device = stack.interfaces[0].device
            assert isinstance(device, SoftNic)
            texts += [json.dumps(stack.as_dict(), default=str), repr(stack), repr(device)]
            texts += [repr(device.stats()), json.dumps(device.ipsec_counters(), default=str)]
            texts += [repr(p) for p in stack.ipsec.policies]
            texts += [repr(stack.ipsec), str(stack.stats.drops)]
        assert sb.as_dict()["ipsec"]["protected_in"] >= 1  # type: ignore[index]
    text = "\n".join(texts) + caplog.text
    for config in (A_TO_B, B_TO_A):
        for secret in (config.key, config.key[:-4]):
            for form in (secret.hex(), repr(secret)[2:-1], str(list(secret))):
                assert form not in text
