"""Shards of one run, or runs of several kernels, merged into one run: a results.json of
every test (each naming its part), parts.json, one JUnit file with a <testsuite> per part
(its name and properties kept) and report.html with a section of the parts.

Each input is a run directory (its results.json and suite.json) or a JUnit XML file
written with the lab plugin, each of whose testsuites is a part (so a merged file merges
again). A testsuite whose run directory lies beside its file, as runs/<run id>/, is read
from that directory, so that the report links its consoles and artifacts. Parts of one
testsuite name, one topology and kernel, must not share a test: the shards of one run
hold each test once. Parts of different kernels or topologies keep their tests apart by
their testsuite.
"""

from __future__ import annotations

import copy
import json
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.report.html import write_report
from lab.report.results import (
    PART,
    PART_DIR,
    PARTS_FILE,
    UNCLASSIFIED,
    MergedPart,
    RunFileError,
    TestResult,
    junit_address,
    junit_tests,
    load_results_json,
    parse_junit,
)
from lab.rundir import (
    RESULTS_FILE,
    SUITE_FILE,
    ResultEntry,
    SuiteRecord,
    read_suite,
    write_atomic,
    write_results,
)

JUNIT_NAME = "junit.xml"
RUNS_BESIDE = "runs"  # a JUnit file's run directories as a shard job uploads them


class MergeError(RunFileError):
    """Input that cannot be merged; the message names the file or both parts."""


@dataclass(frozen=True)
class Part:
    """One part as read: the run directory or JUnit file it came from, its testsuite and
    tests, and its testcases as the merged JUnit file holds them."""

    source: Path
    suite: SuiteRecord
    tests: list[TestResult]
    cases: list[ET.Element]
    run_dir: Path | None  # None: read from a JUnit file

    def describe(self) -> str:
        shard = f" shard {self.suite.shard}" if self.suite.shard else ""
        run = f" run {self.suite.run_id}" if self.suite.run_id else ""
        return (f"{Path(self.suite.topology).name} {self.suite.kernel}{shard} on "
                f"{self.suite.host}{run}")


@dataclass(frozen=True)
class Merged:
    out_dir: Path
    parts: list[MergedPart]
    tests: list[TestResult]

    def counts(self, part: MergedPart) -> Counter[str]:
        return Counter(t.outcome_class for t in self.tests if t.part == part.label)


def junit_case(test: TestResult) -> ET.Element:
    """A test of a results.json as pytest's junitxml would have written its testcase."""
    classname, name = junit_address(test.nodeid)
    case = ET.Element("testcase", {"classname": classname, "name": name,
                                   "time": f"{test.duration:.3f}"})
    properties = dict(test.properties)
    if test.outcome_class != UNCLASSIFIED:
        properties["outcome"] = test.outcome_class
    if properties:
        holder = ET.SubElement(case, "properties")
        for key, value in properties.items():
            ET.SubElement(holder, "property", {"name": key, "value": value})
    if test.outcome in ("failed", "error"):
        first = next(iter(test.message.splitlines()), "")
        element = ET.SubElement(case, "failure" if test.outcome == "failed" else "error",
                                {"message": first})
        element.text = test.message
    elif test.outcome == "skipped":
        ET.SubElement(case, "skipped", {"type": "pytest.skip", "message": test.reason})
    return case


def _run_dir_part(path: Path) -> Part:
    if not (path / RESULTS_FILE).is_file():
        raise MergeError(f"{path}: not a run directory (no {RESULTS_FILE})")
    if not (path / SUITE_FILE).is_file():
        raise MergeError(f"{path}: a run directory without {SUITE_FILE}: its topology, "
                         "kernel and host are unknown (merge its JUnit file instead)")
    try:
        suite = read_suite(path)
    except ValueError as exc:
        raise MergeError(str(exc)) from exc
    tests = load_results_json(path / RESULTS_FILE)
    return Part(path, suite, tests, [junit_case(t) for t in tests], path)


def _seconds(value: str | None, where: str) -> float:
    try:
        return float(value or 0)
    except ValueError as exc:
        raise MergeError(f"{where}: time {value!r} is not a number") from exc


