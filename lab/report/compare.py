"""Two runs side by side: what broke, what was fixed, what got slower, what changed.

Each side is a run directory (results.json, events.json), a results.json, a JUnit XML
file, or a directory of several JUnit files (`hplab repeat --out`, one run each).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lab.report.results import (
    RunFileError,
    TestResult,
    load_events,
    load_junit,
    load_results_json,
    phase_bars,
)

RESULTS_NAME = "results.json"
EVENTS_NAME = "events.json"
REPEATED_JUNIT = "junit-*.xml"
VERSION_PROPERTIES = ("kernel", "module_version")
SLOWER_FACTOR = 2.0
SLOWER_MARGIN_S = 5.0
LISTED = 10  # items per list in the text summary


@dataclass(frozen=True)
class PhaseTotal:
    """One engine phase of a run: how often it ran and its seconds altogether."""

    phase: str
    count: int
    seconds: float


@dataclass(frozen=True)
class RunSide:
    source: Path
    kind: str
    runs: int
    tests: dict[str, TestResult]  # by result_key
    phases: dict[str, PhaseTotal] | None  # None: the side records no phases (JUnit)
    run_dir: Path | None  # the directory its artifact paths start from, when it has one

    def describe(self) -> str:
        runs = f", {self.runs} runs" if self.runs > 1 else ""
        return f"{self.source} ({self.kind}{runs}, {len(self.tests)} tests)"


@dataclass(frozen=True)
class Transition:
    """A test's result on the old side (None: it did not exist) and on the new."""

    old: TestResult | None
    new: TestResult


@dataclass(frozen=True)
class Slowdown:
    test: TestResult
    old_seconds: float
    new_seconds: float
    threshold: float
    rule: str


@dataclass(frozen=True)
class VersionChange:
    name: str  # a property: kernel or module_version
    node: str
    old: tuple[str, ...]
    new: tuple[str, ...]

    def describe(self) -> str:
        where = f" on {self.node}" if self.node else ""
        return f"{self.name}{where}: {', '.join(self.old)} -> {', '.join(self.new)}"


@dataclass(frozen=True)
class Comparison:
    old: RunSide
    new: RunSide
    new_failures: tuple[Transition, ...]  # failing now; passed, skipped or absent before
    changed_class: tuple[Transition, ...]  # failing on both sides, in another class now
    still_failing: tuple[Transition, ...]  # failing on both sides in the same class
    fixed: tuple[Transition, ...]  # failing before, not now
    slower: tuple[Slowdown, ...]
    added: tuple[TestResult, ...]
    removed: tuple[TestResult, ...]
    versions: tuple[VersionChange, ...]

    def phase_rows(self) -> list[tuple[str, PhaseTotal | None, PhaseTotal | None]]:
        """(phase, old, new) for every phase either side ran, in the order the new ran them."""
        old, new = self.old.phases or {}, self.new.phases or {}
        return [(phase, old.get(phase), new.get(phase)) for phase in dict.fromkeys([*new, *old])]

    def summary_line(self) -> str:
        parts = [_counted(len(self.new_failures), "new failure"),
                 f"{len(self.fixed)} fixed", f"{len(self.slower)} slower",
                 f"{len(self.added)} added", f"{len(self.removed)} removed"]
        if self.changed_class:
            parts.insert(1, f"{len(self.changed_class)} failing in another class")
        line = f"compared with {self.old.source}: {', '.join(parts)}"
        return "; ".join([line, *(v.describe() for v in self.versions)])

    def summary_text(self) -> str:
        lines = [f"old: {self.old.describe()}", f"new: {self.new.describe()}",
                 self.summary_line()]
        lines += _listed("new failures", [f"{t.new.outcome_class:<24} {t.new.nodeid}"
                                          f" ({_was(t.old)})" for t in self.new_failures])
        lines += _listed("failing in another class", [
            f"{_class_of(t.old)} -> {t.new.outcome_class}  {t.new.nodeid}"
            for t in self.changed_class])
        lines += _listed("fixed", [f"{_class_of(t.old)} -> {t.new.outcome_class}  "
                                   f"{t.new.nodeid}" for t in self.fixed])
        lines += _listed("slower", [f"{s.old_seconds:.1f} s -> {s.new_seconds:.1f} s "
                                    f"(over {s.threshold:.1f} s: {s.rule})  {s.test.nodeid}"
                                    for s in self.slower])
        lines += _listed("added", [t.nodeid for t in self.added])
        lines += _listed("removed", [t.nodeid for t in self.removed])
        return "\n".join(lines)


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _class_of(test: TestResult | None) -> str:
    return test.outcome_class if test is not None else "absent"


def _was(old: TestResult | None) -> str:
    return "added" if old is None else f"was {old.outcome_class}"


