"""hplab merge: shards of one run merge into the tests of the unsharded run, runs of two
kernels merge side by side, and a test run twice for one kernel is an error naming both
parts. The shards are real sessions of the lab plugin on the fake lab, split by
pytest-split."""

from __future__ import annotations

import json
import shutil
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fakelab import InnerRun, run_inner

from lab.cli import main as cli
from lab.report.merge import MergeError, merge
from lab.report.results import load_junit

pytest_plugins = ["pytester"]

SUITE = '''
import pytest

def test_a(guest):
    guest.check("a")

class TestOnNode:
    def test_b(self, node):
        pass

    def test_c(self, guest):
        assert guest.check("c") == "nothing", "planted failure"

def test_skipped(node):
    pytest.skip("by design")

def test_d(guest):
    guest.check("d")
'''


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str) -> InnerRun:
    return run_inner(pytester, monkeypatch, SUITE, *args)


def _shards(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
            *args: str) -> list[InnerRun]:
    return [_run(pytester, monkeypatch, "--splits", "2", "--group", str(group), *args)
            for group in (1, 2)]


def _junit_ids(path: Path) -> list[str]:
    """Every testcase of a JUnit file as classname::name, in file order, repeats kept."""
    root = ET.parse(path).getroot()
    return [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")]


def _results_ids(run_dir: Path) -> list[str]:
    return [e["nodeid"] for e in json.loads((run_dir / "results.json").read_text())]


def test_two_shards_merge_into_the_ids_of_the_unsharded_run(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    whole = _run(pytester, monkeypatch)
    shards = _shards(pytester, monkeypatch)
    assert all(_junit_ids(s.run_dir / "junit.xml") for s in shards)  # both ran tests
    from_dirs = merge([s.run_dir for s in shards], tmp_path / "dirs")
    from_junit = merge([s.run_dir / "junit.xml" for s in shards], tmp_path / "junit")
    expected = sorted(_junit_ids(whole.run_dir / "junit.xml"))
    assert len(expected) == len(set(expected)) == 5
    for out in (from_dirs.out_dir, from_junit.out_dir):
        assert sorted(_junit_ids(out / "junit.xml")) == expected
        suites = ET.parse(out / "junit.xml").getroot().findall("testsuite")
        assert [s.get("name") for s in suites] == ["hplab single.yaml debian:6.1"] * 2
        shards_said = [{p.get("name"): p.get("value") for p in s.findall("properties/property")}
                       ["shard"] for s in suites]
        assert shards_said == ["1/2", "2/2"]
    assert sorted(_results_ids(from_dirs.out_dir)) == sorted(_results_ids(whole.run_dir))
    # the outcomes and classes are the unsharded run's too
    merged = {t.key: (t.outcome, t.outcome_class) for t in load_junit(
        from_dirs.out_dir / "junit.xml")}
    assert merged == {t.key: (t.outcome, t.outcome_class)
                      for t in load_junit(whole.run_dir / "junit.xml")}


def test_a_test_in_two_parts_of_one_kernel_names_both(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    whole = _run(pytester, monkeypatch)
    shard = _run(pytester, monkeypatch, "--splits", "2", "--group", "1")
    with pytest.raises(MergeError) as caught:
        merge([whole.run_dir, shard.run_dir / "junit.xml"], tmp_path / "out")
    said = str(caught.value)
    assert said.startswith("test test_inner.") and " is in two parts of 'hplab single.yaml " \
                                                      "debian:6.1': " in said
    assert f"run {whole.run_dir.name} ({whole.run_dir})" in said
    assert f"shard 1/2 on {socket.gethostname()} run {shard.run_dir.name} " \
           f"({shard.run_dir / 'junit.xml'})" in said
    assert not (tmp_path / "out").exists()


def test_kernels_with_the_same_ids_merge_apart(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    old = _run(pytester, monkeypatch)
    new = _run(pytester, monkeypatch, "--kernel", "debian:6.12")
    merged = merge([old.run_dir / "junit.xml", new.run_dir], tmp_path / "out")
    root = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert [s.get("name") for s in root.findall("testsuite")] == [
        "hplab single.yaml debian:6.1", "hplab single.yaml debian:6.12"]
    assert [len(s.findall("testcase")) for s in root.findall("testsuite")] == [5, 5]
    parts = {t.part for t in merged.tests}
    assert len(merged.tests) == 10 and len(parts) == 2
    # merged again from its own JUnit file: each testsuite is a part
    again = merge([tmp_path / "out" / "junit.xml"], tmp_path / "again")
    assert [p.suite.kernel for p in again.parts] == ["debian:6.1", "debian:6.12"]


def _rows(page: str, table: str) -> list[list[str]]:
    root = ET.fromstring(page.replace("<!DOCTYPE html>", ""))
    found = next(e for e in root.iter("table") if e.get("id") == table)
    body = next(found.iter("tbody"))
    return [["".join(td.itertext()) for td in tr.findall("td")] for tr in body.findall("tr")]


def test_the_report_lists_each_shard_with_its_host_and_each_test_its_part(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shards = _shards(pytester, monkeypatch)
    merged = merge([s.run_dir for s in shards], tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    parts = _rows(page, "parts-table")
    host = socket.gethostname()
    assert [row[:4] for row in parts] == [
        [merged.parts[0].label, host, shards[0].run_dir.name, "1/2"],
        [merged.parts[1].label, host, shards[1].run_dir.name, "2/2"]]
    assert all(row[4].startswith("debian:6.1") and "6.1.0-fake-amd64" in row[4]
               and row[5].endswith("topologies/single.yaml") for row in parts)
    assert sum(int(row[6]) for row in parts) == 5
    assert all(row[9] == "its report" for row in parts)  # linked to each shard's own
    tests = _rows(page, "all-tests")
    assert len(tests) == 5
    assert {row[1] for row in tests} == {p.label for p in merged.parts}
    # the failure's console and artifacts are its shard's
    failing = next(t for t in merged.tests if t.failed)
    assert failing.part_dir and f'href="{failing.part_dir}/cn1/console.log"' in page


def test_cli_merge_prints_each_part_and_the_files(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    shards = _shards(pytester, monkeypatch)
    capsys.readouterr()
    assert cli.main(["merge", *(str(s.run_dir) for s in shards), "-o",
                     str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("single.yaml debian:6.1 shard 1/2 on ")
    assert " wall" in lines[0] and "passed" in lines[0]
    assert lines[2:] == [str(tmp_path / "out" / n)
                         for n in ("junit.xml", "results.json", "report.html")]


def test_bad_input_is_named(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = run_inner(pytester, monkeypatch, "def test_plain():\n    pass\n")
    broken = tmp_path / "broken.xml"
    broken.write_text("<testsuites><testsuite>")
    not_run = tmp_path / "empty"
    not_run.mkdir()
    no_suite = tmp_path / "old-run"
    no_suite.mkdir()
    (no_suite / "results.json").write_text("[]")
    cases = [(plain.run_dir / "junit.xml",
              f"{plain.run_dir / 'junit.xml'}: testsuite 'pytest': field 'topology' is "
              "missing: not a testsuite of an hplab run"),
             (broken, f"{broken}: not XML: "),
             (not_run, f"{not_run}: not a run directory (no results.json)"),
             (no_suite, f"{no_suite}: a run directory without suite.json"),
             (tmp_path / "absent", f"{tmp_path / 'absent'}: no such file or directory")]
    for path, message in cases:
        assert cli.main(["merge", str(path), "-o", str(tmp_path / "out")]) == 2
        assert capsys.readouterr().err.startswith(f"hplab: {message}")


def test_shard_artifacts_as_the_pipeline_uploads_them_are_read_with_their_runs(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """shards/ENV-G/junit.xml with runs/<run id>/ beside it (ci/nightly.gitlab-ci.yml)."""
    shards = _shards(pytester, monkeypatch)
    for group, shard in enumerate(shards, 1):
        where = tmp_path / "shards" / f"lab-{group}"
        (where / "runs").mkdir(parents=True)
        shutil.copy(shard.run_dir / "junit.xml", where / "junit.xml")
        shutil.copytree(shard.run_dir, where / "runs" / shard.run_dir.name)
    merged = merge(sorted((tmp_path / "shards").glob("*/junit.xml")), tmp_path / "merged")
    assert [p.part_dir for p in merged.parts] == [
        f"../shards/lab-{g}/runs/{s.run_dir.name}" for g, s in enumerate(shards, 1)]
    page = (tmp_path / "merged" / "report.html").read_text()
    assert page.count(">its report</a>") == 2
    failing = next(t for t in merged.tests if t.failed)
    assert (tmp_path / "merged" / failing.part_dir / "cn1" / "console.log").is_file()