def _junit_parts(path: Path) -> list[Part]:
    root = parse_junit(path)
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if not suites:
        raise MergeError(f"{path}: no <testsuite> in it")
    parts = []
    for element in suites:
        where = f"{path}: testsuite {element.get('name', '')!r}"
        properties = {p.get("name", ""): p.get("value", "")
                      for p in element.findall("properties/property")}
        try:
            suite = SuiteRecord.from_properties(properties, _seconds(element.get("time"),
                                                                    where), where)
        except ValueError as exc:
            raise MergeError(f"{exc} (written by pytest without the lab plugin?)") from exc
        cases = [copy.deepcopy(c) for c in element.findall("testcase")]
        run_dir = path.parent / RUNS_BESIDE / suite.run_id if suite.run_id else None
        if run_dir is not None and (run_dir / RESULTS_FILE).is_file():
            parts.append(Part(path, suite, load_results_json(run_dir / RESULTS_FILE), cases,
                              run_dir))
        else:
            parts.append(Part(path, suite, junit_tests(element, path), cases, None))
    return parts


def load_parts(path: Path) -> list[Part]:
    """The parts of one input: a run directory is one, a JUnit file one per testsuite."""
    if path.is_dir():
        return [_run_dir_part(path)]
    if not path.exists():
        raise MergeError(f"{path}: no such file or directory")
    return _junit_parts(path)


def check_apart(parts: Sequence[Part]) -> None:
    """No test in two parts of one testsuite name (one topology and kernel)."""
    seen: dict[tuple[str, str], Part] = {}
    for part in parts:
        for test in part.tests:
            first = seen.setdefault((part.suite.name, test.key), part)
            if first is not part:
                raise MergeError(f"test {test.key} is in two parts of '{part.suite.name}': "
                                 f"{first.describe()} ({first.source}) and "
                                 f"{part.describe()} ({part.source})")


def labels(parts: Sequence[Part]) -> list[str]:
    """What each part is called in the report, unique (a number added to repeats)."""
    said = [part.describe() for part in parts]
    return [f"{text} #{said[:i].count(text) + 1}" if said.count(text) > 1 else text
            for i, text in enumerate(said)]


def _entry(test: TestResult, label: str, part_dir: str) -> ResultEntry:
    properties = dict(test.properties)
    if test.outcome_class != UNCLASSIFIED:
        properties["outcome"] = test.outcome_class
    properties[PART] = label
    if part_dir:
        properties[PART_DIR] = part_dir
    return ResultEntry(test.nodeid, test.outcome, round(test.duration, 3), properties,
                       test.message or None, test.reason or None)


def suite_element(part: Part) -> ET.Element:
    outcomes = Counter(t.outcome for t in part.tests)
    element = ET.Element("testsuite", {
        "name": part.suite.name, "errors": str(outcomes["error"]),
        "failures": str(outcomes["failed"]), "skipped": str(outcomes["skipped"]),
        "tests": str(len(part.tests)), "time": f"{part.suite.seconds:.3f}",
        "hostname": part.suite.host})
    holder = ET.SubElement(element, "properties")
    for name, value in part.suite.properties():
        ET.SubElement(holder, "property", {"name": name, "value": value})
    element.extend(part.cases)
    return element


def write_junit(parts: Iterable[Part], target: Path) -> None:
    root = ET.Element("testsuites", {"name": "hplab merged"})
    root.extend(suite_element(part) for part in parts)
    ET.indent(root)
    write_atomic(target, ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")


def merge(inputs: Sequence[Path], out_dir: Path) -> Merged:
    """Merge `inputs` into `out_dir`: results.json, parts.json, junit.xml, report.html."""
    if not inputs:
        raise MergeError("nothing to merge: give run directories or JUnit files")
    parts = [part for path in inputs for part in load_parts(path)]
    check_apart(parts)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged_parts, entries = [], []
    for part, label in zip(parts, labels(parts), strict=True):
        part_dir = "" if part.run_dir is None else Path(
            os.path.relpath(part.run_dir.resolve(), out_dir.resolve())).as_posix()
        merged_parts.append(MergedPart(label, str(part.source), part_dir, part.suite))
        entries += [_entry(test, label, part_dir) for test in part.tests]
    write_results(out_dir, entries)
    write_atomic(out_dir / PARTS_FILE,
                 json.dumps([part.to_json() for part in merged_parts], indent=1))
    write_junit(parts, out_dir / JUNIT_NAME)
    write_report(out_dir)
    return Merged(out_dir, merged_parts, load_results_json(out_dir / RESULTS_FILE))
