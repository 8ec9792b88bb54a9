"""Per-connection settings, fixed when the connection (or listener) is made."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from netoffload.stack.tcp.errors import TcpError

_MS = 1_000_000
_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Buffer sizes, features and timers of a connection; the defaults follow Linux."""

    #: The MSS this end announces: the interface MTU less the IP and TCP headers.
    mss_bytes: int = 1460
    send_buffer_bytes: int = 2 << 20
    recv_buffer_bytes: int = 2 << 20
    window_scaling: bool = True
    timestamps: bool = True
    sack: bool = True
    #: Ask for ECN on active opens (Linux ``tcp_ecn=1``) ...
    ecn_request: bool = False
    #: ... and agree to it when a peer asks (Linux's default ``tcp_ecn=2``).
    ecn_accept: bool = True
    #: ``"cubic"`` or ``"newreno"``.
    congestion_control: str = "cubic"
    #: Initial window in segments (RFC 6928).
    initial_window_segments: int = 10
    #: Disable Nagle's algorithm (``TCP_NODELAY``).
    nodelay: bool = False
    delayed_ack_ns: int = 40 * _MS
    rto_initial_ns: int = 1 * _S
    rto_min_ns: int = 200 * _MS
    rto_max_ns: int = 120 * _S
    #: Tail loss probes (RFC 8985 §7).
    tail_loss_probe: bool = True
    syn_retries: int = 6
    synack_retries: int = 5
    #: Retransmissions of data (or unanswered window probes) before giving up.
    retries: int = 15
    #: TIME_WAIT lasts 2·MSL (Linux: 60 s).
    time_wait_ns: int = 60 * _S
    #: FIN_WAIT_2 after ``close()`` (Linux ``tcp_fin_timeout``); not after ``shutdown_write()``.
    fin_wait2_timeout_ns: int = 60 * _S
    keepalive: bool = False
    keepalive_idle_ns: int = 7200 * _S
    keepalive_interval_ns: int = 75 * _S
    keepalive_probes: int = 9
    #: Challenge ACKs a connection may send per second (RFC 5961 §7).
    challenge_ack_limit_per_s: int = 1000
    #: Separate out-of-order ranges held before further holes are refused.
    max_ooo_ranges: int = 256

    def __post_init__(self) -> None:
        if not 88 <= self.mss_bytes <= 65495:
            raise TcpError(errno.EINVAL, f"MSS {self.mss_bytes} not in 88..65495")
        if not 1 <= self.send_buffer_bytes <= 1 << 30:
            raise TcpError(errno.EINVAL, "send buffer must hold 1 byte to 1 GiB")
        if not 1 <= self.recv_buffer_bytes <= 1 << 30:
            raise TcpError(errno.EINVAL, "receive buffer must hold 1 byte to 1 GiB")
        if self.congestion_control not in ("cubic", "newreno"):
            raise TcpError(errno.ENOENT, f"no congestion control {self.congestion_control!r}")
        if not 0 < self.rto_min_ns <= self.rto_initial_ns <= self.rto_max_ns:
            raise TcpError(errno.EINVAL, "need 0 < rto_min <= rto_initial <= rto_max")
        for name in (
            "delayed_ack_ns",
            "time_wait_ns",
            "fin_wait2_timeout_ns",
            "keepalive_idle_ns",
            "keepalive_interval_ns",
        ):
            if getattr(self, name) < 0:
                raise TcpError(errno.EINVAL, f"{name} is negative")
        for name in (
            "initial_window_segments",
            "syn_retries",
            "synack_retries",
            "retries",
            "keepalive_probes",
            "challenge_ack_limit_per_s",
            "max_ooo_ranges",
        ):
            if getattr(self, name) < 1:
                raise TcpError(errno.EINVAL, f"{name} must be at least 1")

    @property
    def recv_window_shift(self) -> int:
        """The window scale this end offers: the least shift that fits the receive buffer."""
        if not self.window_scaling:
            return 0
        shift = 0
        while (self.recv_buffer_bytes >> shift) > 0xFFFF and shift < 14:
            shift += 1
        return shift
