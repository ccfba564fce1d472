from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from browser import browse, chromium

from lab.cli import main as cli
from lab.report import compare
from lab.report import html as report
from lab.report.results import UNCLASSIFIED, RunFileError, bounded, load_junit, result_key

PYTEST_OUTCOME = {"passed": "passed", "precondition-unreachable": "skipped"}


def _entry(name: str, outcome_class: str = "passed", seconds: float = 1.0,
           **properties: str) -> dict[str, object]:
    return {"nodeid": f"suites/test_t.py::{name}",
            "outcome": PYTEST_OUTCOME.get(outcome_class, "failed"), "duration": seconds,
            "properties": {"outcome": outcome_class, **properties}}


def _run_dir(path: Path, entries: list[dict[str, object]],
             events: list[dict[str, object]] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(entries))
    if events is not None:
        (path / "events.json").write_text(json.dumps(events))
    return path


def _boot(subject: str, seconds: float, phase: str = "boot") -> dict[str, object]:
    return {"phase": phase, "subject": subject, "state": "end", "detail": "",
            "elapsed": seconds, "at": 10.0}


def _case(name: str, outcome_class: str | None = "passed", seconds: float = 1.0,
          failure: str = "", **properties: str) -> str:
    props = {**properties, **({"outcome": outcome_class} if outcome_class else {})}
    listed = "".join(f'<property name="{k}" value="{v}"/>' for k, v in props.items())
    inner = f'<failure message="failed">{failure}</failure>' if failure else ""
    return (f'<testcase classname="suites.test_t" name="{name}" time="{seconds}">'
            f"<properties>{listed}</properties>{inner}</testcase>")


def _junit(path: Path, cases: list[str]) -> Path:
    path.write_text('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite '
                    f'name="pytest">{"".join(cases)}</testsuite></testsuites>')
    return path


@pytest.fixture
def last_night(tmp_path: Path) -> Path:
    return _run_dir(tmp_path / "old", [
        _entry("test_keeps_passing", seconds=10.0, kernel="6.1.0-25-amd64", node="cn1"),
        _entry("test_breaks", seconds=3.0, kernel="6.1.0-25-amd64", node="cn1"),
        _entry("test_gets_fixed", "kernel-crash", 4.0, kernel="6.1.0-25-amd64", node="cn1"),
        _entry("test_still_broken", "test-failure"),
        _entry("test_now_hangs", "test-failure"),
        _entry("test_gone"),
    ], [_boot("cn1", 3.0), _boot("cn1", 3.5), _boot("cn1", 60.0, "image")])


@pytest.fixture
def tonight(tmp_path: Path) -> Path:
    return _run_dir(tmp_path / "new", [
        _entry("test_keeps_passing", seconds=21.0, kernel="6.1.0-26-amd64", node="cn1"),
        _entry("test_breaks", "kernel-crash", 3.0, kernel="6.1.0-26-amd64", node="cn1",
               dmesg_cn1="artifacts/dmesg/test_breaks-cn1.txt"),
        _entry("test_gets_fixed", "passed", 4.0, kernel="6.1.0-26-amd64", node="cn1"),
        _entry("test_still_broken", "test-failure"),
        _entry("test_now_hangs", "hang"),
        _entry("test_new"),
    ], [_boot("cn1", 9.0)])


def _names(tests: object) -> list[str]:
    found = []
    for item in tests:  # type: ignore[attr-defined]
        test = getattr(item, "new", None) or getattr(item, "test", None) or item
        found.append(test.nodeid.rsplit("::", 1)[1])
    return found


