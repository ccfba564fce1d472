from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakelab import ROOT

from lab.cli import main as cli
from lab.cli import matrix
from lab.report import html as report

# Inner sessions boot a FakeLab whose release follows the spec; the spec of an exact
# release that has no package fails in the kernel phase, as kernelfetch.fetch does.
MISSING = "debian:6.1.0-99-amd64"
INNER_CONFTEST = f"""
import dataclasses

import fakelab
import pytest
from lab.pytest_plugin import session
from lab.errors import BuildError


class KernelLab(fakelab.FakeLab):
    def start(self):
        node = self.topology.nodes[0]
        if node.kernel == {MISSING!r}:
            self.run_dir.mkdir(parents=True)
            try:
                with self.bus.phase("kernel", node.name):
                    raise BuildError("kernel {MISSING!r}: no package in the apt lists")
            finally:
                self.stop()
        super().start()
        for rt in self.nodes.values():
            release = rt.node.kernel.split(":")[1] + "-fake-amd64"
            kernel = dataclasses.replace(rt.kernel, release=release)
            rt.plan = dataclasses.replace(rt.plan, kernel=kernel)
        return self


pytest.MonkeyPatch().setattr(session, "Lab", KernelLab)
"""
INNER_TESTS = """
import pytest


def test_boots(node):
    assert node.kernel.release


def test_fill(node):
    assert not node.kernel.release.startswith("6.12"), "fill differs on 6.12"


def test_two_nodes(node):
    pytest.skip("needs two nodes")
"""


