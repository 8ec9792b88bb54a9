"""Selection: the tasks (and sub-features) the host enables on a device."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from netoffload.offload.caps import CapabilityRecord
from netoffload.offload.errors import SelectionError
from netoffload.offload.task import Task


class Selection(Mapping[Task, CapabilityRecord]):
    """An immutable map Task -> the record to enable for it.

    Each record must lie within the one the device advertised for the same
    task (``check_against``); a task that is absent is disabled.
    """

    __slots__ = ("_records",)

    def __init__(self, records: Iterable[CapabilityRecord] = ()) -> None:
        table: dict[Task, CapabilityRecord] = {}
        for record in records:
            if record.task in table:
                raise SelectionError(f"{record.task.label} selected twice")
            table[record.task] = record
        self._records = table

    def __getitem__(self, task: Task) -> CapabilityRecord:
        return self._records[task]

    def __iter__(self) -> Iterator[Task]:
        return iter(sorted(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"Selection({list(self.records())!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selection) and self._records == other._records

    def __hash__(self) -> int:
        return hash(frozenset(self._records.items()))

    def records(self) -> list[CapabilityRecord]:
        """The records in task order (what goes into a chain)."""
        return [self._records[t] for t in self]

    @classmethod
    def everything(cls, advertised: Iterable[object]) -> Selection:
        """Enable every known task exactly as advertised."""
        return cls(r for r in advertised if isinstance(r, CapabilityRecord))

    def with_task(self, record: CapabilityRecord) -> Selection:
        """A copy with ``record`` enabled (replacing any record for its task)."""
        rest = [r for t, r in self._records.items() if t != record.task]
        return Selection([*rest, record])

    def without(self, task: Task) -> Selection:
        """A copy with ``task`` disabled."""
        return Selection(r for t, r in self._records.items() if t != task)

    def check_against(self, advertised: Iterable[object]) -> None:
        """Raise ``SelectionError`` unless every record lies within an advertised one."""
        offered = {r.task: r for r in advertised if isinstance(r, CapabilityRecord)}
        for task, record in self._records.items():
            base = offered.get(task)
            if base is None:
                raise SelectionError(f"device does not offer {task.label}")
            if not record.within(base):
                raise SelectionError(
                    f"{task.label}: asked for {record.params()}, device offers {base.params()}"
                )


@dataclass(frozen=True, slots=True)
class CapabilityStatus:
    """One line of `netoffload caps`: what a task offers, what is on, whether it can change."""

    advertised: CapabilityRecord
    enabled: CapabilityRecord | None
    changeable: bool

    def as_json(self) -> dict[str, object]:
        return {
            "task": self.advertised.task.label,
            "enabled": self.enabled is not None,
            "changeable": self.changeable,
            "params": self.advertised.params(),
            "enabled_params": None if self.enabled is None else self.enabled.params(),
        }
