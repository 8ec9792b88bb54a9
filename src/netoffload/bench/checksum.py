"""`netoffload bench checksum`: our Internet checksum vs plain Python, side by side.

Three measurements in one run, on one thread pinned to one core:
``internet_checksum`` per call on 1460-byte and 64 KiB buffers, the
``sum(array('H', data))`` folding that scapy and dpkt use on the same
buffers, and the batch path (``ones_sum_rows``) over a batch of 1460-byte
frames. Each figure is the best of several repetitions (the least disturbed
by other work on the machine).
"""

from __future__ import annotations

import math
import random
import sys
import time
from array import array
from collections.abc import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from netoffload.bench import number, one_core
from netoffload.progress import NO_PROGRESS, Progress
from netoffload.wire.checksum import internet_checksum, ones_sum_rows

SMALL_BYTES = 1460
LARGE_BYTES = 64 * 1024
BATCH_FRAMES = 256
#: Issue acceptance targets, GB/s per call.
TARGET_GBYTES_PER_S_64K = 5.0
TARGET_GBYTES_PER_S_1460 = 0.5


def pure_python_checksum(data: bytes) -> int:
    """The checksum the way scapy and dpkt compute it: ``sum(array('H', data))``."""
    if len(data) % 2:
        data += b"\x00"
    s = sum(array("H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    s = ~s & 0xFFFF
    if sys.byteorder == "little":
        s = ((s >> 8) & 0xFF) | ((s << 8) & 0xFF00)
    return s


def _best_ns(call: Callable[[], object], iterations: int, repetitions: int) -> int:
    """Fastest of ``repetitions`` timings of ``iterations`` calls, in nanoseconds."""
    best = math.inf
    for _ in range(repetitions):
        start = time.perf_counter_ns()
        for _ in range(iterations):
            call()
        best = min(best, time.perf_counter_ns() - start)
    return max(int(best), 1)


def _iterations_for(call: Callable[[], object], budget_ns: int) -> int:
    """How many calls fit in ``budget_ns``, from a short trial."""
    trial = 1
    while True:
        elapsed = _best_ns(call, trial, 1)
        if elapsed > budget_ns // 20 or trial >= 1 << 20:
            return max(1, trial * budget_ns // elapsed)
        trial *= 4


def _measure(
    call: Callable[[], object], nbytes: int, budget_ns: int, repetitions: int
) -> tuple[float, int]:
    """(GB/s, iterations) for ``call`` processing ``nbytes`` bytes each time."""
    call()  # warm up caches and any lazy import
    iterations = _iterations_for(call, budget_ns)
    elapsed = _best_ns(call, iterations, repetitions)
    return nbytes * iterations / elapsed, iterations


def run(quick: bool, progress: Progress = NO_PROGRESS) -> dict[str, object]:
    """Measure and return the JSON result (GB/s figures are 10**9 bytes per second)."""
    progress.stage("checksum", 5)
    # Many short repetitions: on a shared VM the best short window is the one
    # least disturbed by other processes.
    budget_ns = 3_000_000 if quick else 10_000_000
    repetitions = 25 if quick else 40
    rng = random.Random(1071)
    small = rng.randbytes(SMALL_BYTES)
    large = rng.randbytes(LARGE_BYTES)
    batch = np.frombuffer(rng.randbytes(SMALL_BYTES * BATCH_FRAMES), dtype=np.uint8).reshape(
        BATCH_FRAMES, SMALL_BYTES
    )
    agree = all(internet_checksum(b) == pure_python_checksum(b) for b in (small, large)) and [
        ~int(s) & 0xFFFF for s in ones_sum_rows(batch)
    ] == [internet_checksum(row.tobytes()) for row in batch]

    with one_core():
        ours_small, it_ours_small = _measure(
            lambda: internet_checksum(small), SMALL_BYTES, budget_ns, repetitions
        )
        progress.update(1)
        ours_large, it_ours_large = _measure(
            lambda: internet_checksum(large), LARGE_BYTES, budget_ns, repetitions
        )
        progress.update(2)
        pure_small, it_pure_small = _measure(
            lambda: pure_python_checksum(small), SMALL_BYTES, budget_ns, repetitions
        )
        progress.update(3)
        pure_large, it_pure_large = _measure(
            lambda: pure_python_checksum(large), LARGE_BYTES, budget_ns, repetitions
        )
        progress.update(4)
        batch_rate, it_batch = _measure(
            lambda: ones_sum_rows(batch), SMALL_BYTES * BATCH_FRAMES, budget_ns, repetitions
        )
        progress.update(5)

    return {
        "gbytes_per_s_1460": ours_small,
        "gbytes_per_s_64k": ours_large,
        "pure_python_gbytes_per_s_1460": pure_small,
        "pure_python_gbytes_per_s_64k": pure_large,
        "ratio_vs_pure_python": ours_large / pure_large,
        "ratio_vs_pure_python_1460": ours_small / pure_small,
        "ratio_vs_pure_python_64k": ours_large / pure_large,
        "batch_gbytes_per_s_1460": batch_rate,
        "batch_frames": BATCH_FRAMES,
        "buffer_bytes_small": SMALL_BYTES,
        "buffer_bytes_large": LARGE_BYTES,
        "iterations": {
            "ours_1460": it_ours_small,
            "ours_64k": it_ours_large,
            "pure_python_1460": it_pure_small,
            "pure_python_64k": it_pure_large,
            "batch_1460": it_batch,
        },
        "repetitions": repetitions,
        "results_agree": agree,
        "target_gbytes_per_s_1460": TARGET_GBYTES_PER_S_1460,
        "target_gbytes_per_s_64k": TARGET_GBYTES_PER_S_64K,
        "quick": quick,
    }


def render(result: dict[str, object], console: Console) -> None:
    """Print the result as a table."""
    table = Table(title=f"Internet checksum, one core (best of {result['repetitions']} runs)")
    table.add_column("buffer")
    table.add_column("ours GB/s", justify="right")
    table.add_column("plain Python GB/s", justify="right")
    table.add_column("ours / plain", justify="right")
    table.add_column("target GB/s", justify="right")
    for label, suffix in (("1460 B per call", "1460"), ("64 KiB per call", "64k")):
        ours = number(result, f"gbytes_per_s_{suffix}")
        target = number(result, f"target_gbytes_per_s_{suffix}")
        mark = "[green]met[/]" if ours >= target else "[red]missed[/]"
        table.add_row(
            label,
            f"{ours:.2f}",
            f"{number(result, f'pure_python_gbytes_per_s_{suffix}'):.3f}",
            f"{number(result, f'ratio_vs_pure_python_{suffix}'):.0f}x",
            f"{target:.1f} {mark}",
        )
    table.add_row(
        f"1460 B x {result['batch_frames']} (ones_sum_rows)",
        f"{number(result, 'batch_gbytes_per_s_1460'):.2f}",
        "",
        "",
        "",
    )
    console.print(table)
    if not result["results_agree"]:
        console.print("[red]our checksums and the plain-Python ones disagree[/]")
