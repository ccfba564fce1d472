"""The lab of a pytest session and its lifecycle: booted on first use (or reused),
nodes that died noticed, their Guests retired and the nodes revived, each node's
kernel taint and console findings read, the results written at exit."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from lab import topology as topologies
from lab.cli import mutants
from lab.engine import Lab
from lab.errors import GuestError, LabError, NodeDied
from lab.events import Event, EventBus, progress_line
from lab.guest import triage
from lab.guest.ssh import Guest
from lab.host import sessionlock
from lab.paths import lab_dir
from lab.pytest_plugin.distribution import worker_id
from lab.pytest_plugin.recording import Recorder
from lab.pytest_plugin.relay import EXCHANGE_KEY, Exchange, RelayWriter
from lab.pytest_plugin.reporting import baseline_path, compare_with_baseline, terminal_line
from lab.report.html import REPORT_NAME, write_report
from lab.rundir import write_results
from lab.timeouts import DEATH_POLL_S, Timeouts
from lab.topology import Topology

MAX_REVIVALS = 3  # per node and session
# Each node's kernel log of a test starts at its mark (None: at the node's boot).
CANARIES = pytest.StashKey[dict[str, str | None]]()


def _kmod_defect(name: str | None) -> str | None:
    try:
        return mutants.check_defect(name) if name else None
    except mutants.MutantError as exc:
        raise pytest.UsageError(str(exc)) from None


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class LabSession:
    """The one lab of a pytest session (of an xdist worker under `-n N`): booted on first
    use, torn down at the end of the session. Until a test or an option uses the lab
    (`in_use`), the plugin's hooks leave the run alone."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.base_dir = lab_dir(config.getoption("lab_dir"))
        self.keep = bool(config.getoption("keep_vms"))
        self.kmod_source = Path(config.rootpath) / config.getoption("kmod_source")
        self.kmod_defect = _kmod_defect(config.getoption("kmod_defect"))
        self.worker = worker_id(config)
        workerinput: dict[str, Any] = getattr(config, "workerinput", {})
        # where this worker talks to the controller (lab.pytest_plugin.relay); None
        # outside xdist workers
        self.exchange = (Exchange(Path(str(workerinput[EXCHANGE_KEY])))
                         if self.worker is not None and EXCHANGE_KEY in workerinput else None)
        self.relay: RelayWriter | None = None
        say: Callable[[str], None] = partial(terminal_line, config)
        if self.exchange is not None and self.worker is not None:
            self.relay = RelayWriter(self.exchange, self.worker)  # a worker's terminal is
            say = self.relay.line  # nobody's: its lines go to the controller's
        self.say = say
        # a worker's part of a run is compared by the controller, with the whole run
        self.baseline = baseline_path(config) if self.worker is None else None
        self.in_use = False
        self.bus = EventBus()
        self.bus.subscribe(self._progress)
        self._topology: Topology | None = None
        self._lab: Lab | None = None
        self._failure: BaseException | None = None
        self._sigterm: Any = None
        self._closed = False
        self.summary: list[str] = []
        self.watches: dict[str, triage.ConsoleWatch] = {}
        self.untouched: set[str] = set()  # nodes booted since the last test ended
        self.recorder = Recorder()
        self.deaths: dict[str, list[NodeDied]] = {}
        self.revivals: dict[str, int] = {}
        self.retired_for: list[str] = []  # why the Guests of dead nodes refuse commands
        self.stale = False  # cached fixtures may hold the Guest of a dead node

    def _progress(self, event: Event) -> None:
        self.say(progress_line(event))

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
            self.in_use = True
            if self._sigterm is None:  # a SIGTERM tears the lab down as Ctrl-C does
                self._sigterm = signal.signal(signal.SIGTERM, _terminate)
            lab = Lab(self.topology, self.base_dir, self.bus, keep=self.keep)
            try:
                self._join_controllers_session()
                held = sessionlock.hold(run_id=lab.run_id, lab_dir=self.base_dir, bus=self.bus,
                                        wait_s=self.config.getoption("session_wait"))
                self.config.add_cleanup(held.release)  # after pytest_unconfigure's teardown
                lab.start()
            except BaseException as exc:
                self._failure = exc
                raise
            finally:
                if self.relay is not None:  # the controller links the worker's run
                    self.relay.run(lab.run_dir, lab.started_at)
            self._lab = lab
            self.untouched = set(lab.nodes)
            self.watches = {name: triage.ConsoleWatch(rt.console)
                            for name, rt in lab.nodes.items()}
        return self._lab

    def _join_controllers_session(self) -> None:
        """On an xdist worker: the session lock the controller took for the run."""
        handed = self.exchange.handed_session() if self.exchange is not None else None
        if handed is None:
            return
        claim, error = handed
        if error is not None:
            raise LabError(f"the xdist controller did not get the host: {error}")
        if claim is not None:
            os.environ[sessionlock.ENV] = claim

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
        deadline = time.monotonic() + (Timeouts.death_settle if settle and used else 0.0)
        died: list[NodeDied] = []
        while True:
            died += self._look(lab, moment)
            mine = [death for death in died if death.node in used]
            if mine or time.monotonic() >= deadline:
                return mine
            time.sleep(DEATH_POLL_S)

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
                result[name] = int(rt.guest.check("cat /proc/sys/kernel/tainted",
                                                  timeout=rt.guest.timeouts.taint_read))
            except (LabError, ValueError):
                continue
        return result

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Each phase of each test this process ran, into results.json."""
        if self.in_use:
            self.recorder.record(report)

    def close(self) -> None:
        """Tear the lab down and write the run; once, at the end of the session (on an
        xdist worker before it tells the controller it has finished)."""
        if self._closed:
            return
        self._closed = True
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
        if self._lab is None:
            if self.baseline is not None:
                self.summary.append(f"hplab: no comparison with {self.baseline}: no lab "
                                    "ran in this session, so it wrote no results.json")
            return
        run_dir = self._lab.run_dir
        try:
            self._lab.stop()
        finally:
            self._lab = None
            write_results(run_dir, self.recorder.entries.values())
            try:
                write_report(run_dir)
            except (LabError, OSError) as exc:  # the report never hides the run's own outcome
                print(f"hplab: no report for {run_dir}: {exc}", file=sys.stderr)
            self.summary.append(f"hplab: run {run_dir} ({REPORT_NAME} there)")
            if self.baseline is not None:
                self.summary.append(compare_with_baseline(self.baseline, run_dir))


SESSION = pytest.StashKey[LabSession]()