@pytest.fixture
def suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """pytest arguments of a small suite run by the lab plugin on FakeLabs."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(tmp_path / "locks"))  # not the host's
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(INNER_CONFTEST)
    (inner / "test_inner.py").write_text(INNER_TESTS)
    return ["-p", "no:cacheprovider", "-q", f"--rootdir={inner}",
            str(inner / "test_inner.py")]


def _links(page: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'<a href="([^"]+)"', page)]


def test_a_kernel_per_session_and_a_table_of_test_by_kernel(
        tmp_path: Path, suite: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = cli.main(["--lab-dir", str(tmp_path / "lab"), "matrix",
                     "--kernels", f"debian:6.1,debian:6.12,{MISSING}",
                     "--topology", str(ROOT / "topologies" / "single.yaml"), "-o", str(out),
                     "--", *suite])
    assert code == 1
    data = json.loads((out / "matrix.json").read_text())
    cells = {t["test"].split("::")[-1]: t["cells"] for t in data["tests"]}
    assert cells["test_boots[cn1]"] == {"debian:6.1": "passed", "debian:6.12": "passed",
                                        MISSING: "infrastructure"}
    assert cells["test_fill[cn1]"] == {"debian:6.1": "passed", "debian:6.12": "test-failure",
                                       MISSING: "infrastructure"}
    assert cells["test_two_nodes[cn1]"]["debian:6.1"] == "precondition-unreachable"
    kernels = {k["spec"]: k for k in data["kernels"]}
    assert kernels["debian:6.1"]["ok"] and kernels["debian:6.1"]["releases"] == [
        "6.1-fake-amd64"]
    assert kernels["debian:6.12"]["exit_code"] == 1 and not kernels["debian:6.12"]["ok"]
    # the failing 6.12 did not stop the kernel after it, whose lab never started
    assert kernels[MISSING]["status"].startswith("lab did not start: kernel cn1 failed: "
                                                 "BuildError: kernel")
    assert kernels[MISSING]["page"] == "03-debian-6.1.0-99-amd64/junit.xml"
    assert (out / "01-debian-6.1" / "cache").resolve() == (tmp_path / "lab" / "cache")

    printed, progress = capsys.readouterr()
    assert re.search(r"\[hplab\] matrix 2/3 debian:6\.12: done in [\d.]+s, pytest exit 1: "
                     r"1 passed, 1 test-failure, 1 skipped; 6\.12-fake-amd64\n", progress)
    assert "[hplab] matrix 3/3 debian:6.1.0-99-amd64: starting: pytest --kernel" in progress
    fill = next(line for line in printed.splitlines() if "test_fill[cn1]" in line)
    assert fill.split()[1:] == ["passed", "test-failure", "infrastructure"]
    assert "0 of 3 tests passed on every kernel" in printed

    page = (out / "matrix.html").read_text()
    links = _links(page)
    report_link = next(link for link in links if link.endswith("report.html#class=passed"))
    assert report_link.startswith("01-debian-6.1/runs/")
    for link in links:
        assert not link.startswith("/") and (out / link.split("#")[0]).is_file(), link
    assert any(link.startswith("02-debian-6.12/runs/") and link.endswith("#class=test-failure")
               for link in links)
    assert "lab did not start: kernel cn1 failed" in page and "6.12-fake-amd64" in page


def _entry(name: str, outcome_class: str, release: str) -> dict[str, object]:
    outcome = {"passed": "passed", "precondition-unreachable": "skipped"}.get(outcome_class,
                                                                             "failed")
    return {"nodeid": f"suites/test_t.py::{name}[cn1]", "outcome": outcome, "duration": 1.0,
            "properties": {"outcome": outcome_class, "node": "cn1", "kernel": release}}


Plan = dict[str, list[tuple[str, str]] | int | KeyboardInterrupt]


def fake_runs(monkeypatch: pytest.MonkeyPatch, plan: Plan) -> list[str]:
    """Replace the inner pytest: per spec, write a run's results.json and report.html like
    the plugin's and the JUnit file, return a bare exit status, or be interrupted."""
    called: list[str] = []

    def runner(argv: list[str]) -> int:
        spec = argv[argv.index("--kernel") + 1]
        called.append(spec)
        planned = plan[spec]
        if isinstance(planned, KeyboardInterrupt):
            raise planned
        if isinstance(planned, int):
            return planned
        run = Path(argv[argv.index("--lab-dir") + 1]) / "runs" / "abcd1234"
        run.mkdir(parents=True)
        release = spec.split(":")[1] + "-9-amd64"
        entries = [_entry(name, cls, release) for name, cls in planned]
        (run / "results.json").write_text(json.dumps(entries))
        report.write_report(run)
        junit = next(a for a in argv if a.startswith("--junitxml=")).split("=", 1)[1]
        Path(junit).write_text("<testsuites/>")
        return 0 if all(cls in ("passed", "precondition-unreachable")
                        for _, cls in planned) else 1

    monkeypatch.setattr(matrix, "run_pytest", runner)
    return called


Main = Callable[[Plan], int]


@pytest.fixture
def hplab_matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Main:
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(tmp_path / "locks"))  # not the host's

    def main(plan: Plan) -> int:
        fake_runs(monkeypatch, plan)
        return cli.main(["--lab-dir", str(tmp_path / "lab"), "matrix", "--kernels",
                         ",".join(plan), "-o", str(tmp_path / "out"), "--", "suites"])
    return main


def _json(tmp_path: Path) -> Any:
    return json.loads((tmp_path / "out" / "matrix.json").read_text())


def test_passed_or_skipped_everywhere_exits_0(hplab_matrix: Main, tmp_path: Path) -> None:
    tests = [("test_a", "passed"), ("test_b", "precondition-unreachable")]
    assert hplab_matrix({"debian:6.1": tests, "debian:6.12": tests}) == 0
    assert _json(tmp_path)["ok"] is True


