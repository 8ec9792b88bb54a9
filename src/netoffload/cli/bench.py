"""`netoffload bench ...`: each benchmark prints ratios measured side by side in one run."""

from __future__ import annotations

import click


@click.group()
def bench() -> None:
    """Measure offload on vs off (and ours vs references), side by side in one run."""
