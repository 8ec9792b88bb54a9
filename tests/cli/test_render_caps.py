"""The `caps` table: fixed and partly enabled tasks are shown as such."""

from __future__ import annotations

import io

from rich.console import Console

from netoffload.cli.devices import render_status
from netoffload.offload import CapabilityStatus, ChecksumCaps, ChecksumFlags, TcpSegmentationCaps


def render(status: list[CapabilityStatus]) -> str:
    out = io.StringIO()
    render_status("dev0", status, Console(file=out, width=100))
    return out.getvalue()


def test_fixed_partly_on_and_off() -> None:
    offered = ChecksumCaps(ChecksumFlags.TCP_IPV4 | ChecksumFlags.UDP_IPV4, ChecksumFlags.NONE)
    partly = ChecksumCaps(ChecksumFlags.UDP_IPV4, ChecksumFlags.NONE)
    text = render(
        [
            CapabilityStatus(offered, partly, changeable=False),
            CapabilityStatus(TcpSegmentationCaps(), None, changeable=True),
        ]
    )
    assert "partly on (fixed)" in text
    assert "tx: tcp_ipv4, udp_ipv4" in text
    assert "enabled:" in text and "tx: udp_ipv4" in text
    seg_row = next(line for line in text.splitlines() if "tcp_segmentation" in line)
    assert " off " in seg_row


def test_no_tasks() -> None:
    assert "offers no task" in render([])
