"""The xdist controller of a lab run (`pytest -n N`): one run directory for the whole
session, which boots no VM of its own.

Each worker runs its own lab (its own run id, ports, guests and run directory). The
controller hands each worker the exchange directory of its own run (lab.pytest_plugin.relay),
takes the host's session lock for them once a worker uses the lab (the workers join it
through the exchange), prints the workers' progress as it comes, schedules the tests
(lab.pytest_plugin.scheduling)
and records every worker's test reports as pytest_runtest_logreport hands them over, with
the recorder a serial run uses (lab.pytest_plugin.recording). At the end its run directory
holds results.json with every test of every worker (each naming its worker), events.json
with every worker's phases on one clock, a link per worker to that worker's run directory
(`gw0` -> `../<run id>`), through which report.html reaches each test's artifacts and
consoles, and report.html. Nothing of it exists unless a worker used the lab.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from lab.engine import new_run_id
from lab.errors import LabError
from lab.events import EventBus, progress_line
from lab.host import sessionlock
from lab.paths import lab_dir, runs_path
from lab.pytest_plugin.recording import Recorder, judged
from lab.pytest_plugin.relay import EXCHANGE, EXCHANGE_KEY, Exchange, RelayReader, WorkerRun
from lab.pytest_plugin.reporting import baseline_path, compare_with_baseline, terminal_line
from lab.report.html import REPORT_NAME, write_report
from lab.report.results import load_events
from lab.rundir import write_events, write_results

# the user chose a distribution (--dist, -d): the lab's scheduler then serves only loadgroup
DIST_CHOSEN = pytest.StashKey[bool]()
CONTROLLER = "hplab-controller"  # the ParallelRun's name among the controller's plugins


def note_users_choice(config: pytest.Config) -> None:
    """Before xdist turns `-n N` into --dist load: whether the user chose a distribution."""
    config.stash[DIST_CHOSEN] = (getattr(config.option, "dist", "no") != "no"
                                 or bool(getattr(config.option, "distload", False)))


def is_controller(config: pytest.Config) -> bool:
    """Whether this process is an xdist controller that will run workers."""
    return (getattr(config.option, "dist", "no") != "no"
            and bool(getattr(config.option, "tx", None))
            and not hasattr(config, "workerinput")
            and not config.getoption("collectonly"))


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class ParallelRun:
    """The controller's run: registered as a plugin of the controller's session."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.run_id = new_run_id()
        self.base_dir = lab_dir(config.getoption("lab_dir"))
        self.run_dir = runs_path(self.base_dir) / self.run_id
        self.exchange = Exchange(self.run_dir / EXCHANGE)
        self.recorder = Recorder()
        self.reader = RelayReader(self.exchange, self._say)
        self.started = time.monotonic()
        self.in_use = False
        self.summary: list[str] = []
        self._terminal = threading.Lock()
        self._sigterm: Any = None

    def _say(self, line: str) -> None:
        with self._terminal:  # the relay's thread and the main thread
            terminal_line(self.config, line)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[EXCHANGE_KEY] = str(self.exchange.root)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        """The lab is used once a worker wrote its groups: follow the workers' progress
        from now on, and end on SIGTERM as a serial run does."""
        if self.in_use or self.exchange.read_groups() is None:
            return
        self.in_use = True
        self.reader.start()
        self._sigterm = signal.signal(signal.SIGTERM, _terminate)
        self._hold_session()

    def _hold_session(self) -> None:
        """Take the host's session lock for the whole run, before any test is scheduled,
        and hand it to the workers: they are already running, so the variable they join
        it with goes through the exchange, not their environment."""
        bus = EventBus()
        bus.subscribe(lambda event: self._say(progress_line(event)))
        try:
            held = sessionlock.hold(run_id=self.run_id, lab_dir=self.base_dir, bus=bus,
                                    wait_s=self.config.getoption("session_wait"))
        except LabError as exc:
            self._say(f"hplab: {exc}")
            self.exchange.hand_session(None, str(exc))
            return
        self.config.add_cleanup(held.release)
        self.exchange.hand_session(os.environ[sessionlock.ENV])

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        from lab.pytest_plugin.scheduling import ChosenAtSchedule, LabScheduling

        if config.stash.get(DIST_CHOSEN, True):
            if config.getoption("dist") == "loadgroup":
                return LabScheduling(config, log, self.exchange.read_groups)
            return None  # xdist's own
        from xdist.scheduler import LoadScheduling

        return ChosenAtSchedule(LabScheduling(config, log, self.exchange.read_groups),
                                LoadScheduling(config, log),
                                lambda: self.exchange.read_groups() is not None)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if judged(report):
            self.recorder.record(report)

    def pytest_sessionfinish(self) -> None:
        """Every worker has ended (and torn its lab down): write the run."""
        if not self.in_use:
            return
        self.reader.stop()
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        runs = [self.reader.runs[w] for w in sorted(self.reader.runs)]
        for run in runs:
            link = self.run_dir / run.worker
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(run.run_dir, self.run_dir))
        write_events(self.run_dir, self._events(runs))
        write_results(self.run_dir, self.recorder.entries.values())
        try:
            write_report(self.run_dir)
        except (LabError, OSError) as exc:  # the report never hides the run's own outcome
            print(f"hplab: no report for {self.run_dir}: {exc}", file=sys.stderr)
        self.summary = [f"hplab: run {self.run_dir} ({REPORT_NAME} there), workers: "
                        + (", ".join(f"{r.worker} {r.run_dir}" for r in runs) or "none")]
        baseline = baseline_path(self.config)
        if baseline is not None:
            self.summary.append(compare_with_baseline(baseline, self.run_dir))

    def _events(self, runs: list[WorkerRun]) -> list[dict[str, Any]]:
        """Every worker's phases, each subject named with its worker, on the
        controller's clock."""
        merged = []
        for run in runs:
            try:
                events = load_events(run.run_dir / "events.json")
            except LabError as exc:
                self._say(f"hplab: {run.worker}'s phases left out: {exc}")
                continue
            shift = run.started - self.started
            merged += [{**e, "subject": f"{run.worker} {e['subject']}",
                        "at": round(float(e["at"]) + shift, 3)} for e in events]
        return sorted(merged, key=lambda e: float(e["at"]))

    def pytest_terminal_summary(self) -> None:
        for line in self.summary:
            self._say(line)
