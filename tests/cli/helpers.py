"""What the command-line tests share: running a command in-process, its one-line errors."""

from __future__ import annotations

from click.testing import CliRunner

from netoffload.cli import main


def run_cli(*args: str) -> tuple[int, str, str]:
    """``netoffload ARGS`` in this process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, out: str, err: str) -> str:
    """The error a failed command printed, checked to be one ``Error: ...`` line."""
    assert code != 0
    assert "Traceback" not in out + err
    assert err.count("\n") == 1 and err.startswith("Error: "), err
    return err.strip()
