"""The pytest plugin: options, the lab session, per-node fixtures, need markers."""

from __future__ import annotations

import re
import signal
import sys
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lab import topology as topologies
from lab.cli import mutants
from lab.engine import Lab, NodeRuntime
from lab.errors import CanaryLost, GuestError, LabError, NodeDied
from lab.events import Event, EventBus, progress_line
from lab.fragment.driver import FragmentRun, GuestFragmenter, ReleaseOutcome
from lab.fragment.spec import FragmentSpec, Target
from lab.guest import triage
from lab.guest.ssh import Guest
from lab.paths import lab_dir
from lab.report.compare import compare_paths
from lab.report.html import COMPARE_NAME, write_compare, write_report
from lab.report.results import bounded
from lab.rundir import ResultEntry, write_results
from lab.timeouts import Timeouts
from lab.topology import PAGE_SIZES, Node, Topology

if TYPE_CHECKING:
    from lab.dut.install import ModuleBuilds

DEFAULT_TOPOLOGY = "topologies/single.yaml"
MAX_REVIVALS = 3  # per node and session
DEATH_SETTLE_S = 2.0  # libvirt's word that a domain is gone can trail SSH's by a moment


class TerminalProgress:
    """Progress lines through pytest's terminal reporter as they happen, with capturing
    suspended, so a passing test's phases show too; stderr where no reporter runs."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def __call__(self, event: Event) -> None:
        terminal_line(self.config, progress_line(event))


def terminal_line(config: pytest.Config, line: str) -> None:
    """`line` on the terminal now, with capturing suspended; stderr where no reporter runs."""
    plugins = config.pluginmanager
    reporter = plugins.getplugin("terminalreporter")
    capture = plugins.getplugin("capturemanager")
    suspended: AbstractContextManager[None] = (
        capture.global_and_fixture_disabled() if capture is not None else nullcontext())
    with suspended:
        if reporter is None:
            print(line, file=sys.stderr, flush=True)
        else:
            reporter.write_line(line)  # after a newline when a test's line is open
            reporter.flush()


def _kmod_defect(name: str | None) -> str | None:
    try:
        return mutants.check_defect(name) if name else None
    except mutants.MutantError as exc:
        raise pytest.UsageError(str(exc)) from None


class LabSession:
    """The one lab of a pytest session: booted on first use, torn down at exit."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.base_dir = lab_dir(config.getoption("lab_dir"))
        self.keep = bool(config.getoption("keep_vms"))
        self.kmod_source = Path(config.rootpath) / config.getoption("kmod_source")
        self.kmod_defect = _kmod_defect(config.getoption("kmod_defect"))
        self.baseline = baseline_path(config)
        self.bus = EventBus()
        self.bus.subscribe(TerminalProgress(config))
        self._topology: Topology | None = None
        self._lab: Lab | None = None
        self._failure: BaseException | None = None
        self.watches: dict[str, triage.ConsoleWatch] = {}
        self.untouched: set[str] = set()  # nodes booted since the last test ended
        self.results: dict[str, ResultEntry] = {}
        self.deaths: dict[str, list[NodeDied]] = {}
        self.revivals: dict[str, int] = {}
        self.retired_for: list[str] = []  # why the Guests of dead nodes refuse commands
        self.stale = False  # cached fixtures may hold the Guest of a dead node

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
            self.untouched = set(lab.nodes)
            self.watches = {name: triage.ConsoleWatch(rt.console)
                            for name, rt in lab.nodes.items()}
        return self._lab

    def reboot(self, name: str, item: pytest.Item) -> Guest:
        """Reboot node `name` for test `item`, whose kernel log of the node then starts
        at the new boot; the node's new Guest."""
        seconds = self.lab().reboot(name)
        item.user_properties.append(("reboot_seconds", round(seconds, 2)))
        item.stash.setdefault(CANARIES, {})[name] = None
        return self.lab().guest(name)

    def reboots_for(self, name: str, item: pytest.Item) -> bool:
        """Whether `item` asks for a fresh guest and node `name` has served a test since
        it booted."""
        return item.get_closest_marker("fresh_guest") is not None and name not in self.untouched

    def fresh(self, name: str, item: pytest.Item) -> bool:
        """Reboot node `name` if `item` asks for a fresh guest and some test has run on it
        since it booted; whether it rebooted."""
        if not self.reboots_for(name, item):
            return False
        self.reboot(name, item)
        self.untouched.add(name)
        return True

    @property
    def running(self) -> Lab | None:
        return self._lab

    def nodes_of(self, item: pytest.Item) -> list[str]:
        """The nodes `item` runs on: its node_name, else every node if it uses the lab."""
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "node_name" in callspec.params:
            return [str(callspec.params["node_name"])]
        if self._lab is not None and "lab" in getattr(item, "fixturenames", ()):
            return list(self._lab.nodes)
        return []

    def notice_deaths(self, item: pytest.Item, moment: str, *,
                      settle: bool = False) -> list[NodeDied]:
        """Nodes whose QEMU exited since the last look: each death is recorded and
        announced once, the node's Guest retired. Returns the deaths on nodes `item`
        uses; with `settle`, gives libvirt a moment to see a death of one of those."""
        lab = self._lab
        if lab is None:
            return []
        used = self.nodes_of(item)
        deadline = time.monotonic() + (DEATH_SETTLE_S if settle and used else 0.0)
        died: list[NodeDied] = []
        while True:
            died += self._look(lab, moment)
            mine = [death for death in died if death.node in used]
            if mine or time.monotonic() >= deadline:
                return mine
            time.sleep(0.1)

    def _look(self, lab: Lab, moment: str) -> list[NodeDied]:
        died = []
        for name, rt in lab.nodes.items():
            if rt.guest is None:
                continue
            try:
                cause = lab.exit_cause(name)
            except LabError:  # libvirt unreachable: SSH will say what it can
                continue
            if cause is None:
                continue
            deaths = self.deaths.setdefault(name, [])
            revived = self.revivals.get(name, 0)
            after = (f"the next test on {name} boots it again "
                     f"(revival {revived + 1} of {MAX_REVIVALS})" if revived < MAX_REVIVALS
                     else f"no revival left ({MAX_REVIVALS} this session)")
            death = NodeDied(name, cause, moment, console_tail=lab.console_tail(name),
                             after=after)
            why = f"QEMU exited ({cause}) {moment}"
            lab.retire(name, why)
            self.retired_for.append(why)
            deaths.append(death)
            self.stale = True
            self.bus.phase("qemu", name).info(f"exited ({cause}) {moment}; {after}")
            died.append(death)
        return died

    def consequence(self, exc: BaseException) -> bool:
        """Whether `exc` is only a Guest of a dead node refusing a command."""
        if isinstance(exc, BaseExceptionGroup):
            return all(self.consequence(e) for e in exc.exceptions)
        return isinstance(exc, GuestError) and any(why in str(exc) for why in self.retired_for)

    def drop_fixtures(self, item: pytest.Item) -> list[BaseException]:
        """Finalize every cached fixture, so that none set up with the Guest of a dead
        node outlives it (class and module ones are set up again for the next test);
        the errors of the finalizers."""
        self.stale = False
        try:
            item.session._setupstate.teardown_exact(None)
        except BaseException as exc:  # each finalizer's error is judged by the caller
            return [exc]
        return []

    def prepare_nodes(self, item: pytest.Item) -> list[str]:
        """Before `item`'s fixtures: notice nodes that died between tests, drop fixtures
        holding their Guests, boot the dead nodes `item` uses again (at most
        MAX_REVIVALS times per node). Returns the nodes booted."""
        lab = self._lab
        if lab is None:
            return []
        self.notice_deaths(item, f"between tests, before {item.nodeid}")
        if self.stale:
            real = [e for e in self.drop_fixtures(item) if not self.consequence(e)]
            if real:
                raise real[0]
        revived = []
        for name in self.nodes_of(item):
            rt = lab.nodes.get(name)
            deaths = self.deaths.get(name)
            if rt is None or rt.guest is not None or not deaths:
                continue
            if self.revivals.get(name, 0) >= MAX_REVIVALS:
                raise LabError(f"node {name} died {len(deaths)} times this session "
                               f"(last: {deaths[-1].args[0]}); not reviving")
            self.revivals[name] = self.revivals.get(name, 0) + 1
            seconds = lab.revive(name)
            item.user_properties.append(("revive_seconds", round(seconds, 2)))
            self.untouched.add(name)
            revived.append(name)
        return revived

    def console_findings(self) -> list[tuple[str, triage.Finding]]:
        return [(name, finding) for name, watch in self.watches.items()
                for finding in watch.new_findings()]

    def safety_net(self, reference: float) -> float:
        """`reference` seconds for the slowest node: each node's measured slowdown, or
        the largest accepted while none is booted (the first test also boots the lab)."""
        lab = self._lab
        if lab is None or not lab.nodes:
            return Timeouts().bound(reference).seconds
        return max(rt.timeouts.bound(reference).seconds for rt in lab.nodes.values())

    def taints(self) -> dict[str, int]:
        """Kernel taint of every reachable node (unreachable nodes are left out)."""
        result: dict[str, int] = {}
        if self._lab is None:
            return result
        for name, rt in self._lab.nodes.items():
            if rt.guest is None or rt.guest.silent:  # a frozen guest would only cost its bound
                continue
            try:
                result[name] = int(rt.guest.check("cat /proc/sys/kernel/tainted", timeout=20))
            except (LabError, ValueError):
                continue
        return result

    def record(self, report: pytest.TestReport, properties: list[tuple[str, object]]) -> None:
        entry = self.results.setdefault(report.nodeid, ResultEntry(report.nodeid))
        entry.duration = round(entry.duration + report.duration, 3)
        if report.failed:
            entry.outcome = "failed" if report.when == "call" else "error"
            entry.message = _joined(entry.message or "", failure_message(report))
        elif report.skipped and entry.outcome == "passed":
            entry.outcome = "skipped"
            entry.reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) \
                else str(report.longrepr)
        entry.properties = {str(k): str(v) for k, v in properties}

    def close(self) -> None:
        if self._lab is None:
            if self.baseline is not None:
                terminal_line(self.config, f"hplab: no comparison with {self.baseline}: no "
                              "lab ran in this session, so it wrote no results.json")
            return
        run_dir = self._lab.run_dir
        try:
            self._lab.stop()
        finally:
            self._lab = None
            write_results(run_dir, self.results.values())
            try:
                write_report(run_dir)
            except (LabError, OSError) as exc:  # the report never hides the run's own outcome
                print(f"hplab: no report for {run_dir}: {exc}", file=sys.stderr)
            if self.baseline is not None:
                terminal_line(self.config, compare_with_baseline(self.baseline, run_dir))


