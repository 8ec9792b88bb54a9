"""SoftNic, host side: the driver of a NIC whose firmware is another process.

Ownership of pool slots (the rule the host must follow):

* Transmit: ``tx_buffers(n)`` lends writable slots; build a frame in one
  and pass ``Packet(view[:length], request)`` to ``send``, which then posts
  the slot without copying. Any other buffer is copied into a free slot.
  A lent slot not used after all goes back with ``return_tx_buffers``.
  A slot returns to the free list when the firmware completes it.
* Receive: ``recv`` returns packets whose ``data`` are views into pool
  slots. They stay valid, and the firmware never writes them, until they
  are passed to ``release`` (``release()`` with no argument gives back every
  slot still held); then the slots go back to the firmware's fill ring. A
  host that holds every receive slot stops the port taking frames: the
  cable backs up into the sender, nothing is overwritten.

Every wait is bounded and also watches the firmware's pidfd: if the
firmware process dies, the next call raises ``DeviceError`` at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import json
import mmap
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

from netoffload.device.base import UNKNOWN_EXIT as _UNKNOWN_STATUS
from netoffload.device.base import Device, DeviceError, describe_exit, poll_fds
from netoffload.device.cable import Cable, CableEnd, Impairments
from netoffload.device.softnic import control, layout
from netoffload.device.softnic.control import Op, Status
from netoffload.device.softnic.layout import (
    HEADROOM,
    DescRing,
    Geometry,
    Memo,
    SlotRing,
)
from netoffload.engine.esp_sa import EspConfig
from netoffload.engine.ipsec_offload import encode_config
from netoffload.engine.rss import ALL_HASH_TYPES
from netoffload.offload import (
    AnyRecord,
    CapabilityRecord,
    ChecksumCaps,
    ChecksumFlags,
    ClassificationCaps,
    Clocks,
    CryptoAlgorithm,
    CryptoFeatures,
    DecryptCaps,
    DeviceStats,
    DigestAlgorithm,
    DigestCaps,
    DosFilterCaps,
    DosRuleKinds,
    DropReason,
    EncryptCaps,
    IpVersions,
    KeySizes,
    Packet,
    Selection,
    SelectionError,
    TcpAssemblyCaps,
    TcpSegmentationCaps,
    TxSchedulingCaps,
    UdpAssemblyCaps,
    UdpSegmentationCaps,
    VirtioNetHdr,
    decode_capabilities,
    encode_capabilities,
)
from netoffload.wire import MacAddress

_ETHERNET_MTU_LIMIT = 65535
encode_vnet = layout.encode_tx_ext_vnet


_UNNAMED = itertools.count()


def _context_bytes(context: object) -> bytes:
    if not isinstance(context, EspConfig):
        raise TypeError("a SoftNic takes the engine's EspConfig as an SA context")
    return encode_config(context)


def _mac_for(name: str) -> MacAddress:
    """A locally administered unicast MAC derived from the port's name (stable per name)."""
    digest = hashlib.blake2b(name.encode(), digest_size=5).digest()
    return MacAddress(b"\x02" + digest)


_ALL_CHECKSUMS = (
    ChecksumFlags.IPV4_HEADER
    | ChecksumFlags.TCP_IPV4
    | ChecksumFlags.UDP_IPV4
    | ChecksumFlags.TCP_IPV6
    | ChecksumFlags.UDP_IPV6
)


#: Rule slots of a SoftNic's classifier and of its DoS filter.
RULE_SLOTS = 1024
#: How close to its launch time the firmware's pacing sends a packet: its poll's step.
LAUNCH_GRANULARITY_NS = 10_000_000
#: How far ahead a launch time may lie.
LAUNCH_HORIZON_NS = 60 * 1_000_000_000


