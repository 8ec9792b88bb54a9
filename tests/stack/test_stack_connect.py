"""``Stack.tcp_connect`` refuses what Linux's connect(2) refuses, at once."""

from __future__ import annotations

import errno
import random
from collections.abc import Iterator
from ipaddress import ip_address

import pytest

from netoffload.device.cable import Cable, Impairments
from netoffload.device.softnic import SoftNic
from netoffload.stack.stack import Stack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Cable(Impairments(mtu=1500)) as cable, SoftNic(cable=cable.a, name="conn") as nic:
        s = Stack(rng=random.Random(3))
        s.add_interface(nic, ["198.18.0.2/24", "fd00::2/64"])
        yield s


@pytest.mark.parametrize(
    ("address", "code"),
    [
        ("198.18.0.255", errno.ENETUNREACH),  # the subnet's broadcast
        ("255.255.255.255", errno.ENETUNREACH),
        ("224.0.0.1", errno.ENETUNREACH),
        ("0.0.0.0", errno.ENETUNREACH),
        ("ff02::1", errno.ENETUNREACH),
        ("::", errno.ENETUNREACH),
        ("198.18.0.2", errno.EADDRNOTAVAIL),  # our own: no loopback here
        ("fd00::2", errno.EADDRNOTAVAIL),
        ("198.19.0.9", errno.ENETUNREACH),  # no route
    ],
)
def test_connect_refused_at_once(stack: Stack, address: str, code: int) -> None:
    flows = len(stack.tcp.flows)
    with pytest.raises(OSError) as info:
        stack.tcp_connect(ip_address(address), 80, 0)
    assert info.value.errno == code
    assert len(stack.tcp.flows) == flows  # nothing was left behind


def test_a_unicast_neighbour_is_accepted(stack: Stack) -> None:
    handle = stack.tcp_connect(ip_address("198.18.0.1"), 80, 0)
    assert handle.conn.remote == (ip_address("198.18.0.1"), 80)
    handle.conn.abort()
