"""The interface every device driver implements.

A device answers "what can you do" with capability records, enables what a
``Selection`` asks for (and nothing it did not advertise), and moves
batches of ``Packet`` objects: ``send`` carries each packet's ``TxRequest``
down, ``recv`` returns frames with their ``RxInfo``.

**Transmit.** ``send(batch)`` takes packets from the front of the batch and
returns how many it took. Every packet it takes is either sent (counted in
``tx_packets``) or dropped with a reason (counted in ``drops``), never
both; a bad request or frame costs only itself. Packets it did not take
(its queue is full) are still the caller's: offer them again after
``wait(..., for_tx=True)``.

**Receive: who owns a received buffer.** ``recv`` returns packets whose
``data`` may be views into the device's own memory (a SoftNic's pool slots).
Such a view stays valid, and is never written by the device, until the
packet is passed to ``release``; after that the memory may be reused at any
time. A device whose received buffers are ordinary garbage-collected memory
(a TAP's read arena, which is never reused while a view of it lives;
AF_PACKET, which copies each frame out of its ring) has nothing to take
back and ``release`` does nothing. The rule for every caller is the same:
keep a received packet as long as you need it, then ``release`` it. A
device that runs out of receive buffers because nothing is released stops
taking frames (backpressure), it never overwrites one that is held.

**What ``RxInfo`` means.** ``l4`` is the L4 checksum verdict:

* ``VERIFIED`` -- the device checked it and it is right; or the packet came
  from a local sender with a partial checksum (``checksum_partial`` is then
  set). Such data never crossed a medium and Linux counts it as validated
  (``skb_csum_unnecessary``), but its checksum field holds only the
  pseudo-header sum: whoever forwards it must finish the checksum first,
  at ``checksum_partial``.
* ``FAILED`` -- the device checked it and it is wrong (the packet is still
  delivered: dropping is the stack's decision).
* ``ABSENT`` -- UDP over IPv4 with a zero checksum: nothing to check.
* ``NOT_CHECKED`` -- nobody checked: verify it yourself before trusting it.

``ipv4_header`` is the same for the IPv4 header checksum; only a device
that checks it says anything else than ``NOT_CHECKED`` (the kernel behind
a TAP or AF_PACKET never reports it). ``assembled``/``segments`` describe a
super-packet the device assembled; ``flow_hash``, ``queue``, ``mark``,
``verdict``, ``filter_rule`` and ``crypto`` are what its classification,
filtering and decryption found. Every device (TAP, AF_PACKET, SoftNic) and
the host fallback give the same frames the same meaning.
"""

from __future__ import annotations

import abc
import select
import signal
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from netoffload.offload import (
    AnyRecord,
    CapabilityRecord,
    CapabilityStatus,
    DeviceStats,
    Packet,
    Selection,
)
from netoffload.wire import MacAddress

if TYPE_CHECKING:
    from netoffload.engine.esp_sa import EspConfig
    from netoffload.offload.caps import DigestAlgorithm


class DeviceError(Exception):
    """The device failed or refused: I/O error, no such interface, not permitted,
    firmware crashed. The message is one line, fit for a user."""


