"""Cable: a simulated cable between two ports, with deterministic impairments.

The cable is a connected ``AF_UNIX`` stream socket pair; each frame travels
as a 4-byte little-endian length and the frame. A stream rather than
``SOCK_SEQPACKET`` because a burst of frames then leaves in one ``sendmsg``
(a packet socket pair also queues only ``net.unix.max_dgram_qlen`` = 10
messages, which would make every burst a context switch).

Each end impairs what it *sends*, from its own ``random.Random`` seeded by
the wire's seed and the end's name, and counts what it did. Time is passed
in (``now_ns``): delay and rate limiting never read a clock or sleep, so the
same seed, frames and times always give the same result.

An end is used either by a SoftNic (its firmware process takes the socket)
or directly by a test, which can ``send`` raw frames and ``recv`` them.
"""

from __future__ import annotations

import collections
import errno
import random
import select
import socket
import struct
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, TypeAlias

from netoffload.offload import DropReason

__all__ = ["NO_IMPAIRMENTS", "Cable", "CableEnd", "Impairments"]

Buffer: TypeAlias = bytes | bytearray | memoryview

ETHERNET_HEADER = 14
_LEN = struct.Struct("<I")
_IOV_MAX = 512
# The largest frame a wire carries at all (a 64 KiB super-packet plus headers), so a
# corrupt length prefix is caught instead of swallowing the stream.
MAX_FRAME = 128 * 1024
_SOCKET_BUFFER = 4 * 1024 * 1024
_RECV_BUFFER = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Impairments:
    """What one direction of a wire does to frames (probabilities are per frame).

    ``mtu`` counts bytes after the Ethernet header, as Linux does; ``None``
    means no limit. ``rate_bytes_per_s`` polices with a token bucket of
    ``burst_bytes`` (frames over the rate are dropped, not queued).
    ``delay_ns`` holds every frame until ``now_ns`` passes its due time.
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay_ns: int = 0
    rate_bytes_per_s: int | None = None
    burst_bytes: int = 64 * 1024
    mtu: int | None = 1500

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder", "corrupt"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, not {p}")
        if self.delay_ns < 0 or self.burst_bytes < 0:
            raise ValueError("delay_ns and burst_bytes must not be negative")
        if self.rate_bytes_per_s is not None and self.rate_bytes_per_s <= 0:
            raise ValueError("rate_bytes_per_s must be positive")
        if self.mtu is not None and self.mtu < 68:
            raise ValueError("mtu must be at least 68")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Impairments:
        return cls(**data)


NO_IMPAIRMENTS = Impairments(mtu=None)

# Counter names that are drops, and the reason a device reports for them.
DROP_REASONS = {
    "lost": DropReason.WIRE_LOSS,
    "mtu_exceeded": DropReason.MTU_EXCEEDED,
    "rate_limited": DropReason.RATE_LIMITED,
    "peer_gone": DropReason.WIRE_LOSS,
}


class CableEnd:
    """One end of a cable: impaired, framed sends; batched receives.

    Frames returned by ``recv_batch`` are views into the end's receive
    buffer, valid until the next receive call; ``recv`` returns a copy.
    """

    def __init__(self, sock: socket.socket, impairments: Impairments, seed: str) -> None:
        sock.setblocking(False)
        self._sock = sock
        self.impairments = impairments
        self.seed = seed
        self.counters: collections.Counter[str] = collections.Counter()
        self._rng = random.Random(seed)
        self._tokens = float(impairments.burst_bytes)
        self._last_ns: int | None = None
        self._delayed: collections.deque[tuple[int, bytes]] = collections.deque()
        self._held: bytes | None = None
        self._out: collections.deque[Buffer] = collections.deque()
        self._out_bytes = 0
        # Only an MTU (or nothing): no randomness and no per-frame state, so a batch
        # can be framed in one tight loop (the common case, and the demo's cable).
        self._simple = (
            not impairments.loss
            and not impairments.duplicate
            and not impairments.reorder
            and not impairments.corrupt
            and not impairments.delay_ns
            and impairments.rate_bytes_per_s is None
        )
        self._rbuf = bytearray(_RECV_BUFFER)
        self._rview = memoryview(self._rbuf)
        self._rstart = 0
        self._rend = 0
        self.peer_closed = False
        self.closed = False

    # -- hand-over to another process -------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """What a firmware process needs to rebuild this end around the same socket."""
        return {"impairments": self.impairments.as_dict(), "seed": self.seed}

    @classmethod
    def from_fd(cls, fd: int, spec: dict[str, Any]) -> CableEnd:
        """Rebuild an end in another process from an inherited socket descriptor."""
        sock = socket.socket(fileno=fd)
        return cls(sock, Impairments.from_dict(spec["impairments"]), str(spec["seed"]))

    def fileno(self) -> int:
        """The socket: readable when frames arrive, writable when output can drain."""
        return self._sock.fileno()

    # -- sending ----------------------------------------------------------------------
    def send(self, frame: Buffer, now_ns: int = 0) -> None:
        """Impair and queue one frame, then write whatever the socket takes."""
        self._impair(frame, now_ns)
        self.flush(now_ns)

    def send_batch(self, frames: Iterable[Buffer], now_ns: int = 0) -> None:
        """Impair and queue a batch; one write for all of it."""
        if self._simple and not self.peer_closed:
            self._emit_all(frames)
        else:
            for frame in frames:
                self._impair(frame, now_ns)
        self.flush(now_ns)

    def send_framed(
        self, chunks: Sequence[Buffer], lengths: Sequence[int], now_ns: int = 0
    ) -> None:
        """Queue frames already in this cable's framing (each behind its 4-byte little-endian
        length), as contiguous spans; ``lengths`` are the frames' own lengths.

        When only an MTU can drop a frame and none is over it, the spans go out as
        they are: no object per frame. Otherwise every frame is taken out and
        impaired one by one, as ``send_batch`` does.
        """
        mtu = self.impairments.mtu
        limit = sys.maxsize if mtu is None else mtu + ETHERNET_HEADER
        if self._simple and not self.peer_closed and (not lengths or max(lengths) <= limit):
            self._out.extend(chunks)
            self._out_bytes += sum(map(len, chunks))
            if lengths:
                self.counters["sent_frames"] += len(lengths)
                self.counters["sent_bytes"] += sum(lengths)
        else:
            for frame in _unframe(chunks):
                self._impair(frame, now_ns)
        self.flush(now_ns)

    def _emit_all(self, frames: Iterable[Buffer]) -> None:
        """``_impair`` + ``_emit`` for every frame, when only the MTU can drop one."""
        mtu = self.impairments.mtu
        limit = sys.maxsize if mtu is None else mtu + ETHERNET_HEADER
        out = self._out
        pack = _LEN.pack
        sent = sent_bytes = too_big = 0
        for frame in frames:
            size = len(frame)
            if size > limit:
                too_big += 1
                continue
            out.append(pack(size))
            out.append(frame)
            sent += 1
            sent_bytes += size
        # Counters are only touched when non-zero, as the per-frame path does.
        if too_big:
            self.counters["mtu_exceeded"] += too_big
        if sent:
            self._out_bytes += sent_bytes + sent * _LEN.size
            self.counters["sent_frames"] += sent
            self.counters["sent_bytes"] += sent_bytes

    def _impair(self, frame: Buffer, now_ns: int) -> None:
        imp = self.impairments
        size = len(frame)
        if imp.mtu is not None and size - ETHERNET_HEADER > imp.mtu:
            self.counters["mtu_exceeded"] += 1
            return
        if imp.rate_bytes_per_s is not None:
            if self._last_ns is not None and now_ns > self._last_ns:
                refill = (now_ns - self._last_ns) * imp.rate_bytes_per_s / 1e9
                self._tokens = min(float(imp.burst_bytes), self._tokens + refill)
            self._last_ns = now_ns if self._last_ns is None else max(self._last_ns, now_ns)
            if self._tokens < size:
                self.counters["rate_limited"] += 1
                return
            self._tokens -= size
        if imp.loss and self._rng.random() < imp.loss:
            self.counters["lost"] += 1
            return
        if imp.corrupt and self._rng.random() < imp.corrupt and size:
            bit = self._rng.randrange(size * 8)
            copy = bytearray(frame)
            copy[bit >> 3] ^= 1 << (bit & 7)
            frame = copy
            self.counters["corrupted"] += 1
        copies = 1
        if imp.duplicate and self._rng.random() < imp.duplicate:
            copies = 2
            self.counters["duplicated"] += 1
        for _ in range(copies):
            if imp.delay_ns:
                self._delayed.append((now_ns + imp.delay_ns, bytes(frame)))
                self.counters["delayed"] += 1
            else:
                self._reorder_stage(frame)

    def _reorder_stage(self, frame: Buffer) -> None:
        imp = self.impairments
        if imp.reorder and self._held is None and self._rng.random() < imp.reorder:
            # Held back and sent after the next frame: the two swap places.
            self._held = bytes(frame)
            self.counters["reordered"] += 1
            return
        self._emit(frame)
        if self._held is not None:
            held, self._held = self._held, None
            self._emit(held)

    def _emit(self, frame: Buffer) -> None:
        if self.peer_closed:
            self.counters["peer_gone"] += 1
            return
        self._out.append(_LEN.pack(len(frame)))
        self._out.append(frame)
        self._out_bytes += len(frame) + _LEN.size
        self.counters["sent_frames"] += 1
        self.counters["sent_bytes"] += len(frame)

    def release(self, now_ns: int, *, held: bool = True) -> None:
        """Pass on delayed frames whose time has come and (with ``held``) a frame held
        back for reordering, which otherwise waits for the next frame to overtake it."""
        while self._delayed and self._delayed[0][0] <= now_ns:
            self._reorder_stage(self._delayed.popleft()[1])
        if held and self._held is not None and not self._delayed:
            frame, self._held = self._held, None
            self._emit(frame)

    def next_due_ns(self) -> int | None:
        """When the earliest delayed frame is due (``None`` when none waits)."""
        return self._delayed[0][0] if self._delayed else None

    @property
    def pending_bytes(self) -> int:
        """Bytes queued for the socket and not yet written."""
        return self._out_bytes

    def flush(self, now_ns: int | None = None) -> bool:
        """Write queued output without blocking; True when nothing is left.

        With ``now_ns``, delayed frames that are due go out first.
        Whatever stays queued is copied, so the caller may reuse the buffers
        it passed to ``send``.
        """
        if now_ns is not None:
            self.release(now_ns, held=False)
        out = self._out
        popleft = out.popleft
        while out:
            chunk = [popleft() for _ in range(min(_IOV_MAX, len(out)))]
            try:
                sent = self._sock.sendmsg(chunk)
            except BlockingIOError:
                out.extendleft(reversed(chunk))
                break
            except (BrokenPipeError, ConnectionResetError):
                self._peer_gone(chunk)
                return True
            self._out_bytes -= sent
            if sent < sum(map(len, chunk)):
                _requeue_unsent(out, chunk, sent)
            if sent == 0:
                break
        if out:
            self._out = collections.deque(x if isinstance(x, bytes) else bytes(x) for x in out)
        return not out

    def _peer_gone(self, chunk: list[Buffer]) -> None:
        self.peer_closed = True
        lost = (len(chunk) + len(self._out)) // 2
        self.counters["peer_gone"] += lost
        self._out.clear()
        self._out_bytes = 0

    def drain(self, timeout_s: float = 5.0) -> bool:
        """Wait (bounded) until queued output is written; True when it all was."""
        while not self.flush():
            _, writable, _ = select.select([], [self._sock], [], timeout_s)
            if not writable:
                return False
        return True

    # -- receiving --------------------------------------------------------------------
    def recv_batch(self, max_frames: int = 256, timeout_s: float = 0.0) -> list[memoryview]:
        """Up to ``max_frames`` frames; waits at most ``timeout_s`` for the first one."""
        frames = self._parse(max_frames)
        if frames or self.closed:
            return frames
        self._fill()
        frames = self._parse(max_frames)
        if frames or timeout_s <= 0 or self.peer_closed:
            return frames
        readable, _, _ = select.select([self._sock], [], [], timeout_s)
        if readable:
            self._fill()
        return self._parse(max_frames)

    def recv(self, timeout_s: float = 0.0) -> bytes | None:
        """One frame (a copy), or ``None`` when none arrives within ``timeout_s``."""
        frames = self.recv_batch(1, timeout_s)
        return bytes(frames[0]) if frames else None

    def _fill(self) -> None:
        if self._rstart:
            # Keep the unparsed tail; earlier views are invalid from here on (documented).
            n = self._rend - self._rstart
            self._rbuf[0:n] = self._rview[self._rstart : self._rend]
            self._rstart, self._rend = 0, n
        while self._rend < len(self._rbuf):
            try:
                got = self._sock.recv_into(self._rview[self._rend :])
            except BlockingIOError:
                return
            except ConnectionResetError:
                got = 0
            if got == 0:
                self.peer_closed = True
                return
            self._rend += got

    def _parse(self, max_frames: int) -> list[memoryview]:
        frames: list[memoryview] = []
        pos, end, view = self._rstart, self._rend, self._rview
        unpack = _LEN.unpack_from
        while len(frames) < max_frames and end - pos >= 4:
            (size,) = unpack(view, pos)
            if size > MAX_FRAME:
                # Not a length we wrote: the stream is out of step; drop what we hold.
                self.counters["stream_errors"] += 1
                pos = end
                break
            if end - pos - 4 < size:
                break
            frames.append(view[pos + 4 : pos + 4 + size])
            pos += 4 + size
        self._rstart = pos
        if frames:
            self.counters["received_frames"] += len(frames)
            self.counters["received_bytes"] += sum(map(len, frames))
        return frames

    # -- counters and lifetime --------------------------------------------------------
    def drops(self) -> dict[DropReason, int]:
        """The frames this end dropped, by reason."""
        out: collections.Counter[DropReason] = collections.Counter()
        for name, reason in DROP_REASONS.items():
            if self.counters[name]:
                out[reason] += self.counters[name]
        return dict(out)

    def detach(self) -> int:
        """Give up the socket (a firmware process inherits it); returns its descriptor."""
        if self.closed:
            raise ValueError("wire end is closed")
        self.closed = True
        return self._sock.detach()

    def close(self) -> None:
        """Close the socket; the peer sees the cable unplugged. Idempotent."""
        if not self.closed:
            self.closed = True
            self._sock.close()


def _unframe(chunks: Sequence[Buffer]) -> Iterator[memoryview]:
    """The frames held in length-prefixed spans (a prefix and its frame may be separate)."""
    pending = 0
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        pos = 0
        while pos < len(view):
            if pending:
                yield view[pos : pos + pending]
                pos += pending
                pending = 0
                continue
            (size,) = _LEN.unpack_from(view, pos)
            pos += _LEN.size
            if pos + size <= len(view):
                yield view[pos : pos + size]
                pos += size
            else:
                pending = size  # the frame is the next chunk


def _requeue_unsent(out: collections.deque[Buffer], chunk: Sequence[Buffer], sent: int) -> None:
    """Put back what ``sendmsg`` did not take, starting mid-buffer where it stopped."""
    for i, item in enumerate(chunk):
        size = len(item)
        if sent >= size:
            sent -= size
            continue
        rest: list[Buffer] = [memoryview(item)[sent:], *chunk[i + 1 :]]
        out.extendleft(reversed(rest))
        return


class Cable:
    """Two connected ends, ``a`` and ``b``; ``a``'s impairments apply to a→b frames."""

    def __init__(
        self,
        impairments: Impairments = Impairments(),
        *,
        seed: int | str = 0,
        reverse: Impairments | None = None,
    ) -> None:
        sock_a, sock_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (sock_a, sock_b):
            _grow_buffers(sock)
        self.a = CableEnd(sock_a, impairments, f"{seed}/a")
        self.b = CableEnd(sock_b, reverse if reverse is not None else impairments, f"{seed}/b")

    def close(self) -> None:
        """Close both ends this process still holds. Idempotent."""
        self.a.close()
        self.b.close()

    def __enter__(self) -> Cable:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _grow_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        except OSError as exc:  # capped by net.core.*mem_max; a smaller buffer still works
            if exc.errno not in (errno.EPERM, errno.EINVAL):
                raise
