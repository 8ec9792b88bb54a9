"""Two guest processes talk TCP through a virtual switch; the switch copies each packet once.

Run: .venv/bin/python examples/vswitch_tcp.py
"""

import sys

from netoffload.device.softnic.pool_nic import PoolSoftNic
from netoffload.vswitch import GuestConfig, SoftNicUplink, VSwitch

GUEST = [sys.executable, "-m", "netoffload.vswitch.guest", "--mode", "stack"]

with VSwitch(SoftNicUplink(PoolSoftNic()), name="example") as switch:
    # Each guest is its own process with its own window; a netoffload stack runs in each.
    switch.spawn_guest(
        GuestConfig("server"), [*GUEST, "--address", "198.18.0.11/24", "--echo", "7"]
    )
    switch.run_until(lambda: switch.guest("server").attached, 30)
    client = [*GUEST, "--address", "198.18.0.12/24", "--connect", "198.18.0.11", "7"]
    switch.spawn_guest(GuestConfig("client"), [*client, "--bytes", str(4 << 20)])
    switch.run_until(lambda: bool((switch.guest("client").report or {}).get("final")), 60)
    stats = switch.stats()

report = switch.guest("client").report or {}
print(f"echoed {report.get('received', 0):,} bytes, intact: {report.get('match')}")
for guest in stats["guests"]:
    copies = sum(guest["copies"].values())
    print(f"{guest['name']}: {guest['rx_packets']} packets in, {copies} copies")
print(
    f"payload bytes copied on unicast receive from the wire: "
    f"{stats['payload_bytes_copied_unicast_rx']}"
)
