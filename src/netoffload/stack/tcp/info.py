"""A snapshot of a connection's counters and estimates, like Linux's ``tcp_info``."""

from __future__ import annotations

from dataclasses import dataclass, field

from netoffload.stack.tcp.state import TcpState


@dataclass(frozen=True, slots=True)
class TcpInfo:
    """What ``TcpConnection.info()`` reports. Times in ns, sizes in bytes."""

    state: TcpState
    # Round trip and retransmission timer (RFC 6298).
    srtt_ns: int
    rttvar_ns: int
    rto_ns: int
    min_rtt_ns: int
    latest_rtt_ns: int
    rtt_samples: int
    backoff: int
    # Congestion control and loss recovery.
    congestion_control: str
    cwnd_bytes: int
    ssthresh_bytes: int
    recovery: str
    in_flight_bytes: int
    sacked_bytes: int
    lost_bytes: int
    scoreboard_entries: int
    reordering_seen: bool
    # Negotiated at the handshake.
    mss_bytes: int
    peer_mss_bytes: int
    rcv_mss_bytes: int
    timestamps: bool
    sack: bool
    window_scaling: bool
    snd_wscale: int
    rcv_wscale: int
    ecn: bool
    # Windows and buffers.
    snd_wnd_bytes: int
    rcv_wnd_bytes: int
    send_buffer_bytes: int
    send_buffer_used_bytes: int
    #: Whether the send buffer is in memory the device sends from in place.
    send_buffer_in_device: bool
    #: Bytes writes left out because the device still read their place (counted per write).
    send_buffer_held_bytes: int
    unsent_bytes: int
    recv_buffer_bytes: int
    readable_bytes: int
    ooo_bytes: int
    ooo_ranges: int
    # Totals.
    bytes_sent: int
    bytes_retransmitted: int
    bytes_acked: int
    bytes_received: int
    segs_in: int
    segs_out: int
    data_segs_out: int
    retransmitted_segs: int
    fast_recoveries: int
    rtos: int
    tlp_probes: int
    tlp_recoveries: int
    sack_blocks_in: int
    dsacks_in: int
    dupacks_in: int
    ooo_segs_in: int
    challenge_acks_sent: int
    challenge_acks_suppressed: int
    ecn_reductions: int
    ce_in: int
    window_probes: int
    keepalive_probes: int
    syn_retransmits: int
    #: Segments dropped, by reason ("PAWS", "bad options", "out of window", ...).
    drops: dict[str, int] = field(default_factory=dict)
