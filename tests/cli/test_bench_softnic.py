"""`netoffload bench softnic --quick`: the promised keys, sensible values."""

from __future__ import annotations

import json

from click.testing import CliRunner

from netoffload.cli import main


def test_bench_softnic_quick_json() -> None:
    result = CliRunner().invoke(main, ["bench", "softnic", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in (
        "segments_per_s",
        "coalesced_frames_per_s",
        "coalesced_interleaved_frames_per_s",
        "checksum_gbytes_per_s",
        "host_cpu_ratio_off_over_on",
    ):
        assert data[key] > 0, key
    assert data["bytes_verified"] == data["bytes_sent"]
    # The batch shapes the rates are measured on.
    assert data["segment_batch_super_packets"] == 16 and data["segment_mss"] == 1448
    assert data["segments_per_batch"] == 16 * 45
    assert data["coalesce_batch_frames"] == 128 and data["coalesce_flows"] == 8
    assert data["coalesce_frame_bytes"] == 1514


def test_bench_softnic_table() -> None:
    result = CliRunner().invoke(main, ["bench", "softnic", "--quick"])
    assert result.exit_code == 0, result.output
    assert "host CPU ratio off/on" in result.output
