"""Repeat a pytest run N times and aggregate per-test pass rate and duration spread."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from lab.errors import LabError

PASSING = ("passed",)


class RepeatError(LabError):
    """Bad repeat input; names the file or argument."""


@dataclass
class TestRecord:
    nodeid: str
    outcomes: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)

    @property
    def pass_rate(self) -> float:
        return sum(o in PASSING for o in self.outcomes) / len(self.outcomes)

    def summary(self) -> dict[str, object]:
        return {"nodeid": self.nodeid, "runs": len(self.outcomes),
                "passed": sum(o in PASSING for o in self.outcomes),
                "pass_rate": round(self.pass_rate, 4),
                "outcomes": self.outcomes,
                "duration_median": round(statistics.median(self.durations), 3),
                "duration_min": round(min(self.durations), 3),
                "duration_max": round(max(self.durations), 3)}


def parse_junit(path: Path) -> list[tuple[str, str, float]]:
    """(test id, outcome, seconds) for every testcase of a JUnit XML file."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise RepeatError(f"{path}: not a readable JUnit XML file: {exc}") from exc
    cases = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("error") is not None:
            outcome = "error"
        elif case.find("failure") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        try:
            seconds = float(case.get("time", "0"))
        except ValueError as exc:
            raise RepeatError(f"{path}: testcase {name}: time is not a number") from exc
        cases.append((name, outcome, seconds))
    return cases


def aggregate(files: list[Path]) -> list[TestRecord]:
    """Per test, across runs; a test absent from a run counts as 'missing' there."""
    records: dict[str, TestRecord] = {}
    runs = [parse_junit(path) for path in files]
    for index, cases in enumerate(runs):
        seen = set()
        for name, outcome, seconds in cases:
            record = records.setdefault(name, TestRecord(name, ["missing"] * index))
            if name in seen:  # the same id twice in one run: keep the worse
                if outcome not in PASSING:
                    record.outcomes[-1] = outcome
                continue
            seen.add(name)
            record.outcomes.append(outcome)
            record.durations.append(seconds)
        for name, record in records.items():
            if name not in seen:
                record.outcomes.append("missing")
    return sorted(records.values(), key=lambda r: (r.pass_rate, r.nodeid))


def table(records: list[TestRecord]) -> str:
    lines = [f"{'pass':>9}  {'median':>8} {'min':>8} {'max':>8}  test"]
    for r in records:
        passed = sum(o in PASSING for o in r.outcomes)
        durations = r.durations or [0.0]
        lines.append(f"{passed:>4}/{len(r.outcomes):<4} {statistics.median(durations):8.2f} "
                     f"{min(durations):8.2f} {max(durations):8.2f}  {r.nodeid}")
    return "\n".join(lines)


def run(times: int, pytest_args: list[str], out_dir: Path) -> tuple[list[TestRecord], list[int]]:
    """Run pytest `times` times, each with its own --junitxml in `out_dir`."""
    if times < 1:
        raise RepeatError(f"repeat count must be >= 1, got {times}")
    if any(a.startswith("--junitxml") or a.startswith("--junit-xml") for a in pytest_args):
        raise RepeatError("pytest arguments must not set --junitxml: each run writes its own")
    out_dir.mkdir(parents=True, exist_ok=True)
    files, codes = [], []
    for i in range(1, times + 1):
        junit = out_dir / f"junit-{i}.xml"
        print(f"[hplab] repeat {i}/{times}: pytest {' '.join(pytest_args)}", file=sys.stderr,
              flush=True)
        code = subprocess.call([sys.executable, "-m", "pytest", f"--junitxml={junit}",
                                *pytest_args])
        codes.append(code)
        if not junit.exists():
            raise RepeatError(f"run {i}: pytest exited {code} without writing {junit}")
        files.append(junit)
    return aggregate(files), codes


def write_json(records: list[TestRecord], codes: list[int], path: Path) -> None:
    path.write_text(json.dumps({"runs": len(codes), "exit_codes": codes,
                                "tests": [r.summary() for r in records]}, indent=1))


