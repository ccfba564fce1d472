"""The pytest plugin: options, the lab session, per-node fixtures, need markers."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import topology as topologies
from lab.engine import Lab, NodeRuntime
from lab.errors import LabError
from lab.events import EventBus, ProgressPrinter
from lab.guest import Guest
from lab.paths import lab_dir
from lab.topology import Node, Topology

DEFAULT_TOPOLOGY = "topologies/single.yaml"


class LabSession:
    """The one lab of a pytest session: booted on first use, torn down at exit."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.base_dir = lab_dir(config.getoption("lab_dir"))
        self.keep = bool(config.getoption("keep_vms"))
        self.bus = EventBus()
        self.bus.subscribe(ProgressPrinter())
        self._topology: Topology | None = None
        self._lab: Lab | None = None
        self._failure: BaseException | None = None

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            path = Path(self.config.getoption("topology"))
            if not path.is_absolute():
                path = Path(self.config.rootpath) / path
            kernel = self.config.getoption("kernel")
            self._topology = topologies.load(path, {"kernel": kernel} if kernel else None)
        return self._topology

    def lab(self) -> Lab:
        if self._failure is not None:
            raise LabError(f"the lab did not start earlier in this session: {self._failure}")
        if self._lab is None:
            lab = Lab(self.topology, self.base_dir, self.bus, keep=self.keep)
            try:
                lab.start()
            except BaseException as exc:
                self._failure = exc
                raise
            self._lab = lab
        return self._lab

    def close(self) -> None:
        if self._lab is not None:
            self._lab.stop()
            self._lab = None


SESSION = pytest.StashKey[LabSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hplab", "hplab lab options")
    group.addoption("--topology", default=DEFAULT_TOPOLOGY,
                    help=f"topology file of the lab (default: {DEFAULT_TOPOLOGY})")
    group.addoption("--kernel", default=None,
                    help="kernel for every node, overriding the topology (e.g. debian:6.12)")
    group.addoption("--keep-vms", action="store_true",
                    help="leave the guests running after the session (remove: hplab down)")
    group.addoption("--lab-dir", default=None,
                    help="cache and run directory (default: $HPLAB_DIR or /var/tmp/hplab)")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SESSION] = LabSession(config)
    signal.signal(signal.SIGTERM, _terminate)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION, None)
    if session is not None:
        session.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "node_name" in metafunc.fixturenames:
        session = metafunc.config.stash[SESSION]
        names = [node.name for node in session.topology.nodes]
        metafunc.parametrize("node_name", names, ids=names, scope="session")


def hugepage_shortfall(node: Node, marker: pytest.Mark | None) -> str | None:
    """Why `node` cannot give what a hugepages(size, count) marker asks, or None."""
    if marker is None:
        return None
    size = marker.kwargs.get("size", marker.args[0] if marker.args else "1G")
    count = marker.kwargs.get("count", marker.args[1] if len(marker.args) > 1 else 1)
    have = node.hugepages
    if have is None or have.size != size or have.count < count:
        got = f"{have.count} x {have.size}" if have else "no"
        return (f"node {node.name!r} has {got} huge pages; the test needs "
                f"{count} x {size}")
    return None


@pytest.fixture(scope="session")
def lab_session(request: pytest.FixtureRequest) -> LabSession:
    return request.config.stash[SESSION]


@pytest.fixture(scope="session")
def lab(lab_session: LabSession) -> Iterator[Lab]:
    yield lab_session.lab()


@pytest.fixture
def node(request: pytest.FixtureRequest, lab_session: LabSession, node_name: str) -> NodeRuntime:
    reason = hugepage_shortfall(lab_session.topology.node(node_name),
                                request.node.get_closest_marker("hugepages"))
    if reason:
        pytest.skip(reason)
    runtime = lab_session.lab().nodes[node_name]
    request.node.user_properties.extend([("node", node_name),
                                         ("kernel", runtime.kernel.release),
                                         ("accel", runtime.accel)])
    return runtime


@pytest.fixture
def guest(node: NodeRuntime) -> Guest:
    assert node.guest is not None
    return node.guest


@pytest.fixture
def host(guest: Guest) -> Any:
    """A testinfra host for the node, over the lab's pinned SSH connection."""
    return guest.testinfra_host()
