"""Suite-only fixtures of the vrhp qualification suites."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from vrhp_support import RecordProperty

from lab.dut import kmod
from lab.dut.install import ModuleBuilds, install
from lab.dut.kmod import GuestModule
from lab.engine import Lab
from lab.pytest_plugin.needs import hugepage_shortfall
from lab.pytest_plugin.session import LabSession
from lab.topology import HugePages

FUZZ_CALLS_DEFAULT = 5000  # per backend: about a minute under TCG


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("hplab").addoption(
        "--fuzz-calls", type=int, default=None,
        help="operations of each deep fuzzer run (test_fuzz_deep.py; default: "
             f"$HPLAB_FUZZ_CALLS or {FUZZ_CALLS_DEFAULT})")


@pytest.fixture
def fuzz_calls(request: pytest.FixtureRequest) -> int:
    """Operations per deep fuzzer run: --fuzz-calls, else $HPLAB_FUZZ_CALLS, else 5,000."""
    option = request.config.getoption("fuzz_calls")
    calls = int(option if option is not None
                else os.environ.get("HPLAB_FUZZ_CALLS", FUZZ_CALLS_DEFAULT))
    if calls < 1:
        raise pytest.UsageError(f"--fuzz-calls must be positive, got {calls}")
    return calls


@pytest.fixture(scope="class")
def class_module(request: pytest.FixtureRequest, lab: Lab, node_name: str,
                 vrhp_builds: ModuleBuilds) -> Iterator[GuestModule]:
    """vrhp v1 installed (not loaded) for every test of a class; reset at the end.

    The plugin's `vrhp` fixture is per test; tables that take seconds to build (a
    1.2 GiB flow table is zeroed twice) are built once per class through this one.
    """
    reason = hugepage_shortfall(lab.topology.node(node_name),
                                request.node.get_closest_marker("hugepages"))
    if reason:
        pytest.skip(reason)
    runtime = lab.nodes[node_name]
    guest = lab.guest(node_name)
    vrhp_builds.build(runtime.kernel, node_name)  # a failed build leaves the guest as it was
    kmod.reset_guest(guest)
    module = install(guest, runtime.kernel, vrhp_builds)
    yield module
    kmod.reset_guest(guest)


@pytest.fixture
def hugepool(lab_session: LabSession, node_name: str) -> HugePages:
    """The node's huge-page pool: size ("1G"/"2M"), size_bytes, size_kib, count, and the
    mount the agent uses for it; a node without huge pages skips the test."""
    pool = lab_session.topology.node(node_name).hugepages
    if pool is None:
        pytest.skip(f"node {node_name!r} has no huge pages")
    return pool


@pytest.fixture
def record_property(request: pytest.FixtureRequest) -> RecordProperty:
    """pytest's record_property without its xunit2 warning.

    Properties go to the test's user_properties, which the lab plugin writes to
    results.json and pytest to JUnit (with junit_family xunit1/legacy).
    """
    def record(name: str, value: object) -> None:
        request.node.user_properties.append((name, value))

    return record


@pytest.fixture
def uapi(lab_session: LabSession) -> tuple[Path, ...]:
    """Where the guest tools that speak vrhp's ioctls find its UAPI header."""
    return (lab_session.kmod_source / "include",)
