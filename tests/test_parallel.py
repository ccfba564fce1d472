"""`pytest -n 2` on FakeLabs: two workers with a lab each, tests spread over both, a class
and a module that share a guest each on one worker, the serial test last and alone, both
workers' progress on the controller's terminal, one run of every test with its worker,
and the same outcomes as the serial run of the same tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fakelab import CONFTEST, ROOT

from lab.pytest_plugin.relay import Exchange, RelayReader, RelayWriter, WorkerRun
from lab.pytest_plugin.scheduling import ChosenAtSchedule

TIMES = "intervals.jsonl"
HEAD = f'''
import json, os, time
from pathlib import Path

import pytest


def ran(name, seconds=0.3):
    """Sleep as a test's work; note when, and on which worker."""
    start = time.monotonic()
    time.sleep(seconds)
    with (Path(__file__).parent / "{TIMES}").open("a") as log:
        log.write(json.dumps([name, start, time.monotonic(),
                              os.environ.get("PYTEST_XDIST_WORKER", "main")]) + "\\n")
'''
SHARED_CLASS = HEAD + '''

@pytest.mark.serial
def test_serial(lab, guest):
    ran("serial")  # first in the file: only the serial phase makes it last

@pytest.fixture(scope="class")
def held(lab, node_name):
    """A class-scoped fixture holding the node's Guest, as the suites' class_module."""
    return lab.guest(node_name)


class TestShared:
    def test_a(self, held, node):
        ran("class-a")

    def test_b(self, held, node):
        ran("class-b")

    def test_c(self, held, node):
        ran("class-c")


@pytest.mark.parametrize("n", range(6))
def test_spread(guest, n):
    ran(f"spread-{n}", 0.5)


def test_fails(guest):
    ran("fails")
    assert guest.check("true") == "false"


def test_skips(node):
    pytest.skip("not on this node")


def test_plain():
    pass
'''
SHARED_MODULE = HEAD + '''

@pytest.fixture(scope="module")
def booted(lab):
    return lab.run_id


def test_m1(booted, guest):
    ran("module-1")


def test_m2(booted, guest):
    ran("module-2")
