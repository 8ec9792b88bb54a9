"""Private network namespaces for tests and benchmarks, set up over netlink.

A ``Netns`` is a named network namespace (``/var/run/netns/NAME``, made by
``pyroute2.netns.create``) whose links, addresses, routes and neighbours are
configured over rtnetlink with a pyroute2 ``IPRoute`` bound to it: no ``ip``
command runs. Addresses are limited to 198.18.0.0/15 and fd00::/8.

The name is ``<prefix>-<pid>-<random>``: the creating process's id lets a later
``clean_leftovers`` tell the namespace of a killed run from one still in use.

``Netns.entered()`` switches the *calling thread* into the namespace with
``setns(2)`` and back: sockets, TAP devices, ethtool ioctls and ``/proc/sys``
writes made inside the block belong to the namespace (sockets keep working
after the thread has left; Python 3.11 has no ``os.setns``, so it is called
through ctypes). ``/sys`` is the exception: it shows the namespace it was
mounted in, so ``exec``, ``popen`` and ``set_napi`` run a child that enters
the namespace and mounts its own sysfs first, as ``ip netns exec`` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import re
import secrets
import subprocess
import sys
import weakref
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import pyroute2.netns
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from netoffload.device.base import DeviceError
from netoffload.leftovers import CleanReport, Leftover, process_alive

CLONE_NEWNET = 0x40000000
NETNS_DIR: str = pyroute2.netns.NETNS_RUN_DIR
NUD_PERMANENT = 0x80

#: What a namespace prefix may be: ``nso`` and lower-case letters or digits.
PREFIX = re.compile(r"nso[a-z0-9]*")
#: A netoffload namespace name: prefix, creator pid, 8 random hex digits.
NAME = re.compile(r"(?P<prefix>nso[a-z0-9]*)-(?P<pid>[1-9][0-9]{0,9})-[0-9a-f]{8}")

#: The only addresses netoffload puts in a namespace: RFC 2544 benchmarking and ULA.
ALLOWED_NETWORKS = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("fd00::/8"))

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_LIBC.setns.restype = ctypes.c_int

# Run by ``sys.executable -I -S -c``: enter the namespace at argv[1], mount a sysfs
# of its own in a private mount namespace (what `ip netns exec` does), then either
# exec argv[3:] ("exec") or write value argv[2k+4] to file argv[2k+3] ("write").
_CHILD = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def fail(what):
    sys.stderr.write(f"{what}: {os.strerror(ctypes.get_errno())}\n")
    sys.exit(125)
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CLOEXEC)
if libc.setns(fd, 0x40000000):
    fail("setns")
os.close(fd)
if libc.unshare(0x20000):
    fail("unshare")
if libc.mount(b"none", b"/", None, 0x80000 | 0x4000, None):
    fail("mount --make-rslave /")
libc.umount2(b"/sys", 2)
if libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None):
    fail("mount sysfs")
mode, args = sys.argv[2], sys.argv[3:]
if mode == "write":
    for path, value in zip(args[::2], args[1::2]):
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as e:
            sys.stderr.write(f"{path}: {e.strerror}\n")
            sys.exit(1)
    sys.exit(0)
try:
    os.execvp(args[0], args)
except FileNotFoundError:
    sys.stderr.write("command not found\n")
except OSError as e:
    sys.stderr.write(f"{e.strerror}\n")
sys.exit(127)
"""


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise DeviceError(f"setns failed: {os.strerror(err)}")


