"""`netoffload caps` / `enable`: tables, JSON, one-line errors, and the kernel agrees."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from netoffload.cli import main
from netoffload.device.ethtool import read_features
from netoffload.netns import Netns


@pytest.fixture
def veth() -> Iterator[Netns]:
    ns = Netns()
    try:
        ns.add_veth("nsova", "nsovb")
        yield ns
    finally:
        ns.close()


def _run(ns: Netns | None, *args: str) -> tuple[int, str, str]:
    runner = CliRunner()
    if ns is None:
        result = runner.invoke(main, list(args))
    else:
        with ns.entered():
            result = runner.invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _ethtool_k(ns: Netns, ifname: str) -> dict[str, bool]:
    out = {}
    for line in ns.exec("ethtool", "-k", ifname).splitlines()[1:]:
        m = re.match(r"\s*([\w-]+): (on|off)", line)
        if m:
            out[m.group(1)] = m.group(2) == "on"
    return out


def test_unknown_scheme_is_one_line_error() -> None:
    code, out, err = _run(None, "caps", "warp:drive")
    assert code != 0
    assert err.strip().count("\n") == 0 and "unknown device" in err
    assert "Traceback" not in out + err


def test_unknown_task_is_one_line_error() -> None:
    code, _, err = _run(None, "enable", "softnic", "teleport", "on")
    assert code != 0 and "unknown task" in err and err.strip().count("\n") == 0


@pytest.mark.privileged
def test_missing_interface_is_one_line_error(veth: Netns) -> None:
    code, _, err = _run(veth, "caps", "nso-missing")
    assert code != 0 and err.strip() == "Error: no such interface 'nso-missing'"
    code, _, err = _run(veth, "enable", "packet:nso-missing", "checksum", "off")
    assert code != 0 and "no such interface" in err


@pytest.mark.privileged
def test_caps_json_lists_records(veth: Netns) -> None:
    code, out, _ = _run(veth, "caps", "nsova", "--json")
    assert code == 0
    records = json.loads(out)
    by_task = {r["task"]: r for r in records}
    assert {"checksum", "tcp_segmentation", "tcp_assembly"} <= set(by_task)
    for record in records:
        assert {"task", "enabled", "changeable", "params"} <= set(record)
    assert by_task["tcp_segmentation"]["params"]["versions"] == ["ipv4", "ipv6", "ecn"]


@pytest.mark.privileged
def test_caps_table_names_every_task(veth: Netns) -> None:
    code, out, _ = _run(veth, "caps", "packet:nsova")
    assert code == 0
    for task in ("checksum", "tcp_segmentation", "udp_segmentation", "tcp_assembly"):
        assert task in out


@pytest.mark.privileged
@pytest.mark.skipif(shutil.which("ethtool") is None, reason="ethtool is not installed")
def test_caps_matches_ethtool_k(veth: Netns) -> None:
    """Each task's state equals the state of the kernel features it maps from."""
    veth.exec("ethtool", "-K", "nsova", "gro", "on", "tx-udp-segmentation", "off")
    _, out, _ = _run(veth, "caps", "nsova", "--json")
    on = {r["task"]: r["enabled"] for r in json.loads(out)}
    k = _ethtool_k(veth, "nsova")
    assert on["checksum"] == (k["tx-checksum-ip-generic"] or k["rx-checksumming"])
    assert on["tcp_segmentation"] == (k["tx-tcp-segmentation"] or k["tx-tcp6-segmentation"])
    assert on["udp_segmentation"] == k["tx-udp-segmentation"] is False
    assert on["tcp_assembly"] == k["generic-receive-offload"] is True
    assert on["udp_assembly"] == k["rx-udp-gro-forwarding"]


@pytest.mark.privileged
def test_enable_changes_what_the_kernel_reports(veth: Netns) -> None:
    code, out, err = _run(veth, "enable", "nsova", "tcp_segmentation", "off")
    assert code == 0, err
    assert "tcp_segmentation" in out
    with veth.entered():
        features = read_features("nsova")
    assert not features["tx-tcp-segmentation"].active
    assert not features["tx-tcp6-segmentation"].active
    if shutil.which("ethtool"):
        assert _ethtool_k(veth, "nsova")["tx-tcp-segmentation"] is False
    code, _, err = _run(veth, "enable", "nsova", "tcp_segmentation", "on")
    assert code == 0, err
    with veth.entered():
        assert read_features("nsova")["tx-tcp-segmentation"].active


@pytest.mark.privileged
def test_enable_reports_a_dependency_the_kernel_enforces(veth: Netns) -> None:
    assert _run(veth, "enable", "nsova", "checksum", "off")[0] == 0
    code, _, err = _run(veth, "enable", "nsova", "tcp_segmentation", "on")
    assert code != 0 and "still off" in err and err.strip().count("\n") == 0


@pytest.mark.privileged
def test_enable_fixed_feature_is_refused(veth: Netns) -> None:
    code, _, err = _run(veth, "enable", "lo", "checksum", "off")
    assert code != 0 and err.strip() == "Error: checksum: tx-checksum-ip-generic is fixed on lo"


@pytest.mark.privileged
def test_caps_tap(veth: Netns) -> None:
    code, out, _ = _run(veth, "caps", "tap:nsotap9", "--json")
    assert code == 0
    assert {"checksum", "tcp_segmentation"} <= {r["task"] for r in json.loads(out)}
    assert "nsotap9" not in veth.link_names()  # the probe TAP is gone again


def test_caps_softnic() -> None:
    code, out, err = _run(None, "caps", "softnic", "--json")
    assert code == 0, err
    assert any(r["task"] == "checksum" for r in json.loads(out))
