"""From command-line words to a running stack: a device, addresses, gateways, a policy.

``--device tap:NAME`` creates the TAP when it does not exist, and
``--peer-address`` gives the kernel's side of a TAP that address, so one
command is enough. Over an interface reached through AF_PACKET, the stack
uses the interface's MAC and must not share an address with the kernel
there: the kernel would answer the stack's TCP segments with RSTs.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_interface

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from netoffload.apps.ipsec_config import load_policies
from netoffload.device.base import Device, DeviceError
from netoffload.device.names import open_device
from netoffload.device.packet import PacketDevice
from netoffload.device.tap import TapDevice
from netoffload.policy import OffloadPolicy, PolicyMode
from netoffload.stack._netaddr import IpAddress, IpInterface
from netoffload.stack.stack import Stack
from netoffload.stack.tcp import TcpConfig


class SetupError(Exception):
    """A one-line reason the stack could not be set up (a bad address, a busy port...)."""


@dataclass(slots=True)
class StackOptions:
    device: str
    addresses: Sequence[str]
    gateways: Sequence[str] = ()
    peer_addresses: Sequence[str] = ()
    policy: str = "always"
    seed: int | None = None
    tcp: TcpConfig = field(default_factory=TcpConfig)
    #: A TOML file of security policies (``apps.ipsec_config``).
    sa_config: str | None = None


@dataclass(slots=True)
class RunningStack:
    stack: Stack
    device: Device

    def close(self) -> None:
        self.device.close()


def parse_interfaces(words: Sequence[str]) -> list[IpInterface]:
    out: list[IpInterface] = []
    for word in words:
        try:
            value = ip_interface(word)
        except ValueError:
            raise SetupError(
                f"not an address with a prefix length: {word!r} (e.g. 198.18.0.2/24)"
            ) from None
        if "/" not in word:
            raise SetupError(f"{word!r} needs a prefix length (e.g. {word}/24)")
        out.append(value)
    return out


def parse_address(word: str) -> IpAddress:
    try:
        return ip_address(word)
    except ValueError:
        raise SetupError(f"not an IP address: {word!r}") from None


def build(options: StackOptions) -> RunningStack:
    """Open the device, configure the kernel's side if asked, and bind a stack to it."""
    addresses = parse_interfaces(options.addresses)
    if not addresses:
        raise SetupError("give the stack an address: --address ADDR/PREFIX")
    peers = parse_interfaces(options.peer_addresses)
    gateways = [parse_address(g) for g in options.gateways]
    versions = [g.version for g in gateways]
    if len(set(versions)) != len(versions):
        raise SetupError("--gateway may be given once per IP version")
    try:
        mode = PolicyMode(options.policy)
    except ValueError:
        raise SetupError(f"unknown policy {options.policy!r}: always, never or adaptive") from None
    try:
        device = open_device(options.device)
    except DeviceError as exc:
        raise SetupError(str(exc)) from None
    try:
        if peers:
            if not isinstance(device, TapDevice):
                raise SetupError("--peer-address configures the kernel's side of a TAP only")
            for peer in peers:
                _add_kernel_address(device.name, peer)
        if isinstance(device, PacketDevice):
            _refuse_shared_addresses(device.name, addresses)
        rng = random.Random(options.seed)
        stack = Stack(rng=rng, tcp=options.tcp, policy=OffloadPolicy(mode))
        try:
            stack.add_interface(device, addresses, gateways=gateways)
        except (OSError, ValueError) as exc:
            raise SetupError(str(exc)) from None
        if options.sa_config is not None:
            try:
                for policy in load_policies(options.sa_config):
                    stack.add_security_policy(policy)
            except (ValueError, DeviceError) as exc:
                raise SetupError(str(exc)) from None
    except BaseException:
        device.close()
        raise
    return RunningStack(stack, device)


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise SetupError(f"no such interface {ifname!r}")
    return int(found[0])


def kernel_addresses(ifname: str) -> list[IpInterface]:
    """The addresses the kernel has on ``ifname`` (in this namespace)."""
    with IPRoute() as ipr:
        index = _index(ipr, ifname)
        out: list[IpInterface] = []
        for msg in ipr.get_addr(index=index):
            address = msg.get_attr("IFA_ADDRESS")
            if address:
                out.append(ip_interface(f"{address}/{msg['prefixlen']}"))
        return out


def _add_kernel_address(ifname: str, address: IpInterface) -> None:
    extra = {"flags": IFA_F_NODAD} if address.version == 6 else {}
    with IPRoute() as ipr:
        index = _index(ipr, ifname)
        try:
            ipr.link("set", index=index, state="up")
            ipr.addr(
                "add",
                index=index,
                address=str(address.ip),
                prefixlen=address.network.prefixlen,
                **extra,
            )
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise SetupError(f"cannot give {ifname} the address {address}: {exc}") from None


def _refuse_shared_addresses(ifname: str, ours: Sequence[IpInterface]) -> None:
    kernel = {a.ip for a in kernel_addresses(ifname)}
    for address in ours:
        if address.ip in kernel:
            raise SetupError(
                f"{address.ip} is configured on {ifname} by the kernel, which would answer "
                f"this stack's TCP segments with RSTs; give the stack an address the kernel "
                f"does not have there (or remove it: ip addr del {address} dev {ifname})"
            )


def is_v4(address: IpAddress) -> bool:
    return isinstance(address, IPv4Address)


def is_v6(address: IpAddress) -> bool:
    return isinstance(address, IPv6Address)
