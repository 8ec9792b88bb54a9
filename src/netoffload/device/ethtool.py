"""Interface features through the ethtool ioctl (what `ethtool -k` / `-K` do).

``read_features(ifname)`` returns every netdev feature by its kernel name
with its four bits (ETHTOOL_GFEATURES): *available* (the driver lets it be
changed), *requested*, *active* and *never_changed*. ``set_features``
sends ETHTOOL_SFEATURES. ``FEATURE_TASKS`` is the one table that maps
kernel feature names onto offload tasks and their record parameters.

The ioctl works on the network namespace of the socket it is issued on,
which is the namespace of the calling thread when the call is made.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from netoffload.device.base import DeviceError
from netoffload.offload import ChecksumFlags, IpVersions, Task

SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS = 0x1B
ETHTOOL_GSSET_INFO = 0x37
ETHTOOL_GFEATURES = 0x3A
ETHTOOL_SFEATURES = 0x3B
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32
# ETHTOOL_SFEATURES returns these bits when the kernel did not do exactly what was asked.
ETHTOOL_F_UNSUPPORTED = 1 << 0
ETHTOOL_F_WISH = 1 << 1

_IFREQ = struct.Struct("16sP")
_IFREQ_SIZE = 40

_ALL_L4 = (
    ChecksumFlags.TCP_IPV4
    | ChecksumFlags.UDP_IPV4
    | ChecksumFlags.TCP_IPV6
    | ChecksumFlags.UDP_IPV6
)
_L4_V4 = ChecksumFlags.TCP_IPV4 | ChecksumFlags.UDP_IPV4
_L4_V6 = ChecksumFlags.TCP_IPV6 | ChecksumFlags.UDP_IPV6


@dataclass(frozen=True, slots=True)
class FeatureTask:
    """What one kernel feature contributes to a task's record.

    ``field`` names the record field the feature's bits go into (``tx`` /
    ``rx`` for checksums, ``versions`` for segmentation and assembly). A
    feature with ``bits == 0`` adds nothing to the record and is simply
    switched with its task.
    """

    task: Task
    field: str
    bits: int
    #: Whether enabling the task turns this feature on. LRO is never turned on: it
    #: merges what a host that forwards or bridges must pass on unchanged (GRO does not).
    switched_on: bool = True


# The mapping, kernel feature name -> task. Features absent from this table
# (scatter-gather, highdma, vlan offloads, tunnel GSO...) have no task here.
FEATURE_TASKS: Mapping[str, FeatureTask] = {
    "tx-checksum-ipv4": FeatureTask(Task.CHECKSUM, "tx", _L4_V4),
    "tx-checksum-ipv6": FeatureTask(Task.CHECKSUM, "tx", _L4_V6),
    "tx-checksum-ip-generic": FeatureTask(Task.CHECKSUM, "tx", _ALL_L4),
    "rx-checksum": FeatureTask(Task.CHECKSUM, "rx", _ALL_L4),
    "tx-tcp-segmentation": FeatureTask(Task.TCP_SEGMENTATION, "versions", IpVersions.IPV4),
    "tx-tcp6-segmentation": FeatureTask(Task.TCP_SEGMENTATION, "versions", IpVersions.IPV6),
    "tx-tcp-ecn-segmentation": FeatureTask(Task.TCP_SEGMENTATION, "versions", IpVersions.ECN),
    # TSO variants with no record bit of their own: they follow the task on and off,
    # as `ethtool -K IF tso on|off` does.
    "tx-tcp-mangleid-segmentation": FeatureTask(Task.TCP_SEGMENTATION, "versions", 0),
    "tx-tcp-accecn-segmentation": FeatureTask(Task.TCP_SEGMENTATION, "versions", 0),
    "tx-udp-segmentation": FeatureTask(
        Task.UDP_SEGMENTATION, "versions", IpVersions.IPV4 | IpVersions.IPV6
    ),
    "rx-gro": FeatureTask(Task.TCP_ASSEMBLY, "versions", IpVersions.IPV4 | IpVersions.IPV6),
    "rx-lro": FeatureTask(
        Task.TCP_ASSEMBLY, "versions", IpVersions.IPV4 | IpVersions.IPV6, switched_on=False
    ),
    "rx-udp-gro-forwarding": FeatureTask(
        Task.UDP_ASSEMBLY, "versions", IpVersions.IPV4 | IpVersions.IPV6
    ),
    "rx-hashing": FeatureTask(Task.CLASSIFICATION, "hash_types", 0x3F),
    "rx-ntuple-filter": FeatureTask(Task.CLASSIFICATION, "rule_slots", 0),
}


@dataclass(frozen=True, slots=True)
class Feature:
    """One netdev feature as ETHTOOL_GFEATURES reports it."""

    name: str
    available: bool
    requested: bool
    active: bool
    never_changed: bool

    @property
    def fixed(self) -> bool:
        """True when it cannot be changed (``[fixed]`` in `ethtool -k`)."""
        return not self.available or self.never_changed


@dataclass(frozen=True, slots=True)
class EthtoolFeatures:
    """Every feature of one interface, in kernel order, by name."""

    ifname: str
    features: tuple[Feature, ...]

    def __getitem__(self, name: str) -> Feature:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    def get(self, name: str) -> Feature | None:
        try:
            return self[name]
        except KeyError:
            return None

    def names(self) -> list[str]:
        return [f.name for f in self.features]


def _error(ifname: str, action: str, err: OSError) -> DeviceError:
    code = err.errno
    if code in (errno.ENODEV, errno.ENXIO):
        return DeviceError(f"no such interface {ifname!r}")
    if code == errno.EPERM:
        return DeviceError(f"not permitted to {action} on {ifname!r} (needs CAP_NET_ADMIN)")
    if code == errno.EOPNOTSUPP:
        return DeviceError(f"{ifname!r} does not support {action}")
    return DeviceError(f"cannot {action} on {ifname!r}: {os.strerror(code or 0)}")


def _check_name(ifname: str) -> bytes:
    raw = ifname.encode()
    if not raw or len(raw) > 15 or b"/" in raw or b"\0" in raw:
        raise DeviceError(f"invalid interface name {ifname!r}")
    return raw


def _ioctl(
    ifname: str,
    buffer: ctypes.Array[ctypes.c_char],
    action: str,
    sock: socket.socket | None = None,
) -> int:
    ifreq = bytearray(_IFREQ_SIZE)
    _IFREQ.pack_into(ifreq, 0, _check_name(ifname), ctypes.addressof(buffer))
    with contextlib.ExitStack() as stack:
        if sock is None:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        try:
            return int(fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq, True))
        except OSError as exc:
            raise _error(ifname, action, exc) from None


def _feature_count(ifname: str, sock: socket.socket | None) -> int:
    buf = ctypes.create_string_buffer(struct.pack("<IIQI", ETHTOOL_GSSET_INFO, 0, 1 << 4, 0))
    _ioctl(ifname, buf, "read features", sock)
    _, _, mask, count = struct.unpack_from("<IIQI", buf.raw)
    if not mask & (1 << ETH_SS_FEATURES):
        raise DeviceError(f"{ifname!r} reports no feature names")
    return int(count)


def _feature_names(ifname: str, count: int, sock: socket.socket | None) -> list[str]:
    head = struct.pack("<III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count)
    buf = ctypes.create_string_buffer(head + bytes(count * ETH_GSTRING_LEN))
    _ioctl(ifname, buf, "read feature names", sock)
    raw = buf.raw[12:]
    return [
        raw[i * ETH_GSTRING_LEN : (i + 1) * ETH_GSTRING_LEN].split(b"\0", 1)[0].decode()
        for i in range(count)
    ]


def read_features(ifname: str, sock: socket.socket | None = None) -> EthtoolFeatures:
    """All features of ``ifname`` (``DeviceError`` if it does not exist).

    The ioctl acts in the namespace of ``sock`` (default: a new socket in the
    calling thread's namespace).
    """
    count = _feature_count(ifname, sock)
    names = _feature_names(ifname, count, sock)
    blocks = (count + 31) // 32
    buf = ctypes.create_string_buffer(
        struct.pack("<II", ETHTOOL_GFEATURES, blocks) + bytes(16 * blocks)
    )
    _ioctl(ifname, buf, "read features", sock)
    words = struct.unpack_from(f"<{4 * blocks}I", buf.raw, 8)
    out = []
    for i, name in enumerate(names):
        if not name:
            continue
        block, bit = divmod(i, 32)
        available, requested, active, never = words[4 * block : 4 * block + 4]
        mask = 1 << bit
        out.append(
            Feature(
                name,
                bool(available & mask),
                bool(requested & mask),
                bool(active & mask),
                bool(never & mask),
            )
        )
    return EthtoolFeatures(ifname, tuple(out))


def set_features(ifname: str, wanted: Mapping[str, bool], sock: socket.socket | None = None) -> int:
    """Request each named feature on or off (ETHTOOL_SFEATURES).

    Returns the kernel's result bits (``ETHTOOL_F_WISH`` when some request
    could not be met, e.g. segmentation without checksum); unknown names are
    a ``DeviceError``.
    """
    names = _feature_names(ifname, _feature_count(ifname, sock), sock)
    index = {name: i for i, name in enumerate(names) if name}
    blocks = (len(names) + 31) // 32
    valid = [0] * blocks
    requested = [0] * blocks
    for name, on in wanted.items():
        if name not in index:
            raise DeviceError(f"{ifname!r} has no feature {name!r}")
        block, bit = divmod(index[name], 32)
        valid[block] |= 1 << bit
        if on:
            requested[block] |= 1 << bit
    pairs = [v for pair in zip(valid, requested, strict=True) for v in pair]
    payload = struct.pack(f"<II{2 * blocks}I", ETHTOOL_SFEATURES, blocks, *pairs)
    buf = ctypes.create_string_buffer(payload)
    return _ioctl(ifname, buf, "change features", sock)