def baseline_path(config: pytest.Config) -> Path | None:
    """--baseline, from the directory pytest was started in; a usage error if absent."""
    option = config.getoption("baseline")
    if option is None:
        return None
    path = config.invocation_params.dir / Path(str(option))
    if not path.exists():
        raise pytest.UsageError(f"--baseline {option}: no such file or directory")
    return path


def compare_with_baseline(baseline: Path, run_dir: Path) -> str:
    """Write the run's compare.html against `baseline`; the line that says how it went."""
    try:
        comparison = compare_paths(baseline, run_dir)
        page = write_compare(comparison, run_dir / COMPARE_NAME)
    except (LabError, OSError) as exc:  # as the report: never hides the run's outcome
        return f"hplab: no comparison with {baseline}: {exc}"
    return f"hplab: {comparison.summary_line()} ({page})"


def failure_message(report: pytest.TestReport) -> str:
    """What a failed phase says, bounded; a setup or teardown failure names its phase."""
    text = bounded(report.longreprtext.strip())
    return text if report.when == "call" else f"[{report.when}] {text}"


def _joined(earlier: str, later: str) -> str:
    return f"{earlier}\n\n{later}" if earlier else later


SESSION = pytest.StashKey[LabSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hplab", "hplab lab options")
    group.addoption("--topology", default=DEFAULT_TOPOLOGY,
                    help=f"topology file of the lab (default: {DEFAULT_TOPOLOGY})")
    group.addoption("--kernel", default=None,
                    help="kernel for every node, overriding the topology (e.g. debian:6.12, "
                         "debian:6.12-rt, local:DIR, debug:6.1)")
    group.addoption("--keep-vms", action="store_true",
                    help="leave the guests running after the session (remove: hplab down)")
    group.addoption("--lab-dir", default=None,
                    help="cache and run directory (default: $HPLAB_DIR or /var/tmp/hplab)")
    group.addoption("--kmod-source", default="kmod",
                    help="vrhp module and agent sources, relative to the rootdir (default: kmod)")
    group.addoption("--lab-test-timeout", type=float, default=Timeouts.test_safety_net,
                    help="last-resort bound of a whole lab test, in reference seconds scaled "
                         "by the slowest node's measured speed (0: none; default: "
                         f"{Timeouts.test_safety_net:.0f})")
    group.addoption("--kmod-defect", default=None,
                    help="build vrhp with one planted defect of the mutation checks "
                         f"({', '.join(mutants.DEFECTS)}; see hplab mutants)")
    group.addoption("--baseline", default=None,
                    help="a run to compare this one with at the end (run directory, "
                    "results.json or JUnit XML): compare.html in the run directory and a "
                    "one-line summary")


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SESSION] = LabSession(config)
    signal.signal(signal.SIGTERM, _terminate)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION, None)
    if session is not None:
        session.close()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    """Give a lab test pytest-timeout's signal-method bound, scaled as the lab's own bounds
    are, before pytest-timeout reads it; a test's own timeout marker wins."""
    reference = float(item.config.getoption("lab_test_timeout"))
    if reference > 0 and item.get_closest_marker("lab") and not item.get_closest_marker(
            "timeout"):
        seconds = item.config.stash[SESSION].safety_net(reference)
        item.add_marker(pytest.mark.timeout(round(seconds, 1), method="signal"))
    yield