def _listed(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    more = [f"  ... and {len(items) - LISTED} more"] if len(items) > LISTED else []
    return [f"{title} ({len(items)}):", *(f"  {item}" for item in items[:LISTED]), *more]


def _merged(earlier: TestResult, later: TestResult) -> TestResult:
    """One test of two runs: the result of the first run that failed (a test failing in
    any run fails), else of the later run; the durations of both."""
    kept = earlier if earlier.failed else later
    return dataclasses.replace(kept, durations=earlier.durations + later.durations)


def merge_runs(runs: Iterable[list[TestResult]]) -> dict[str, TestResult]:
    """Every test of `runs` once, by result_key."""
    merged: dict[str, TestResult] = {}
    for run in runs:
        for test in run:
            earlier = merged.get(test.key)
            merged[test.key] = test if earlier is None else _merged(earlier, test)
    return merged


def phase_totals(events: list[dict[str, object]]) -> dict[str, PhaseTotal]:
    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for _, phase, _, length, _ in phase_bars(events):
        counts[phase] = counts.get(phase, 0) + 1
        seconds[phase] = seconds.get(phase, 0.0) + length
    return {phase: PhaseTotal(phase, counts[phase], round(seconds[phase], 3))
            for phase in counts}


def _results_side(results: Path, source: Path, kind: str) -> RunSide:
    return RunSide(source, kind, 1, merge_runs([load_results_json(results)]),
                   phase_totals(load_events(results.parent / EVENTS_NAME)), results.parent)


def _junit_side(files: list[Path], source: Path, kind: str) -> RunSide:
    return RunSide(source, kind, len(files), merge_runs(load_junit(f) for f in files),
                   None, None)


def load_side(path: Path) -> RunSide:
    """One side of a comparison from any of the inputs the module docstring names."""
    if path.is_dir():
        if (path / RESULTS_NAME).exists():
            return _results_side(path / RESULTS_NAME, path, "run directory")
        repeated = sorted(path.glob(REPEATED_JUNIT))
        if repeated:
            return _junit_side(repeated, path, "repeated runs, JUnit XML")
        raise RunFileError(f"{path}: neither a run directory (no {RESULTS_NAME}) nor "
                           f"hplab repeat's output (no {REPEATED_JUNIT})")
    if not path.exists():
        raise RunFileError(f"{path}: no such file or directory")
    if path.suffix == ".json":
        return _results_side(path, path, RESULTS_NAME)
    return _junit_side([path], path, "JUnit XML")


def slower_threshold(old: TestResult) -> tuple[float, str]:
    """Seconds a test may take on the new side before it counts as slower, and the rule.

    Old side with one run: more than twice its old time and more than 5 s longer, i.e.
    max(2 x old, old + 5 s). Old side with several runs (hplab repeat): beyond the spread
    those runs showed, max(slowest + (slowest - fastest), median + 5 s). The new side's
    time is the median of its runs.
    """
    if len(old.durations) < 2:
        base = old.duration
        return (max(SLOWER_FACTOR * base, base + SLOWER_MARGIN_S),
                f"max({SLOWER_FACTOR:g}x, +{SLOWER_MARGIN_S:g} s)")
    slowest, fastest = max(old.durations), min(old.durations)
    return (max(slowest + (slowest - fastest), old.duration + SLOWER_MARGIN_S),
            f"beyond the spread of {len(old.durations)} runs, at least +{SLOWER_MARGIN_S:g} s")


def slowdown(old: TestResult, new: TestResult) -> Slowdown | None:
    """How `new` is slower than `old`, when both passed and it is; else None."""
    if not (old.passed and new.passed):
        return None
    threshold, rule = slower_threshold(old)
    if new.duration <= threshold:
        return None
    return Slowdown(new, old.duration, new.duration, round(threshold, 3), rule)


def _versions(side: RunSide, name: str) -> dict[str, tuple[str, ...]]:
    """Per node, every value property `name` has in the side's tests."""
    seen: dict[str, set[str]] = {}
    for test in side.tests.values():
        if name in test.properties:
            seen.setdefault(test.node, set()).add(test.properties[name])
    return {node: tuple(sorted(values)) for node, values in seen.items()}


def version_changes(old: RunSide, new: RunSide) -> tuple[VersionChange, ...]:
    changes = []
    for name in VERSION_PROPERTIES:
        before, after = _versions(old, name), _versions(new, name)
        changes += [VersionChange(name, node, before[node], after[node])
                    for node in after if node in before and before[node] != after[node]]
    return tuple(changes)


def _failed(test: TestResult | None) -> bool:
    return test is not None and test.failed


def _failing_on_both(pair: Transition, *, same_class: bool) -> bool:
    return (_failed(pair.old) and pair.new.failed
            and (_class_of(pair.old) == pair.new.outcome_class) == same_class)


def compare(old: RunSide, new: RunSide) -> Comparison:
    both = [Transition(old.tests[key], test) for key, test in new.tests.items()
            if key in old.tests]
    return Comparison(
        old=old, new=new,
        new_failures=tuple(Transition(old.tests.get(key), test)
                           for key, test in new.tests.items()
                           if test.failed and not _failed(old.tests.get(key))),
        changed_class=tuple(p for p in both if _failing_on_both(p, same_class=False)),
        still_failing=tuple(p for p in both if _failing_on_both(p, same_class=True)),
        fixed=tuple(p for p in both if _failed(p.old) and not p.new.failed),
        slower=tuple(s for p in both if p.old is not None
                     and (s := slowdown(p.old, p.new)) is not None),
        added=tuple(test for key, test in new.tests.items() if key not in old.tests),
        removed=tuple(test for key, test in old.tests.items() if key not in new.tests),
        versions=version_changes(old, new))


def compare_paths(old: Path, new: Path) -> Comparison:
    return compare(load_side(old), load_side(new))
