"""Netns against the kernel: names, netlink set-up, /proc and /sys views, deletion.

The kernel's own views are the oracle: sysfs and /proc read by a process in the
namespace, and iproute2's JSON output, never the module reading itself back.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import netns as pyroute2_netns

from netoffload.device.base import DeviceError
from netoffload.netns import (
    Netns,
    clean_leftovers,
    creator_of,
    leftover_namespaces,
    process_alive,
)

MS_BIND = 0x1000

# -- names and leftovers, no privileges needed ----------------------------------------


@pytest.mark.parametrize(
    ("name", "pid"),
    [
        ("nso-1234-0a1b2c3d", 1234),
        ("nsobench-7-ffffffff", 7),
        ("nso-1a2b3c4d", None),  # the pid-less names of older versions are not recognised
        ("nso-0-0a1b2c3d", None),
        ("nso-12-0A1B2C3D", None),
        ("nso-12-0a1b2c3", None),
        ("nso-12-0a1b2c3d-x", None),
        ("other-12-0a1b2c3d", None),
        ("NSO-12-0a1b2c3d", None),
    ],
)
def test_creator_is_read_from_the_name(name: str, pid: int | None) -> None:
    assert creator_of(name) == pid


@pytest.mark.parametrize("prefix", ["", "ns", "x-nso", "nso-", "NSO", "nso bench", "nso/x"])
def test_prefix_must_keep_names_recognisable(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Netns(prefix)


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_process_alive() -> None:
    assert process_alive(os.getpid())
    assert not process_alive(_dead_pid())


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Exited but not reaped: /proc/<pid> is still there, state Z.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert Path(f"/proc/{child.pid}").exists()
        assert not process_alive(child.pid)
    finally:
        child.wait()


def test_clean_removes_only_names_of_dead_creators(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    names = {
        "gone": f"nso-{dead}-00000001",
        "bench_gone": f"nsobench-{dead}-00000002",
        "running": f"nso-{alive}-00000003",
        "foreign": "nso-0a1b2c3d",
        "other": "mynet",
    }
    for name in names.values():
        (tmp_path / name).touch()

    found = {item.name: item.creator_alive for item in leftover_namespaces(str(tmp_path))}
    assert found == {names["gone"]: False, names["bench_gone"]: False, names["running"]: True}

    dry = clean_leftovers(dry_run=True, netns_dir=str(tmp_path))
    assert dry.dry_run
    assert {item.name for item in dry.removed} == {names["gone"], names["bench_gone"]}
    assert len(list(tmp_path.iterdir())) == 5

    report = clean_leftovers(netns_dir=str(tmp_path))
    assert {item.name for item in report.removed} == {names["gone"], names["bench_gone"]}
    assert [item.name for item in report.kept] == [names["running"]]
    assert report.failed == ()
    assert {p.name for p in tmp_path.iterdir()} == {names["running"], "nso-0a1b2c3d", "mynet"}

    everything = clean_leftovers(everything=True, netns_dir=str(tmp_path))
    assert [item.name for item in everything.removed] == [names["running"]]
    assert {p.name for p in tmp_path.iterdir()} == {"nso-0a1b2c3d", "mynet"}


def test_clean_reports_what_it_could_not_remove(tmp_path: Path) -> None:
    stuck = f"nso-{_dead_pid()}-0000000a"
    (tmp_path / stuck).mkdir()  # unlink(2) refuses a directory
    report = clean_leftovers(netns_dir=str(tmp_path))
    assert report.removed == ()
    assert [(item.name, why) for item, why in report.failed] == [(stuck, os.strerror(21))]


def test_missing_directory_means_nothing_to_clean(tmp_path: Path) -> None:
    assert clean_leftovers(netns_dir=str(tmp_path / "absent")).removed == ()


# -- against the kernel -------------------------------------------------------------

privileged = pytest.mark.privileged


@pytest.fixture
def ns() -> Iterator[Netns]:
    made = Netns()
    try:
        yield made
    finally:
        made.close()


def _ip_json(ns: Netns, *args: str) -> list[dict[str, object]]:
    """iproute2's JSON view from inside the namespace: an oracle independent of pyroute2."""
    out: list[dict[str, object]] = json.loads(ns.exec("ip", "-j", *args) or "[]")
    return out


@privileged
def test_name_carries_the_creator_and_close_deletes() -> None:
    ns = Netns("nsotest")
    assert creator_of(ns.name) == os.getpid()
    assert ns.name.startswith(f"nsotest-{os.getpid()}-")
    assert ns.name in pyroute2_netns.listnetns()
    ns.close()
    assert ns.name not in pyroute2_netns.listnetns()
    ns.close()  # idempotent