def test_what_broke_what_was_fixed_and_what_changed(last_night: Path, tonight: Path) -> None:
    c = compare.compare_paths(last_night, tonight)
    assert _names(c.new_failures) == ["test_breaks"]
    assert c.new_failures[0].old is not None and c.new_failures[0].old.outcome_class == "passed"
    assert _names(c.fixed) == ["test_gets_fixed"]
    assert _names(c.changed_class) == ["test_now_hangs"]
    assert _names(c.still_failing) == ["test_still_broken"]
    assert _names(c.added) == ["test_new"] and _names(c.removed) == ["test_gone"]
    assert _names(c.slower) == ["test_keeps_passing"]
    assert (c.slower[0].old_seconds, c.slower[0].new_seconds, c.slower[0].threshold) == (
        10.0, 21.0, 20.0)
    assert [v.describe() for v in c.versions] == [
        "kernel on cn1: 6.1.0-25-amd64 -> 6.1.0-26-amd64"]
    assert c.summary_line() == (
        f"compared with {last_night}: 1 new failure, 1 failing in another class, 1 fixed, "
        "1 slower, 1 added, 1 removed; kernel on cn1: 6.1.0-25-amd64 -> 6.1.0-26-amd64")


def test_an_added_test_that_fails_is_a_new_failure(last_night: Path, tonight: Path) -> None:
    entries = json.loads((tonight / "results.json").read_text())
    entries.append(_entry("test_new_and_broken", "test-failure"))
    (tonight / "results.json").write_text(json.dumps(entries))
    c = compare.compare_paths(last_night, tonight)
    assert _names(c.new_failures) == ["test_breaks", "test_new_and_broken"]
    assert c.new_failures[1].old is None
    assert "test-failure" in c.summary_text() and "(added)" in c.summary_text()


@pytest.mark.parametrize(("old", "new", "slower"), [
    (10.0, 20.0, False),  # twice as long, not more
    (10.0, 20.5, True),
    (1.0, 5.9, False),  # more than 2x, but within +5 s
    (1.0, 6.5, True),
    (0.0, 5.0, False),
])
def test_slower_means_more_than_twice_as_long_and_5_s_more(old: float, new: float,
                                                           slower: bool, tmp_path: Path) -> None:
    c = compare.compare_paths(_run_dir(tmp_path / "a", [_entry("test_x", seconds=old)]),
                              _run_dir(tmp_path / "b", [_entry("test_x", seconds=new)]))
    assert bool(c.slower) is slower


def test_a_failing_test_is_never_called_slower(tmp_path: Path) -> None:
    c = compare.compare_paths(
        _run_dir(tmp_path / "a", [_entry("test_x", seconds=1.0)]),
        _run_dir(tmp_path / "b", [_entry("test_x", "hang", seconds=600.0)]))
    assert c.slower == () and _names(c.new_failures) == ["test_x"]


def _repeated(path: Path, seconds: list[float]) -> Path:
    path.mkdir()
    for i, value in enumerate(seconds):
        _junit(path / f"junit-{i + 1}.xml", [_case("test_x", seconds=value)])
    return path


@pytest.mark.parametrize(("old_runs", "new_runs", "slower"), [
    ([10.0, 11.0, 12.0], [15.0, 15.5, 16.0], False),  # within median + 5 s
    ([10.0, 11.0, 12.0], [16.5, 17.0, 30.0], True),  # beyond: new median 17 > 16
    ([10.0, 20.0, 30.0], [45.0, 48.0, 49.0], False),  # the spread was 20 s: up to 50 s
    ([10.0, 20.0, 30.0], [51.0], True),
])
def test_with_repeated_runs_slower_means_beyond_their_spread(
        old_runs: list[float], new_runs: list[float], slower: bool, tmp_path: Path) -> None:
    c = compare.compare_paths(_repeated(tmp_path / "old", old_runs),
                              _repeated(tmp_path / "new", new_runs))
    assert c.old.runs == len(old_runs) and c.old.tests[result_key(
        "suites/test_t.py::test_x")].durations == tuple(old_runs)
    assert bool(c.slower) is slower
    if slower:
        assert "spread of 3 runs" in c.slower[0].rule