def poll_fds(fds: Sequence[int], timeout_s: float, events: int = select.POLLIN) -> list[int]:
    """``poll(2)`` on ``fds`` for ``events`` (bounded by ``timeout_s``); the fds that are ready.

    ``poll``, not ``select``: a process with more than 1024 descriptors open is
    ordinary for a server, and ``select`` cannot watch a descriptor above that.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, events)
    timeout_ms = max(0, int(timeout_s * 1000 + 0.999))
    return [fd for fd, _ in poller.poll(timeout_ms)]


#: The return code of a process whose status cannot be known (not this process's child).
UNKNOWN_EXIT = 1 << 16


def describe_exit(code: int) -> str:
    """A child process's return code in words: ``signal SIGKILL``, ``status 3``, or
    ``an unknown status`` for ``UNKNOWN_EXIT``."""
    if code == UNKNOWN_EXIT:
        return "an unknown status"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


class Device(abc.ABC):
    """A network device driven by the host: query, enable, send and receive batches."""

    name: str

    @abc.abstractmethod
    def capabilities(self) -> list[AnyRecord]:
        """The capability records the device advertises (the decoded chain)."""

    @abc.abstractmethod
    def enabled(self) -> Selection:
        """What is enabled now.

        Called per batch: it must be cheap, and it returns the same object for as
        long as nothing changed (callers cache what they derive from it by identity).
        """

    @abc.abstractmethod
    def enable(self, selection: Selection) -> Selection:
        """Enable exactly ``selection`` (tasks absent from it are disabled).

        Raises ``SelectionError`` when it asks for anything not advertised or
        not changeable; returns what is enabled afterwards.
        """

    def fixed_selection(self) -> Selection:
        """The least this device can have enabled: what cannot be turned off.

        ``enable(dev.fixed_selection())`` is "every offload off that can be".
        """
        return Selection()

    def status(self) -> list[CapabilityStatus]:
        """Each advertised task with what is enabled and whether it can be changed."""
        on = self.enabled()
        return [
            CapabilityStatus(record, on.get(record.task), True)
            for record in self.capabilities()
            if isinstance(record, CapabilityRecord)
        ]

    # -- link ---------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def mtu(self) -> int:
        """The largest L3 packet the medium carries (bytes after the Ethernet header)."""

    @property
    @abc.abstractmethod
    def mac(self) -> MacAddress:
        """The MAC address a stack on this device sends from and receives at."""

    @property
    @abc.abstractmethod
    def link_up(self) -> bool:
        """True when frames can flow (administratively up, carrier present)."""

    # -- data path ----------------------------------------------------------------
    @abc.abstractmethod
    def send(self, batch: Sequence[Packet]) -> int:
        """Take packets from the front of ``batch``; how many were taken (see the module doc)."""

    @abc.abstractmethod
    def recv(self, max_packets: int = 64) -> list[Packet]:
        """Up to ``max_packets`` received packets; never blocks (empty list if none)."""

    def install_sa(self, handle: int, config: EspConfig) -> None:
        """Install an inbound security association under ``handle`` (ESP with its SPI is
        then decrypted here). Outbound SAs need no call: the first packet that uses a
        handle carries its context. Raises ``DeviceError`` on a device without IPsec."""
        raise DeviceError(f"{self.name} does not decrypt IPsec")

    def revoke_sa(self, handle: int) -> None:
        """Remove the SA under ``handle`` (either direction); later packets that name it
        are dropped and counted."""
        raise DeviceError(f"{self.name} does not offload IPsec")

    def install_digest_key(self, handle: int, algorithm: DigestAlgorithm, key: bytes) -> None:
        """Hold a digest key under ``handle``, which ``DigestRequest.key_handle`` then
        names. Raises ``DeviceError`` on a device that computes no digests."""
        raise DeviceError(f"{self.name} does not compute digests")

    def revoke_digest_key(self, handle: int) -> None:
        """Forget the digest key under ``handle``; later requests naming it are dropped
        and counted."""
        raise DeviceError(f"{self.name} does not compute digests")

    def release(self, packets: Iterable[Packet] | None = None) -> None:
        """Give received packets' buffers back (``None``: every packet still held).

        Packets this device did not hand out are ignored. The default is for
        devices whose received buffers are garbage-collected memory.
        """
        return None

    @abc.abstractmethod
    def fileno(self) -> int:
        """A file descriptor that polls readable when ``recv`` has packets."""

    def filenos(self) -> list[int]:
        """One descriptor per receive queue, each readable when that queue has packets."""
        return [self.fileno()]

    def wait(self, timeout_s: float, *, for_tx: bool = False) -> bool:
        """Wait (bounded) until ``recv`` may have packets, or with ``for_tx`` until ``send``
        may take more; True when woken, False on timeout."""
        events = select.POLLOUT if for_tx else select.POLLIN
        return bool(poll_fds(self.filenos(), timeout_s, events))

    @abc.abstractmethod
    def stats(self) -> DeviceStats:
        """A snapshot of the device's counters."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device; idempotent."""

    def __enter__(self) -> Device:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
