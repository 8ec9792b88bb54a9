"""The XDP redirect program of an AF_XDP socket, through the bpf(2) syscall alone.

No libbpf or libxdp, and no BPF filesystem: an ``XskRedirect`` creates an
XSKMAP (``BPF_MAP_CREATE``), loads a six-instruction XDP program
(``BPF_PROG_LOAD``) that sends every frame of a receive queue to the socket
in that queue's slot and passes it on to the kernel's stack when the slot is
empty::

    r2 = *(u32 *)(r1 + 16)          ; ctx->rx_queue_index
    r1 = &xsks_map                  ; ld_imm64, src_reg BPF_PSEUDO_MAP_FD
    r3 = XDP_PASS                   ; the action when the slot is empty (Linux 5.3+)
    call bpf_redirect_map
    exit

and attaches it to the interface with ``BPF_LINK_CREATE``. The link is a
file descriptor: closing it detaches the program, so a process that dies
leaves no program behind on the interface. Every descriptor is closed by
``close()``, and by the constructor itself when a step fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import struct
import weakref

from netoffload.device.base import DeviceError

#: bpf(2) by machine: the syscall number.
_SYSCALLS = {"x86_64": 321, "aarch64": 280}

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_PROG_LOAD = 5
BPF_LINK_CREATE = 28

BPF_MAP_TYPE_XSKMAP = 17
BPF_PROG_TYPE_XDP = 6
BPF_XDP = 37  # attach type
BPF_PSEUDO_MAP_FD = 1
BPF_FUNC_REDIRECT_MAP = 51
XDP_PASS = 2

#: XDP attach modes (``XDP_FLAGS_*``): the kernel chooses, generic (skb), driver.
XDP_MODES = {"auto": 0, "skb": 1 << 1, "native": 1 << 2}

# struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, ...
_XDP_MD_RX_QUEUE_INDEX = 16
_ATTR_SIZE = 128  # bytes of union bpf_attr passed; the kernel zero-fills the rest
_LOG_SIZE = 1 << 16
_INSN = struct.Struct("<BBhi")  # code, dst_reg | src_reg << 4, off, imm

_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return _INSN.pack(code, dst | (src << 4), off, imm)


def redirect_program(map_fd: int) -> bytes:
    """The instructions of the redirect program for the XSKMAP ``map_fd``."""
    return b"".join(
        (
            # BPF_LDX | BPF_MEM | BPF_W: r2 = ctx->rx_queue_index
            _insn(0x61, dst=2, src=1, off=_XDP_MD_RX_QUEUE_INDEX),
            # BPF_LD | BPF_IMM | BPF_DW (two slots): r1 = the map, relocated by the kernel
            _insn(0x18, dst=1, src=BPF_PSEUDO_MAP_FD, imm=map_fd),
            _insn(0x00),
            # BPF_ALU64 | BPF_MOV | BPF_K: r3 = XDP_PASS
            _insn(0xB7, dst=3, imm=XDP_PASS),
            # BPF_JMP | BPF_CALL: r0 = bpf_redirect_map(r1, r2, r3)
            _insn(0x85, imm=BPF_FUNC_REDIRECT_MAP),
            # BPF_JMP | BPF_EXIT: return r0
            _insn(0x95),
        )
    )


def bpf(cmd: int, attr: bytearray) -> int:
    """One bpf(2) call; its result, or ``OSError`` with the errno."""
    number = _SYSCALLS.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf(2) on {platform.machine()} is not supported here")
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    result = int(_LIBC.syscall(number, cmd, buf, len(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _name(text: str) -> bytes:
    return text.encode()[:15].ljust(16, b"\0")


def create_xskmap(entries: int, name: str = "nso_xsks") -> int:
    """A new XSKMAP of ``entries`` slots (u32 queue index -> socket); its fd."""
    attr = bytearray(_ATTR_SIZE)
    # map_type, key_size, value_size, max_entries, map_flags, inner_map_fd, numa_node, map_name
    fields = (BPF_MAP_TYPE_XSKMAP, 4, 4, entries, 0, 0, 0, _name(name))
    struct.pack_into("<IIIIIII16s", attr, 0, *fields)
    return bpf(BPF_MAP_CREATE, attr)


def map_update(map_fd: int, key: int, value: int) -> None:
    """Set ``map[key] = value`` (u32 key and value: a queue index and a socket fd)."""
    k = bytearray(struct.pack("<I", key))
    v = bytearray(struct.pack("<I", value))
    kb = (ctypes.c_char * 4).from_buffer(k)
    vb = (ctypes.c_char * 4).from_buffer(v)
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIQQQ", attr, 0, map_fd, 0, ctypes.addressof(kb), ctypes.addressof(vb), 0)
    bpf(BPF_MAP_UPDATE_ELEM, attr)


def map_delete(map_fd: int, key: int) -> None:
    """Remove ``map[key]``."""
    k = bytearray(struct.pack("<I", key))
    kb = (ctypes.c_char * 4).from_buffer(k)
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIQ", attr, 0, map_fd, 0, ctypes.addressof(kb))
    bpf(BPF_MAP_DELETE_ELEM, attr)


def load_xdp(program: bytes, name: str = "nso_xsk_redir") -> int:
    """Load ``program`` as an XDP program (license GPL: bpf_redirect_map needs no more); its fd.

    A refusal by the verifier raises ``DeviceError`` with the verifier's last line.
    """
    insns = bytearray(program)
    license_ = bytearray(b"GPL\0")
    log = bytearray(_LOG_SIZE)
    insns_buf = (ctypes.c_char * len(insns)).from_buffer(insns)
    license_buf = (ctypes.c_char * len(license_)).from_buffer(license_)
    log_buf = (ctypes.c_char * len(log)).from_buffer(log)
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into(
        "<IIQQIIQII16sII",
        attr,
        0,
        BPF_PROG_TYPE_XDP,
        len(insns) // _INSN.size,
        ctypes.addressof(insns_buf),
        ctypes.addressof(license_buf),
        1,  # log_level: the verifier explains a refusal
        len(log),
        ctypes.addressof(log_buf),
        0,  # kern_version
        0,  # prog_flags
        _name(name),
        0,  # prog_ifindex
        BPF_XDP,  # expected_attach_type
    )
    try:
        return bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        text = bytes(log).split(b"\0", 1)[0].decode(errors="replace").strip().splitlines()
        detail = f" ({text[-1]})" if text else ""
        raise DeviceError(
            f"cannot load the XDP program: {os.strerror(exc.errno or 0)}{detail}"
        ) from None


def link_xdp(prog_fd: int, ifindex: int, flags: int) -> int:
    """Attach ``prog_fd`` to the interface ``ifindex`` as a BPF link; the link's fd.

    Closing the fd detaches the program.
    """
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIII", attr, 0, prog_fd, ifindex, BPF_XDP, flags)
    return bpf(BPF_LINK_CREATE, attr)


class XskRedirect:
    """An XSKMAP, the redirect program and its link on ``ifindex``; ``close()`` undoes all.

    ``mode`` is ``"auto"`` (the driver's own XDP where it has one, else
    generic), ``"native"`` or ``"skb"`` (generic).
    """

    def __init__(self, ifname: str, ifindex: int, *, entries: int, mode: str = "auto") -> None:
        if mode not in XDP_MODES:
            raise ValueError(f"XDP mode must be one of {sorted(XDP_MODES)}, not {mode!r}")
        self.ifname = ifname
        self.ifindex = ifindex
        self.mode = mode
        # link, program, map: closed in this order, by close() or when the object goes.
        self._fds: list[int] = []
        self._finalizer = weakref.finalize(self, _close_all, self._fds)
        try:
            try:
                self.map_fd = create_xskmap(entries)
            except OSError as exc:
                raise DeviceError(f"cannot create an XSKMAP: {_why(exc)}") from None
            self._fds.insert(0, self.map_fd)
            self.prog_fd = load_xdp(redirect_program(self.map_fd))
            self._fds.insert(0, self.prog_fd)
            try:
                self.link_fd = link_xdp(self.prog_fd, ifindex, XDP_MODES[mode])
            except OSError as exc:
                raise DeviceError(
                    f"cannot attach the XDP program to {ifname!r} ({mode} mode): {_why(exc)}"
                ) from None
            self._fds.insert(0, self.link_fd)
        except BaseException:
            self.close()
            raise

    def add(self, queue: int, sock_fd: int) -> None:
        """Frames of receive queue ``queue`` go to the socket ``sock_fd`` from now on."""
        if self.closed:
            raise DeviceError(f"the XDP program on {self.ifname!r} is detached")
        try:
            map_update(self.map_fd, queue, sock_fd)
        except OSError as exc:
            raise DeviceError(
                f"cannot put the socket in the XSKMAP for queue {queue}: {_why(exc)}"
            ) from None

    @property
    def closed(self) -> bool:
        return not self._fds

    def close(self) -> None:
        """Detach the program (the link goes first) and close every descriptor; idempotent."""
        self._finalizer()


def _close_all(fds: list[int]) -> None:
    while fds:
        with contextlib.suppress(OSError):
            os.close(fds.pop(0))


def _why(exc: OSError) -> str:
    if exc.errno == errno.EPERM:
        return "not permitted (needs CAP_BPF and CAP_NET_ADMIN)"
    if exc.errno == errno.ENOSYS:
        return str(exc.strerror)
    return os.strerror(exc.errno or 0)
