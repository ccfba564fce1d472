"""The run's JUnit testsuite: named after its topology and kernel, with the topology,
kernel specs and releases, host, run id, run directory and shard as properties, so that
shards and kernels merged later (hplab merge) stay apart by their testsuite while the
test ids stay the same. The same record is kept as the run directory's suite.json.

Registered by the lab plugin (its `pytest_plugins`); a session that uses no lab fixture
gets neither."""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path

import pytest
from _pytest.junitxml import xml_key

from lab.errors import LabError
from lab.pytest_plugin.controller import CONTROLLER, ParallelRun
from lab.pytest_plugin.session import SESSION, LabSession
from lab.rundir import SuiteRecord, read_suite, write_suite

STARTED = pytest.StashKey[float]()


def _joined(values: list[str]) -> str:
    return ", ".join(dict.fromkeys(values))


def _topology_shown(session: LabSession) -> str:
    """The topology file relative to the rootdir when it lies below it."""
    path = session.topology.path
    try:
        return path.resolve().relative_to(Path(session.config.rootpath).resolve()).as_posix()
    except ValueError:
        return str(path)


def _shard(config: pytest.Config) -> str:
    """pytest-split's `--group G --splits K` as "G/K"; "" when not sharded."""
    splits, group = config.getoption("splits", None), config.getoption("group", None)
    return f"{group}/{splits}" if splits and group else ""


def suite_record(session: LabSession, seconds: float) -> SuiteRecord:
    """What names the run of `session`, as far as it got (no lab booted: no releases,
    no run id)."""
    lab = session.running
    nodes = session.topology.nodes
    return SuiteRecord(
        topology=_topology_shown(session), kernel=_joined([n.kernel for n in nodes]),
        kernel_release=_joined([lab.nodes[n.name].kernel.release for n in nodes])
        if lab is not None else "",
        host=socket.gethostname(), run_id=lab.run_id if lab is not None else "",
        run_dir=str(lab.run_dir) if lab is not None else "", shard=_shard(session.config),
        seconds=round(seconds, 3))


def _uses_lab(session: pytest.Session, lab_session: LabSession) -> bool:
    return lab_session.running is not None or any(
        "lab_session" in getattr(item, "fixturenames", ()) for item in session.items)


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[STARTED] = time.monotonic()


def controller_record(session: LabSession, parallel: ParallelRun,
                      seconds: float) -> SuiteRecord:
    """The record of an xdist run: the controller's run id and directory, and the kernel
    releases its workers' runs recorded."""
    releases = []
    for run in parallel.reader.runs.values():
        try:
            releases.append(read_suite(run.run_dir).kernel_release)
        except (LabError, ValueError, OSError):  # a worker whose lab did not start has none
            continue
    record = suite_record(session, seconds)
    return dataclasses.replace(record, kernel_release=_joined([r for r in releases if r]),
                               run_id=parallel.run_id, run_dir=str(parallel.run_dir))


@pytest.hookimpl(tryfirst=True)  # before junitxml writes the file
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    lab_session = config.stash.get(SESSION, None)
    parallel = config.pluginmanager.get_plugin(CONTROLLER)
    seconds = time.monotonic() - config.stash[STARTED]
    if lab_session is None:
        return
    run_dir: Path | None
    if isinstance(parallel, ParallelRun) and parallel.in_use:
        record, run_dir = controller_record(lab_session, parallel, seconds), parallel.run_dir
    elif _uses_lab(session, lab_session):
        record = suite_record(lab_session, seconds)
        run_dir = lab_session.running.run_dir if lab_session.running is not None else None
    else:
        return
    xml = config.stash.get(xml_key, None)
    if xml is not None:
        xml.suite_name = record.name
        for name, value in record.properties():
            xml.add_global_property(name, value)
    if run_dir is not None:
        write_suite(run_dir, record)
