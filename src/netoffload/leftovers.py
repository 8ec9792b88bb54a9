"""What killed runs leave behind, and whether the process that made it still runs.

Every kind of leftover (network namespaces in ``netoffload.netns``, control
sockets in ``netoffload.control``) has a clean-up function that returns a
``CleanReport`` of ``Leftover`` items; ``netoffload clean`` runs them all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Leftover:
    """Something a netoffload process made and may not have removed, and who made it."""

    kind: str
    name: str
    creator_pid: int
    creator_alive: bool

    def as_json(self) -> dict[str, object]:
        """A plain dict for ``--json`` output."""
        return {
            "kind": self.kind,
            "name": self.name,
            "creator_pid": self.creator_pid,
            "creator_alive": self.creator_alive,
        }


@dataclass(frozen=True, slots=True)
class CleanReport:
    """What a clean-up removed (or, in a dry run, would remove), left alone, failed on."""

    removed: tuple[Leftover, ...] = ()
    kept: tuple[Leftover, ...] = ()
    failed: tuple[tuple[Leftover, str], ...] = ()
    dry_run: bool = False


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, is not alive).

    A pid reused by an unrelated process reads as alive: clean-up then leaves
    the leftover alone, the safe mistake (``--all`` removes it).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    state = stat.rpartition(b")")[2].split()[:1]
    return state not in ([b"Z"], [b"X"])
