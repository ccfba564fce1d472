"""The pytest plugin of the lab, as pytest finds it: its options, its hooks and its
fixtures. The lab session (lab.pytest_plugin.session), what the phases of a test come to
(outcomes) and what the run says (reporting) live in their own modules; the hooks here
hand each phase to them."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from lab.cli import mutants
from lab.engine import Lab, NodeRuntime
from lab.errors import LabError
from lab.fragment.driver import FragmentRun, GuestFragmenter, ReleaseOutcome
from lab.fragment.spec import FragmentSpec, Target
from lab.guest.ssh import Guest
from lab.host import sessionlock
from lab.pytest_plugin import outcomes, serial
from lab.pytest_plugin.controller import (
    CONTROLLER,
    ParallelRun,
    is_controller,
    note_users_choice,
)
from lab.pytest_plugin.distribution import SERIAL_MARKER, groups_of, serial_last
from lab.pytest_plugin.needs import hugepage_shortfall
from lab.pytest_plugin.outcomes import set_property
from lab.pytest_plugin.reporting import terminal_line
from lab.pytest_plugin.session import SESSION, LabSession
from lab.pytest_plugin.usage import uses_lab
from lab.timeouts import SESSION_WAIT_S, Timeouts

if TYPE_CHECKING:
    from lab.dut.install import ModuleBuilds

DEFAULT_TOPOLOGY = "topologies/single.yaml"
pytest_plugins = ["lab.pytest_plugin.junit"]  # the run's JUnit testsuite name and properties
# Each lab option's default: a run that sets one uses the lab (see LabSession.in_use).
DEFAULTS: dict[str, Any] = {"topology": DEFAULT_TOPOLOGY, "kernel": None, "keep_vms": False,
                            "lab_dir": None, "kmod_source": "kmod",
                            "lab_test_timeout": Timeouts.test_safety_net,
                            "kmod_defect": None, "session_wait": None,
                            "baseline": None}
MARKERS = (
    "lab: the test boots real VMs",
    "fresh_guest: the test starts in a node no earlier test has used (rebooted if needed)",
    "hugepages(size, count) or hugepages(count={size: count, ...}): the test needs a node "
    "with this many huge pages of this size (of any one size listed)",
    "fuzz_deep: a deep fuzzer run (test_fuzz_deep.py; --fuzz-calls sets its length)",
    SERIAL_MARKER,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hplab", "hplab lab options")
    group.addoption("--topology", default=DEFAULTS["topology"],
                    help=f"topology file of the lab (default: {DEFAULT_TOPOLOGY})")
    group.addoption("--kernel", default=DEFAULTS["kernel"],
                    help="kernel for every node, overriding the topology (e.g. debian:6.12, "
                         "debian:6.12-rt, local:DIR, debug:6.1)")
    group.addoption("--keep-vms", action="store_true", default=DEFAULTS["keep_vms"],
                    help="leave the guests running after the session (remove: hplab down)")
    group.addoption("--lab-dir", default=DEFAULTS["lab_dir"],
                    help="cache and run directory (default: $HPLAB_DIR or /var/tmp/hplab)")
    group.addoption("--kmod-source", default=DEFAULTS["kmod_source"],
                    help="vrhp module and agent sources, relative to the rootdir (default: kmod)")
    group.addoption("--lab-test-timeout", type=float, default=DEFAULTS["lab_test_timeout"],
                    help="last-resort bound of a whole lab test, in reference seconds scaled "
                         "by the slowest node's measured speed (0: none; default: "
                         f"{Timeouts.test_safety_net:.0f})")
    group.addoption("--kmod-defect", default=DEFAULTS["kmod_defect"],
                    help="build vrhp with one planted defect of the mutation checks "
                         f"({', '.join(mutants.DEFECTS)}; see hplab mutants)")
    group.addoption("--session-wait", type=sessionlock.wait_option,
                    default=DEFAULTS["session_wait"], metavar="SECONDS",
                    help="how long the lab waits while another lab session holds the host "
                         f"(default: ${sessionlock.WAIT_ENV} or {SESSION_WAIT_S:.0f}; 0: "
                         "refuse at once)")
    group.addoption("--baseline", default=DEFAULTS["baseline"],
                    help="a run to compare this one with at the end (run directory, "
                    "results.json or JUnit XML): compare.html in the run directory and a "
                    "one-line summary")


def lab_options_given(config: pytest.Config) -> bool:
    return any(config.getoption(name) != default for name, default in DEFAULTS.items())


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config) -> Generator[None, object, object]:
    note_users_choice(config)  # before pytest-xdist turns -n N into --dist load
    return (yield)


def pytest_configure(config: pytest.Config) -> None:
    """Markers and an idle lab session: nothing happens until the lab is used."""
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    session = LabSession(config)
    config.stash[SESSION] = session
    config.pluginmanager.register(session, "hplab-session")  # hears every test report
    if is_controller(config):
        config.pluginmanager.register(ParallelRun(config), CONTROLLER)


@pytest.hookimpl(trylast=True)  # after deselection: these are the tests that run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Whether the run uses the lab; on an xdist worker, the serial tests last and the
    groups handed to the controller (lab.pytest_plugin.distribution)."""
    session = config.stash[SESSION]
    session.in_use = (session.in_use or lab_options_given(config)
                      or any(uses_lab(item) for item in items))
    if session.in_use and session.worker is not None and session.exchange is not None:
        serial_last(items)
        session.exchange.write_groups(session.worker, groups_of(items))