@privileged
def test_a_process_that_exits_without_closing_leaves_nothing() -> None:
    code = "from netoffload.netns import Netns; ns = Netns(); print(ns.name)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    name = done.stdout.strip()
    assert creator_of(name) is not None
    assert name not in pyroute2_netns.listnetns()


@privileged
def test_sysctl_lands_in_the_namespace_only(ns: Netns) -> None:
    host = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    assert ns.exec("cat", "/proc/sys/net/ipv4/ip_forward").strip() == "0"
    ns.sysctl("net.ipv4.ip_forward", "1")
    assert ns.exec("cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == host
    ns.sysctl("net/ipv4/conf/lo/forwarding", "0")
    assert ns.exec("cat", "/proc/sys/net/ipv4/conf/lo/forwarding").strip() == "0"
    # Set by the constructor: no IPv6 chatter until enable_ipv6().
    assert ns.exec("cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6").strip() == "1"
    ns.enable_ipv6()
    assert ns.exec("cat", "/proc/sys/net/ipv6/conf/default/disable_ipv6").strip() == "0"


@privileged
def test_sysctl_error_is_one_line(ns: Netns) -> None:
    with pytest.raises(DeviceError, match=f"{ns.name}: sysctl net.ipv4.no_such_key") as info:
        ns.sysctl("net.ipv4.no_such_key", "1")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="not a sysctl key"):
        ns.sysctl("net..ipv4", "1")


@privileged
def test_snmp_is_the_namespaces_own(ns: Netns) -> None:
    counters = ns.snmp()
    assert counters["Udp"]["InDatagrams"] == 0
    assert "InCsumErrors" in counters["Udp"]


@privileged
def test_exec_and_popen_run_inside(ns: Netns) -> None:
    ns.add_veth("nsova", "nsovb")
    inode = os.stat(ns.path).st_ino
    assert ns.exec("readlink", "/proc/self/ns/net").strip() == f"net:[{inode}]"
    # /sys is the namespace's, as under `ip netns exec`.
    assert sorted(ns.exec("ls", "/sys/class/net").split()) == ns.link_names()
    child = ns.popen(["readlink", "/proc/self/ns/net"], stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=30)
    assert out.decode().strip() == f"net:[{inode}]"
    with pytest.raises(DeviceError, match=f"^{ns.name}: nso-no-such-command: command not found$"):
        ns.exec("nso-no-such-command")


@privileged
def test_links_mtu_gso_mac_state(ns: Netns) -> None:
    ns.add_veth("nsova", "nsovb")
    ns.set_link("nsova", mtu=1400, gso_max_size=32768, mac=bytes.fromhex("020000000009"), up=True)
    ns.set_link("nsovb", up=True)
    (link,) = _ip_json(ns, "-d", "link", "show", "nsova")
    assert link["mtu"] == 1400
    assert link["gso_max_size"] == 32768
    assert link["address"] == "02:00:00:00:00:09"
    assert "UP" in link["flags"]  # type: ignore[operator]
    assert ns.link_index("nsova") == link["ifindex"]
    ns.set_link("nsova", up=False)
    (link,) = _ip_json(ns, "link", "show", "nsova")
    assert "UP" not in link["flags"]  # type: ignore[operator]


@privileged
def test_bridge_ports(ns: Netns) -> None:
    ns.add_bridge("nsobr0")
    ns.add_veth("nsova", "nsovb")
    ns.set_master("nsova", "nsobr0")
    (link,) = _ip_json(ns, "link", "show", "nsova")
    assert link["master"] == "nsobr0"
    ns.set_master("nsova", None)
    (link,) = _ip_json(ns, "link", "show", "nsova")
    assert "master" not in link


@privileged
def test_veth_across_namespaces_and_moving_a_link(ns: Netns) -> None:
    with Netns() as other:
        ns.add_veth("nsova", "nsovb", peer_netns=other)
        assert "nsovb" in other.link_names() and "nsovb" not in ns.link_names()
        ns.add_veth("nsovc", "nsovd")
        ns.set_link("nsovd", netns=other, up=True)
        assert "nsovd" in other.link_names() and "nsovd" not in ns.link_names()
        (link,) = _ip_json(other, "link", "show", "nsovd")
        assert "UP" in link["flags"]  # type: ignore[operator]


