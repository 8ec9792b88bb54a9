"""`netoffload bench checksum`: the JSON keys exist and the table renders (no timing asserts)."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from netoffload.cli import main

RATE_KEYS = (
    "gbytes_per_s_64k",
    "gbytes_per_s_1460",
    "ratio_vs_pure_python",
    "ratio_vs_pure_python_1460",
    "ratio_vs_pure_python_64k",
    "batch_gbytes_per_s_1460",
    "pure_python_gbytes_per_s_1460",
    "pure_python_gbytes_per_s_64k",
)


def test_json_output_has_positive_finite_rates() -> None:
    result = CliRunner().invoke(main, ["bench", "checksum", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in RATE_KEYS:
        value = data[key]
        assert isinstance(value, float), key
        assert math.isfinite(value) and value > 0, (key, value)
    assert data["buffer_bytes_small"] == 1460
    assert data["buffer_bytes_large"] == 65536
    assert all(n > 0 for n in data["iterations"].values())
    assert data["results_agree"] is True


def test_human_output_renders() -> None:
    result = CliRunner().invoke(main, ["bench", "checksum", "--quick"])
    assert result.exit_code == 0, result.output
    assert "Internet checksum" in result.output
    assert "1460 B per call" in result.output
    assert "64 KiB per call" in result.output
    assert "ones_sum_rows" in result.output
