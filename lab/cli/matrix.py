"""`hplab matrix`: the same suites on several kernels, one pytest session per kernel, one
after another, and a table of test x kernel of the outcome classes.

Each kernel gets its own lab directory under the output directory (its `cache` a link to
the shared one, so nothing is downloaded or built twice) and its own JUnit file. A
kernel whose session fails, or whose lab never starts, is shown as such and the next
kernel runs all the same.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lab.errors import LabError
from lab.report.compare import merge_runs
from lab.report.html import COUNTED, REPORT_NAME, class_label
from lab.report.results import (
    UNCLASSIFIED,
    RunFileError,
    TestResult,
    load_events,
    load_junit,
    load_results_json,
    read_json,
)

NOT_RUN = "not-run"
RAN = "ran"
JUNIT_NAME = "junit.xml"
MATRIX_JSON = "matrix.json"
MATRIX_HTML = "matrix.html"
OWN_OPTIONS = ("--kernel", "--lab-dir", "--junitxml", "--junit-xml", "--topology")


class MatrixError(LabError):
    """Bad matrix input; names the argument."""


def cell_class(test: TestResult | None) -> str:
    """A cell's class: the lab's, pytest's outcome when unclassified, NOT_RUN when absent."""
    if test is None:
        return NOT_RUN
    return test.outcome if test.outcome_class == UNCLASSIFIED else test.outcome_class


def cell_ok(test: TestResult | None) -> bool:
    """Passed, or skipped by design."""
    return test is not None and not test.failed


@dataclass(frozen=True)
class KernelRun:
    """One kernel's pytest session and what it left."""

    spec: str
    lab_dir: Path  # this kernel's --lab-dir
    junit: Path
    exit_code: int | None  # None: never started (the matrix was interrupted before)
    seconds: float
    run_dir: Path | None  # the lab's run directory, when the session booted one
    tests: dict[str, TestResult]  # by result_key
    status: str  # RAN, or why the kernel has no (or only partial) results

    @property
    def ran(self) -> bool:
        return self.status == RAN

    def cell(self, key: str) -> str:
        return cell_class(self.tests.get(key))

    def cell_ok(self, key: str) -> bool:
        return cell_ok(self.tests.get(key))

    def releases(self) -> list[str]:
        """The kernel releases the session's nodes ran, as its results or state record."""
        found = sorted({t.kernel for t in self.tests.values() if t.kernel})
        if found or self.run_dir is None:
            return found
        state = read_json(self.run_dir / "state.json", {})
        nodes = state.get("nodes", {}) if isinstance(state, dict) else {}
        return sorted({str(n["kernel"]) for n in nodes.values()
                       if isinstance(n, dict) and n.get("kernel")})

    def page(self) -> Path | None:
        """What a cell links to: the run's report, else the JUnit file, else nothing."""
        if self.run_dir is not None and (self.run_dir / REPORT_NAME).exists():
            return self.run_dir / REPORT_NAME
        return self.junit if self.junit.exists() else None


@dataclass(frozen=True)
class Matrix:
    out_dir: Path
    topology: str | None
    kernels: tuple[KernelRun, ...]
    interrupted: bool = False

    def rows(self) -> list[tuple[str, str]]:
        """(result key, test id shown) of every test any kernel ran, in first-seen order."""
        rows: dict[str, str] = {}
        for kernel in self.kernels:
            for key, test in kernel.tests.items():
                rows.setdefault(key, test.nodeid)
        return list(rows.items())

    def counts(self, kernel: KernelRun) -> Counter[str]:
        return Counter(kernel.cell(key) for key, _ in self.rows())

    def classes(self) -> list[str]:
        """Every class a cell has, in the report's order, then the others."""
        seen = {k.cell(key) for k in self.kernels for key, _ in self.rows()}
        return [c for c in COUNTED if c in seen] + sorted(seen - set(COUNTED))

    def kernel_ok(self, kernel: KernelRun) -> bool:
        return kernel.exit_code == 0 and all(kernel.cell_ok(key) for key, _ in self.rows())

    @property
    def ok(self) -> bool:
        return bool(self.rows()) and all(self.kernel_ok(k) for k in self.kernels)


def kernel_specs(value: str) -> list[str]:
    """The specs of --kernels, separated by commas."""
    specs = [spec.strip() for spec in value.split(",")]
    if "" in specs:
        raise MatrixError(f"--kernels {value!r}: an empty kernel spec")
    twice = sorted({spec for spec in specs if specs.count(spec) > 1})
    if twice:
        raise MatrixError(f"--kernels: {', '.join(twice)} given more than once")
    return specs


