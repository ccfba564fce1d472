"""`hplab durations`: the seconds each test took, from JUnit files or run directories, as
pytest-split's durations file (test id -> seconds), which `--splits K --group G` balances
the shards by.

A run directory's results.json holds the test ids themselves. JUnit XML holds a dotted
classname instead of the module's path: the module is the longest dotted prefix that is a
file below the root (where pytest runs, e.g. suites/test_boot.py), else, by pytest's
naming, the prefix before the first `Test...` class. A test in several inputs (kernels,
repeated nights) takes the median of its seconds.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from lab.errors import LabError
from lab.report.results import TestResult, load_junit, load_results_json
from lab.rundir import RESULTS_FILE

CLASS_PREFIX = "Test"  # pytest's python_classes


class DurationsError(LabError):
    """An input that holds no durations; names it."""


def module_split(classname: str, root: Path) -> tuple[str, list[str]]:
    """A JUnit classname as (module path, classes): 'suites.test_boot.TestX' is
    ('suites/test_boot.py', ['TestX']) when suites/test_boot.py is below `root`."""
    names = classname.split(".")
    for cut in range(len(names), 0, -1):
        module = "/".join(names[:cut]) + ".py"
        if (root / module).is_file():
            return module, names[cut:]
    cut = next((i for i, name in enumerate(names) if name.startswith(CLASS_PREFIX)),
               len(names))
    return "/".join(names[:cut]) + ".py", names[cut:]


def junit_nodeid(test: TestResult, root: Path) -> str:
    """The pytest node id of a test read from JUnit XML ('classname::name')."""
    classname, _, name = test.nodeid.rpartition("::")
    if not classname:
        return name
    module, classes = module_split(classname, root)
    return "::".join([module, *classes, name])


def _read(path: Path, root: Path) -> dict[str, float]:
    if path.is_dir():
        if not (path / RESULTS_FILE).is_file():
            raise DurationsError(f"{path}: not a run directory (no {RESULTS_FILE})")
        return {t.nodeid: t.duration for t in load_results_json(path / RESULTS_FILE)}
    if not path.exists():
        raise DurationsError(f"{path}: no such file or directory")
    return {junit_nodeid(t, root): t.duration for t in load_junit(path)}


def durations(inputs: Sequence[Path], root: Path) -> dict[str, float]:
    """Test id -> seconds over every input, sorted by id."""
    seen: dict[str, list[float]] = {}
    for path in inputs:
        read = _read(path, root)
        if not read:
            raise DurationsError(f"{path}: holds no tests")
        for nodeid, seconds in read.items():
            seen.setdefault(nodeid, []).append(seconds)
    return {nodeid: round(statistics.median(seen[nodeid]), 3) for nodeid in sorted(seen)}


def durations_json(table: dict[str, float]) -> str:
    """As pytest-split's --store-durations writes its file."""
    return json.dumps(table, sort_keys=True, indent=4) + "\n"
