from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.cli import main as cli
from lab.cli import repeat


def _junit(path: Path, cases: list[tuple[str, str, float]]) -> Path:
    body = []
    for name, outcome, seconds in cases:
        inner = {"passed": "", "failed": "<failure message='x'/>", "error": "<error message='x'/>",
                 "skipped": "<skipped message='x'/>"}[outcome]
        body.append(f'<testcase classname="suites.t" name="{name}" time="{seconds}">{inner}'
                    "</testcase>")
    path.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest">'
                    + "".join(body) + "</testsuite></testsuites>")
    return path


@pytest.fixture
def three_runs(tmp_path: Path) -> list[Path]:
    return [
        _junit(tmp_path / "1.xml", [("test_a", "passed", 1.0), ("test_b", "passed", 5.0)]),
        _junit(tmp_path / "2.xml", [("test_a", "passed", 3.0), ("test_b", "failed", 9.0)]),
        _junit(tmp_path / "3.xml", [("test_a", "passed", 2.0), ("test_c", "skipped", 0.0)]),
    ]


def test_pass_rate_and_duration_spread_per_test(three_runs: list[Path]) -> None:
    records = {r.nodeid: r for r in repeat.aggregate(three_runs)}
    a = records["suites.t::test_a"].summary()
    assert (a["passed"], a["runs"], a["pass_rate"]) == (3, 3, 1.0)
    assert (a["duration_median"], a["duration_min"], a["duration_max"]) == (2.0, 1.0, 3.0)
    b = records["suites.t::test_b"]
    assert b.outcomes == ["passed", "failed", "missing"]
    assert b.pass_rate == pytest.approx(1 / 3)
    assert records["suites.t::test_c"].outcomes == ["missing", "missing", "skipped"]


def test_table_lists_least_reliable_first(three_runs: list[Path]) -> None:
    lines = repeat.table(repeat.aggregate(three_runs)).splitlines()
    assert lines[1].split()[-1] == "suites.t::test_c"
    assert lines[-1].split()[:4] == ["3/3", "2.00", "1.00", "3.00"]


def test_broken_junit_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "junit-1.xml"
    bad.write_text("<testsuites><testcase")
    with pytest.raises(repeat.RepeatError, match=r"junit-1\.xml: not a readable JUnit"):
        repeat.parse_junit(bad)


def test_count_and_junit_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(repeat.RepeatError, match="repeat count must be >= 1, got 0"):
        repeat.run(0, [], tmp_path)
    with pytest.raises(repeat.RepeatError, match="must not set --junitxml"):
        repeat.run(2, ["--junitxml=x.xml"], tmp_path)


def test_cli_repeats_a_real_pytest_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(tmp_path / "locks"))  # not the host's
    # A test that fails on every second run, keyed by a counter file.
    counter = tmp_path / "count"
    test_file = tmp_path / "test_flaky.py"
    test_file.write_text(
        "from pathlib import Path\n"
        f"C = Path({str(counter)!r})\n"
        "def test_flaky():\n"
        "    n = int(C.read_text()) if C.exists() else 0\n"
        "    C.write_text(str(n + 1))\n"
        "    assert n % 2 == 0\n"
        "def test_steady():\n"
        "    pass\n")
    out = tmp_path / "out"
    code = cli.main(["repeat", "3", "--out", str(out), "--", "-q", "-p", "no:cacheprovider",
                     "--rootdir", str(tmp_path), str(test_file)])
    assert code == 1
    data = json.loads((out / "repeat.json").read_text())
    assert data["runs"] == 3 and data["exit_codes"] == [0, 1, 0]
    rates = {t["nodeid"].split("::")[-1]: t["passed"] for t in data["tests"]}
    assert rates == {"test_flaky": 2, "test_steady": 3}
    assert sorted(p.name for p in out.glob("junit-*.xml")) == [
        "junit-1.xml", "junit-2.xml", "junit-3.xml"]
    assert "2/3" in capsys.readouterr().out