def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[SESSION].close()


def pytest_terminal_summary(config: pytest.Config) -> None:
    for line in config.stash[SESSION].summary:
        terminal_line(config, line)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION, None)
    if session is not None:
        session.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """Give a lab test pytest-timeout's signal-method bound, scaled as the lab's own bounds
    are, before pytest-timeout reads it; a test's own timeout marker wins. Under xdist,
    hold the serial lock for the whole protocol (lab.pytest_plugin.serial)."""
    session = item.config.stash[SESSION]
    if not session.in_use:
        yield
        return
    reference = float(item.config.getoption("lab_test_timeout"))
    if reference > 0 and item.get_closest_marker("lab") and not item.get_closest_marker(
            "timeout"):
        seconds = session.safety_net(reference)
        item.add_marker(pytest.mark.timeout(round(seconds, 1), method="signal"))
    if not uses_lab(item):
        yield
        return
    with serial.phase(item, session):
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Before the test's fixtures (class-scoped ones too): fail if the serial lock could
    not be taken, boot the test's nodes that died again, mark every node's kernel log."""
    serial.check(item)
    outcomes.prepare_phase(item)
    yield from outcomes.watch_nodes(item, "setup")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield from outcomes.watch_nodes(item, "call")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item,
                            nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """As the other phases; and after a death every cached fixture is finalized, where
    what fails only because the dead node's Guest is retired is noted, not raised."""
    yield from outcomes.teardown_phase(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Fail a test whose nodes logged a kernel failure or gained taint; record the class
    the test has after this phase."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    outcomes.judge(item, call, report)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "node_name" in metafunc.fixturenames:
        session = metafunc.config.stash[SESSION]
        names = [node.name for node in session.topology.nodes]
        metafunc.parametrize("node_name", names, ids=names, scope="session")



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
    lab_session.fresh(node_name, request.node)
    request.node.user_properties.extend([("node", node_name),
                                         ("kernel", runtime.kernel.release),
                                         ("accel", runtime.accel)])
    return runtime


@pytest.fixture
def guest(node: NodeRuntime, lab: Lab) -> Guest:
    return lab.guest(node.node.name)  # names the node if it is down (a failed reboot)


@pytest.fixture
def reboot(request: pytest.FixtureRequest, lab_session: LabSession) -> Callable[[str], Guest]:
    """reboot(node) -> the node's Guest after destroying it and booting it again.

    Guests that fixtures already hold belong to the old boot and refuse every command.
    """
    return lambda name: lab_session.reboot(name, request.node)


@pytest.fixture
def host(guest: Guest) -> Any:
    """A testinfra host for the node, over the lab's pinned SSH connection."""
    return guest.testinfra_host()


@pytest.fixture(scope="session")
def vrhp_builds(lab: Lab, lab_session: LabSession) -> ModuleBuilds:
    """Module builds of this session, by (kernel release, version, layout), from the
    session's module sources with its planted defect (--kmod-defect), if any."""
    from lab.dut.install import ModuleBuilds

    return ModuleBuilds(lab.cache, lab.bus, lab_session.kmod_source, lab_session.kmod_defect)


@pytest.fixture
def vrhp_variant(request: pytest.FixtureRequest, guest: Guest, node: NodeRuntime, lab: Lab,
                 lab_session: LabSession, vrhp_builds: ModuleBuilds) -> Iterator[Any]:
    """Builds vrhp of a version and layout for the node's kernel and installs it.

    At teardown the module is unloaded and the agent's huge-page files are removed, so
    every test starts with the whole pool free.
    """
    from lab.dut import kmod
    from lab.dut.install import install

    def make(version: int = 1, layout: int = 1) -> kmod.GuestModule:
        build = vrhp_builds.build(node.kernel, node.node.name, version, layout)
        used[build.label] = build.key  # named before the copy, which may fail
        set_property(request.node.user_properties, "module_version",
                      ", ".join(f"{label} {k}" for label, k in sorted(used.items())))
        return install(guest, node.kernel, vrhp_builds, version=version, layout=layout)

    used: dict[str, str] = {}  # the builds this test installed: what a compare names
    yield make
    if not guest.retired:  # a node rebooted in teardown has nothing loaded
        kmod.reset_guest(guest)
        _reboot_unless_pool_whole(request, guest, node, lab, lab_session)


def _reboot_unless_pool_whole(request: pytest.FixtureRequest, guest: Guest,
                              node: NodeRuntime, lab: Lab, lab_session: LabSession) -> None:
    """Huge pages still held once the module is gone and its files removed (a leaked pin)
    stay held for the rest of the boot: the node boots again, and says why, so that the
    next test starts with the whole pool."""
    from lab.dut import kmod

    pages = node.node.hugepages
    if pages is None:
        return
    total, free = kmod.hugepage_pool(guest, pages.size_kib)
    if (total, free) == (pages.count, pages.count):
        return
    why = (f"{free} of {pages.count} {pages.size} huge pages free after the module was "
           f"unloaded and its files removed (pool {total})")
    request.node.user_properties.append(("pool_after_reset", why))
    with lab.bus.phase("pool-reset", node.node.name, f"{why}: rebooting"):
        lab_session.reboot(node.node.name, request.node)


@pytest.fixture
def vrhp(vrhp_variant: Any) -> Any:
    """vrhp version 1 installed in the node (not loaded)."""
    return vrhp_variant()


@pytest.fixture
def fragmenter(request: pytest.FixtureRequest, guest: Guest, node: NodeRuntime, lab: Lab,
               lab_session: LabSession) -> Iterator[GuestFragmenter]:
    """The fragmenter and allocation probe installed in the node; memory released after.

    A holder that does not release is killed; a guest that cannot even do that is
    rebooted. Either is said on the terminal and in the test's ``fragment_release``
    property, so the next test starts on a guest in a known state.
    """
    tools = GuestFragmenter(guest, node.kernel, lab.cache)
    yield tools
    name = node.node.name
    try:
        outcome = tools.release()
    except LabError as exc:
        outcome = ReleaseOutcome("rebooted", str(exc).splitlines()[0])
        with lab.bus.phase("fragment-release", name, f"release failed, rebooting: {exc}"):
            lab_session.reboot(name, request.node)
    if outcome is not None and outcome.how != "released":
        request.node.user_properties.append(("fragment_release", str(outcome)))
        lab.bus.phase("fragment-release", name).info(str(outcome))


@pytest.fixture
def fragmented(fragmenter: GuestFragmenter, node: NodeRuntime, lab: Lab) -> Iterator[Any]:
    """fragmented(profile, target=Target(), seed=1, ...) -> FragmentRun, memory held.

    Each run, with the probes a test appends to ``run.probes``, is saved as
    ``artifacts/fragment-<profile>-<node>.json``; the memory is released at teardown.
    """
    runs: list[FragmentRun] = []

    def make(profile: str = "anon-pinned", target: Target | None = None, seed: int = 1,
             **options: Any) -> FragmentRun:
        spec = FragmentSpec(profile, target or Target(), seed, **options)
        with lab.bus.phase("fragment", node.node.name, profile) as phase:
            run = fragmenter.fragment(spec, progress=phase.info)
        runs.append(run)
        return run

    yield make
    for run in runs:
        name = f"fragment-{run.spec.profile}-{node.node.name}.json"
        (lab.make_artifacts_dir() / name).write_text(run.to_json())
