"""Private network namespaces for tests and benchmarks.

A ``Netns`` is created with ``ip netns add`` under a unique ``nso-`` name
and always deleted again. ``Netns.entered()`` switches the *calling thread*
into the namespace with ``setns(2)`` and back afterwards: sockets, TAP
devices and ethtool ioctls made inside the block belong to the namespace
and keep working there after the thread has left it (Python 3.11 has no
``os.setns``, so it is called through ctypes).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import subprocess
from collections.abc import Iterator, Mapping
from types import TracebackType

from netoffload.device.base import DeviceError

CLONE_NEWNET = 0x40000000
_NETNS_DIR = "/var/run/netns"


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_LIBC.setns.restype = ctypes.c_int


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise DeviceError(f"setns failed: {os.strerror(err)}")


def _run(args: list[str]) -> str:
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        raise DeviceError(f"{args[0]}: command not found") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise DeviceError(f"{' '.join(args)}: {detail[-1] if detail else 'failed'}")
    return done.stdout


class Netns:
    """A private network namespace, deleted by ``close()`` (also a context manager)."""

    def __init__(self, prefix: str = "nso") -> None:
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        _run(["ip", "netns", "add", self.name])
        self._closed = False
        try:
            # No IPv6 autoconfiguration chatter (router solicitations, MLD, DAD)
            # in captures, and loopback up for sockets bound inside.
            self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
            self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def ip(self, *args: str) -> str:
        """Run ``ip -n NAME ARGS`` and return its output."""
        return _run(["ip", "-n", self.name, *args])

    def exec(self, *args: str) -> str:
        """Run a command inside the namespace (``ip netns exec``) and return its output."""
        return _run(["ip", "netns", "exec", self.name, *args])

    def sysctl(self, key: str, value: str) -> None:
        """Set a sysctl of this namespace."""
        self.exec("sysctl", "-q", "-w", f"{key}={value}")

    def enable_ipv6(self) -> None:
        """Turn IPv6 back on (off by default to keep captures quiet)."""
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "0")
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "0")

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with the calling thread inside this namespace."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(f"{_NETNS_DIR}/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
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

    def snmp(self) -> dict[str, dict[str, int]]:
        """The namespace's /proc/net/snmp counters: ``{"Udp": {"InCsumErrors": 0, ...}}``."""
        text = self.exec("cat", "/proc/net/snmp")
        out: dict[str, dict[str, int]] = {}
        lines = text.splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            proto, _, keys = names.partition(":")
            _, _, nums = values.partition(":")
            out[proto] = {k: int(v) for k, v in zip(keys.split(), nums.split(), strict=False)}
        return out

    def close(self) -> None:
        """Delete the namespace and every interface in it; idempotent."""
        if self._closed:
            return
        self._closed = True
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def __enter__(self) -> Netns:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
