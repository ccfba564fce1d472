"""A run's results.json entries, built from the test reports pytest_runtest_logreport sees:
a serial run's own, an xdist worker's own, and on the xdist controller every worker's."""

from __future__ import annotations

import pytest

from lab.pytest_plugin.reporting import failure_message, joined
from lab.rundir import ResultEntry

CLASS_PROPERTY = "outcome"  # the lab's class of the test, set on every phase's report
WORKER_PROPERTY = "worker"  # the xdist worker that ran the test (absent in a serial run)


def judged(report: pytest.TestReport) -> bool:
    """Whether the lab plugin classed `report` (in the process that ran its test)."""
    return any(name == CLASS_PROPERTY for name, _ in report.user_properties)


class Recorder:
    """One entry per test, its phases folded in as their reports arrive."""

    def __init__(self) -> None:
        self.entries: dict[str, ResultEntry] = {}

    def record(self, report: pytest.TestReport) -> None:
        entry = self.entries.setdefault(report.nodeid, ResultEntry(report.nodeid))
        entry.duration = round(entry.duration + report.duration, 3)
        if report.failed:
            entry.outcome = "failed" if report.when == "call" else "error"
            entry.message = joined(entry.message or "", failure_message(report))
        elif report.skipped and entry.outcome == "passed":
            entry.outcome = "skipped"
            # (path, line, reason); a list once it came from an xdist worker
            longrepr = report.longrepr
            entry.reason = str(longrepr[-1]) if isinstance(longrepr, tuple | list) \
                else str(longrepr)
        # each phase's report carries the test's properties as they are after the phase
        entry.properties = {str(k): str(v) for k, v in report.user_properties}

    def workers(self) -> list[str]:
        return sorted({e.properties[WORKER_PROPERTY] for e in self.entries.values()
                       if WORKER_PROPERTY in e.properties})