TAINT_BEFORE = pytest.StashKey[dict[str, int]]()
CANARIES = pytest.StashKey[dict[str, str | None]]()


def _canaries(session: LabSession, item: pytest.Item) -> dict[str, str | None]:
    marks: dict[str, str | None] = {}
    lab = session.running
    if lab is not None:
        for name, rt in lab.nodes.items():
            if session.reboots_for(name, item):
                continue  # its log ends with this boot; the fixture marks it from boot
            if rt.guest is not None:
                try:
                    marks[name] = rt.guest.canary(item.name[:80])
                except LabError:
                    continue
    return marks


def _dmesg_sections(session: LabSession, marks: dict[str, str | None]
                    ) -> list[tuple[str, str]]:
    """Each node's kernel log since its mark; a node without a mark (booted during the
    test) since its boot."""
    sections = []
    lab = session.running
    for name, mark in marks.items():
        rt = lab.nodes.get(name) if lab else None
        if rt is None or rt.guest is None:
            continue
        if rt.guest.silent:  # its console log has what the kernel said
            sections.append((name, "(dmesg unavailable: the guest did not answer its last "
                                   f"command; see {rt.console})"))
            continue
        try:
            text = rt.guest.dmesg_since(mark) if mark else rt.guest.check("dmesg")
        except CanaryLost as exc:
            shown = triage.console_since(rt.console, mark) if mark else None
            text = (f"(dmesg unavailable: {exc}; not on the console either)" if shown is None
                    else f"(the kernel log wrapped; this is the console from the mark)\n{shown}")
        except LabError as exc:
            text = f"(dmesg unavailable: {exc})"
        if text.strip():
            sections.append((name, text))
    return sections