'''


@dataclass
class Run:
    """One pytest session over the inner tests: its output and what it wrote."""

    result: pytest.RunResult
    lab_dir: Path
    junit: Path
    intervals: list[tuple[str, float, float, str]]

    def run_dir(self) -> Path:
        """The run of the whole session: the controller's under xdist (the run directory
        with the workers' exchange), else the only one."""
        runs = sorted((self.lab_dir / "runs").iterdir())
        controllers = [r for r in runs if (r / "workers").is_dir()]
        assert len(controllers) <= 1, runs
        return controllers[0] if controllers else runs[0]

    def results(self) -> dict[str, dict[str, Any]]:
        entries = json.loads((self.run_dir() / "results.json").read_text())
        return {e["nodeid"]: e for e in entries}

    def outcomes(self) -> dict[str, tuple[str, str]]:
        return {nodeid: (e["outcome"], e["properties"].get("outcome", ""))
                for nodeid, e in self.results().items()}

    def workers(self) -> dict[str, str]:
        return {nodeid: e["properties"].get("worker", "")
                for nodeid, e in self.results().items()}

    def ran_on(self) -> dict[str, str]:
        return {name: worker for name, _, _, worker in self.intervals}


TESTS = {"test_shared_class.py": SHARED_CLASS, "test_shared_module.py": SHARED_MODULE}


def run_tests(base: Path, name: str, *args: str, tests: dict[str, str] | None = None) -> Run:
    """The inner tests (by file name) in a directory of their own, in a pytest subprocess
    on FakeLabs."""
    inner = base / name
    inner.mkdir()
    (inner / "conftest.py").write_text(CONFTEST)
    for filename, source in (tests or TESTS).items():
        (inner / filename).write_text(source)
    lab_dir, junit = inner / "labdir", inner / "junit.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
           "HPLAB_LOCK_DIR": str(inner / "locks")}  # not the host's session lock
    env.pop("HPLAB_SESSION", None)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--rootdir={inner}",
         str(inner), f"--topology={ROOT / 'topologies' / 'single.yaml'}",
         f"--lab-dir={lab_dir}", f"--junitxml={junit}", *args],
        cwd=inner, env=env, capture_output=True, text=True, timeout=120, check=False)
    result = pytest.RunResult(proc.returncode, proc.stdout.splitlines(),
                              proc.stderr.splitlines(), time.monotonic() - started)
    times = inner / TIMES
    intervals = [tuple(json.loads(line)) for line in times.read_text().splitlines()] \
        if times.exists() else []
    return Run(result, lab_dir, junit, intervals)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run]:
    """The same tests run serially, then with -n 2 (once for the module's tests)."""
    base = tmp_path_factory.mktemp("parallel")
    return run_tests(base, "serial", "-v"), run_tests(base, "parallel", "-n", "2", "-v")


def overlapping(run: Run, name: str) -> list[tuple[str, float, float, str]]:
    """The tests that ran while test `name` ran."""
    _, start, end, _ = next(i for i in run.intervals if i[0] == name)
    return [i for i in run.intervals if i[0] != name and i[1] < end and i[2] > start]


def test_the_parallel_run_has_the_outcomes_of_the_serial_one(runs: tuple[Run, Run]) -> None:
    serial, parallel = runs
    assert serial.result.ret == parallel.result.ret == 1
    outcomes = serial.outcomes()
    assert outcomes == parallel.outcomes()
    assert len(outcomes) == 15
    assert outcomes["test_shared_class.py::test_fails[cn1]"] == ("failed", "test-failure")
    assert outcomes["test_shared_class.py::test_skips[cn1]"][0] == "skipped"
    parallel.result.assert_outcomes(passed=13, failed=1, skipped=1)


def test_tests_spread_over_both_workers_and_each_shared_guest_stays_on_one(
        runs: tuple[Run, Run]) -> None:
    serial, parallel = runs
    assert set(serial.workers().values()) == {""}  # a serial run names no worker
    workers = parallel.workers()
    assert set(workers.values()) == {"gw0", "gw1"}, workers
    ran_on = parallel.ran_on()
    assert len({ran_on[f"class-{x}"] for x in "abc"}) == 1, ran_on
    assert len({ran_on[f"module-{n}"] for n in (1, 2)}) == 1, ran_on
    spread = {ran_on[f"spread-{n}"] for n in range(6)}
    assert spread == {"gw0", "gw1"}, ran_on
    for nodeid, worker in workers.items():  # results.json says where each test ran
        name = nodeid.split("::")[-1].split("[")[0]
        if name == "test_serial":
            assert ran_on["serial"] == worker


def test_the_serial_test_runs_last_and_alone(runs: tuple[Run, Run]) -> None:
    _, parallel = runs
    serial = next(i for i in parallel.intervals if i[0] == "serial")
    others = [i for i in parallel.intervals if i[0] != "serial"]
    assert len(others) == 12  # all but the skipped and the plain test
    ended = max(end for _, _, end, _ in others)
    assert serial[1] >= ended, (serial, sorted(others, key=lambda i: i[2])[-3:])
    assert parallel.result.ret == 1  # the lab's scheduler, not xdist's own, ran it


def test_under_a_distribution_of_the_users_the_serial_lock_keeps_it_alone(
        tmp_path: Path) -> None:
    """xdist's load gives each worker one of the two tests at once: the lock alone keeps
    them apart."""
    both = HEAD + '''

def test_long(guest):
    ran("long", 1.0)


@pytest.mark.serial
def test_serial(guest):
    ran("serial")