@privileged
def test_addresses_routes_neighbours_and_traffic(ns: Netns) -> None:
    """Two namespaces joined by a veth, v4 and v6, ping each other through a route."""
    with Netns() as peer:
        ns.enable_ipv6()
        peer.enable_ipv6()
        ns.add_veth("nsova", "nsovb", peer_netns=peer)
        ns.add_address("nsova", "198.18.0.1/24")
        ns.add_address("nsova", "fd00::1/64")
        peer.add_address("nsovb", "198.18.0.2/24")
        peer.add_address("nsovb", "fd00::2/64")
        peer.add_address("lo", "198.19.0.1/32")
        ns.set_link("nsova", up=True)
        peer.set_link("nsovb", up=True)
        ns.add_route("198.19.0.0/24", gateway="198.18.0.2")
        ns.add_route("fd01::/64", ifname="nsova")
        ns.add_neighbour("nsova", "198.18.0.9", bytes.fromhex("0200000000aa"))

        addresses = {
            (a["local"], a["prefixlen"])
            for link in _ip_json(ns, "addr", "show", "dev", "nsova")
            for a in link["addr_info"]  # type: ignore[attr-defined]
            if a["scope"] == "global"
        }
        assert addresses == {("198.18.0.1", 24), ("fd00::1", 64)}
        routes = {(r["dst"], r.get("gateway")) for r in _ip_json(ns, "route", "show")}
        assert ("198.19.0.0/24", "198.18.0.2") in routes
        assert ("fd01::/64", None) in {
            (r["dst"], r.get("gateway")) for r in _ip_json(ns, "-6", "route")
        }
        (neigh,) = _ip_json(ns, "neigh", "show", "198.18.0.9")
        assert neigh["lladdr"] == "02:00:00:00:00:aa" and neigh["state"] == ["PERMANENT"]

        # Traffic flows as configured: through the gateway route, and over v6 without a DAD wait.
        _datagram_crosses(ns, peer, "198.19.0.1")
        _datagram_crosses(ns, peer, "fd00::2")


def _datagram_crosses(sender_ns: Netns, receiver_ns: Netns, to: str) -> None:
    family = socket.AF_INET6 if ":" in to else socket.AF_INET
    with receiver_ns.entered():
        receiver = socket.socket(family, socket.SOCK_DGRAM)
    with sender_ns.entered():
        sender = socket.socket(family, socket.SOCK_DGRAM)
    with receiver, sender:
        receiver.bind((to, 5001))
        receiver.settimeout(5)
        sender.sendto(b"across", (to, 5001))
        assert receiver.recv(64) == b"across"


@privileged
def test_netlink_refusals_are_one_line(ns: Netns) -> None:
    ns.add_bridge("nsobr0")
    with pytest.raises(DeviceError, match=f"^{ns.name}: add bridge nsobr0: File exists$"):
        ns.add_bridge("nsobr0")
    with pytest.raises(DeviceError, match=f"^{ns.name}: no such interface 'nso-missing'$"):
        ns.set_link("nso-missing", up=True)
    with pytest.raises(DeviceError, match=f"^{ns.name}: set nsobr0: "):
        ns.set_link("nsobr0", mtu=10)


@privileged
def test_only_benchmarking_and_ula_addresses(ns: Netns) -> None:
    ns.add_bridge("nsobr0")
    for bad in ("10.0.0.1/24", "192.0.2.1/24", "2001:db8::1/64"):
        with pytest.raises(ValueError, match="outside"):
            ns.add_address("nsobr0", bad)
    with pytest.raises(ValueError, match="outside"):
        ns.add_route("0.0.0.0/0", gateway="198.18.0.1")
    with pytest.raises(ValueError, match="outside"):
        ns.add_route("198.18.0.0/24", gateway="10.0.0.1")
    with pytest.raises(ValueError, match="outside"):
        ns.add_neighbour("nsobr0", "8.8.8.8", bytes(6))
    with pytest.raises(ValueError, match="needs a gateway"):
        ns.add_route("198.19.0.0/16")


@privileged
def test_a_failed_delete_is_an_error_naming_the_namespace() -> None:
    """A second mount on the name keeps it: close() says so, once, and still lets go."""
    ns = Netns()
    path = ns.path.encode()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mount(path, path, None, MS_BIND, None) == 0, os.strerror(ctypes.get_errno())
    try:
        with pytest.raises(DeviceError) as info:
            ns.close()
        message = str(info.value)
        assert message == f"cannot delete network namespace {ns.name}: Device or resource busy"
        ns.close()  # idempotent: tried once, reported once
        with pytest.raises(DeviceError, match="closed"):
            ns.link_names()
    finally:
        pyroute2_netns.remove(ns.name)
    assert ns.name not in pyroute2_netns.listnetns()


@privileged
def test_a_namespace_deleted_behind_our_back_is_reported() -> None:
    ns = Netns()
    pyroute2_netns.remove(ns.name)
    with pytest.raises(DeviceError, match=f"^cannot delete network namespace {ns.name}: No such"):
        ns.close()
