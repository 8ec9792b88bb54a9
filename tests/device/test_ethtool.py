"""The ethtool ioctl module against the kernel (and against `ethtool -k` when installed)."""

from __future__ import annotations

import re
import shutil

import pytest

from netoffload.device.base import DeviceError
from netoffload.device.ethtool import FEATURE_TASKS, read_features, set_features
from netoffload.netns import Netns

pytestmark = pytest.mark.privileged


@pytest.fixture
def veth(netns: Netns) -> Netns:
    netns.add_veth("nsova", "nsovb")
    return netns


def _ethtool_k(ns: Netns, ifname: str) -> dict[str, tuple[bool, bool]]:
    """`ethtool -k` as {name: (on, fixed)}."""
    out: dict[str, tuple[bool, bool]] = {}
    for line in ns.exec("ethtool", "-k", ifname).splitlines()[1:]:
        m = re.match(r"\s*([\w-]+): (on|off)( \[fixed\])?", line)
        if m:
            out[m.group(1)] = (m.group(2) == "on", m.group(3) is not None)
    return out


def test_reads_the_kernel_feature_names(veth: Netns) -> None:
    with veth.entered():
        features = read_features("nsova")
    names = features.names()
    assert "tx-tcp-segmentation" in names and "rx-gro" in names
    assert features["tx-checksum-ip-generic"].active
    assert features["loopback"].fixed and not features["loopback"].active


@pytest.mark.skipif(shutil.which("ethtool") is None, reason="ethtool is not installed")
def test_matches_ethtool_k(veth: Netns) -> None:
    with veth.entered():
        features = read_features("nsova")
    reference = _ethtool_k(veth, "nsova")
    compared = 0
    for feature in features.features:
        if feature.name in reference:
            assert (feature.active, feature.fixed) == reference[feature.name], feature.name
            compared += 1
    assert compared > 40


def test_set_changes_what_the_kernel_reports(veth: Netns) -> None:
    with veth.entered():
        set_features("nsova", {"tx-tcp-segmentation": False, "rx-gro": True})
        features = read_features("nsova")
    assert not features["tx-tcp-segmentation"].active
    assert features["rx-gro"].active
    if shutil.which("ethtool"):
        reference = _ethtool_k(veth, "nsova")
        assert reference["tx-tcp-segmentation"] == (False, False)
        assert reference["generic-receive-offload"] == (True, False)  # rx-gro's old name


def test_unknown_feature_and_missing_interface(veth: Netns) -> None:
    with veth.entered():
        with pytest.raises(DeviceError, match="no feature"):
            set_features("nsova", {"tx-warp-drive": True})
        with pytest.raises(DeviceError, match="no such interface"):
            read_features("nso-missing")


def test_every_mapped_feature_exists_on_a_veth(veth: Netns) -> None:
    """The mapping table names real kernel features (a typo would silently map nothing)."""
    with veth.entered():
        names = set(read_features("nsova").names())
    assert set(FEATURE_TASKS) <= names