def default_capabilities(queues: int = 1) -> list[CapabilityRecord]:
    """What a SoftNic with ``queues`` receive queues advertises unless told otherwise.

    Classification: RSS over ``queues`` with every hash type, and rules; the
    firmware steers, so the queue is the SoftNic's choice. Scheduling: launch
    times on CLOCK_TAI, paced in software by the firmware, to within about
    ``LAUNCH_GRANULARITY_NS``.
    """
    both = IpVersions.IPV4 | IpVersions.IPV6
    return [
        ChecksumCaps(tx=_ALL_CHECKSUMS, rx=_ALL_CHECKSUMS),
        TcpSegmentationCaps(max_size_bytes=65536, versions=both | IpVersions.ECN),
        UdpSegmentationCaps(max_size_bytes=65536, versions=both),
        TcpAssemblyCaps(max_size_bytes=65536, versions=both),
        UdpAssemblyCaps(max_size_bytes=65536, versions=both),
        EncryptCaps(**_IPSEC),
        DecryptCaps(**_IPSEC),
        DigestCaps(algorithms=_DIGESTS, max_keys=1024),
        ClassificationCaps(rule_slots=RULE_SLOTS, queues=queues, hash_types=ALL_HASH_TYPES),
        DosFilterCaps(
            rule_kinds=DosRuleKinds.BLOCKLIST
            | DosRuleKinds.RATE_LIMIT
            | DosRuleKinds.SYN_FLOOD
            | DosRuleKinds.MALFORMED
            | DosRuleKinds.FRAGMENTS,
            rule_slots=RULE_SLOTS,
        ),
        TxSchedulingCaps(
            clocks=Clocks.TAI, granularity_ns=LAUNCH_GRANULARITY_NS, horizon_ns=LAUNCH_HORIZON_NS
        ),
    ]


#: The digests a SoftNic's engine computes (``engine.digest``).
_DIGESTS = (
    DigestAlgorithm.HMAC_SHA1_96
    | DigestAlgorithm.HMAC_SHA256_128
    | DigestAlgorithm.HMAC_SHA512_256
    | DigestAlgorithm.CRC32C
)

#: What a SoftNic's IPsec engine does: every algorithm, mode and option of the engine's ESP.
_IPSEC: dict[str, Any] = {
    "algorithms": CryptoAlgorithm.AES_GCM
    | CryptoAlgorithm.CHACHA20_POLY1305
    | CryptoAlgorithm.AES_CBC_HMAC_SHA256,
    "key_sizes": KeySizes.BITS_128 | KeySizes.BITS_192 | KeySizes.BITS_256,
    "max_sas": 1024,
    "features": CryptoFeatures.TRANSPORT
    | CryptoFeatures.TUNNEL
    | CryptoFeatures.ESN
    | CryptoFeatures.NAT_T,
}


