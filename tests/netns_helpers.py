"""Helpers for tests that make network namespaces."""

from __future__ import annotations

import os

from pyroute2 import netns


def own_namespaces() -> set[str]:
    """This process's namespaces (``Netns`` puts the creator's pid in each name); others on
    the machine come and go meanwhile."""
    return {name for name in netns.listnetns() if f"-{os.getpid()}-" in name}
