"""The `caps` and `enable` ops over a SoftNic: the table they reply with is the device's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from netoffload.control import caps_op, enable_op
from netoffload.device.softnic import SoftNic
from netoffload.offload import ChecksumCaps, ChecksumFlags


@pytest.fixture
def nic() -> Iterator[SoftNic]:
    with SoftNic() as device:
        yield device


def _enabled(table: list[dict[str, object]], task: str) -> object:
    return next(r["enabled"] for r in table if r["task"] == task)


def test_caps_is_the_status_as_caps_json_prints_it(nic: SoftNic) -> None:
    assert caps_op({"softnic0": nic})({"device": "softnic0"}) == [s.as_json() for s in nic.status()]


def test_enable_turns_a_task_off_and_on(nic: SoftNic) -> None:
    enable = enable_op(lambda: {"softnic0": nic})
    table = enable({"device": "softnic0", "task": "tcp-segmentation", "on": False})
    assert _enabled(table, "tcp_segmentation") is False
    assert table == [s.as_json() for s in nic.status()]
    table = enable({"device": "softnic0", "task": "tcp_segmentation", "on": True})
    assert _enabled(table, "tcp_segmentation") is True


def test_enable_errors_are_one_line(nic: SoftNic) -> None:
    enable = enable_op({"softnic0": nic})
    with pytest.raises(ValueError, match=r"no device 'eth9' in this process \(devices: softnic0\)"):
        enable({"device": "eth9", "task": "checksum", "on": True})
    with pytest.raises(ValueError, match="unknown task 'teleport'"):
        enable({"device": "softnic0", "task": "teleport", "on": True})
    with pytest.raises(ValueError, match="'on' must be a bool"):
        enable({"device": "softnic0", "task": "checksum", "on": "yes"})
    with pytest.raises(ValueError, match="'device' must be a str"):
        caps_op({"softnic0": nic})({})


def test_a_task_the_device_does_not_offer() -> None:
    args = {"device": "softnic0", "task": "tcp_segmentation", "on": True}
    with (
        SoftNic([ChecksumCaps(ChecksumFlags.TCP_IPV4, ChecksumFlags.NONE)]) as nic,
        pytest.raises(ValueError, match="softnic0 does not offer tcp_segmentation"),
    ):
        enable_op({"softnic0": nic})(args)