def _save_dmesg(lab: Lab, nodeid: str, node: str, text: str) -> str:
    """The test's dmesg as an artifact; returns its path relative to the run directory."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[-120:]
    path = lab.make_artifacts_dir() / "dmesg" / f"{name}-{node}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path.relative_to(lab.run_dir))


def _passes_through(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt | SystemExit | pytest.exit.Exception)


def _lost_connection(exc: BaseException) -> bool:
    """An error that a guest gone under the lab would raise."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_lost_connection(e) for e in exc.exceptions)
    return isinstance(exc, GuestError | OSError | EOFError) or triage.from_paramiko(exc)


def _moment(item: pytest.Item, when: str) -> str:
    return f"during {item.nodeid}" if when == "call" else f"during {when} of {item.nodeid}"


def _watch_nodes(item: pytest.Item, when: str) -> Generator[None, None, None]:
    """Run one phase of `item`; if a node it uses died meanwhile, the phase fails with
    that death, whatever else happened."""
    session = item.config.stash[SESSION]
    moment = _moment(item, when)
    try:
        yield
    except BaseException as exc:
        if _passes_through(exc):
            raise
        died = session.notice_deaths(item, moment, settle=_lost_connection(exc))
        if died:
            raise died[0] from exc
        raise
    died = session.notice_deaths(item, moment)
    if died:
        raise died[0]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """Before the test's fixtures (class-scoped ones too): boot the test's nodes that died
    again, mark every node's kernel log."""
    session = item.config.stash[SESSION]
    if session.running is not None:
        revived = session.prepare_nodes(item)
        item.stash[CANARIES] = _canaries(session, item)
        for name in revived:  # its log of this test starts at the new boot
            item.stash[CANARIES][name] = None
    yield from _watch_nodes(item, "setup")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield from _watch_nodes(item, "call")


