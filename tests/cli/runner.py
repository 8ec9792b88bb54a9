"""Running `netoffload` in-process for the CLI tests, and what a one-line error looks like."""

from __future__ import annotations

from click.testing import CliRunner

from netoffload.cli import main


def run(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``netoffload ARGS``."""
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, out: str, err: str) -> str:
    """The error of a failed command, after checking it is one line and no traceback."""
    assert code != 0
    assert "Traceback" not in out + err
    assert err.count("\n") == 1 and err.startswith("Error: ")
    return err.strip()
