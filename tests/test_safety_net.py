"""The last-resort bound of a lab test: pytest-timeout's signal method, scaled by the
slowest node's speed; teardown and JUnit still happen."""

from __future__ import annotations

import re
import time

import pytest
from fakelab import run_inner

from lab.timeouts import SLOWDOWN_RANGE

pytest_plugins = ["pytester"]

TESTS = '''
import time
from pathlib import Path

import pytest

@pytest.fixture
def cleaned_up(lab, node):
    yield
    Path("teardown-ran").write_text("yes")

@pytest.mark.lab
def test_hangs(cleaned_up):
    time.sleep(30)

@pytest.mark.lab
def test_after(lab, node):
    pass

def test_not_a_lab_test(request):
    assert request.node.get_closest_marker("timeout") is None
'''


def test_a_hung_lab_test_is_ended_and_its_teardown_still_runs(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = 0.25
    started = time.monotonic()
    inner = run_inner(pytester, monkeypatch, TESTS, "-v", f"--lab-test-timeout={reference}")
    assert time.monotonic() - started < 25
    out = inner.result.stdout.str()
    results = inner.results()
    hung = results["test_hangs[cn1]"]
    assert (hung["outcome"], hung["properties"]["outcome"]) == ("failed", "hang")
    # no node has a measured speed in the fake lab: the largest slowdown accepted
    bound = f"{reference * SLOWDOWN_RANGE[1]:.1f}s"
    assert re.search(rf"Failed: Timeout \(?>{re.escape(bound)}", out), out
    assert (pytester.path / "teardown-ran").read_text() == "yes"
    assert results["test_after[cn1]"]["outcome"] == "passed"
    assert results["test_not_a_lab_test"]["outcome"] == "passed"
    assert 'name="test_hangs[cn1]"' in (inner.run_dir / "junit.xml").read_text()
