"""`netoffload bench esp`: the JSON keys exist and the table renders (no timing asserts)."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from netoffload.cli import main

SIZES = (1400, 8000)
RATE_KEYS = (
    "encrypt_gbytes_per_s",
    "encrypt_views_gbytes_per_s",
    "encrypt_matrix_gbytes_per_s",
    "encrypt_single_gbytes_per_s",
    "decrypt_gbytes_per_s",
    "openssl_gbytes_per_s",
    "openssl_decrypt_gbytes_per_s",
    "encrypt_ratio_vs_openssl",
    "decrypt_ratio_vs_openssl",
)


def test_json_output_has_positive_finite_rates() -> None:
    result = CliRunner().invoke(main, ["bench", "esp", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in RATE_KEYS:
        for size in SIZES:
            value = data[f"{key}_{size}"]
            assert isinstance(value, float), key
            assert math.isfinite(value) and value > 0, (key, size, value)
    assert data["packet_bytes"] == list(SIZES)
    assert data["batch_packets"] == 256
    assert data["results_agree"] is True
    # Segment-and-encrypt: the SoftNic did every super-packet's encryption in one mode and
    # the host in the other, so the ratio compares what its label says.
    assert data["encrypt_done_by_offload"] == data["offload_super_packets"]
    assert data["encrypt_done_by_host"] == data["offload_super_packets"]
    for key in ("host_cpu_s_per_gb_offload", "host_cpu_s_per_gb_host"):
        assert math.isfinite(data[key]) and data[key] > 0
    assert data["host_cpu_ratio_host_over_offload"] == (
        data["host_cpu_s_per_gb_host"] / data["host_cpu_s_per_gb_offload"]
    )


def test_human_output_renders() -> None:
    result = CliRunner().invoke(main, ["bench", "esp", "--quick"])
    assert result.exit_code == 0, result.output
    assert "ESP, AES-128-GCM" in result.output
    assert "1400 B" in result.output
    assert "8000 B" in result.output
    assert "AESGCM.encrypt alone" in result.output
    assert "segmented and encrypted: host CPU" in result.output
