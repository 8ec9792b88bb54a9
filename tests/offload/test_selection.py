"""Selection: enabling only what was advertised."""

from __future__ import annotations

import pytest

from netoffload.offload import (
    CapabilityStatus,
    ChecksumCaps,
    ChecksumFlags,
    IpVersions,
    Selection,
    SelectionError,
    Task,
    TcpSegmentationCaps,
    UdpSegmentationCaps,
    UnknownCapability,
)

ADVERTISED = [
    ChecksumCaps(ChecksumFlags.TCP_IPV4 | ChecksumFlags.UDP_IPV4, ChecksumFlags.TCP_IPV4),
    TcpSegmentationCaps(65536, 2, 64, IpVersions.IPV4),
    UnknownCapability(77, b"x"),
]


def test_everything_enables_each_known_record() -> None:
    sel = Selection.everything(ADVERTISED)
    assert list(sel) == [Task.CHECKSUM, Task.TCP_SEGMENTATION]
    sel.check_against(ADVERTISED)


def test_subset_is_accepted() -> None:
    sel = Selection([ChecksumCaps(ChecksumFlags.TCP_IPV4, ChecksumFlags.NONE)])
    sel.check_against(ADVERTISED)
    assert Task.CHECKSUM in sel and Task.TCP_SEGMENTATION not in sel


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (UdpSegmentationCaps(), "does not offer udp_segmentation"),
        (ChecksumCaps(ChecksumFlags.TCP_IPV6, ChecksumFlags.NONE), "checksum: asked for"),
        (TcpSegmentationCaps(65536, 2, 64, IpVersions.IPV6), "tcp_segmentation"),
        (TcpSegmentationCaps(1 << 20, 2, 64, IpVersions.IPV4), "tcp_segmentation"),
        (TcpSegmentationCaps(65536, 1, 64, IpVersions.IPV4), "tcp_segmentation"),
        (TcpSegmentationCaps(65536, 2, 65, IpVersions.IPV4), "tcp_segmentation"),
    ],
)
def test_more_than_advertised_is_refused(record: object, message: str) -> None:
    sel = Selection([record])  # type: ignore[list-item]
    with pytest.raises(SelectionError, match=message):
        sel.check_against(ADVERTISED)


def test_with_and_without() -> None:
    sel = Selection.everything(ADVERTISED).without(Task.CHECKSUM)
    assert list(sel) == [Task.TCP_SEGMENTATION]
    narrower = ChecksumCaps(ChecksumFlags.UDP_IPV4, ChecksumFlags.NONE)
    sel = sel.with_task(narrower)
    assert sel[Task.CHECKSUM] == narrower
    assert sel == Selection([ADVERTISED[1], narrower])
    with pytest.raises(SelectionError, match="twice"):
        Selection([narrower, narrower])


def test_status_json() -> None:
    status = CapabilityStatus(ADVERTISED[0], None, changeable=False)
    doc = status.as_json()
    assert doc["task"] == "checksum"
    assert doc["enabled"] is False and doc["changeable"] is False
    assert doc["params"] == {"tx": ["tcp_ipv4", "udp_ipv4"], "rx": ["tcp_ipv4"]}


def test_task_labels() -> None:
    assert Task.from_label("tcp-segmentation") is Task.TCP_SEGMENTATION
    assert Task.TX_SCHEDULING.label == "tx_scheduling"
    with pytest.raises(ValueError, match="unknown task"):
        Task.from_label("teleport")
