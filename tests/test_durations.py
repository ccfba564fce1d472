"""hplab durations: pytest-split's durations file from JUnit files or run directories,
keyed by the test ids pytest-split looks up."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fakelab import ROOT, run_inner

from lab.cli import durations
from lab.cli import main as cli

pytest_plugins = ["pytester"]

SUITE = '''
import time

def test_slow(guest):
    time.sleep(0.6)

class TestOnNode:
    def test_quick(self, node):
        pass
'''
IDS = ["test_inner.py::TestOnNode::test_quick[cn1]", "test_inner.py::test_slow[cn1]"]


def test_junit_and_run_directory_give_the_same_ids_and_pytest_split_reads_them(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = run_inner(pytester, monkeypatch, SUITE)
    from_junit = durations.durations([inner.run_dir / "junit.xml"], pytester.path)
    from_run = durations.durations([inner.run_dir], pytester.path)
    assert list(from_junit) == list(from_run) == IDS
    assert from_junit[IDS[1]] >= 0.6 and from_run[IDS[1]] >= 0.6
    table = pytester.path / "durations.json"
    table.write_text(durations.durations_json(from_junit))
    shard = run_inner(pytester, monkeypatch, SUITE, "--splits", "2", "--group", "1",
                      f"--durations-path={table}")
    out = shard.result.stdout.str()
    assert "No test durations found" not in out
    # the slow test alone outweighs the other: it is the first group, by its seconds
    estimate = re.search(r"Running group 1/2 \(estimated duration: ([0-9.]+)s\)", out)
    assert estimate is not None and float(estimate.group(1)) >= 0.6
    shard.result.assert_outcomes(passed=1)


def test_a_classname_names_its_module_by_the_tree_else_by_pytests_naming(
        tmp_path: Path) -> None:
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "test_boot.py").touch()
    assert durations.module_split("suites.test_boot.TestPool", tmp_path) == (
        "suites/test_boot.py", ["TestPool"])
    assert durations.module_split("suites.test_boot", tmp_path) == ("suites/test_boot.py", [])
    assert durations.module_split("suites.test_gone.TestX.TestY", tmp_path) == (
        "suites/test_gone.py", ["TestX", "TestY"])


def test_several_inputs_take_the_median(tmp_path: Path) -> None:
    for i, seconds in enumerate((1.0, 4.0, 2.0)):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "results.json").write_text(json.dumps(
            [{"nodeid": "suites/t.py::test_a[cn1]", "outcome": "passed", "duration": seconds,
              "properties": {}}]))
    assert durations.durations(sorted(tmp_path.glob("run*")), tmp_path) == {
        "suites/t.py::test_a[cn1]": 2.0}


def test_cli_writes_the_file_and_names_bad_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite name="x"><testcase classname="suites.test_boot" '
                     'name="test_kernel[cn1]" time="12.5"/></testsuite></testsuites>')
    out = tmp_path / "durations.json"
    assert cli.main(["durations", str(junit), "-o", str(out), "--root", str(ROOT)]) == 0
    assert json.loads(out.read_text()) == {"suites/test_boot.py::test_kernel[cn1]": 12.5}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["durations", str(empty)]) == 2
    assert capsys.readouterr().err == f"hplab: {empty}: not a run directory (no results.json)\n"


def test_the_committed_durations_cover_the_default_suites() -> None:
    table = json.loads((ROOT / "suites" / "durations.json").read_text())
    modules = {nodeid.split("::")[0] for nodeid in table}
    assert modules == {f"suites/{p.name}" for p in (ROOT / "suites").glob("test_*.py")}
    assert all(seconds >= 0 for seconds in table.values())