class _Resources:
    """Everything ``close`` must release; kept apart from the SoftNic so a finalizer can run
    without holding the device alive."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.fds: list[int] = []
        self.sockets: list[socket.socket] = []
        self.region: mmap.mmap | None = None
        self.stderr: IO[bytes] | None = None
        self.cable: Cable | None = None
        self.queues: list[SoftNic] = []  # a multi-queue port's other queues
        self.links: list[Cable] = []  # the port's links to them
        self.detached = False  # the queues belong to workers: the port no longer drives them
        self.closed = False

    def release(self) -> None:
        if self.closed:
            return
        self.closed = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            for sock in self.sockets:  # ask politely first: the control channel
                with contextlib.suppress(OSError):
                    sock.send(Op.STOP.value)
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5.0)
        for sock in self.sockets:
            sock.close()
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []
        if self.cable is not None:
            self.cable.close()
        for queue in self.queues:
            queue.close()
        for link in self.links:
            link.close()
        if self.stderr is not None:
            self.stderr.close()
        if self.region is not None:
            # Views handed out by recv/tx_buffers keep the map alive until they go.
            with contextlib.suppress(BufferError):
                self.region.close()


class SoftNic(Device):
    """A software NIC: capabilities, enable, and batched send/recv through shared rings.

    ``caps`` is what the device advertises (default: ``default_capabilities()``).
    ``cable`` is the port's cable; without one the SoftNic makes its own
    ``Cable`` and ``peer`` is the far end, for a test to hold. ``name``
    defaults to ``softnicN``, numbered in this process in order of creation;
    the port's MAC is derived from it, so two SoftNics on one cable need two
    names (the default gives them).

    ``queues`` > 1 makes a multi-queue NIC: one firmware process per queue.
    This object is queue 0, the port on the cable; ``queue(i)`` is queue
    ``i``, a device of its own (own rings, own doorbells) with the same MAC,
    so one worker can serve each. RSS and the classification rules pick a
    received frame's queue; each queue transmits on the shared port.
    """

    #: The module run as the firmware process (``python -m``).
    firmware_module = "netoffload.device.softnic.firmware"

    def __init__(
        self,
        caps: Sequence[AnyRecord] | None = None,
        cable: CableEnd | None = None,
        *,
        name: str | None = None,
        mac: MacAddress | None = None,
        geometry: Geometry | None = None,
        start_timeout_s: float = 30.0,
        call_timeout_s: float = 10.0,
        queues: int = 1,
        queue_index: int = 0,
    ) -> None:
        if not 1 <= queues <= 64:
            raise ValueError("a SoftNic has 1 to 64 queues")
        self.name = name = f"softnic{next(_UNNAMED)}" if name is None else name
        self.queue_index = queue_index
        self._mac = mac if mac is not None else _mac_for(name)
        self.geometry = g = geometry or Geometry()
        self.call_timeout_s = call_timeout_s
        self.peer: CableEnd | None = None
        self._res = res = _Resources()
        self._finalizer = weakref.finalize(self, res.release)
        self._host_stats = DeviceStats()
        self._last_wire: dict[str, int] = {}
        self._last_ipsec: dict[str, Any] = {}
        self._last_steering: dict[str, Any] = {}
        self._owner_pid = os.getpid()
        try:
            if cable is None:
                res.cable = Cable()
                cable, self.peer = res.cable.a, res.cable.b
            mtu = cable.impairments.mtu
            self._mtu = _ETHERNET_MTU_LIMIT if mtu is None else mtu
            records = list(default_capabilities(queues) if caps is None else caps)
            links: list[CableEnd] = []
            for i in range(1, queues if not queue_index else 1):
                link = Cable(Impairments(mtu=None), seed=f"{name}/q{i}")
                res.links.append(link)
                queue = SoftNic(
                    records, link.b, name=f"{name}.q{i}", mac=self._mac, geometry=g,
                    start_timeout_s=start_timeout_s, call_timeout_s=call_timeout_s,
                    queue_index=i,
                )  # fmt: skip
                res.queues.append(queue)
                links.append(link.a)
            self._start(records, cable, links)
            self._wait_ready(start_timeout_s)
            self._enabled = self._fetch_enabled()
        except BaseException:
            res.release()
            raise
        mem = self._mem
        self._tx = DescRing(mem, "tx", g.tx_ring_offset, g.ring_entries)
        self._rx = DescRing(mem, "rx", g.rx_ring_offset, g.ring_entries)
        self._pool = g.pool_offset  # a computed property: read once, used per frame
        self._completion = SlotRing(mem, "completion", g.completion_ring_offset, g.ring_entries)
        self._fill = SlotRing(mem, "fill", g.fill_ring_offset, g.ring_entries)
        self._tx_free: list[int] = list(range(g.tx_slots - 1, -1, -1))
        self._lent: set[int] = set()
        self._rx_held: set[int] = set()
        # Received views by identity: release finds a packet's slot without an address
        # computation (each view is kept here until released, so its id stays unique).
        self._rx_views: dict[int, tuple[memoryview, int]] = {}
        self._fill.push(list(range(g.tx_slots, g.slots)))
        self._ring(self._nic_bell)
        self._encode_tx = Memo(layout.encode_tx_ext)
        self._decode_rx = Memo(layout.decode_rx_ext)
        self._pool_addr = ctypes.addressof(ctypes.c_char.from_buffer(self._res.region))  # type: ignore[arg-type]
        self._pool_addr += g.pool_offset

    # -- start-up -------------------------------------------------------------------
    def _start(self, caps: list[AnyRecord], cable: CableEnd, links: list[CableEnd]) -> None:
        res, g = self._res, self.geometry
        mem_fd, res.region = layout.create_region(g)
        res.fds.append(mem_fd)
        self._mem = memoryview(res.region)
        flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC
        # Each descriptor is recorded for clean-up the moment it exists.
        self._nic_bell = os.eventfd(0, flags)
        res.fds.append(self._nic_bell)
        self._rx_bell = os.eventfd(0, flags)
        res.fds.append(self._rx_bell)
        self._completion_bell = os.eventfd(0, flags)
        res.fds.append(self._completion_bell)
        self._ctrl, child_ctrl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        res.sockets.append(self._ctrl)
        spec = cable.spec()
        cable_fd = cable.detach()
        link_specs = [link.spec() for link in links]
        link_fds = [link.detach() for link in links]
        config = {
            "queue_index": self.queue_index,
            "links": [{"fd": fd, "wire": w} for fd, w in zip(link_fds, link_specs, strict=True)],
            "geometry": g.as_dict(),
            "mem_fd": mem_fd,
            "nic_bell": self._nic_bell,
            "rx_bell": self._rx_bell,
            "completion_bell": self._completion_bell,
            "ctrl_fd": child_ctrl.fileno(),
            "cable_fd": cable_fd,
            "wire": spec,
            "caps": encode_capabilities(caps).hex(),
        }
        # Kept open for the device's lifetime: the firmware's last words, if it dies.
        res.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            res.proc = subprocess.Popen(
                [sys.executable, "-m", self.firmware_module, json.dumps(config)],
                pass_fds=(
                    mem_fd,
                    self._nic_bell,
                    self._rx_bell,
                    self._completion_bell,
                    child_ctrl.fileno(),
                    cable_fd,
                    *link_fds,
                ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=res.stderr,
            )
        finally:
            # The child has its own copies; ours would keep the cable and channel open.
            child_ctrl.close()
            os.close(cable_fd)
            for fd in link_fds:
                os.close(fd)
        self._pidfd = os.pidfd_open(res.proc.pid)
        res.fds.append(self._pidfd)

    def _wait_ready(self, timeout_s: float) -> None:
        reply = self._receive(timeout_s, "start")
        if reply != Op.READY.value:
            raise DeviceError(f"softnic firmware sent {reply[:16]!r} instead of ready")

    # -- liveness and waiting -------------------------------------------------------
    @property
    def firmware_pid(self) -> int:
        """The firmware process id (for a test that kills it)."""
        assert self._res.proc is not None
        return self._res.proc.pid

    def _check(self) -> None:
        if self._res.closed:
            raise DeviceError(f"{self.name} is closed")
        proc = self._res.proc
        code = None if proc is None else self._exited(proc)
        if code is not None:
            raise DeviceError(self._death_message(code))

    def _exited(self, proc: subprocess.Popen[bytes]) -> int | None:
        """The firmware's exit status, ``None`` while it runs. In a worker (a process forked
        after the firmware started) the firmware is not a child: its pidfd says."""
        if os.getpid() == self._owner_pid:
            return proc.poll()
        return _UNKNOWN_STATUS if poll_fds([self._pidfd], 0.0) else None

    def _death_message(self, code: int) -> str:
        detail = ""
        stderr = self._res.stderr
        if stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                stderr.seek(0)
                lines = stderr.read().decode(errors="replace").strip().splitlines()
                if lines:
                    detail = f": {lines[-1]}"
        return f"softnic firmware exited with {describe_exit(code)}{detail}"

    def _wait_fds(self, fds: list[int], timeout_s: float) -> list[int]:
        """poll(2) on ``fds`` and the firmware's pidfd; raises if the firmware died."""
        ready = poll_fds([*fds, self._pidfd], max(timeout_s, 0.0))
        if self._pidfd in ready:
            proc = self._res.proc
            assert proc is not None
            if os.getpid() == self._owner_pid:
                proc.wait(timeout=5.0)
            code = self._exited(proc)
            raise DeviceError(self._death_message(_UNKNOWN_STATUS if code is None else code))
        return ready

    def wait(self, timeout_s: float, *, for_tx: bool = False) -> bool:
        """Wait (bounded) until ``recv`` may have packets, or with ``for_tx`` until
        transmit slots came back; True when woken, False on timeout."""
        self._check()
        if for_tx:
            # The bell is drained before the ring is read, so a completion that lands
            # after the read rings it again: the poll below cannot miss it, and cannot
            # return at once forever on a bell nobody drained.
            _drain(self._completion_bell)
            self._reap()
            if self._tx_free and self._tx.space():
                return True
        fds = [self._rx_bell, self._completion_bell] if for_tx else [self._rx_bell]
        return bool(self._wait_fds(fds, timeout_s))

    # -- link -------------------------------------------------------------------------
    @property
    def mtu(self) -> int:
        """The cable's MTU (bytes after the Ethernet header)."""
        return self._mtu

    @property
    def mac(self) -> MacAddress:
        """This port's MAC address (chosen at construction)."""
        return self._mac

    @property
    def link_up(self) -> bool:
        """True while the firmware runs."""
        proc = self._res.proc
        return not self._res.closed and proc is not None and self._exited(proc) is None

    def _ring(self, bell: int) -> None:
        os.eventfd_write(bell, 1)

    # -- control plane --------------------------------------------------------------
    def _receive(self, timeout_s: float, what: str) -> bytes:
        if not self._wait_fds([self._ctrl.fileno()], timeout_s):
            raise DeviceError(f"softnic firmware did not answer {what} within {timeout_s:g}s")
        try:
            reply = self._ctrl.recv(control.MAX_MESSAGE)
        except OSError as exc:
            self._check_dying()
            raise DeviceError(f"softnic control channel: {exc}") from None
        if not reply:
            self._check_dying()
            raise DeviceError("softnic firmware closed its control channel")
        return reply

    def _check_dying(self) -> None:
        """After the control channel broke: give the firmware a moment to be seen dead."""
        proc = self._res.proc
        if proc is not None and os.getpid() == self._owner_pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2.0)
        self._check()

    def _call(self, op: Op, payload: bytes = b"") -> bytes:
        self._check()
        try:
            self._ctrl.send(op.value + payload)
        except OSError as exc:
            self._check_dying()
            raise DeviceError(f"softnic control channel: {exc}") from None
        reply = self._receive(self.call_timeout_s, op.name.lower())
        status, body = reply[:1], reply[1:]
        if status == Status.OK.value:
            return body
        if status == Status.REFUSED.value:
            raise SelectionError(body.decode(errors="replace"))
        raise DeviceError(f"softnic firmware: {body.decode(errors='replace')}")

    def capability_chain(self) -> bytes:
        """The binary capability chain exactly as the firmware sent it."""
        return self._call(Op.QUERY)

    def capabilities(self) -> list[AnyRecord]:
        return decode_capabilities(self.capability_chain())

    def _fetch_enabled(self) -> Selection:
        records = decode_capabilities(self._call(Op.ENABLED))
        return Selection(r for r in records if isinstance(r, CapabilityRecord))

    def enabled(self) -> Selection:
        return self._enabled

    def enable(self, selection: Selection) -> Selection:
        """Send the selection's chain; the firmware checks it against what it advertised."""
        chain = self._call(Op.ENABLE, encode_capabilities(selection.records()))
        records = decode_capabilities(chain)
        self._enabled = Selection(r for r in records if isinstance(r, CapabilityRecord))
        if not self._res.detached:
            for queue in self._res.queues:
                queue.enable(self._enabled)
        return self._enabled

    # -- queues -----------------------------------------------------------------------
    @property
    def queue_count(self) -> int:
        """Receive queues: this one and the ones ``queue(i)`` gives."""
        return 1 + len(self._res.queues)

    def queue(self, index: int) -> SoftNic:
        """Queue ``index`` as a device of its own (0 is this object, the port)."""
        if index == 0:
            return self
        if not 0 < index < self.queue_count:
            raise IndexError(f"{self.name} has {self.queue_count} queues, not {index + 1}")
        return self._res.queues[index - 1]

    def detach_queues(self) -> None:
        """Hand the queues to workers (``netoffload.workers``): from now on ``enable`` and
        ``stats`` on this port are about queue 0 only; each worker drives its own queue."""
        self._res.detached = True

    def rules(self, command: str) -> dict[str, Any]:
        """Run a rules command (``engine.steer``: ``add WORDS``, ``del [dos] ID``, ``list``)
        in the firmware; a refused one raises ``SelectionError`` with its one-line reason."""
        return dict(json.loads(self._call(Op.RULES, command.encode())))

    def steering_counters(self) -> dict[str, Any]:
        """DoS drops by reason, SYN cookies and rule counters, as of the last ``stats``."""
        return dict(self._last_steering)

    def queue_stats(self) -> DeviceStats:
        """This queue's own counters (its firmware's and its host side's)."""
        body = json.loads(self._call(Op.STATS))
        out = DeviceStats.from_dict(body["device"])
        out.merge(self._host_stats)
        self._last_wire = dict(body["wire"])
        self._last_ipsec = dict(body.get("ipsec", {}))
        self._last_steering = dict(body.get("steering", {}))
        return out

    def stats(self) -> DeviceStats:
        """Firmware counters (including wire drops) plus drops made on the host side; on a
        multi-queue port, every queue's."""
        out = self.queue_stats()
        if not self._res.detached:
            for queue in self._res.queues:
                out.merge(queue.queue_stats())
        return out

    def ipsec_counters(self) -> dict[str, Any]:
        """The firmware's SA table as of the last ``stats``: handles installed, per-SA
        packet and byte counts and drops by reason (never a key)."""
        return dict(self._last_ipsec)

    def install_sa(self, handle: int, config: EspConfig) -> None:
        """Install an inbound SA in the firmware (its ESP is then decrypted there)."""
        self._call(Op.INSTALL_SA, handle.to_bytes(4, "little") + encode_config(config))

    def revoke_sa(self, handle: int) -> None:
        """Remove the SA under ``handle`` from the firmware (either direction)."""
        self._call(Op.REVOKE_SA, handle.to_bytes(4, "little"))

    def install_digest_key(self, handle: int, algorithm: DigestAlgorithm, key: bytes) -> None:
        """Hold a digest key in the firmware under ``handle`` (refused unless the digest
        task is enabled with room for the handle and the algorithm)."""
        body = struct.pack("<II", handle, DigestAlgorithm(algorithm).value) + bytes(key)
        self._call(Op.INSTALL_DIGEST_KEY, body)

    def revoke_digest_key(self, handle: int) -> None:
        """Forget the digest key under ``handle`` in the firmware."""
        self._call(Op.REVOKE_DIGEST_KEY, handle.to_bytes(4, "little"))

    def cable_counters(self) -> dict[str, int]:
        """The port's wire counters (sent, lost, corrupted, ...) as of the last ``stats``."""
        return dict(self._last_wire)

    def flush(self) -> None:
        """Return once the firmware has put every posted frame on the wire."""
        self._call(Op.FLUSH)
        self._reap()

    # -- transmit -------------------------------------------------------------------
    def _reap(self) -> None:
        done = self._completion.pop()
        if done:
            lent = self._lent
            self._tx_free.extend(s for s in done if s not in lent)

    def tx_buffers(self, count: int, timeout_s: float = 0.0) -> list[memoryview]:
        """Lend up to ``count`` free transmit slots, as writable views to build frames in.

        Waits at most ``timeout_s`` for the firmware to complete slots when
        none are free. Each view has room for a 64 KiB super-packet.
        """
        self._check()
        self._reap()
        if not self._tx_free and timeout_s > 0:
            deadline = time.monotonic() + timeout_s
            while not self._tx_free and time.monotonic() < deadline:
                self._wait_fds([self._completion_bell], deadline - time.monotonic())
                _drain(self._completion_bell)
                self._reap()
        g, mem = self.geometry, self._mem
        out: list[memoryview] = []
        while self._tx_free and len(out) < count:
            slot = self._tx_free.pop()
            self._lent.add(slot)
            base = g.pool_offset + slot * g.slot_bytes
            out.append(mem[base + HEADROOM : base + g.slot_bytes])
        return out

    def return_tx_buffers(self, views: Sequence[memoryview]) -> None:
        """Give back slots lent by ``tx_buffers`` that were not sent after all."""
        for view in views:
            where = self._locate(view)
            if where is not None:
                slot = where[0]
                self._lent.discard(slot)
                self._tx_free.append(slot)

    def _slot_of(self, data: object) -> tuple[int, int] | None:
        """(slot, offset) when ``data`` is a view into this device's pool."""
        if not isinstance(data, memoryview) or data.obj is not self._res.region:
            return None
        try:
            address = ctypes.addressof(ctypes.c_char.from_buffer(data))
        except (TypeError, ValueError):
            return None
        g = self.geometry
        slot, offset = divmod(address - self._pool_addr, g.slot_bytes)
        if not 0 <= slot < g.slots or offset + len(data) > g.slot_bytes:
            return None
        return slot, offset

    def _locate(self, data: object) -> tuple[int, int] | None:
        """(slot, offset) when ``data`` is a view into a lent transmit slot."""
        where = self._slot_of(data)
        if where is None or where[0] not in self._lent:
            return None
        return where

    def send(self, batch: Sequence[Packet]) -> int:
        """Post as much of ``batch`` as the TX ring and free slots take; never blocks.

        Returns how many packets were taken. A taken packet is sent, or dropped
        and counted with its reason (a frame too large for a slot, a packet that
        is not a buffer and a request); it never holds a slot. Frames built in
        ``tx_buffers`` views are posted in place; anything else is copied into a
        free slot.
        """
        return self._post(batch, None)

    def send_vnet(
        self, batch: Sequence[tuple[VirtioNetHdr, bytes | bytearray | memoryview]]
    ) -> int:
        """Post frames with a raw virtio_net_hdr each, as a TAP write would.

        The header reaches the firmware unchecked, so it can be one Linux rejects.
        """
        return self._post([Packet(data) for _, data in batch], [h for h, _ in batch])

    def _post(self, batch: Sequence[Packet], headers: list[VirtioNetHdr] | None) -> int:
        self._check()
        self._reap()
        g, mem, ring = self.geometry, self._mem, self._tx
        pool, slot_bytes = self._pool, g.slot_bytes
        head = ring.producer
        room = min(ring.space(), len(batch))
        capacity = slot_bytes - HEADROOM
        encode = self._encode_tx
        locate = self._locate
        drops = self._host_stats
        rows: list[tuple[int, int, int, bytes]] = []
        taken = 0
        for i in range(room):
            packet = batch[i]
            context = b""
            try:
                prefix = packet.head
                data = packet.data
                size = len(prefix) + len(data)
                if headers is not None:
                    ext = encode_vnet(headers[i])
                elif packet.tx.sa_context is not None:
                    # The SA's context rides in front of the frame, in the slot's headroom.
                    context = _context_bytes(packet.tx.sa_context)
                    ext = layout.encode_tx_ext(packet.tx, len(context))
                else:
                    ext = encode(packet.tx)
            except Exception:  # not a buffer and a request: the caller's bug, this packet's cost
                drops.drop(DropReason.BAD_REQUEST)
                taken += 1
                continue
            where = None if prefix else locate(data)
            if where is not None:
                slot, offset = where
                self._lent.discard(slot)
            elif size > capacity:
                drops.drop(DropReason.TOO_LARGE)
                taken += 1
                continue
            elif not self._tx_free:
                break
            else:
                slot, offset = self._tx_free.pop(), HEADROOM
                base = pool + slot * slot_bytes + offset
                try:
                    if prefix:
                        # Gathered into the slot: the NIC's DMA read of both pieces.
                        split = base + len(prefix)
                        mem[base:split] = prefix
                        mem[split : base + size] = data
                    else:
                        mem[base : base + size] = data
                except (TypeError, ValueError):
                    self._tx_free.append(slot)
                    drops.drop(DropReason.BAD_REQUEST)
                    taken += 1
                    continue
            if context:
                if len(context) > offset:
                    drops.drop(DropReason.BAD_REQUEST)  # a frame built too near its slot's start
                    self._tx_free.append(slot)
                    taken += 1
                    continue
                at = pool + slot * slot_bytes
                mem[at : at + len(context)] = context
            rows.append((slot, offset, size, ext))
            taken += 1
        if rows:
            ring.write(head, rows)
            ring.publish_producer(head + len(rows))
            self._ring(self._nic_bell)
        return taken

    def send_all(self, batch: Sequence[Packet], timeout_s: float | None = None) -> None:
        """Post the whole batch, waiting (bounded) for ring space and slots as needed."""
        deadline = time.monotonic() + (self.call_timeout_s if timeout_s is None else timeout_s)
        done = 0
        while done < len(batch):
            n = self.send(batch[done:])
            done += n
            if done < len(batch) and n == 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeviceError(f"{self.name}: transmit ring stayed full")
                self._wait_fds([self._completion_bell], min(left, 0.5))
                _drain(self._completion_bell)

    # -- receive --------------------------------------------------------------------
    def recv(self, max_packets: int = 64) -> list[Packet]:
        """Up to ``max_packets`` received packets, as views into pool slots; never blocks.

        Each stays valid until it is passed to ``release`` (the module's rule).
        """
        self._check()
        _drain(self._rx_bell)
        ring, g, mem = self._rx, self.geometry, self._mem
        tail = ring.consumer
        count = min((ring.producer - tail) & 0xFFFFFFFF, max_packets)
        if count == 0:
            return []
        out: list[Packet] = []
        held = self._rx_held
        decode = self._decode_rx
        pool, slot_bytes = self._pool, g.slot_bytes
        views = self._rx_views
        for slot, offset, length, ext in ring.read(tail, count):
            base = pool + slot * slot_bytes + offset
            view = mem[base : base + length]
            out.append(Packet(view, rx=decode(ext)))
            held.add(slot)
            # The view is kept with its slot: while it is mapped, its id cannot be reused by
            # another object that a release would then take for it.
            views[id(view)] = (view, slot)
        ring.publish_consumer(tail + count)
        if ring.available():
            self._ring(self._rx_bell)  # more is waiting: keep fileno() readable
        return out

    def release(self, packets: Iterable[Packet] | None = None) -> None:
        """Give received packets' slots back to the firmware (``None``: every one held)."""
        held = self._rx_held
        if not held:
            return
        views = self._rx_views
        if packets is None:
            back = list(held)
            held.clear()
            views.clear()
        else:
            back = []
            for packet in packets:
                entry = views.pop(id(packet.data), None)
                slot = entry[1] if entry is not None else None
                if slot is None:
                    where = self._slot_of(packet.data)
                    slot = None if where is None else where[0]
                if slot is not None and slot in held:
                    held.discard(slot)
                    back.append(slot)
            if len(views) > len(held):
                # Slots given back through other views of them (a host that made new ones):
                # forget their original views.
                for key in [k for k, (_, slot) in views.items() if slot not in held]:
                    del views[key]
        if back and not self._res.closed:
            self._fill.push(back)
            self._ring(self._nic_bell)

    @property
    def rx_held(self) -> int:
        """Receive slots handed out by ``recv`` and not released yet."""
        return len(self._rx_held)

    @property
    def tx_free(self) -> int:
        """Transmit slots free now (neither lent, posted nor in flight)."""
        self._reap()
        return len(self._tx_free)

    def filenos(self) -> list[int]:
        """The RX doorbell (one receive queue)."""
        return [self._rx_bell]

    def fileno(self) -> int:
        """The RX doorbell: readable when ``recv`` has packets."""
        return self._rx_bell

    # -- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        """Stop the firmware, close every descriptor, unmap the pool. Idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._res.closed


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        os.eventfd_read(fd)


__all__ = ["SoftNic", "default_capabilities"]


@contextlib.contextmanager
def softnic_pair(
    impairments: Impairments | None = None,
    *,
    seed: int | str = 1,
    names: tuple[str, str] = ("nic-a", "nic-b"),
    caps: Sequence[AnyRecord] | None = None,
    queues: tuple[int, int] = (1, 1),
) -> Iterator[tuple[SoftNic, SoftNic]]:
    """Two SoftNics joined by a fresh ``Cable``; both, and the cable, closed afterwards
    (also when the second fails to start)."""
    with Cable(impairments or Impairments(), seed=seed) as cable:
        first = SoftNic(caps, cable=cable.a, name=names[0], queues=queues[0])
        with first:
            second = SoftNic(caps, cable=cable.b, name=names[1], queues=queues[1])
            with second:
                yield first, second