'''
    run = run_tests(tmp_path, "load", "-n", "2", "--dist", "load",
                    tests={"test_both.py": both})
    assert run.result.ret == 0, run.result.outlines[-20:]
    assert set(run.ran_on().values()) == {"gw0", "gw1"}, run.intervals
    assert overlapping(run, "serial") == []
    run.result.stdout.fnmatch_lines(["[[]gw?[]] [[]hplab[]] serial lock: test_both.py::* "
                                     "waits to hold it *, for: gw? test_both.py::* (pid *)"])


def test_both_workers_progress_reaches_the_controllers_terminal(runs: tuple[Run, Run]) -> None:
    _, parallel = runs
    out = parallel.result.stdout
    out.fnmatch_lines(["[[]gw0[]] [[]hplab[]] boot cn1 ... (boot 1)"])
    out.fnmatch_lines(["[[]gw1[]] [[]hplab[]] boot cn1 ... (boot 1)"])
    out.fnmatch_lines([f"hplab: run {parallel.run_dir()} (report.html there), "
                       "workers: gw0 *, gw1 *"])


def test_one_run_holds_every_test_with_its_worker_and_links_its_files(
        runs: tuple[Run, Run]) -> None:
    _, parallel = runs
    run_dir = parallel.run_dir()
    results = parallel.results()
    page = (run_dir / "report.html").read_text()
    for nodeid, entry in results.items():
        worker = entry["properties"]["worker"]
        assert nodeid in page
        for name, path in entry["properties"].items():
            if name.startswith("dmesg_"):  # the worker's artifact, through the link
                assert (run_dir / worker / path).is_file(), (nodeid, path)
                assert f'href="{worker}/{path}"' in page
    assert {p.name for p in run_dir.iterdir() if p.is_symlink()} == {"gw0", "gw1"}
    for worker in ("gw0", "gw1"):  # each worker's own run has the same entries
        own = json.loads((run_dir / worker / "results.json").read_text())
        assert own and {e["properties"]["worker"] for e in own} == {worker}
        assert {e["nodeid"]: e for e in own} == {
            nodeid: e for nodeid, e in results.items()
            if e["properties"]["worker"] == worker}
    assert all("dmesg_cn1" in e["properties"] for nodeid, e in results.items()
               if nodeid.endswith("[cn1]"))  # the teardown's properties too
    subjects = {e["subject"] for e in json.loads((run_dir / "events.json").read_text())}
    assert {"gw0 cn1", "gw1 cn1"} <= subjects


def test_the_junit_file_names_each_tests_worker(runs: tuple[Run, Run]) -> None:
    serial, parallel = runs
    cases = list(ET.parse(parallel.junit).getroot().iter("testcase"))
    assert len(cases) == 15
    for case in cases:
        workers = [p.get("value") for p in case.iter("property") if p.get("name") == "worker"]
        assert workers in (["gw0"], ["gw1"]), ET.tostring(case)[:300]
    assert not [p for p in ET.parse(serial.junit).getroot().iter("property")
                if p.get("name") == "worker"]


class Recording:
    """Stands in for a scheduler: records the calls it gets."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls
        self.nodes: list[str] = []
        self.collection_is_completed = True

    def add_node(self, node: str) -> None:
        self.calls.append(f"{self.name} add {node}")

    def add_node_collection(self, node: str, collection: list[str]) -> None:
        self.calls.append(f"{self.name} collection {node}")

    def schedule(self) -> None:
        self.calls.append(f"{self.name} schedule")

    def mark_test_complete(self, node: str, item_index: int, duration: float = 0) -> None:
        self.calls.append(f"{self.name} complete {item_index}")


@pytest.mark.parametrize(("lab_used", "chosen"), [(True, "lab"), (False, "load")])
def test_without_a_choice_of_the_user_the_lab_schedules_only_a_run_that_uses_it(
        lab_used: bool, chosen: str) -> None:
    calls: list[str] = []
    scheduler = ChosenAtSchedule(Recording("lab", calls), Recording("load", calls),  # type: ignore[arg-type]
                                 lambda: lab_used)
    scheduler.add_node("gw0")
    scheduler.add_node_collection("gw0", ["t"])
    scheduler.schedule()
    scheduler.mark_test_complete("gw0", 0)
    assert calls == ["lab add gw0", "load add gw0", "lab collection gw0",
                     "load collection gw0", f"{chosen} schedule", f"{chosen} complete 0"]


def test_the_relay_prints_whole_lines_prefixed_and_notes_the_workers_run(
        tmp_path: Path) -> None:
    exchange = Exchange(tmp_path / "workers")
    said: list[str] = []
    reader = RelayReader(exchange, said.append)
    writer = RelayWriter(exchange, "gw1")
    writer.line("[hplab] boot cn1 ...")
    writer.run(tmp_path / "abcd", 12.5)
    with exchange.progress("gw1").open("a") as handle:
        handle.write('{"line": "half')  # being written
    reader.drain()
    assert said == ["[gw1] [hplab] boot cn1 ..."]
    assert reader.runs == {"gw1": WorkerRun("gw1", tmp_path / "abcd", 12.5)}
    with exchange.progress("gw1").open("a") as handle:
        handle.write(' a line"}\n')
    reader.stop()
    assert said[1:] == ["[gw1] half a line"]


SPREAD_ONLY = HEAD + '''

@pytest.mark.parametrize("n", range(4))
def test_spread(guest, n):
    ran(f"spread-{n}", 0.5)
'''


def test_the_workers_join_the_session_lock_the_controller_took(tmp_path: Path) -> None:
    """Both workers boot a lab under the one session lock of the controller: with no
    wait allowed, a worker that took the lock itself would refuse the other."""
    run = run_tests(tmp_path, "locked", "-n", "2", "--session-wait", "0",
                    tests={"test_spread.py": SPREAD_ONLY})
    run.result.assert_outcomes(passed=4)
    assert set(run.workers().values()) == {"gw0", "gw1"}
    handed = Exchange(run.run_dir() / "workers").handed_session()
    assert handed is not None
    claim, error = handed
    assert error is None and claim is not None
