"""What a run wrote about its tests and phases, read from results.json, events.json or
JUnit XML into one typed form; every file that cannot be read is named in the error."""

from __future__ import annotations

import json
import posixpath
import statistics
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.guest.triage import NO_FAILURE
from lab.rundir import SuiteRecord

UNCLASSIFIED = "(not classified)"
MESSAGE_CHARS = 2000
TAIL_BYTES = 64 * 1024
ARTIFACT_PREFIX = "artifacts/"
DMESG_PREFIX = "dmesg_"
EVENT_KEYS = frozenset({"phase", "subject", "state", "at"})
PART, PART_DIR = "part", "part_dir"  # properties of a test in a merged run
PARTS_FILE = "parts.json"


class RunFileError(LabError):
    """A run's file that cannot be read or rendered; the message names the file."""


def bounded(text: str, limit: int = MESSAGE_CHARS) -> str:
    """`text` cut to about `limit` characters, keeping its start and its end: a kernel
    excerpt opens the text, an assertion's `E` lines close a traceback."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def result_key(nodeid: str) -> str:
    """The name a test has in results.json and in JUnit XML alike: the nodeid
    'suites/t.py::TestC::test_a[cn1]' and JUnit's classname 'suites.t.TestC' with name
    'test_a[cn1]' are both 'suites.t.TestC.test_a[cn1]'."""
    path_and_scope, bracket, params = nodeid.partition("[")
    module, *scope = path_and_scope.split("::")
    return ".".join([module.removesuffix(".py").replace("/", "."), *scope]) + bracket + params


def junit_address(nodeid: str) -> tuple[str, str]:
    """(classname, name) of a test in JUnit XML, as pytest's junitxml writes them:
    'suites/t.py::TestC::test_a[cn1]' is ('suites.t.TestC', 'test_a[cn1]')."""
    path_and_scope, bracket, params = nodeid.partition("[")
    module, *scope = path_and_scope.split("::")
    names = [module.removesuffix(".py").replace("/", "."), *scope]
    return ".".join(names[:-1]), names[-1] + bracket + params


@dataclass(frozen=True)
class TestResult:
    """One test of one run, or of several runs merged (then one duration per run)."""

    __test__ = False  # not a pytest test class, whatever its name

    nodeid: str
    outcome: str  # pytest's: passed, failed, error, skipped
    outcome_class: str  # the lab's (lab/guest/triage.py), UNCLASSIFIED when the run has none
    durations: tuple[float, ...]
    properties: dict[str, str] = field(default_factory=dict)  # without "outcome"
    message: str = ""
    reason: str = ""

    @property
    def key(self) -> str:
        return result_key(self.nodeid)

    @property
    def duration(self) -> float:
        return statistics.median(self.durations) if self.durations else 0.0

    @property
    def failed(self) -> bool:
        if self.outcome_class == UNCLASSIFIED:
            return self.outcome in ("failed", "error")
        return self.outcome_class not in NO_FAILURE

    @property
    def passed(self) -> bool:
        if self.outcome_class == UNCLASSIFIED:
            return self.outcome == "passed"
        return self.outcome_class == "passed"

    @property
    def node(self) -> str:
        return self.properties.get("node", "")

    @property
    def kernel(self) -> str:
        return self.properties.get("kernel", "")

    @property
    def worker(self) -> str:
        """The xdist worker that ran the test; "" in a serial run."""
        return self.properties.get("worker", "")

    def nodes(self) -> list[str]:
        """The nodes the test ran on: its `node`, else those whose kernel log it saved."""
        if self.node:
            return [self.node]
        return [k.removeprefix(DMESG_PREFIX) for k in self.properties
                if k.startswith(DMESG_PREFIX)]

    @property
    def part(self) -> str:
        """The part of a merged run (hplab merge) the test ran in; "" in a run of its own."""
        return self.properties.get(PART, "")

    @property
    def part_dir(self) -> str:
        """The run directory of the test's part, relative to the merged run; "" when the
        test's run is the directory it is read from."""
        return self.properties.get(PART_DIR, "")

    def artifacts(self) -> dict[str, str]:
        """Property name -> path of each artifact the test recorded (relative to the run
        it is read from)."""
        return {k: posixpath.join(self.part_dir, v) for k, v in self.properties.items()
                if v.startswith(ARTIFACT_PREFIX)}