def check_pytest_args(pytest_args: list[str]) -> None:
    for arg in pytest_args:
        option = arg.split("=", 1)[0]
        if option in OWN_OPTIONS:
            hint = " (give hplab matrix --topology)" if option == "--topology" else ""
            raise MatrixError(f"pytest argument {arg!r}: hplab matrix sets {option} for each "
                              f"kernel{hint}")


def topology_file(value: str | None) -> str | None:
    """--topology as an absolute path: the plugin would read a relative one from its
    rootdir, not from where hplab was started."""
    if value is None:
        return None
    path = Path(value).resolve()
    if not path.is_file():
        raise MatrixError(f"--topology {value}: no such file")
    return str(path)


def default_out(base: Path) -> Path:
    """Under the lab directory: QEMU must reach each kernel's run directory."""
    return base / "matrix" / datetime.now().strftime("%Y%m%d-%H%M%S")


def kernel_dir_name(index: int, spec: str) -> str:
    return f"{index:02d}-{re.sub(r'[^A-Za-z0-9._]+', '-', spec).strip('-')}"


def _reachable(path: Path) -> Path:
    """`path` as a directory; one made here opens to QEMU's user as the lab directory does."""
    if not path.is_dir():
        path.mkdir(parents=True)
        path.chmod(0o755)
    return path


def run_pytest(argv: list[str]) -> int:
    """An inner pytest session's exit status. On Ctrl-C it got the same SIGINT: wait while
    it tears its lab down instead of killing it, then stop."""
    process = subprocess.Popen(argv)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.wait()
        raise


def command(spec: str, lab_dir: Path, junit: Path, topology: str | None,
            pytest_args: list[str]) -> list[str]:
    chosen = ["--topology", topology] if topology else []
    return [sys.executable, "-m", "pytest", "--kernel", spec, "--lab-dir", str(lab_dir),
            f"--junitxml={junit}", *chosen, *pytest_args]


def _first_error(tests: dict[str, TestResult]) -> str:
    """The first failing test and its error line (pytest's `E` line when it has one)."""
    failure = next((t for t in tests.values() if t.failed), None)
    if failure is None:
        return "no test failed"
    lines = failure.message.strip().splitlines()
    said = next((line[1:] for line in lines if line.startswith("E ")),
                lines[0] if lines else "")
    return f"{failure.nodeid}: {' '.join(said.split())}"


def _status(run_dir: Path | None, tests: dict[str, TestResult], exit_code: int) -> str:
    """RAN, or why a session that wrote JUnit but no results.json has no lab results: its
    lab did not start, or pytest stopped before running tests (collection, usage)."""
    events = load_events(run_dir / "events.json") if run_dir is not None else []
    failed = next((e for e in events if e.get("state") == "fail"), None)
    if failed is not None:
        return (f"lab did not start: {failed['phase']} {failed['subject']} failed: "
                f"{failed.get('detail', '')}")
    if exit_code not in (0, 1):
        return f"pytest exited {exit_code}: {_first_error(tests)}"
    return RAN


def collect(spec: str, lab_dir: Path, junit: Path, exit_code: int, seconds: float,
            runs_before: set[Path]) -> KernelRun:
    """What the session of `spec` left: results.json of its run, else its JUnit file."""
    runs = lab_dir / "runs"
    new = [p for p in runs.iterdir() if p.is_dir() and p not in runs_before] \
        if runs.is_dir() else []
    run_dir = max(new, key=lambda p: p.stat().st_mtime) if new else None
    tests: dict[str, TestResult] = {}
    try:
        if run_dir is not None and (run_dir / "results.json").exists():
            tests, status = merge_runs([load_results_json(run_dir / "results.json")]), RAN
        elif junit.exists():
            tests = merge_runs([load_junit(junit)])
            status = _status(run_dir, tests, exit_code)
        else:
            status = f"pytest exited {exit_code} without writing {junit.name}"
    except RunFileError as exc:
        status = f"unreadable results: {exc}"
    return KernelRun(spec, lab_dir, junit, exit_code, round(seconds, 1), run_dir, tests,
                     status)