def test_a_test_failing_in_one_of_several_runs_counts_as_failing(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    _junit(old / "junit-1.xml", [_case("test_flaky")])
    _junit(old / "junit-2.xml", [_case("test_flaky", "test-failure", failure="boom")])
    _junit(old / "junit-3.xml", [_case("test_flaky")])
    new = _junit(tmp_path / "new.xml", [_case("test_flaky")])
    c = compare.compare_paths(old, new)
    assert _names(c.fixed) == ["test_flaky"] and c.fixed[0].old is not None
    assert c.fixed[0].old.durations == (1.0, 1.0, 1.0)


def test_module_version_changes_are_listed(tmp_path: Path) -> None:
    c = compare.compare_paths(
        _run_dir(tmp_path / "a", [_entry("test_x", node="cn1", module_version="v1 abc")]),
        _run_dir(tmp_path / "b", [_entry("test_x", node="cn1", module_version="v1 def")]))
    assert [v.describe() for v in c.versions] == ["module_version on cn1: v1 abc -> v1 def"]


def test_junit_input_matches_results_json_by_test(last_night: Path, tmp_path: Path) -> None:
    teardown_error = ('<testcase classname="suites.test_t" name="test_breaks" time="0.5">'
                      '<properties><property name="outcome" value="kernel-crash"/>'
                      '</properties><error message="teardown">kernel BUG at mm/x.c:1'
                      "</error></testcase>")
    junit = _junit(tmp_path / "junit.xml", [
        _case("test_keeps_passing", seconds=10.0, kernel="6.1.0-25-amd64", node="cn1"),
        _case("test_breaks", "test-failure", 3.0, "E   assert 1 == 2", node="cn1",
              kernel="6.1.0-25-amd64"), teardown_error,
        _case("test_gets_fixed", "passed"),
    ])
    tests = {t.nodeid: t for t in load_junit(junit)}
    breaks = tests["suites.test_t::test_breaks"]
    # pytest writes the teardown error as a second testcase of the same name
    assert breaks.outcome == "failed" and breaks.outcome_class == "kernel-crash"
    assert breaks.durations == (3.5,) and breaks.node == "cn1"
    assert "assert 1 == 2" in breaks.message and "kernel BUG at mm/x.c:1" in breaks.message
    assert breaks.key == result_key("suites/test_t.py::test_breaks")
    c = compare.compare_paths(last_night, junit)
    assert _names(c.new_failures) == ["test_breaks"]
    assert _names(c.fixed) == ["test_gets_fixed"]
    assert sorted(_names(c.removed)) == ["test_gone", "test_now_hangs", "test_still_broken"]
    assert c.added == () and c.versions == ()
    assert c.new.phases is None and c.old.phases is not None


def test_junit_without_the_lab_plugin_is_unclassified(tmp_path: Path) -> None:
    junit = _junit(tmp_path / "plain.xml", [_case("test_a", None, failure="x"),
                                            _case("test_b", None)])
    a, b = load_junit(junit)
    assert (a.outcome_class, a.outcome, a.failed) == (UNCLASSIFIED, "failed", True)
    assert (b.outcome_class, b.failed, b.passed) == (UNCLASSIFIED, False, True)


def test_result_key_is_the_same_for_nodeid_and_junit_names() -> None:
    assert result_key("suites/a/test_t.py::TestC::test_x[cn1-a/b.py::c]") == \
        "suites.a.test_t.TestC.test_x[cn1-a/b.py::c]"
    assert result_key("suites.a.test_t.TestC::test_x[cn1]") == "suites.a.test_t.TestC.test_x[cn1]"


def test_phase_totals_per_engine_phase(last_night: Path, tonight: Path) -> None:
    c = compare.compare_paths(last_night, tonight)
    assert c.phase_rows() == [
        ("boot", compare.PhaseTotal("boot", 2, 6.5), compare.PhaseTotal("boot", 1, 9.0)),
        ("image", compare.PhaseTotal("image", 1, 60.0), None)]


@pytest.mark.parametrize(("name", "content", "error"), [
    ("junit.xml", "<testsuites><testcase", r"junit\.xml: not XML"),
    ("junit.xml", "<html><body/></html>", r"junit\.xml: not JUnit XML \(root element <html>"),
    ("junit.xml", '<testsuite><testcase classname="a" name="t" time="soon"/></testsuite>',
     r"junit\.xml: testcase a::t: duration 'soon' is not a number"),
    ("results.json", "{nope", r"results\.json: not JSON"),
    ("results.json", '{"nodeid": "x"}', r"results\.json: expected a list of test results"),
    ("results.json", '[{"outcome": "passed"}]',
     r"results\.json: entry 1: not a test result \(an object with a nodeid\)"),
])
def test_a_side_that_is_not_valid_names_the_file(name: str, content: str, error: str,
                                                 tmp_path: Path) -> None:
    bad = tmp_path / "bad" / name
    bad.parent.mkdir()
    bad.write_text(content)
    with pytest.raises(RunFileError, match=re.escape(str(bad.parent)) + "/" + error):
        compare.load_side(bad)


def test_a_run_dir_with_broken_events_names_the_file(tonight: Path) -> None:
    (tonight / "events.json").write_text('[{"phase": "boot"}]')
    with pytest.raises(RunFileError, match=r"events\.json: event 1 is not an object with at"):
        compare.load_side(tonight)


def test_a_side_that_is_neither_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(RunFileError, match=r"absent: no such file or directory"):
        compare.load_side(tmp_path / "absent")
    with pytest.raises(RunFileError, match=r"neither a run directory \(no results\.json\)"):
        compare.load_side(tmp_path)


def test_bounded_keeps_start_and_end() -> None:
    text = "kernel BUG at start\n" + "x" * 5000 + "\nE   assert at the end"
    cut = bounded(text, 2000)
    assert len(cut) < 2100 and cut.startswith("kernel BUG at start")
    assert cut.endswith("E   assert at the end") and "characters cut" in cut
    assert bounded("short") == "short"


def test_cli_compare_prints_a_summary_and_writes_the_page(
        last_night: Path, tonight: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pages" / "cmp.html"
    out.parent.mkdir()
    assert cli.main(["report", "--compare", str(last_night), str(tonight), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 new failure" in printed and "kernel-crash" in printed
    assert "fixed (1):" in printed and str(out) in printed
    page = out.read_text()
    assert '<tr class="new-failure">' in page
    # links lead from the page's directory to the new run's artifacts
    assert 'href="../new/artifacts/dmesg/test_breaks-cn1.txt"' in page


def test_cli_compare_defaults_to_compare_html_here(
        last_night: Path, tonight: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "--compare", str(last_night), str(tonight)]) == 0
    assert (tmp_path / "compare.html").exists()


def test_cli_compare_of_a_bad_file_names_it(last_night: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.xml"
    bad.write_text("<testsuites>")
    assert cli.main(["report", "--compare", str(last_night), str(bad)]) == 2
    assert f"{bad}: not XML" in capsys.readouterr().err


def test_cli_report_needs_a_run_dir_or_compare(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report"]) == 2
    assert "give a run directory, or --compare OLD NEW" in capsys.readouterr().err


def test_compare_page_with_a_junit_side_says_it_has_no_phases(last_night: Path,
                                                              tmp_path: Path) -> None:
    junit = _junit(tmp_path / "junit.xml", [_case("test_keeps_passing")])
    page = report.render_compare(compare.compare_paths(junit, last_night), tmp_path)
    assert f"The old side, {junit}, is JUnit XML: it records no engine phases." in page
    assert 'class="plot phases"' in page and 'class="old"' not in page


def test_compare_page_in_headless_chromium(last_night: Path, tonight: Path,
                                           tmp_path: Path) -> None:
    browser = chromium()
    comparison = compare.compare_paths(last_night, tonight)
    page = report.write_compare(comparison, tonight / report.COMPARE_NAME)
    dom = browse(browser, page.as_uri(), tmp_path / "compare.png")
    new_failures = re.findall(r'<tr class="new-failure">.*?<code>([^<]+)</code>', dom)
    fixed = re.findall(r'<tr class="fixed"><td><code>([^<]+)</code>', dom)
    assert new_failures == ["suites/test_t.py::test_breaks"]
    assert fixed == ["suites/test_t.py::test_gets_fixed"]
    assert "6.1.0-25-amd64" in dom and "6.1.0-26-amd64" in dom
    assert 'class="plot phases"' in dom and '<a href="report.html">' not in dom
