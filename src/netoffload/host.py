"""The host-side software fallback: the same engine, run here for what the device won't do.

``HostOffload`` sits between a stack and a ``Device``. On transmit, each
packet's request is admitted against the device's enabled records
(``engine.admit``): the device gets what lies within them, and everything
else runs here through ``engine.pipeline.transmit``, counted in
``stats.fallbacks`` by task and reason. On receive, it keeps what the device
reported for each packet and finishes what the device did not: checksum
verification of packets the device left unchecked and, if asked, assembly.

Because both sides run the same engine, the frames on the wire are
byte-identical whichever side did the work; tests assert it.

IPsec: the host keeps every SA context it has seen (``contexts``), so it can
encrypt or decrypt any packet itself. A packet whose encryption the device
does not take (not enabled, a handle outside its range, an algorithm it
lacks, or the host's choice) has every task done here, encryption last, and
goes to the device as finished frames. The first packet a device encrypts
under a handle carries the SA's context, whether or not it was the handle's
first packet. Inbound SAs are installed with ``install_sa`` (in the device
too, when it decrypts); ESP the device left encrypted is decrypted here.

Steering: for a device without CLASSIFICATION or DOS_FILTER enabled, the
host runs the same ``engine.steer`` on what it receives (``rules`` configures
whichever side does it): DoS drops and rule drops are counted here by reason,
and the verdict, mark, flow hash and rule land in the same ``RxInfo`` fields.
There is one queue on the host side.

Launch time: a packet whose launch time the device will not honour (no
TX_SCHEDULING enabled) is made here at once and held in an earliest-deadline
queue (``engine.schedule``) until its time on CLOCK_TAI; ``push`` hands over
what is due, and ``next_launch_ns`` says when to call it next. A packet more
than ``launch_tolerance_ns`` late is dropped and counted.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Sequence, Set
from dataclasses import replace

from netoffload.device.base import Device
from netoffload.engine import pipeline
from netoffload.engine.admit import ASSEMBLY, SEGMENTATION, Limits
from netoffload.engine.digest import DigestKeys, digest_pass
from netoffload.engine.esp_sa import EspConfig
from netoffload.engine.gso_batch import RowSource
from netoffload.engine.ipsec_offload import (
    Opened,
    SecurityContexts,
    decrypt_frames,
    transmit_encrypted,
)
from netoffload.engine.schedule import LaunchQueue
from netoffload.engine.steer import Steering, merge_steering
from netoffload.engine.txpath import InPlace
from netoffload.offload import (
    NO_REQUEST,
    ChecksumStatus,
    CryptoStatus,
    DeviceStats,
    DropReason,
    Packet,
    RxInfo,
    Selection,
    Task,
    TxRequest,
)
from netoffload.offload.caps import DigestAlgorithm

TX_TASKS = frozenset(
    {Task.CHECKSUM, Task.TCP_SEGMENTATION, Task.UDP_SEGMENTATION, Task.ENCRYPT, Task.DIGEST}
)
_NO_TASKS: frozenset[Task] = frozenset()
_DIGEST = frozenset({Task.DIGEST})
#: Handles the host's own SA store takes (a device's record may offer fewer).
HOST_SA_HANDLES = 1 << 20
_DROPPED = Packet(b"")
#: How late a packet the host paces may still go out.
LAUNCH_TOLERANCE_NS = 50_000_000
_STEERING = frozenset({Task.CLASSIFICATION, Task.DOS_FILTER})


def tai_ns() -> int:
    """Now on CLOCK_TAI, the clock of launch times."""
    return time.clock_gettime_ns(time.CLOCK_TAI)


class HostOffload:
    """Send and receive through ``device``, doing in software what it does not.

    ``allow`` limits which tasks the host lets the device do (``None``: all
    it has enabled; an empty set: offload off, everything in software).
    ``rx_tasks`` are the receive tasks the host wants done by someone.

    ``send`` never blocks: frames the device has no room for wait in
    ``backlog`` and go out on the next ``send`` or ``push``. The caller must
    not reuse a buffer it passed to ``send`` while ``backlog`` is non-zero.

    Received packets follow the device's ownership rule: pass them to
    ``release`` when done with them.
    """

    def __init__(
        self,
        device: Device,
        *,
        allow: Set[Task] | None = None,
        rx_tasks: Set[Task] = frozenset({Task.CHECKSUM}),
    ) -> None:
        self.device = device
        self.allow = None if allow is None else frozenset(allow)
        self.rx_tasks = frozenset(rx_tasks)
        self.stats = DeviceStats()
        self._backlog: collections.deque[Packet] = collections.deque()
        self._selection: Selection | None = None
        self._limits = Limits(_NO_TASKS)
        self._derived_from: tuple[frozenset[Task] | None, frozenset[Task]] | None = None
        self._device_tasks = _NO_TASKS
        self._host_rx = _NO_TASKS
        #: Every SA the host knows (outbound from the contexts it saw, inbound installed).
        self.contexts = SecurityContexts(HOST_SA_HANDLES)
        self._sa_context: dict[int, EspConfig] = {}
        self._device_sas: set[int] = set()  # handles whose context the device was given
        #: Digest keys by handle: here, and in the device when it computes digests.
        self.digest_keys = DigestKeys()
        # A device that lends transmit memory (``XdpDevice.tx_rows``) gets the frames made
        # here built in it: segments cut, checksums filled, pieces gathered where it sends.
        self._rows: RowSource | None = getattr(device, "tx_rows", None)
        # And payload it sends where it lies (a send buffer in its memory) stays there.
        self._in_place: InPlace | None = getattr(device, "posts_in_place", None)
        #: The host's own steering, for what the device does not steer itself.
        self.steering = Steering()
        self.launch: LaunchQueue[Packet] = LaunchQueue(tolerance_ns=LAUNCH_TOLERANCE_NS)

    # -- who does what ----------------------------------------------------------------
    def device_limits(self) -> Limits:
        """The device's enabled records as per-packet limits (refreshed when they change)."""
        self._refresh()
        return self._limits

    def device_tasks(self) -> frozenset[Task]:
        """The tasks left to the device: enabled there, and allowed by the host."""
        self._refresh()
        return self._device_tasks

    def host_rx_tasks(self) -> frozenset[Task]:
        """Receive tasks the host may have to finish itself.

        Assembly the device does not do; and checksum verification whenever it
        is wanted: a device with the task enabled may still leave a packet
        unchecked (a protocol its record does not cover, a kernel that hands
        over a frame as it came), and such a packet is verified here.
        """
        self._refresh()
        return self._host_rx

    def _refresh(self) -> None:
        """Derive the limits and task sets again when the device's selection, ``allow``
        or ``rx_tasks`` changed (a cheap check: this runs per batch)."""
        selection = self.device.enabled()
        allow, rx_tasks = self.allow, self.rx_tasks
        if selection is self._selection and (allow, rx_tasks) == self._derived_from:
            return
        if selection is not self._selection:
            self._selection = selection
            self._limits = Limits.from_records(selection.values())
        self._derived_from = (allow, rx_tasks)
        enabled = self._limits.tasks
        self._device_tasks = enabled if allow is None else enabled & allow
        mine = (rx_tasks & ASSEMBLY) - self._device_tasks
        if mine or Task.CHECKSUM in rx_tasks:
            mine |= {Task.CHECKSUM}
        self._host_rx = frozenset(mine)

    # -- transmit ---------------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Frames processed but not yet taken by the device."""
        return len(self._backlog)

    def send(self, packets: Sequence[Packet]) -> int:
        """Do the host's share of the work on ``packets`` and hand them to the device.

        Returns how many frames the device took now (the rest are in ``backlog``).
        """
        stats = self.stats
        limits = self.device_limits()
        allow = self.allow
        mine: list[frozenset[Task]] = []
        queued: list[Packet] = []
        host_work = False
        fallbacks = stats.fallbacks
        sealed: list[Packet] = []  # packets the host encrypts (and does everything for)
        for packet in packets:
            request = packet.tx
            wanted = request.tasks()
            if not wanted:
                mine.append(_NO_TASKS)
                queued.append(packet)
                continue
            handle = request.sa_handle
            if handle is not None:
                checked = self._with_context(request)
                if checked is None:
                    stats.drop(DropReason.IPSEC_UNKNOWN_SPI)
                    continue
                request = checked
            admitted = limits.admit(packet.data, request, allow, head=packet.head)
            for task, refusal in admitted.refused:
                fallbacks[f"{task.label}/{refusal.value}"] += 1
            if handle is not None and Task.ENCRYPT not in admitted.tasks:
                sealed.append(Packet(packet.data, request, packet.rx, packet.head))
                continue
            if handle is not None:
                self._device_sas.add(handle)
            if admitted.request is not packet.tx:
                packet = Packet(packet.data, admitted.request, packet.rx, packet.head)
            here = admitted.request.tasks() - admitted.tasks
            if Task.TX_SCHEDULING in here:
                self._pace(packet, admitted.tasks)
                continue
            mine.append(here)
            queued.append(packet)
            host_work = host_work or bool(here)
        if sealed:
            self._seal(sealed)
        if host_work:  # the digest first: what follows covers it
            digested = digest_pass(self.digest_keys, queued, mine)
            for _, reason in digested.drops:
                stats.drop(reason)
            if digested.done:
                stats.task_done(Task.DIGEST, digested.done)
            queued, mine = digested.packets, digested.tasks
        if host_work or self._rows is not None:
            outcome = pipeline.transmit(queued, mine, rows=self._rows, in_place=self._in_place)
            stats.tx_payload_copy_bytes += outcome.payload_copy_bytes
            for _, reason in outcome.drops:
                stats.drop(reason)
            for task, n in outcome.tasks.items():
                stats.task_done(task, n)
            handed: Sequence[int] = sorted(set(outcome.sources))
            self._backlog.extend(outcome.packets)
        else:
            handed = range(len(queued))
            self._backlog.extend(queued)
        # Every packet offered is handed on (as one frame or its segments) or dropped here.
        stats.tx_packets += len(handed)
        stats.tx_bytes += sum(len(queued[i]) for i in handed)
        return self.push()

    # -- launch time in software ---------------------------------------------------------
    def _pace(self, packet: Packet, device_tasks: frozenset[Task]) -> None:
        """Make ``packet`` now (the host's share of its work) and hold its frames for its
        launch time."""
        launch = packet.tx.launch_time_ns
        assert launch is not None
        request = replace(packet.tx, launch_time_ns=None)
        packet = Packet(packet.data, request, packet.rx, packet.head)
        mine = request.tasks() - device_tasks
        outcome = pipeline.transmit([packet], [mine])
        stats = self.stats
        stats.tx_payload_copy_bytes += outcome.payload_copy_bytes
        for _, reason in outcome.drops:
            stats.drop(reason)
        for task, n in outcome.tasks.items():
            stats.task_done(task, n)
        now = tai_ns()
        taken = False
        for made in outcome.packets:
            refused = self.launch.enqueue(made, launch, now)
            if refused is not None:
                stats.drops[refused.value] += 1
            else:
                taken = True
        if taken:
            stats.task_done(Task.TX_SCHEDULING)
            stats.tx_packets += 1
            stats.tx_bytes += len(packet)

    def next_launch_ns(self) -> int | None:
        """When the earliest packet the host paces is due (CLOCK_TAI), ``None`` if none."""
        return self.launch.next_deadline_ns()

    def _release_launched(self) -> None:
        out = self.launch.release(tai_ns())
        if out.missed:
            self.stats.drops["launch_time_missed"] += len(out.missed)
        self._backlog.extend(r.item for r in out.sent)

    # -- steering -------------------------------------------------------------------------
    def rules(self, command: str) -> dict[str, object]:
        """A rules command (``engine.steer``), run by the device when it steers (CLASSIFICATION
        or DOS_FILTER enabled and a ``rules`` method), else by the host's own steering."""
        if self._device_steers():
            return dict(self.device.rules(command))  # type: ignore[attr-defined]
        self.steering.enable(classify=True, dos=True)
        return self.steering.command(command)  # a SteeringError names what was wrong

    def _device_steers(self) -> bool:
        """The device runs our steering: it has a task of it enabled and takes rules."""
        return bool(_STEERING & self.device_limits().tasks) and hasattr(self.device, "rules")

    def _steer(self, packets: list[Packet]) -> list[Packet]:
        """The host's steering on a received batch: drops released and counted, findings
        in each packet's ``RxInfo``."""
        stats = self.stats
        outcome = self.steering.steer([p.data for p in packets], time.monotonic_ns())
        for reason, n in outcome.drops.items():
            stats.drops[reason] += n
        kept: list[Packet] = []
        seen: set[int] = set()
        for row in outcome.rows:
            if row.index in seen:
                continue  # one queue here: a mirrored copy is the frame itself
            seen.add(row.index)
            p = packets[row.index]
            kept.append(Packet(p.data, p.tx, merge_steering(p.rx, row.info), p.head))
        if len(seen) < len(packets):
            self.device.release([p for i, p in enumerate(packets) if i not in seen])
        return kept

    # -- IPsec ----------------------------------------------------------------------
    def _with_context(self, request: TxRequest) -> TxRequest | None:
        """``request`` with the context the device will need: the SA's context rides the
        first packet the device sees under a handle. ``None`` when the handle is unknown."""
        handle = request.sa_handle
        assert handle is not None
        context = request.sa_context
        if context is not None:
            if isinstance(context, EspConfig) and self._sa_context.get(handle) != context:
                self._sa_context[handle] = context
                self._device_sas.discard(handle)  # a new SA under an old handle
                self.contexts.install_outbound(handle, context)
            return request
        if handle in self._device_sas:
            return request
        known = self._sa_context.get(handle)
        if known is None:
            return None if self.contexts.outbound(handle) is None else request
        assert request.esp_seq is not None
        return request.encrypted(handle, request.esp_seq, known)

    def _seal(self, packets: list[Packet]) -> None:
        """Digest, segment, checksum and encrypt ``packets`` here; the frames join the
        backlog."""
        stats = self.stats
        digested = digest_pass(self.digest_keys, packets, [_DIGEST] * len(packets))
        for _, reason in digested.drops:
            stats.drop(reason)
        if digested.done:
            stats.task_done(Task.DIGEST, digested.done)
        flat = [p.flat() for p in digested.packets]
        stats.tx_payload_copy_bytes += sum(len(p.data) for p in digested.packets if p.head)
        outcome = transmit_encrypted(flat, self.contexts)
        for _, reason in outcome.drops:
            stats.drop(reason)
        for task, n in outcome.tasks.items():
            stats.task_done(task, n)
        self._backlog.extend(Packet(frame, NO_REQUEST) for frame in outcome.frames)
        handed = sorted(set(outcome.sources))
        stats.tx_packets += len(handed)
        stats.tx_bytes += sum(len(flat[i]) for i in handed)

    def add_outbound_sa(self, handle: int, config: EspConfig) -> None:
        """Make an outbound SA known under ``handle``: requests may then carry the handle
        alone, and the context rides the first packet the device encrypts with it."""
        if self._sa_context.get(handle) != config:
            self._sa_context[handle] = config
            self._device_sas.discard(handle)
            self.contexts.install_outbound(handle, config)

    def install_sa(self, handle: int, config: EspConfig) -> None:
        """Install an inbound SA: here, and in the device when it decrypts."""
        self.contexts.install_inbound(handle, config)
        if Task.DECRYPT in self.device_limits().tasks:
            self.device.install_sa(handle, config)

    def revoke_sa(self, handle: int) -> None:
        """Remove the SA under ``handle`` everywhere (host and device, either direction)."""
        self.contexts.revoke(handle)
        self._sa_context.pop(handle, None)
        if handle in self._device_sas or Task.DECRYPT in self.device_limits().tasks:
            self._device_sas.discard(handle)
            self.device.revoke_sa(handle)

    def install_digest_key(self, handle: int, algorithm: DigestAlgorithm, key: bytes) -> None:
        """Hold a digest key under ``handle`` (``DigestRequest.key_handle``): here, and in
        the device when it computes digests. Requests then name the handle alone."""
        self.digest_keys.install(handle, algorithm, key)
        record = self.device_limits().digest
        if record is not None and not algorithm & ~record.algorithms and handle < record.max_keys:
            self.device.install_digest_key(handle, algorithm, key)

    def revoke_digest_key(self, handle: int) -> None:
        """Forget the digest key under ``handle`` everywhere; later requests naming it are
        counted drops."""
        self.digest_keys.revoke(handle)
        if Task.DIGEST in self.device_limits().tasks:
            self.device.revoke_digest_key(handle)

    def push(self) -> int:
        """Offer the backlog (and paced packets now due) to the device; returns how many it
        took."""
        if self.launch:
            self._release_launched()
        if not self._backlog:
            return 0
        batch = list(self._backlog)
        taken = self.device.send(batch)
        for _ in range(taken):
            self._backlog.popleft()
        self.stats.tx_frames += taken  # packets handed to the device, host-made segments each
        return taken

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Push until the backlog is empty or ``timeout_s`` passes; True when empty."""
        deadline = time.monotonic() + timeout_s
        while self._backlog or self.launch:
            if self.launch and not self._backlog:
                due = self.launch.next_deadline_ns()
                wait_s = 0.0 if due is None else max(0.0, (due - tai_ns()) / 1e9)
                if time.monotonic() + wait_s > deadline:
                    return False
                time.sleep(wait_s)
                self.push()
                continue
            if self.push() == 0:
                left = deadline - time.monotonic()
                if left <= 0 or not self.device.wait(left, for_tx=True):
                    return False
        return True

    # -- receive ----------------------------------------------------------------------
    def recv(self, max_packets: int = 64) -> list[Packet]:
        """Packets from the device, with what it did not do finished here.

        The device's findings (checksum verdicts, assembly, flow hash, queue,
        mark, filter verdict) are kept; the host adds its own where the
        device left a field open.
        """
        packets = self.device.recv(max_packets)
        if not packets:
            return packets
        stats = self.stats
        stats.rx_packets += len(packets)
        stats.rx_bytes += sum(map(len, packets))
        if len(self.contexts.inbound):
            packets = self._open(packets)
        if self.steering.has_work and not self._device_steers():
            packets = self._steer(packets)
            if not packets:
                return packets
        mine = self.host_rx_tasks()
        if Task.CHECKSUM in mine and not mine & ASSEMBLY:
            unchecked = ChecksumStatus.NOT_CHECKED
            if all(p.rx.l4 is not unchecked for p in packets):
                mine = mine - {Task.CHECKSUM}  # the device checked every one
        if not mine:
            return packets
        outcome = pipeline.receive(
            [p.data for p in packets], frozenset(mine), infos=[p.rx for p in packets]
        )
        for task, n in outcome.tasks.items():
            stats.task_done(task, n)
        if mine & ASSEMBLY:
            # Frames merged into a new super-packet are copied out: their buffers go back.
            kept = {id(p.data) for p in outcome.packets}
            self.device.release([p for p in packets if id(p.data) not in kept])
        return outcome.packets

    def _open(self, packets: list[Packet]) -> list[Packet]:
        """Decrypt the ESP the device left encrypted; refused ESP is dropped (counted)."""
        todo = [i for i, p in enumerate(packets) if p.rx.crypto is CryptoStatus.NONE]
        if not todo:
            return packets
        results = decrypt_frames(self.contexts, [packets[i].data for i in todo])
        if not any(r is not None for r in results):
            return packets
        out = list(packets)
        gone: list[Packet] = []
        stats = self.stats
        for i, result in zip(todo, results, strict=True):
            if result is None:
                continue
            gone.append(packets[i])
            if isinstance(result, Opened):
                info = RxInfo(crypto=CryptoStatus.DECRYPTED, sa_handle=result.handle)
                out[i] = Packet(result.frame, NO_REQUEST, info)
                stats.task_done(Task.DECRYPT)
            else:
                stats.drop(DropReason(result.value))
                out[i] = _DROPPED
        self.device.release(gone)  # copied out (or dropped): their buffers go back
        return [p for p in out if p is not _DROPPED]

    def release(self, packets: Iterable[Packet]) -> None:
        """Hand received packets' buffers back to the device (see ``Device.release``)."""
        self.device.release(packets)


__all__ = ["SEGMENTATION", "TX_TASKS", "HostOffload"]
