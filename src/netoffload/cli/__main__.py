"""``python -m netoffload.cli``: the same command as ``netoffload``."""

from netoffload.cli import main

main()
