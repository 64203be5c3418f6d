"""The specialists in service: an immutable snapshot, swapped whole on every sync.

A request takes the snapshot current when it starts and keeps it to the end,
so a sync that loads a new version or drops a revoked one never changes the
evidence of a request in flight, and no request is dropped by a swap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from hub._runtime import LoadedSpecialist
from hub.errors import UnknownTaskError
from protocol import TaskSpec

__all__ = ["Catalog"]


@dataclass(frozen=True)
class Catalog:
    """Loaded specialists by task, with the registry snapshot they came from."""

    specialists: Mapping[str, tuple[LoadedSpecialist, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    snapshot_version: int | None = None
    synced_at: datetime | None = None

    @classmethod
    def of(
        cls,
        loaded: Iterable[LoadedSpecialist],
        snapshot_version: int | None,
        synced_at: datetime | None,
    ) -> Catalog:
        """A catalog of ``loaded`` (ordered by site, backbone and version)."""
        by_task: dict[str, list[LoadedSpecialist]] = {}
        for specialist in loaded:
            by_task.setdefault(specialist.card.task_id, []).append(specialist)
        return cls(
            MappingProxyType(
                {
                    task: tuple(
                        sorted(
                            group,
                            key=lambda s: (s.card.site_id, s.card.backbone, s.card.version),
                        )
                    )
                    for task, group in sorted(by_task.items())
                }
            ),
            snapshot_version,
            synced_at,
        )

    @property
    def all(self) -> tuple[LoadedSpecialist, ...]:
        """Every loaded specialist."""
        return tuple(s for group in self.specialists.values() for s in group)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Tasks with at least one loaded specialist (ready to serve)."""
        return tuple(self.specialists)

    def for_task(self, task_id: str) -> tuple[LoadedSpecialist, ...]:
        """The specialists serving ``task_id``.

        Raises:
            UnknownTaskError: no verified specialist for the task is loaded.
        """
        found = self.specialists.get(task_id)
        if not found:
            known = ", ".join(self.tasks) or "none yet"
            raise UnknownTaskError(
                f"no verified specialist serves task {task_id!r} (ready tasks: {known})"
            )
        return found

    def task_spec(self, task_id: str) -> TaskSpec:
        """The task as its specialists' cards describe it.

        Raises:
            UnknownTaskError: no verified specialist for the task is loaded.
        """
        return self.for_task(task_id)[0].task
