"""What a lab test's phases come to: a phase fails with the death of a node it uses,
with a kernel failure on a node's console or with kernel taint gained; each phase's
kernel log per node, its outcome class (lab.guest.triage) and its entry in the results."""

from __future__ import annotations

import re
from collections.abc import Generator

import pytest

from lab.engine import Lab
from lab.errors import CanaryLost, GuestError, LabError
from lab.guest import triage
from lab.pytest_plugin.recording import CLASS_PROPERTY, WORKER_PROPERTY
from lab.pytest_plugin.session import CANARIES, SESSION, LabSession

TAINT_BEFORE = pytest.StashKey[dict[str, int]]()  # at the end of the test's setup
TAINT_AFTER_CALL = pytest.StashKey[dict[str, int]]()
TEARDOWN_NOTES = pytest.StashKey[list[str]]()  # what failed only on a dead node's Guest
OUTCOME_CLASS = pytest.StashKey[str]()  # the test's class after its latest phase


def canaries(session: LabSession, item: pytest.Item) -> dict[str, str | None]:
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


def dmesg_sections(session: LabSession, marks: dict[str, str | None]
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


def save_dmesg(lab: Lab, nodeid: str, node: str, text: str) -> str:
    """The test's dmesg as an artifact; returns its path relative to the run directory."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[-120:]
    path = lab.make_artifacts_dir() / "dmesg" / f"{name}-{node}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path.relative_to(lab.run_dir))


def passes_through(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt | SystemExit | pytest.exit.Exception)


def lost_connection(exc: BaseException) -> bool:
    """An error that a guest gone under the lab would raise."""
    if isinstance(exc, BaseExceptionGroup):
        return any(lost_connection(e) for e in exc.exceptions)
    return isinstance(exc, GuestError | OSError | EOFError) or triage.from_paramiko(exc)


def moment_of(item: pytest.Item, when: str) -> str:
    return f"during {item.nodeid}" if when == "call" else f"during {when} of {item.nodeid}"


def watch_nodes(item: pytest.Item, when: str) -> Generator[None, None, None]:
    """Run one phase of `item`; if a node it uses died meanwhile, the phase fails with
    that death, whatever else happened."""
    session = item.config.stash[SESSION]
    moment = moment_of(item, when)
    try:
        yield
    except BaseException as exc:
        if passes_through(exc):
            raise
        died = session.notice_deaths(item, moment, settle=lost_connection(exc))
        if died:
            raise died[0] from exc
        raise
    died = session.notice_deaths(item, moment)
    if died:
        raise died[0]


def prepare_phase(item: pytest.Item) -> None:
    """Before the test's fixtures (class-scoped ones too): boot the test's nodes that died
    again, mark every node's kernel log."""
    session = item.config.stash[SESSION]
    if session.running is not None:
        revived = session.prepare_nodes(item)
        item.stash[CANARIES] = canaries(session, item)
        for name in revived:  # its log of this test starts at the new boot
            item.stash[CANARIES][name] = None


def fail_on_new_taint(report: pytest.TestReport, item: pytest.Item,
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
            set_property(item.user_properties, f"taint_unchecked_{report.when}_{name}",
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


def teardown_phase(item: pytest.Item) -> Generator[None, None, None]:
    """Run `item`'s teardown as the other phases; and after a death every cached
    fixture is finalized, where what fails only because the dead node's Guest is
    retired is noted, not raised."""
    session = item.config.stash[SESSION]
    errors: list[BaseException] = []
    try:
        yield
    except BaseException as exc:
        if passes_through(exc):
            raise
        errors.append(exc)
    died = session.notice_deaths(item, moment_of(item, "teardown"),
                                 settle=any(lost_connection(e) for e in errors))
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


def set_property(properties: list[tuple[str, object]], name: str, value: object) -> None:
    """Set property `name` of a test to `value`, replacing an earlier value."""
    properties[:] = [(k, v) for k, v in properties if k != name]
    properties.append((name, value))


def judge(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """Fail `report` when the test's nodes logged a kernel failure or gained taint;
    record the class the test has after this phase (and, under xdist, its worker) in the
    report's properties, which results.json and JUnit take from the report."""
    session = item.config.stash[SESSION]
    if not session.in_use:
        return
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
            tainted = fail_on_new_taint(report, item, session.taints())
            # setup after the canary, the call and the teardown (rmmod, resets)
            for node, text in dmesg_sections(session, item.stash.get(CANARIES, {})):
                report.sections.append((f"dmesg {node}", text))
                item.user_properties.append(
                    (f"dmesg_{node}", save_dmesg(session.running, item.nodeid, node, text)))
        elif report.when == "call":
            after = session.taints()
            tainted = fail_on_new_taint(report, item, after)
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
    set_property(item.user_properties, CLASS_PROPERTY, kind)
    if session.worker is not None:
        set_property(item.user_properties, WORKER_PROPERTY, session.worker)
    report.user_properties = list(item.user_properties)