TAINT_AFTER_CALL = pytest.StashKey[dict[str, int]]()
TEARDOWN_NOTES = pytest.StashKey[list[str]]()


def _fail_on_new_taint(report: pytest.TestReport, item: pytest.Item,
                       after: dict[str, int]) -> bool:
    """Fail the phase when a node gained taint since the test's setup (in the call) or
    since its call (in the teardown). A node unreadable on either side is not compared,
    and the test's properties say so."""
    if TAINT_BEFORE not in item.stash:  # its setup did not pass: nothing to compare with
        return False
    gained = False
    at_setup: dict[str, int] = item.stash[TAINT_BEFORE]
    before = dict(at_setup)
    if report.when == "teardown":
        after_call: dict[str, int] = item.stash.get(TAINT_AFTER_CALL, {})
        before.update(after_call)
    for name in sorted(set(before) | set(after)):
        if name not in before or name not in after:
            side = "before" if name not in before else "after"
            _set_property(item.user_properties, f"taint_unchecked_{report.when}_{name}",
                          f"the node did not answer {side}")
            continue
        new = triage.unexpected_taint(before[name], after[name])
        if new:
            gained = True
            report.outcome = "failed"
            report.longrepr = (f"node {name}: kernel taint gained {triage.taint_names(new)} "
                               f"during {report.when} ({before[name]} -> {after[name]})\n"
                               f"{report.longrepr or ''}")
    return gained
OUTCOME_CLASS = pytest.StashKey[str]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item,
                            nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """As the other phases; and after a death every cached fixture is finalized, where
    what fails only because the dead node's Guest is retired is noted, not raised."""
    session = item.config.stash[SESSION]
    errors: list[BaseException] = []
    try:
        yield
    except BaseException as exc:
        if _passes_through(exc):
            raise
        errors.append(exc)
    died = session.notice_deaths(item, _moment(item, "teardown"),
                                 settle=any(_lost_connection(e) for e in errors))
    if session.stale:
        errors += session.drop_fixtures(item)
    real = [e for e in errors if not session.consequence(e)]
    notes = [f"{type(e).__name__}: {e}" for e in errors if session.consequence(e)]
    if notes:
        item.stash[TEARDOWN_NOTES] = notes
    failure = None
    if real:
        failure = real[0] if len(real) == 1 else BaseExceptionGroup(
            "errors during test teardown", real)
    if died:
        raise died[0] from failure
    if failure is not None:
        raise failure


