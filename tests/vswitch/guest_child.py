"""Guest processes that misbehave on purpose, for the switch's isolation tests.

``python guest_child.py SCENARIO NAME [--quota-rx N]``, started by
``VSwitch.spawn_guest`` (its socket in ``$NETOFFLOAD_VSWITCH_FD``):

* ``stale``: waits for one frame, releases it, then posts the same
  (buffer, generation) again straight into its ring, and reports the error
  the switch sends back; then receives as a sink does.
* ``greedy``: posts every receive buffer of its window straight into its
  ring (twice its quota), and reports what the switch refused; then sinks.
* ``flood``: writes more frames into its transmit ring than its quota of
  frames in flight, in one go (whatever its buffers hold), and reports what
  was refused.
* ``hold``: receives and never releases anything.
* ``break``: writes an impossible producer index into its post ring.

Every scenario reports ``{"phase": ...}`` as it goes and a final report when
it gets SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import numpy as np

from netoffload.device.vmdq.queue import descs
from netoffload.device.vmdq.window import HEADROOM, WindowGeometry
from netoffload.offload import Packet
from netoffload.vswitch.port import DescriptorError, GuestPort
from netoffload.vswitch.protocol import ENV_FD

STOP: list[int] = []


def _errors(errors: list[DescriptorError]) -> list[dict[str, Any]]:
    return [
        {"ring": e.ring, "buffer": e.buffer, "gen": e.gen, "status": e.status.name.lower()}
        for e in errors
    ]


def _wait_errors(port: GuestPort, count: int, timeout_s: float = 20.0) -> list[DescriptorError]:
    got: list[DescriptorError] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline and not STOP:
        port.wait(0.05)
        got += port.take_errors()
    return got


def _sink(port: GuestPort, report: dict[str, Any], *, release: bool = True) -> None:
    frames = 0
    last = 0.0
    while not STOP:
        if port.wait(0.05):
            packets = port.recv(256)
            frames += len(packets)
            if release:
                port.release(packets)
        if time.monotonic() - last > 0.1:
            last = time.monotonic()
            port.report({**report, "frames": frames, "held": port.rx_held})


def stale(port: GuestPort) -> dict[str, Any]:
    packets: list[Packet] = []
    while not packets and not STOP:
        port.wait(0.05)
        packets = port.recv(1)
    if not packets:
        return {"phase": "stopped"}
    where = port.location(packets[0])
    assert where is not None
    port.release(packets)
    port.release(packets)  # a second release through the API: ignored, nothing is sent
    rows = descs(1)
    rows["buffer"] = where[0]
    rows["gen"] = where[1]
    port.rings["post"].put(rows)  # the same descriptor again, behind the port's back
    port.kick()
    report = {"phase": "stale sent", "descriptor": list(where)}
    port.report(report)
    report = {"phase": "done", "descriptor": list(where), "errors": _errors(_wait_errors(port, 1))}
    port.report(report)
    _sink(port, report)
    return report


def greedy(port: GuestPort) -> dict[str, Any]:
    g = port.geometry
    rows = descs(g.rx_buffers)
    rows["buffer"] = np.arange(g.rx_buffers)
    port.rings["post"].put(rows)
    port.kick()
    expected = g.rx_buffers - port.attachment.quota.rx_buffers
    report = {"phase": "done", "errors": _errors(_wait_errors(port, expected))}
    port.report(report)
    _sink(port, report)
    return report


def flood(port: GuestPort) -> dict[str, Any]:
    g = port.geometry
    count = g.tx_buffers
    rows = descs(count)
    rows["buffer"] = np.arange(g.rx_buffers, g.rx_buffers + count)
    rows["offset"] = HEADROOM
    rows["length"] = 60  # whatever the buffers hold: the switch never looks
    rows["ext"] = np.array([bytes(52)] * count, dtype="V52")
    port.rings["tx"].put(rows)
    port.kick()
    expected = count - port.attachment.quota.tx_in_flight
    report = {"phase": "done", "errors": _errors(_wait_errors(port, expected))}
    port.report(report)
    _sink(port, report)
    return report


def hold(port: GuestPort) -> dict[str, Any]:
    report = {"phase": "holding"}
    _sink(port, report, release=False)
    return report


def break_rings(port: GuestPort) -> dict[str, Any]:
    at = port.ring_layout.index_offset(0)  # the post ring's producer index
    port.ring_memory[at : at + 4] = (port.rings["post"].capacity * 3 + 5).to_bytes(4, "little")
    port.kick()
    report = {"phase": "broken"}
    _sink(port, report)
    return report


def main() -> int:
    scenario, name = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.append(signum))
    geometry = WindowGeometry(rx_buffers=128, tx_buffers=32, buffer_bytes=4096)
    post = 0 if scenario == "greedy" else None
    port = GuestPort(int(os.environ[ENV_FD]), name=name, geometry=geometry, post=post)
    with port:
        port.report({"phase": "attached"})
        scenarios = {"stale": stale, "greedy": greedy, "flood": flood, "hold": hold}
        run = {**scenarios, "break": break_rings}[scenario]
        report = run(port)
        port.report({**report, "final": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
