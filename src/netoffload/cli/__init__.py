"""The `netoffload` command."""

from __future__ import annotations

import click

from netoffload import __version__
from netoffload.cli.bench import bench
from netoffload.cli.clean import clean
from netoffload.cli.demo import demo
from netoffload.cli.devices import caps, enable
from netoffload.cli.nc import nc, ping
from netoffload.cli.processes import list_command, stats
from netoffload.cli.rules import rules
from netoffload.cli.run import run
from netoffload.cli.vswitch import vswitch


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netoffload")
def main() -> None:
    """Offload per-packet network work to a device: query, enable, offload."""


main.add_command(bench)
main.add_command(clean)
main.add_command(demo)
main.add_command(caps)
main.add_command(enable)
main.add_command(nc)
main.add_command(ping)
main.add_command(list_command)
main.add_command(run)
main.add_command(stats)
main.add_command(rules)
main.add_command(vswitch)