def _reason(exc: BaseException) -> str:
    """One line for an OS or netlink error: the kernel's message, or the errno's text."""
    if isinstance(exc, NetlinkError) and len(exc.args) > 1 and exc.args[1]:
        return str(exc.args[1]).splitlines()[0]
    code = getattr(exc, "errno", None) or getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return os.strerror(code)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _run(args: list[str], what: str) -> str:
    """Run ``args`` and return its output; a failure is one line starting with ``what``."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceError(f"{what}: {_reason(exc)}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise DeviceError(f"{what}: {detail[-1] if detail else 'failed'}")
    return done.stdout


def _checked_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text)
    if not any(address in net for net in ALLOWED_NETWORKS):
        raise ValueError(f"{address} is outside 198.18.0.0/15 and fd00::/8")
    return address


def _checked_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    network = ipaddress.ip_network(text)
    # Inside an allowed network: its first and last addresses both are.
    if not any(
        network.network_address in net and network.broadcast_address in net
        for net in ALLOWED_NETWORKS
    ):
        raise ValueError(f"{network} is outside 198.18.0.0/15 and fd00::/8")
    return network


def _checked_ifname(ifname: str) -> str:
    if not ifname or "/" in ifname or ifname in (".", "..") or len(ifname) > 15:
        raise ValueError(f"not an interface name: {ifname!r}")
    return ifname


def _delete(path: str) -> None:
    """Unmount and unlink the namespace name at ``path``; ``OSError`` when it stays.

    pyroute2 ignores a failed unmount, but the unlink then fails (EBUSY), so a name
    that stays is never reported as gone.
    """
    pyroute2.netns.remove(path)


def _abandoned(path: str, creator: int, routes: list[Any]) -> None:
    """Finalizer of a ``Netns`` never closed: delete it, if this is the creating process."""
    if os.getpid() != creator:
        return  # a forked child must not delete its parent's namespace
    for route in routes:
        with contextlib.suppress(Exception):
            route.close()
    with contextlib.suppress(OSError):
        _delete(path)


class Netns:
    """A private network namespace, deleted by ``close()`` (also a context manager)."""

    def __init__(self, prefix: str = "nso") -> None:
        if not PREFIX.fullmatch(prefix):
            raise ValueError(f"namespace prefix {prefix!r} must be 'nso' + [a-z0-9]*")
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"
        self._closed = True
        self._routes: list[Any] = []  # the IPRoute, once opened; shared with the finalizer
        try:
            pyroute2.netns.create(self.name)
        except (OSError, RuntimeError) as exc:
            raise DeviceError(
                f"cannot create network namespace {self.name}: {_reason(exc)}"
            ) from None
        self._closed = False
        self._finalizer = weakref.finalize(self, _abandoned, self.path, os.getpid(), self._routes)
        try:
            # No IPv6 autoconfiguration chatter (router solicitations, MLD, DAD)
            # in captures, and loopback up for sockets bound inside.
            self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
            self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
            self.set_link("lo", up=True)
        except BaseException:
            with contextlib.suppress(DeviceError):
                self.close()
            raise

    @property
    def path(self) -> str:
        """The namespace's bind mount: what ``setns`` and pyroute2 open."""
        return os.path.join(NETNS_DIR, self.name)

    # -- running things inside --------------------------------------------------

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with the calling thread inside this namespace."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                target = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise DeviceError(f"cannot enter {self.name}: {_reason(exc)}") from None
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)

    def _child(self, mode: str) -> list[str]:
        return [sys.executable, "-I", "-S", "-c", _CHILD, self.path, mode]

    def exec(self, *args: str) -> str:
        """Run a command inside the namespace (its own /sys included) and return its output."""
        return _run([*self._child("exec"), *args], f"{self.name}: {' '.join(args)}")

    def popen(
        self,
        args: Sequence[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        cwd: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` inside the namespace, as ``exec`` does, without waiting for it."""
        return subprocess.Popen(
            [*self._child("exec"), *args], stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd
        )

    # -- /proc and /sys -----------------------------------------------------------

    def sysctl(self, key: str, value: str) -> None:
        """Set a sysctl of this namespace (``net.ipv4.ip_forward``, or with ``/`` separators).

        Written to /proc/sys from a thread inside the namespace: the kernel picks
        the per-namespace table by the writing thread's namespace.
        """
        parts = key.split("/") if "/" in key else key.split(".")
        if not all(p and p not in (".", "..") for p in parts):
            raise ValueError(f"not a sysctl key: {key!r}")
        path = os.path.join("/proc/sys", *parts)
        with self.entered():
            try:
                with open(path, "w") as f:
                    f.write(value)
            except OSError as exc:
                raise DeviceError(f"{self.name}: sysctl {key}: {_reason(exc)}") from None

    def enable_ipv6(self) -> None:
        """Turn IPv6 back on (off by default to keep captures quiet)."""
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "0")
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "0")

    def snmp(self) -> dict[str, dict[str, int]]:
        """The namespace's /proc/net/snmp counters: ``{"Udp": {"InCsumErrors": 0, ...}}``."""
        with self.entered(), open("/proc/thread-self/net/snmp") as f:
            text = f.read()
        out: dict[str, dict[str, int]] = {}
        lines = text.splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            proto, _, keys = names.partition(":")
            _, _, nums = values.partition(":")
            out[proto] = {k: int(v) for k, v in zip(keys.split(), nums.split(), strict=False)}
        return out

    def set_napi(self, ifname: str, *, gro_flush_timeout_ns: int, defer_hard_irqs: int) -> None:
        """Hold GRO flushes on ``ifname``: its ``gro_flush_timeout`` and ``napi_defer_hard_irqs``.

        rtnetlink has no attribute for these, so a child writes them to the namespace's sysfs.
        """
        base = f"/sys/class/net/{_checked_ifname(ifname)}"
        _run(
            [
                *self._child("write"),
                f"{base}/gro_flush_timeout",
                str(int(gro_flush_timeout_ns)),
                f"{base}/napi_defer_hard_irqs",
                str(int(defer_hard_irqs)),
            ],
            f"{self.name}: set NAPI deferral of {ifname}",
        )

    def set_features(self, ifname: str, wanted: Mapping[str, bool]) -> None:
        """Turn netdev features of ``ifname`` in this namespace on or off (ETHTOOL_SFEATURES).

        Raises ``DeviceError`` naming every feature the kernel did not change as asked
        (a dependency, or a feature fixed on this device).
        """
        from netoffload.device.ethtool import read_features, set_features

        with self.entered():
            set_features(ifname, wanted)
            now = read_features(ifname)
        kept = [name for name, on in wanted.items() if now[name].active != on]
        if kept:
            raise DeviceError(f"{ifname}: the kernel kept {', '.join(kept)} as they were")

    # -- links, addresses, routes, neighbours (rtnetlink) -------------------------

    def _route(self) -> Any:
        if self._closed:
            raise DeviceError(f"{self.name} is closed")
        if not self._routes:
            try:
                self._routes.append(IPRoute(netns=self.name, flags=0, groups=0))
            except (OSError, RuntimeError) as exc:
                raise DeviceError(f"cannot open netlink in {self.name}: {_reason(exc)}") from None
        return self._routes[0]

    @contextlib.contextmanager
    def _netlink(self, what: str) -> Iterator[Any]:
        """The namespace's ``IPRoute``; a refusal becomes one ``DeviceError`` line."""
        route = self._route()
        try:
            yield route
        except (NetlinkError, OSError) as exc:
            raise DeviceError(f"{self.name}: {what}: {_reason(exc)}") from None

    def link_names(self) -> list[str]:
        """The names of every link in the namespace, sorted."""
        with self._netlink("list links") as ipr:
            return sorted(str(link.get("ifname")) for link in ipr.link("dump"))

    def link_index(self, ifname: str) -> int:
        """The interface index of ``ifname``; ``DeviceError`` when there is none."""
        with self._netlink(f"look up {ifname}") as ipr:
            found = ipr.link_lookup(ifname=_checked_ifname(ifname))
        if not found:
            raise DeviceError(f"{self.name}: no such interface {ifname!r}")
        return int(found[0])

    def add_veth(self, name: str, peer: str, *, peer_netns: Netns | None = None) -> None:
        """A veth pair ``name`` -- ``peer``; the peer goes to ``peer_netns`` when given."""
        spec: dict[str, Any] = {"ifname": _checked_ifname(peer)}
        if peer_netns is not None:
            spec["net_ns_fd"] = peer_netns.path
        with self._netlink(f"add veth {name}/{peer}") as ipr:
            ipr.link("add", ifname=_checked_ifname(name), kind="veth", peer=spec)

    def add_bridge(self, name: str) -> None:
        """A bridge named ``name`` (down, no ports)."""
        with self._netlink(f"add bridge {name}") as ipr:
            ipr.link("add", ifname=_checked_ifname(name), kind="bridge")

    def set_master(self, ifname: str, master: str | None) -> None:
        """Make ``ifname`` a port of the bridge ``master``, or of none."""
        index = self.link_index(ifname)
        master_index = 0 if master is None else self.link_index(master)
        with self._netlink(f"set master of {ifname}") as ipr:
            ipr.link("set", index=index, master=master_index)

    def set_link(
        self,
        ifname: str,
        *,
        up: bool | None = None,
        mtu: int | None = None,
        gso_max_size: int | None = None,
        mac: bytes | None = None,
        netns: Netns | None = None,
    ) -> None:
        """Change ``ifname``: state, MTU, GSO size limit, MAC; ``netns`` moves it there.

        A link moved to another namespace arrives down; ``up`` is applied there.
        """
        index = self.link_index(ifname)
        changes: dict[str, Any] = {}
        if mtu is not None:
            changes["mtu"] = mtu
        if gso_max_size is not None:
            changes["gso_max_size"] = gso_max_size
        if mac is not None:
            if len(mac) != 6:
                raise ValueError(f"a MAC address is 6 bytes, got {mac!r}")
            changes["address"] = mac.hex(":")
        if up is not None and netns is None:
            changes["state"] = "up" if up else "down"
        if changes:
            with self._netlink(f"set {ifname}") as ipr:
                ipr.link("set", index=index, **changes)
        if netns is not None:
            with self._netlink(f"move {ifname} to {netns.name}") as ipr:
                ipr.link("set", index=index, net_ns_fd=netns.path)
            if up is not None:
                netns.set_link(ifname, up=up)

    def add_address(self, ifname: str, address: str) -> None:
        """Add ``address`` with its prefix (``198.18.0.1/24``, ``fd00::1/64``) to ``ifname``.

        IPv6 addresses skip duplicate address detection, so they are usable at once.
        """
        interface = ipaddress.ip_interface(address)
        _checked_address(str(interface.ip))
        index = self.link_index(ifname)
        extra = {"flags": IFA_F_NODAD} if interface.version == 6 else {}
        with self._netlink(f"add address {interface} to {ifname}") as ipr:
            ipr.addr(
                "add",
                index=index,
                address=str(interface.ip),
                prefixlen=interface.network.prefixlen,
                **extra,
            )

    def add_route(
        self, prefix: str, *, gateway: str | None = None, ifname: str | None = None
    ) -> None:
        """Route ``prefix`` via ``gateway`` and/or out of ``ifname``."""
        if gateway is None and ifname is None:
            raise ValueError("a route needs a gateway, an interface, or both")
        network = _checked_network(prefix)
        spec: dict[str, Any] = {"dst": str(network)}
        if gateway is not None:
            via = _checked_address(gateway)
            if via.version != network.version:
                raise ValueError(f"gateway {via} is not IPv{network.version}")
            spec["gateway"] = str(via)
        if ifname is not None:
            spec["oif"] = self.link_index(ifname)
        with self._netlink(f"add route {network}") as ipr:
            ipr.route("add", **spec)

    def add_neighbour(self, ifname: str, address: str, mac: bytes) -> None:
        """A permanent neighbour entry: ``address`` is at ``mac`` on ``ifname``."""
        ip = _checked_address(address)
        if len(mac) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {mac!r}")
        index = self.link_index(ifname)
        with self._netlink(f"add neighbour {ip} on {ifname}") as ipr:
            ipr.neigh("add", dst=str(ip), lladdr=mac.hex(":"), ifindex=index, state=NUD_PERMANENT)

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        """Delete the namespace and every interface in it; idempotent.

        Raises ``DeviceError`` naming the namespace when the kernel keeps it (the
        netlink socket is closed first either way; a second ``close`` does nothing).
        """
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        # An open netlink socket would keep the namespace, and its links, alive.
        while self._routes:
            with contextlib.suppress(Exception):
                self._routes.pop().close()
        try:
            _delete(self.path)
        except OSError as exc:
            raise DeviceError(
                f"cannot delete network namespace {self.name}: {_reason(exc)}"
            ) from None

    def __enter__(self) -> Netns:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Netns({self.name!r}{', closed' if self._closed else ''})"


# -- leftovers of killed runs -------------------------------------------------------


def creator_of(name: str) -> int | None:
    """The creating process's id, if ``name`` is a netoffload namespace name."""
    match = NAME.fullmatch(name)
    return int(match["pid"]) if match else None


def leftover_namespaces(netns_dir: str | None = None) -> list[Leftover]:
    """Every netoffload namespace under ``netns_dir`` (``/var/run/netns``), with its creator."""
    directory = NETNS_DIR if netns_dir is None else netns_dir
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DeviceError(f"cannot list {directory}: {_reason(exc)}") from None
    out = []
    for name in names:
        pid = creator_of(name)
        if pid is not None:
            out.append(Leftover("netns", name, pid, process_alive(pid)))
    return out


def clean_leftovers(
    *, everything: bool = False, dry_run: bool = False, netns_dir: str | None = None
) -> CleanReport:
    """Delete netoffload namespaces whose creator is gone (every one with ``everything``).

    Returns what was removed (with ``dry_run``: what would be), what was left
    alone, and what could not be removed with why. Raises ``DeviceError`` when
    removing needs privileges this process lacks.
    """
    directory = NETNS_DIR if netns_dir is None else netns_dir
    removed: list[Leftover] = []
    kept: list[Leftover] = []
    failed: list[tuple[Leftover, str]] = []
    for leftover in leftover_namespaces(directory):
        if leftover.creator_alive and not everything:
            kept.append(leftover)
            continue
        if dry_run:
            removed.append(leftover)
            continue
        try:
            _delete(os.path.join(directory, leftover.name))
        except FileNotFoundError:
            continue  # gone meanwhile: its creator (or another clean) deleted it
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise DeviceError(
                    f"cannot remove network namespace {leftover.name}: {_reason(exc)} "
                    "(removing namespaces needs root)"
                ) from None
            failed.append((leftover, _reason(exc)))
            continue
        removed.append(leftover)
    return CleanReport(tuple(removed), tuple(kept), tuple(failed), dry_run)