def test_a_kernel_without_results_fails_the_matrix_but_not_the_next_kernel(
        hplab_matrix: Main, tmp_path: Path) -> None:
    tests = [("test_a", "passed")]
    assert hplab_matrix({"debian:6.1": 4, "debian:6.12": tests}) == 1
    data = _json(tmp_path)
    first, second = data["kernels"]
    assert first["status"] == "pytest exited 4 without writing junit.xml"
    assert first["page"] is None and first["counts"] == {"not-run": 1}
    assert second["ok"] and second["releases"] == ["6.12-9-amd64"]
    assert data["tests"] == [{"test": "suites/test_t.py::test_a[cn1]",
                              "key": "suites.test_t.test_a[cn1]",
                              "cells": {"debian:6.1": "not-run", "debian:6.12": "passed"},
                              "seconds": {"debian:6.12": 1.0}}]


def test_a_test_absent_on_one_kernel_is_not_run_there(hplab_matrix: Main,
                                                       tmp_path: Path) -> None:
    assert hplab_matrix({"debian:6.1": [("test_a", "passed"), ("test_b", "passed")],
                         "debian:6.12": [("test_a", "passed")]}) == 1
    page = (tmp_path / "out" / "matrix.html").read_text()
    assert re.search(r'<td class="cell" data-class="not-run"[^>]*>not-run</td>', page)


def test_ctrl_c_ends_the_matrix_after_the_current_kernel(
        hplab_matrix: Main, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tests = [("test_a", "kernel-crash")]
    code = hplab_matrix({"debian:6.1": tests, "debian:6.12": KeyboardInterrupt(),
                         "debian:6.1.0-9-amd64": tests})
    assert code == 130
    statuses = [k["status"] for k in _json(tmp_path)["kernels"]]
    assert statuses[1:] == ["pytest exited 130 without writing junit.xml",
                            "not run: the matrix was interrupted"]
    assert "(interrupted)" in capsys.readouterr().out


def test_cells_link_to_their_kernels_report_filtered_by_class(hplab_matrix: Main,
                                                              tmp_path: Path) -> None:
    hplab_matrix({"debian:6.1": [("test_a", "passed"), ("test_b", "hang")],
                  "debian:6.12": [("test_a", "kernel-crash"), ("test_b", "passed")]})
    page = (tmp_path / "out" / "matrix.html").read_text()
    rows = re.findall(r"<tr><td><code>([^<]+)</code></td>(.*?)</tr>", page)
    cells = {test: re.findall(r'data-class="([^"]+)".*?<a href="([^"]+)">', row)
             for test, row in rows}
    assert cells["suites/test_t.py::test_b[cn1]"] == [
        ("hang", "01-debian-6.1/runs/abcd1234/report.html#class=hang"),
        ("passed", "02-debian-6.12/runs/abcd1234/report.html#class=passed")]
    assert "6.1-9-amd64" in page and "2 of 2 kernels failing" in page


@pytest.mark.parametrize(("argv", "error"), [
    (["--kernels", "debian:6.1,,debian:6.12"], "--kernels 'debian:6.1,,debian:6.12': an "
                                               "empty kernel spec"),
    (["--kernels", "debian:6.1,debian:6.1"], "--kernels: debian:6.1 given more than once"),
    (["--kernels", "debian:6.1", "--", "--kernel=debian:6.12"],
     "pytest argument '--kernel=debian:6.12': hplab matrix sets --kernel for each kernel"),
    (["--kernels", "debian:6.1", "--", "--lab-dir", "x"], "sets --lab-dir"),
    (["--kernels", "debian:6.1", "--topology", "nope.yaml"], "--topology nope.yaml: no such file"),
])
def test_bad_arguments_are_refused_naming_them(
        argv: list[str], error: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--lab-dir", str(tmp_path), "matrix", *argv]) == 2
    assert error in capsys.readouterr().err
    assert not (tmp_path / "matrix").exists()


def test_kernel_directories_are_named_by_index_and_spec() -> None:
    assert matrix.kernel_dir_name(3, "local:/srv/kernels/6.13") == "03-local-srv-kernels-6.13"
    assert matrix.kernel_dir_name(12, "debian:6.12-rt") == "12-debian-6.12-rt"
