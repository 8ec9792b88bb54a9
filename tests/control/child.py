"""Start the control-socket test process (``control_child.py``) and stop it afterwards."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("control_child.py")


@dataclass
class Child:
    proc: subprocess.Popen[str]
    path: str  # its control socket
    name: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: nothing of it runs, its socket stays behind."""
        self.proc.kill()
        self.proc.wait()


@contextmanager
def running_child(name: str, *, softnic: bool = False) -> Iterator[Child]:
    """The test process serving as ``testproc:NAME`` in ``$NETOFFLOAD_RUN_DIR``."""
    args = [sys.executable, str(CHILD), name, *(["--softnic"] if softnic else [])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        path = proc.stdout.readline().strip()
        if not path:
            raise AssertionError(f"control_child.py exited ({proc.wait()}) before serving")
        yield Child(proc, path, name)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


@contextmanager
def private_run_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``NETOFFLOAD_RUN_DIR`` pointing at a directory that does not exist yet.

    Short (``/tmp/nsoctl-XXXX/run``): a socket path must fit in 107 bytes,
    which pytest's own temporary paths may not leave room for.
    """
    parent = tempfile.mkdtemp(prefix="nsoctl-")
    run = Path(parent) / "run"
    monkeypatch.setenv("NETOFFLOAD_RUN_DIR", str(run))
    try:
        yield run
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leave_stale_socket(directory: Path, file_name: str) -> Path:
    """A socket file nobody listens on: what a killed process leaves behind."""

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / file_name
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.bind(str(path))
    assert os.path.exists(path)
    return path
