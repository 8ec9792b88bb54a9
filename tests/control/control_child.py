"""A long-running netoffload process for tests: serves a control socket until told to stop.

``python control_child.py NAME [--softnic]`` serves ``stats`` (counters, one
of which counts the calls), ``stop`` (exits after replying) and ``fail``
(always an error); with ``--softnic`` it holds a SoftNic named ``softnic0``
and serves ``caps``, ``enable`` and ``rules`` over it. It prints its socket's path on one
line when it is ready, and exits on ``stop`` or SIGTERM, closing the server.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from typing import Any

from netoffload.control import ControlServer, register_device_ops
from netoffload.device.softnic import SoftNic
from netoffload.host import HostOffload


def main() -> None:
    name = sys.argv[1]
    stopping: list[str] = []
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append("signal"))

    server = ControlServer("testproc", name)
    calls = {"stats": 0}

    def stats(args: dict[str, Any]) -> dict[str, Any]:
        calls["stats"] += 1
        return {
            "calls": {"stats": calls["stats"]},
            "rx": {"packets": 1234, "bytes": 1_500_000},
            "queues": [{"depth": 3}, {"depth": 0}],
            "errors": {},
        }

    def stop(args: dict[str, Any]) -> str:
        stopping.append("request")
        return "stopping"

    def fail(args: dict[str, Any]) -> None:
        raise RuntimeError("this op always fails")

    server.register("stats", stats)
    server.register("stop", stop)
    server.register("fail", fail)
    nic = SoftNic() if "--softnic" in sys.argv else None
    if nic is not None:
        register_device_ops(server, {"softnic0": nic}, rules={"softnic0": HostOffload(nic).rules})
    print(server.path, flush=True)

    poller = select.poll()
    poller.register(server.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while not stopping:
        for fd, _events in poller.poll():
            if fd == wake_r:
                os.read(wake_r, 64)
            else:
                server.service()
    server.close()
    if nic is not None:
        nic.close()


if __name__ == "__main__":
    main()
