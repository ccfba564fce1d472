"""The xdist controller's scheduler for a lab run: groups stay on one worker, the serial
group waits until every other test has ended (see lab.pytest_plugin.distribution).

Imported only where pytest-xdist runs the session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from xdist.scheduler import LoadGroupScheduling, LoadScheduling
from xdist.workermanage import WorkerController

from lab.pytest_plugin.distribution import SERIAL_GROUP


class LabScheduling(LoadGroupScheduling):  # type: ignore[misc]  # xdist has no type info
    """xdist's loadgroup scheduling with the lab's groups, which the workers wrote
    (`groups()`: node id -> group), and the serial group given out last.

    Once nothing but the serial group is left, the first worker that asks gets it and
    every other worker is shut down: it finishes the tests it holds and gets no more.
    (A worker runs its last test only once it knows the next one or is told to stop, so
    waiting here until every other test has ended would wait forever.) The serial tests'
    exclusive hold of the serial lock then waits until those last tests have ended.
    """

    def __init__(self, config: pytest.Config, log: Any,
                 groups: Callable[[], dict[str, str] | None]) -> None:
        super().__init__(config, log)
        self._read_groups = groups
        self.groups: dict[str, str] = {}

    def schedule(self) -> None:
        if self.collection is None:  # the first call: every worker has collected
            self.groups = self._read_groups() or {}
        super().schedule()

    def _split_scope(self, nodeid: str) -> str:
        group = self.groups.get(nodeid)
        return group if group is not None else str(super()._split_scope(nodeid))

    def _assign_work_unit(self, node: WorkerController) -> None:
        parallel = next((scope for scope in self.workqueue if scope != SERIAL_GROUP), None)
        if parallel is not None:
            self.workqueue.move_to_end(parallel, last=False)
        elif self.workqueue:  # the serial phase begins
            for other in self.nodes:
                if other is not node and not other.shutting_down:
                    other.shutdown()
        else:
            return
        super()._assign_work_unit(node)


class ChosenAtSchedule:
    """The scheduler when the user chose no distribution: LabScheduling if a worker used
    the lab (`uses_lab()` at the first schedule, once every worker has collected), else
    xdist's default (load), so that a run that does not use the lab is scheduled as
    without the plugin. Until then both hear of every worker."""

    def __init__(self, lab: LabScheduling, plain: LoadScheduling,
                 uses_lab: Callable[[], bool]) -> None:
        self._candidates = (lab, plain)
        self._uses_lab = uses_lab
        self._chosen: Any = None

    @property
    def chosen(self) -> Any:
        return self._chosen if self._chosen is not None else self._candidates[1]

    def _each(self) -> tuple[Any, ...]:
        return self._candidates if self._chosen is None else (self._chosen,)

    @property
    def nodes(self) -> list[WorkerController]:
        return list(self.chosen.nodes)

    @property
    def collection_is_completed(self) -> bool:
        return bool(self.chosen.collection_is_completed)

    @property
    def tests_finished(self) -> bool:
        return bool(self.chosen.tests_finished)

    @property
    def has_pending(self) -> bool:
        return bool(self.chosen.has_pending)

    def add_node(self, node: WorkerController) -> None:
        for scheduler in self._each():
            scheduler.add_node(node)

    def add_node_collection(self, node: WorkerController, collection: Sequence[str]) -> None:
        for scheduler in self._each():
            scheduler.add_node_collection(node, collection)

    def remove_node(self, node: WorkerController) -> str | None:
        crashed = None
        for scheduler in self._each():
            crashed = scheduler.remove_node(node)
        return crashed

    def schedule(self) -> None:
        if self._chosen is None:
            lab, plain = self._candidates
            self._chosen = lab if self._uses_lab() else plain
        self._chosen.schedule()

    def mark_test_complete(self, node: WorkerController, item_index: int,
                           duration: float = 0) -> None:
        self.chosen.mark_test_complete(node, item_index, duration)

    def mark_test_pending(self, item: str) -> None:
        self.chosen.mark_test_pending(item)

    def remove_pending_tests_from_node(self, node: WorkerController,
                                       indices: Sequence[int]) -> None:
        self.chosen.remove_pending_tests_from_node(node, indices)
