"""Transfers stay byte-exact through loss, duplication, reordering and corruption.

Kernel side: nftables in the namespace drops 3 % and duplicates 1 % of what the
kernel sends into the TAP (this kernel has no netem). nftables acts before
segmentation, so the test runs twice: with TSO on, where whole 64 KiB bursts
are lost, and with the TAP's ``gso_max_size`` at 1500, where single segments
are. The receiver is ``netoffload nc -l``, run as a user would run it.

SoftNic side (no privileges): two stacks over a cable with 5 % loss,
reordering, duplication and corruption in both directions, for fixed seeds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile

import pytest

from netoffload.device.cable import Impairments
from netoffload.device.softnic import SoftNic
from netoffload.netns import Netns
from tests.stack.kernel_peer import (
    cli_popen,
    connect_when_listening,
    payload,
    stack_pair,
    tail,
    two_way_transfer,
    wait_for_link,
)

NFT_RULES = """
table netdev nsoimpair {{
    chain egress {{
        type filter hook egress device "{dev}" priority 0; policy accept;
        meta protocol ip numgen random mod 1000 < 30 counter drop
        meta protocol ip numgen random mod 1000 < 10 counter dup to "{dev}"
    }}
}}
"""


@pytest.mark.privileged
@pytest.mark.parametrize("segments", ["tso_bursts", "single_segments"])
def test_a_kernel_sender_through_nftables_loss_and_duplication(segments: str) -> None:
    data = payload(30_000_000, 11)
    with Netns() as ns, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = cli_popen(
            ns,
            "nc", "-l", "--device", "tap:nsotap0", "--address", "198.18.0.2/24",
            "--peer-address", "198.18.0.1/24", "--stats", "5100",
            stdin=subprocess.DEVNULL,
            stdout=out.fileno(),
            stderr=err.fileno(),
        )  # fmt: skip
        try:
            wait_for_link(ns, "nsotap0", proc)
            if segments == "single_segments":
                ns.set_link("nsotap0", gso_max_size=1500)
            rules = NFT_RULES.format(dev="nsotap0")
            with ns.entered():
                subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)
            sock = connect_when_listening(ns, "198.18.0.2", 5100)
            with sock:
                sock.settimeout(60)
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(1) == b""  # nc closes its side once it saw our FIN
            assert proc.wait(timeout=120) == 0, tail(err)
            counters = ns.exec("nft", "list", "table", "netdev", "nsoimpair")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        received = out.read()
        assert len(received) == len(data) and received == data
        # The impairments were really there: packets were dropped and duplicated.
        packets = [int(w) for line in counters.splitlines() for w in _packets(line)]
        assert len(packets) == 2 and all(n > 0 for n in packets), counters


def _packets(line: str) -> list[str]:
    words = line.split()
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "packets"]


# -- SoftNic cables with every impairment, both directions ------------------------------

IMPAIRED = Impairments(loss=0.05, duplicate=0.05, reorder=0.05, corrupt=0.05, mtu=1500)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_20_mb_through_an_impaired_cable_both_ways(seed: int) -> None:
    up, down = os.urandom(20_000_000), os.urandom(2_000_000)
    with stack_pair(seed, IMPAIRED) as (sa, sb):
        got_b, got_a, _, _ = two_way_transfer(sa, sb, up, down)
        assert got_b == up and got_a == down
        # The cable really was hostile in both directions.
        drops = [sa.interfaces[0].device, sb.interfaces[0].device]
        for dev in drops:
            assert isinstance(dev, SoftNic)
            dev.stats()
            counters = dev.cable_counters()
            assert counters["lost"] and counters["duplicated"] and counters["reordered"]
            assert counters["corrupted"]