def read_json(path: Path, default: Any) -> Any:
    """The JSON in `path`, or `default` when there is no such file."""
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunFileError(f"{path}: not JSON: {exc.msg} at line {exc.lineno}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFileError(f"{path}: not readable: {exc}") from exc


def _seconds(value: object, where: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise RunFileError(f"{where}: duration {value!r} is not a number") from exc


def _result_from_entry(entry: object, where: str) -> TestResult:
    if not isinstance(entry, dict) or not isinstance(entry.get("nodeid"), str):
        raise RunFileError(f"{where}: not a test result (an object with a nodeid)")
    properties = entry.get("properties") or {}
    if not isinstance(properties, dict):
        raise RunFileError(f"{where}: properties is not an object")
    shown = {str(k): str(v) for k, v in properties.items() if k != "outcome"}
    return TestResult(
        nodeid=entry["nodeid"], outcome=str(entry.get("outcome", "")),
        # the class JUnit carries: the test's "outcome" property, never pytest's outcome
        outcome_class=str(properties.get("outcome", UNCLASSIFIED)),
        durations=(_seconds(entry.get("duration", 0.0), f"{where} ({entry['nodeid']})"),),
        properties=shown, message=str(entry.get("message", "")),
        reason=str(entry.get("reason", "")))


def load_results_json(path: Path) -> list[TestResult]:
    """The tests of a results.json the lab plugin wrote; [] when there is none."""
    entries = read_json(path, [])
    if not isinstance(entries, list):
        raise RunFileError(f"{path}: expected a list of test results, got "
                           f"{type(entries).__name__}")
    return [_result_from_entry(entry, f"{path}: entry {i + 1}")
            for i, entry in enumerate(entries)]


@dataclass
class _JUnitCase:
    """One test gathered from its testcase elements: pytest writes a second element
    with the same name for an error in teardown after a failed call."""

    nodeid: str
    seconds: float = 0.0
    properties: dict[str, str] = field(default_factory=dict)
    outcomes: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def add(self, case: ET.Element, where: str) -> None:
        self.seconds += _seconds(case.get("time", "0"), where)
        for prop in case.iter("property"):
            self.properties[prop.get("name", "")] = prop.get("value", "")
        for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            element = case.find(tag)
            if element is not None:
                self.outcomes.append(outcome)
                self.messages.append(element.text or element.get("message") or "")

    def result(self) -> TestResult:
        outcome = next((o for o in ("failed", "error", "skipped") if o in self.outcomes),
                       "passed")
        shown = {k: v for k, v in self.properties.items() if k != "outcome"}
        failures = [bounded(m) for o, m in zip(self.outcomes, self.messages, strict=True)
                    if o != "skipped"]
        reason = self.messages[self.outcomes.index("skipped")] if outcome == "skipped" else ""
        return TestResult(self.nodeid, outcome, self.properties.get("outcome", UNCLASSIFIED),
                          (round(self.seconds, 3),), shown, "\n\n".join(failures), reason)


def parse_junit(path: Path) -> ET.Element:
    """The root element of a JUnit XML file: <testsuites> or <testsuite>."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise RunFileError(f"{path}: not XML: {exc}") from exc
    except OSError as exc:
        raise RunFileError(f"{path}: not readable: {exc}") from exc
    if root.tag not in ("testsuites", "testsuite"):
        raise RunFileError(f"{path}: not JUnit XML (root element <{root.tag}>, expected "
                           "<testsuites> or <testsuite>)")
    return root


def load_junit(path: Path) -> list[TestResult]:
    """The tests of a JUnit XML file as pytest --junitxml writes it with the lab plugin
    (each test's class in its `outcome` property)."""
    return junit_tests(parse_junit(path), path)


def junit_tests(element: ET.Element, path: Path) -> list[TestResult]:
    """The tests below `element` (a whole file, or one of its testsuites) of `path`."""
    cases: dict[str, _JUnitCase] = {}
    for case in element.iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        if not name:
            raise RunFileError(f"{path}: a testcase without a name (classname {classname!r})")
        nodeid = f"{classname}::{name}" if classname else name
        cases.setdefault(nodeid, _JUnitCase(nodeid)).add(case, f"{path}: testcase {nodeid}")
    return [case.result() for case in cases.values()]


@dataclass(frozen=True)
class MergedPart:
    """One part (a shard, a kernel's run) of a merged run, as its parts.json keeps it."""

    label: str  # what each of its tests names as its `part`
    source: str  # the run directory or JUnit file merged
    part_dir: str  # its run directory relative to the merged run; "" for a JUnit file
    suite: SuiteRecord

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "source": self.source, "part_dir": self.part_dir,
                "suite": self.suite.to_json()}


def load_parts(path: Path) -> list[MergedPart]:
    """The parts of a merged run's parts.json; [] when there is none (a run of its own)."""
    entries = read_json(path, [])
    if not isinstance(entries, list):
        raise RunFileError(f"{path}: expected a list of parts")
    parts = []
    for i, entry in enumerate(entries):
        where = f"{path}: part {i + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("suite"), dict):
            raise RunFileError(f"{where}: not an object with a suite")
        try:
            parts.append(MergedPart(str(entry.get("label", "")), str(entry.get("source", "")),
                                    str(entry.get("part_dir", "")),
                                    SuiteRecord.from_json(entry["suite"], f"{where}.suite")))
        except ValueError as exc:
            raise RunFileError(str(exc)) from exc
    return parts


def phase_bars(events: list[dict[str, Any]]) -> list[tuple[str, str, float, float, bool]]:
    """(subject, phase, start, seconds, failed) of every phase that ended or failed."""
    bars = []
    for event in events:
        if event.get("state") in ("end", "fail") and event.get("elapsed") is not None:
            elapsed = float(event["elapsed"])
            bars.append((str(event["subject"]), str(event["phase"]),
                         float(event["at"]) - elapsed, elapsed, event["state"] == "fail"))
    return bars


def load_events(path: Path) -> list[dict[str, Any]]:
    """events.json of a run; [] when there is none."""
    events = read_json(path, [])
    if not isinstance(events, list):
        raise RunFileError(f"{path}: expected a list of event objects")
    for i, event in enumerate(events):
        if not isinstance(event, dict) or not event.keys() >= EVENT_KEYS:
            raise RunFileError(f"{path}: event {i + 1} is not an object with "
                               f"{', '.join(sorted(EVENT_KEYS))}")
    return events


def console_tail(path: Path, lines: int = 40) -> str | None:
    """The last `lines` lines of a console log, or None when there is none."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - TAIL_BYTES))
            data = handle.read().decode(errors="replace")
    except OSError:
        return None
    return "\n".join(data.splitlines()[-lines:])
