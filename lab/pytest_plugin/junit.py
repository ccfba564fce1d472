"""The run's JUnit testsuite: named after its topology and kernel, with the topology,
kernel specs and releases, host, run id, run directory and shard as properties, so that
shards and kernels merged later (hplab merge) stay apart by their testsuite while the
test ids stay the same. The same record is kept as the run directory's suite.json.

Registered by the lab plugin (its `pytest_plugins`); a session that uses no lab fixture
gets neither."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from _pytest.junitxml import xml_key

from lab.pytest_plugin.session import SESSION, LabSession
from lab.rundir import SuiteRecord, write_suite

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


@pytest.hookimpl(tryfirst=True)  # before junitxml writes the file
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    lab_session = config.stash.get(SESSION, None)
    if lab_session is None or not _uses_lab(session, lab_session):
        return
    record = suite_record(lab_session, time.monotonic() - config.stash[STARTED])
    xml = config.stash.get(xml_key, None)
    if xml is not None:
        xml.suite_name = record.name
        for name, value in record.properties():
            xml.add_global_property(name, value)
    if lab_session.running is not None:
        write_suite(lab_session.running.run_dir, record)
