"""The ``caps`` and ``enable`` ops over the devices a process holds.

Both reply with the device's capability table as ``netoffload caps --json``
prints it: a list of ``CapabilityStatus.as_json()`` records (``task``,
``enabled``, ``changeable``, ``params``, ``enabled_params``), one per task.

- ``caps``   ``{"device": NAME}``
- ``enable`` ``{"device": NAME, "task": LABEL, "on": true|false}``: the table after the change.
- ``rules``  ``{"device": NAME, "command": "add WORDS" | "del [dos] ID" | "list"}``: the
  classification and DoS rules (``engine.steer``) of a device, run where the device's
  traffic is steered (its firmware, or the host for a device that does not steer); the
  reply is that command's JSON object. ``device`` may be left out when there is one.

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
#: Per device name, what runs a rules command for it (``HostOffload.rules``).
Rules = Mapping[str, Callable[[str], dict[str, Any]]]


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


def rules_op(rules: Rules) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The ``rules`` handler: one rules command for a device, its JSON reply."""

    def handle(args: dict[str, Any]) -> dict[str, Any]:
        usage = 'rules takes {"device": NAME, "command": TEXT}'
        command = _arg(args, "command", str, usage)
        name = args.get("device")
        if name is None and len(rules) == 1:
            name = next(iter(rules))
        if not isinstance(name, str):
            raise ValueError(f"{usage}: this process holds {len(rules)} devices, name one")
        run = rules.get(name)
        if run is None:
            held = ", ".join(sorted(rules)) or "none"
            raise ValueError(f"no device {name!r} in this process (devices: {held})")
        reply = run(command)
        return {"device": name, **reply}

    return handle


def register_device_ops(
    server: ControlServer, devices: Devices, rules: Rules | None = None
) -> None:
    """Serve ``caps`` and ``enable`` over ``devices`` (a mapping, or a function returning one),
    and ``rules`` over ``rules`` when given."""
    server.register("caps", caps_op(devices))
    server.register("enable", enable_op(devices))
    if rules is not None:
        server.register("rules", rules_op(rules))
