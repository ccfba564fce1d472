"""What the lab plugin says outside pytest's own report: lines on the terminal as they
happen, a failed phase's message for results.json, and the comparison of the run
with a baseline run."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.report.compare import compare_paths
from lab.report.html import COMPARE_NAME, write_compare
from lab.report.results import bounded


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
    text = report.longreprtext
    if hasattr(report, "node"):  # on the xdist controller: "[gw0] linux -- Python ..." first
        text = text.partition("\n")[2]
    text = bounded(text.strip())
    return text if report.when == "call" else f"[{report.when}] {text}"


def joined(earlier: str, later: str) -> str:
    """`later` after `earlier`, a blank line between; `later` alone after nothing."""
    return f"{earlier}\n\n{later}" if earlier else later

