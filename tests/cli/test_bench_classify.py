"""`netoffload bench classify`: JSON keys, agreeing paths, the table (no timing asserts)."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from netoffload.cli import main

RATE_KEYS = (
    "rss_mpps",
    "classify_mpps",
    "dosfilter_mpps",
    "classify_ratio_vs_reference",
    "rss_ratio_vs_reference",
    "dosfilter_ratio_vs_per_frame",
    "extract_mpps",
    "reference_classify_mpps",
)


def test_json_output_has_positive_finite_rates_and_agreeing_paths() -> None:
    result = CliRunner().invoke(main, ["bench", "classify", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in RATE_KEYS:
        value = data[key]
        assert isinstance(value, float), key
        assert math.isfinite(value) and value > 0, (key, value)
    assert data["batch_frames"] == 1024
    assert data["rules"] == 20
    assert data["results_agree"] is True
    assert 0 < data["matched_fraction"] < 1


def test_human_output_renders() -> None:
    result = CliRunner().invoke(main, ["bench", "classify", "--quick"])
    assert result.exit_code == 0, result.output
    for text in ("RSS", "classification,", "DoS filtering", "batch / loop", "target Mpps"):
        assert text in result.output
