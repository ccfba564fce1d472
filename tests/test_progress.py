"""Engine phases show on the terminal as they happen, in a passing run too, without -s."""

from __future__ import annotations

import io

import pytest
from fakelab import run_inner

from lab.events import Event, ProgressPrinter

pytest_plugins = ["pytester"]

EMITS = '''
import sys
from lab.events import ProgressPrinter, Event

def test_fragments(lab_session):
    with lab_session.bus.phase("fragment", "cn1", "anon-pinned") as phase:
        phase.info("free order-10 blocks 123, MemFree 900 MiB")
        print("[plain] stdout of the test")
        ProgressPrinter(sys.stderr)(Event("fragment", "cn1", "info", "to stderr"))
'''
LINES = ["[[]hplab[]] fragment cn1 ... (anon-pinned)",
         "[[]hplab[]] fragment cn1: free order-10 blocks 123, MemFree 900 MiB",
         "[[]hplab[]] fragment cn1 done in *s"]


@pytest.mark.parametrize("verbosity", [[], ["-v"]], ids=["default", "verbose"])
def test_phase_lines_reach_the_terminal_of_a_passing_run(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
        verbosity: list[str]) -> None:
    inner = run_inner(pytester, monkeypatch, EMITS, *verbosity, fake=False)
    inner.result.assert_outcomes(passed=1)
    # each on a line of its own: fnmatch matches whole lines, from their start
    inner.result.stdout.fnmatch_lines(LINES, consecutive=True)
    out = inner.result.stdout.str()
    # what the test itself writes stays captured: the lines above did not get out by -s
    assert "[plain] stdout of the test" not in out and "to stderr" not in out
    assert "to stderr" not in inner.result.stderr.str()
    if verbosity:
        assert "test_inner.py::test_fragments [hplab]" not in out
        inner.result.stdout.fnmatch_lines(["test_inner.py::test_fragments PASSED*"])


def test_without_a_terminal_reporter_lines_go_to_stderr(pytester: pytest.Pytester,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    inner = run_inner(pytester, monkeypatch, EMITS, "-p", "no:terminal", fake=False)
    assert inner.result.ret == 0
    inner.result.stderr.fnmatch_lines(LINES, consecutive=True)


def test_progress_printer_lines() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream)
    printer(Event("boot", "cn1", "start", "waiting for the SSH banner"))
    printer(Event("boot", "cn1", "end", elapsed=3.25))
    printer(Event("boot", "cn1", "fail", "BootError: no banner", elapsed=90.0))
    printer(Event("fragment", "cn1", "info", "free order-10 blocks 0"))
    assert stream.getvalue().splitlines() == [
        "[hplab] boot cn1 ... (waiting for the SSH banner)",
        "[hplab] boot cn1 done in 3.2s",
        "[hplab] boot cn1 FAILED after 90.0s: BootError: no banner",
        "[hplab] fragment cn1: free order-10 blocks 0"]
