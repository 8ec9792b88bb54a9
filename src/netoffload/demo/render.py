"""The demo's tables: what each NIC advertised, what was enabled, on vs off side by side."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table


def _params(params: dict[str, Any]) -> str:
    parts = []
    for key, value in params.items():
        shown = ",".join(value) if isinstance(value, list) else str(value)
        parts.append(f"{key}={shown or '-'}")
    return " ".join(parts)


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def render_capabilities(result: dict[str, Any], console: Console) -> None:
    """One table per NIC: the records its firmware sent in the binary chain."""
    for name, caps in result["capabilities"].items():
        chain = bytes.fromhex(caps["chain_hex"])
        table = Table(title=f"{name}: capability chain from the firmware ({len(chain)} bytes)")
        table.add_column("task")
        table.add_column("advertised")
        for record in caps["records"]:
            table.add_row(record["task"], _params(record["params"]))
        console.print(table)
    enabled = result["enabled"]
    console.print(
        f"enabled with offload on: [bold]{', '.join(enabled['offload_on']) or 'nothing'}[/]"
        f"; with offload off: [bold]{', '.join(enabled['offload_off']) or 'nothing'}[/]"
    )


def render_results(result: dict[str, Any], console: Console) -> None:
    """The side-by-side table and the integrity verdict."""
    on, off = result["offload_on"], result["offload_off"]
    table = Table(title="TCP + UDP: stack A → nic-a → wire (MTU 1500) → nic-b → stack B")
    table.add_column("")
    table.add_column("offload on", justify="right")
    table.add_column("offload off", justify="right")
    table.add_column("off / on", justify="right")

    def row(label: str, key: str, digits: int = 2, ratio: bool = True) -> None:
        a, b = float(on[key]), float(off[key])
        table.add_row(
            label, _fmt(a, digits), _fmt(b, digits), f"{b / a:.1f}x" if ratio and a else ""
        )

    row("throughput (Gbit/s)", "gbit_per_s")
    row("host CPU s per GB", "host_cpu_s_per_gb", 3)
    row("host CPU s", "host_cpu_s", 3)
    row("wall time s", "seconds", 3)
    row("super-packets built (TCP + UDP)", "super_packets", 0)
    for label, side in (("TCP segments A → B", "a"), ("TCP segments B → A (ACKs)", "b")):
        a, b = on["tcp"][side]["segments_out"], off["tcp"][side]["segments_out"]
        table.add_row(label, _fmt(a, 0), _fmt(b, 0), f"{b / a:.1f}x" if a else "")
    row("packets host → NIC", "packets_posted", 0)
    row("packets NIC → host", "packets_received", 0)
    table.add_row(
        "frames on the wire",
        _fmt(on["wire"].get("sent_frames", 0), 0),
        _fmt(off["wire"].get("sent_frames", 0), 0),
        "",
    )
    table.add_row(
        "bytes verified",
        _fmt(on["bytes_verified"], 0),
        _fmt(off["bytes_verified"], 0),
        "",
    )
    console.print(table)
    for mode, data in (("on", on), ("off", off)):
        drops = {**data["sender_stats"]["drops"], **data["receiver_stats"]["drops"]}
        tasks = dict(
            Counter(data["sender_stats"]["tasks"]) + Counter(data["receiver_stats"]["tasks"])
        )
        host_tasks = data["host_stats"]["tasks"]
        decisions = data["offload_decisions"]
        console.print(
            f"offload {mode}: NIC tasks {tasks or '{}'}; host tasks {host_tasks or '{}'}; "
            f"drops {drops or 'none'}; policy decisions A {decisions['a']}, B {decisions['b']}"
        )
    if result["bytes_verified"] == result["bytes_sent"]:
        console.print(
            f"[green]every payload byte arrived intact in both modes "
            f"({result['bytes_verified']:,} bytes)[/]"
        )
    else:
        console.print(
            f"[red]only {result['bytes_verified']:,} of {result['bytes_sent']:,} bytes "
            f"arrived intact[/]"
        )
    console.print(
        f"offload cut host CPU per GB by [bold]{result['host_cpu_ratio_off_over_on']:.1f}x[/] "
        f"and changed throughput by {result['throughput_ratio_on_over_off']:.1f}x"
    )


def render(result: dict[str, Any], console: Console) -> None:
    """Everything the demo prints."""
    render_capabilities(result, console)
    render_results(result, console)