def _set_property(properties: list[tuple[str, object]], name: str, value: object) -> None:
    properties[:] = [(k, v) for k, v in properties if k != name]
    properties.append((name, value))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Fail a test whose nodes logged a kernel failure or gained taint; record the class
    the test has after this phase."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    session = item.config.stash[SESSION]
    findings: list[tuple[str, triage.Finding]] = []
    tainted = False
    if session.running is not None:
        findings = session.console_findings()
        if report.when == "setup" and report.passed:
            item.stash[TAINT_BEFORE] = session.taints()
            if not item.stash.get(CANARIES, {}):  # the lab booted in this test's setup
                item.stash[CANARIES] = dict.fromkeys(session.running.nodes)
        elif report.when == "teardown":
            session.untouched.clear()
            tainted = _fail_on_new_taint(report, item, session.taints())
            # setup after the canary, the call and the teardown (rmmod, resets)
            for node, text in _dmesg_sections(session, item.stash.get(CANARIES, {})):
                report.sections.append((f"dmesg {node}", text))
                saved = (f"dmesg_{node}", _save_dmesg(session.running, item.nodeid, node, text))
                item.user_properties.append(saved)
                report.user_properties.append(saved)
        elif report.when == "call":
            after = session.taints()
            tainted = _fail_on_new_taint(report, item, after)
            item.stash[TAINT_AFTER_CALL] = after
    if findings:
        text = "\n\n".join(f"kernel {f.kind} on node {node}:\n{f.excerpt}" for node, f in findings)
        report.outcome = "failed"
        report.longrepr = f"{text}\n\n{report.longrepr or ''}".rstrip()
    notes = item.stash.get(TEARDOWN_NOTES, [])
    if report.when == "teardown" and notes:
        report.sections.append(("hplab: cleanup of a dead node's guest skipped",
                                "\n".join(notes)))
    exc = call.excinfo.value if call.excinfo is not None else None
    kind = triage.classify(exc if report.failed else None, [f for _, f in findings],
                           report.skipped, when=report.when,
                           earlier=item.stash.get(OUTCOME_CLASS, None), tainted=tainted)
    item.stash[OUTCOME_CLASS] = kind
    _set_property(item.user_properties, "outcome", kind)
    _set_property(report.user_properties, "outcome", kind)
    session.record(report, list(item.user_properties))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "node_name" in metafunc.fixturenames:
        session = metafunc.config.stash[SESSION]
        names = [node.name for node in session.topology.nodes]
        metafunc.parametrize("node_name", names, ids=names, scope="session")


def hugepage_needs(marker: pytest.Mark) -> dict[str, int]:
    """What a hugepages marker asks, as {page size: count}, any one of which will do.

    ``hugepages(size="1G", count=2)`` (or positional) asks for one size;
    ``hugepages(count={"1G": 2, "2M": 87})`` for a pool of either size.
    """
    count = marker.kwargs.get("count", marker.args[1] if len(marker.args) > 1 else 1)
    if isinstance(count, dict):
        if not count or "size" in marker.kwargs or marker.args:
            raise pytest.UsageError(f"hugepages{marker.args}{marker.kwargs}: a count per "
                                    "size takes no size")
        needs = {str(size): int(n) for size, n in count.items()}
    else:
        size = marker.kwargs.get("size", marker.args[0] if marker.args else "1G")
        needs = {str(size): int(count)}
    unknown = sorted(set(needs) - set(PAGE_SIZES))
    if unknown:
        raise pytest.UsageError(f"hugepages marker: page size {', '.join(unknown)}: must be "
                                f"one of {', '.join(PAGE_SIZES)}")
    return needs


def hugepage_shortfall(node: Node, marker: pytest.Mark | None) -> str | None:
    """Why `node` cannot give what a hugepages marker asks, or None (see hugepage_needs)."""
    if marker is None:
        return None
    needs = hugepage_needs(marker)
    have = node.hugepages
    if have is None or have.count < needs.get(have.size, have.count + 1):
        got = f"{have.count} x {have.size}" if have else "no"
        wanted = " or ".join(f"{n} x {size}" for size, n in needs.items())
        return f"node {node.name!r} has {got} huge pages; the test needs {wanted}"
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
        _set_property(request.node.user_properties, "module_version",
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