def counts_text(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {class_label(c)}" for c, n in counts.most_common()) or "no tests"


def run_kernel(where: str, spec: str, lab_dir: Path, cache: Path, topology: str | None,
               pytest_args: list[str]) -> tuple[KernelRun, bool]:
    """The session of one kernel, with its start and end on the terminal; whether Ctrl-C
    ended it."""
    _reachable(lab_dir)
    if not (lab_dir / "cache").is_symlink() and not (lab_dir / "cache").exists():
        (lab_dir / "cache").symlink_to(cache, target_is_directory=True)
    junit = lab_dir / JUNIT_NAME
    junit.unlink(missing_ok=True)
    runs = lab_dir / "runs"
    runs_before = set(runs.iterdir()) if runs.is_dir() else set()
    argv = command(spec, lab_dir, junit, topology, pytest_args)
    print(f"{where}: starting: pytest {' '.join(argv[3:])}", file=sys.stderr, flush=True)
    started = time.monotonic()
    interrupted = False
    try:
        code = run_pytest(argv)
    except KeyboardInterrupt:
        interrupted, code = True, 130
    kernel = collect(spec, lab_dir, junit, code, time.monotonic() - started, runs_before)
    release = ", ".join(kernel.releases()) or "release not recorded"
    state = "" if kernel.ran else f"; {kernel.status}"
    counts = counts_text(Counter(cell_class(t) for t in kernel.tests.values()))
    print(f"{where}: done in {kernel.seconds:.1f}s, pytest exit {code}: {counts}; "
          f"{release}{state}", file=sys.stderr, flush=True)
    return kernel, interrupted


def run(specs: list[str], topology: str | None, pytest_args: list[str], out_dir: Path,
        cache: Path) -> Matrix:
    """Run the session of every kernel in turn, whatever the earlier ones did; after a
    Ctrl-C the kernels not yet started are shown as not run."""
    check_pytest_args(pytest_args)
    _reachable(out_dir)
    done: list[KernelRun] = []
    interrupted = False
    for index, spec in enumerate(specs, 1):
        lab_dir = out_dir / kernel_dir_name(index, spec)
        if interrupted:
            done.append(KernelRun(spec, lab_dir, lab_dir / JUNIT_NAME, None, 0.0, None, {},
                                  "not run: the matrix was interrupted"))
            continue
        kernel, interrupted = run_kernel(f"[hplab] matrix {index}/{len(specs)} {spec}", spec,
                                         lab_dir, cache, topology, pytest_args)
        done.append(kernel)
    return Matrix(out_dir, topology, tuple(done), interrupted)


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]


def table(matrix: Matrix) -> str:
    """Per-kernel totals, then every test that did not pass on every kernel."""
    classes = matrix.classes()
    totals = [["kernel", "release", "exit", "seconds", *map(class_label, classes), "status"]]
    for k in matrix.kernels:
        counts = matrix.counts(k)
        totals.append([k.spec, ", ".join(k.releases()) or "-",
                       "-" if k.exit_code is None else str(k.exit_code), f"{k.seconds:.1f}",
                       *(str(counts[c]) for c in classes), k.status])
    grid = [["test", *(k.spec for k in matrix.kernels)]]
    passing = 0
    for key, shown in matrix.rows():
        cells = [k.cell(key) for k in matrix.kernels]
        if all(c == "passed" for c in cells):
            passing += 1
            continue
        grid.append([shown, *map(class_label, cells)])
    lines = _aligned(totals)
    if len(grid) > 1:
        lines += ["", *_aligned(grid)]
    lines.append(f"{passing} of {len(matrix.rows())} tests passed on every kernel"
                 + (" (interrupted)" if matrix.interrupted else ""))
    return "\n".join(lines)


def _relative(path: Path | None, out_dir: Path) -> str | None:
    return None if path is None else path.relative_to(out_dir).as_posix()


def write_json(matrix: Matrix, path: Path) -> Path:
    out = matrix.out_dir
    kernels = [{"spec": k.spec, "releases": k.releases(), "status": k.status,
                "exit_code": k.exit_code, "seconds": k.seconds, "ok": matrix.kernel_ok(k),
                "lab_dir": _relative(k.lab_dir, out), "run_dir": _relative(k.run_dir, out),
                "page": _relative(k.page(), out), "counts": dict(matrix.counts(k))}
               for k in matrix.kernels]
    tests = [{"test": shown, "key": key,
              "cells": {k.spec: k.cell(key) for k in matrix.kernels},
              "seconds": {k.spec: k.tests[key].duration for k in matrix.kernels
                          if key in k.tests}}
             for key, shown in matrix.rows()]
    path.write_text(json.dumps({"ok": matrix.ok, "interrupted": matrix.interrupted,
                                "topology": matrix.topology, "kernels": kernels,
                                "tests": tests}, indent=1))
    return path
