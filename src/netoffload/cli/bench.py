"""`netoffload bench ...`: each benchmark prints ratios measured side by side in one run.

Every benchmark module ``netoffload.bench.<name>`` exposes
``run(quick: bool, progress: Progress) -> dict[str, object]`` (the JSON
result; ``progress`` hears how far it has come) and
``render(result, console) -> None`` (the human table).
"""

from __future__ import annotations

import importlib
import json

import click
from rich.console import Console

from netoffload.device.base import DeviceError
from netoffload.progress import progress_for

BENCHMARKS = {
    "checksum": "Internet checksum GB/s on 1460-byte and 64 KiB buffers vs plain Python.",
    "classify": "RSS, 20-rule classification and DoS filtering Mpps, batches vs per-frame loops.",
    "esp": "ESP encrypt/decrypt GB/s (AES-128-GCM, batches) beside the AES-GCM call alone.",
    "sockets": (
        "A Python app on netoffload sockets vs OS sockets: request/response per s and bulk "
        "Gbit/s (needs root)."
    ),
    "softnic": "SoftNic: segmentation, coalescing, checksum rates; host CPU/GB offload on vs off.",
    "synflood": "A 200,000-SYN flood on a SoftNic wire: SYNs a second, a transfer through it.",
    "tap": "TAP device: Gbit/s written and read with offloads on vs off (needs root).",
    "tcp": (
        "Our TCP stack to and from the kernel's over a TAP, offloads on vs off, "
        "and kernel to kernel over a veth (needs root)."
    ),
    "vswitch": (
        "Virtual switch: packets/s and Gbit/s delivered to 4 guest processes, "
        "into their own buffers vs copied into them (1500 B and 64 KiB)."
    ),
}


def _run(name: str, as_json: bool, quick: bool, plot: str | None = None) -> None:
    module = importlib.import_module(f"netoffload.bench.{name}")
    try:
        with progress_for(as_json) as progress:
            result = module.run(quick=quick, progress=progress)
        if plot is not None:
            module.plot(result, plot)
    except DeviceError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
    else:
        module.render(result, Console())
        if plot is not None:
            click.echo(f"chart written to {plot}")


@click.group()
def bench() -> None:
    """Measure offload on vs off (and ours vs references), side by side in one run."""


def _make(name: str, help_text: str) -> click.Command:
    @click.command(name=name, help=help_text)
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @click.option("--quick", is_flag=True, help="Fewer iterations (a smoke run).")
    def command(as_json: bool, quick: bool, plot: str | None = None) -> None:
        _run(name, as_json, quick, plot)

    if hasattr(importlib.import_module(f"netoffload.bench.{name}"), "plot"):
        command = click.option(
            "--plot",
            metavar="FILE.png",
            default=None,
            help="Also draw the result as a bar chart (needs the 'plot' extra: matplotlib).",
        )(command)
    return command


for _name, _help in BENCHMARKS.items():
    bench.add_command(_make(_name, _help))
