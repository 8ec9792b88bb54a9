"""Fixtures for device tests: a private network namespace per test, always removed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from netoffload.netns import Netns


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh ``nso-<pid>-<random>`` namespace (IPv6 off, lo up), deleted after the test."""
    ns = Netns()
    try:
        yield ns
    finally:
        ns.close()
