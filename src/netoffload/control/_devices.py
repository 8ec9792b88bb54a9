"""The ``caps`` and ``enable`` ops over the devices a process holds.

Both reply with the device's capability table as ``netoffload caps --json``
prints it: a list of ``CapabilityStatus.as_json()`` records (``task``,
``enabled``, ``changeable``, ``params``, ``enabled_params``), one per task.

- ``caps``   ``{"device": NAME}``
- ``enable`` ``{"device": NAME, "task": LABEL, "on": true|false}``: the table after the change.

A task the device (or its kernel) kept as it was is not an error here: the
table shows it, and ``netoffload enable --process`` reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from netoffload.control._server import ControlServer
from netoffload.device.base import Device
from netoffload.offload import Task

T = TypeVar("T")

#: The devices a process holds, by the name a request uses; or a function giving them now.
Devices = Mapping[str, Device] | Callable[[], Mapping[str, Device]]


def _arg(args: dict[str, Any], key: str, kind: type[T], usage: str) -> T:
    value = args.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"{usage}: {key!r} must be a {kind.__name__}")
    return value


def _device(devices: Devices, name: str) -> Device:
    table = devices() if callable(devices) else devices
    device = table.get(name)
    if device is None:
        held = ", ".join(sorted(table)) or "none"
        raise ValueError(f"no device {name!r} in this process (devices: {held})")
    return device


def _table(device: Device) -> list[dict[str, object]]:
    return [line.as_json() for line in device.status()]


def caps_op(devices: Devices) -> Callable[[dict[str, Any]], list[dict[str, object]]]:
    """The ``caps`` handler: ``{"device": NAME}`` -> the device's capability table."""

    def handle(args: dict[str, Any]) -> list[dict[str, object]]:
        name = _arg(args, "device", str, 'caps takes {"device": NAME}')
        return _table(_device(devices, name))

    return handle


def enable_op(devices: Devices) -> Callable[[dict[str, Any]], list[dict[str, object]]]:
    """The ``enable`` handler: turn a task on or off, reply with the table after it."""

    def handle(args: dict[str, Any]) -> list[dict[str, object]]:
        usage = 'enable takes {"device": NAME, "task": TASK, "on": true|false}'
        name = _arg(args, "device", str, usage)
        wanted = Task.from_label(_arg(args, "task", str, usage))
        on = _arg(args, "on", bool, usage)
        device = _device(devices, name)
        line = next((s for s in device.status() if s.advertised.task is wanted), None)
        if line is None:
            raise ValueError(f"{name} does not offer {wanted.label}")
        current = device.enabled()
        device.enable(current.with_task(line.advertised) if on else current.without(wanted))
        return _table(device)

    return handle


def register_device_ops(server: ControlServer, devices: Devices) -> None:
    """Serve ``caps`` and ``enable`` over ``devices`` (a mapping, or a function returning one)."""
    server.register("caps", caps_op(devices))
    server.register("enable", enable_op(devices))
