from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from browser import browse, chromium
from fakelab import run_inner

from lab.cli import main as cli
from lab.guest.memory import MemorySnapshot
from lab.report import html as report
from lab.report.results import MESSAGE_CHARS, UNCLASSIFIED, phase_bars

pytest_plugins = ["pytester"]

DATA = Path(__file__).parent / "data" / "memory"
PLANTED_CRASH = ("kernel bug on node cn2:\nBUG: unable to handle page fault for address: "
                 "ffffc90000a00000\nCall Trace:\n vrhp_fill+0x42/0x90 [vrhp]")


def _event(phase: str, subject: str, state: str, at: float,
           elapsed: float | None = None) -> dict[str, object]:
    return {"phase": phase, "subject": subject, "state": state, "detail": "",
            "elapsed": elapsed, "at": at}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "abcd1234"
    (run / "artifacts").mkdir(parents=True)
    events = [_event("create", "cn1", "start", 0.5), _event("create", "cn1", "end", 1.0, 0.5),
              _event("boot", "cn1", "start", 1.0), _event("boot", "cn1", "end", 4.0, 3.0),
              _event("boot", "cn2", "start", 1.0), _event("boot", "cn2", "fail", 9.0, 8.0)]
    (run / "events.json").write_text(json.dumps(events))
    results = [
        {"nodeid": "suites/t.py::test_ok[cn1]", "outcome": "passed", "duration": 1.5,
         "properties": {"outcome": "passed", "flow_fill": 123,
                        "dmesg_cn1": "artifacts/dmesg/t.py_test_ok_cn1_-cn1.txt"}},
        {"nodeid": "suites/t.py::test_<b>bad</b>[cn2]", "outcome": "failed", "duration": 2.0,
         "properties": {"outcome": "kernel-crash", "node": "cn2", "kernel": "6.1.0-9-amd64",
                        "dmesg_cn2": "artifacts/dmesg/t.py_test_bad_cn2_-cn2.txt"},
         "message": PLANTED_CRASH},
    ]
    (run / "results.json").write_text(json.dumps(results))
    (run / "cn2").mkdir()
    (run / "cn2" / "console.log").write_text(
        "".join(f"console line {i:03d}\r\n" for i in range(60)) + "\x1b[0mend of console\n")
    (run / "state.json").write_text(json.dumps({"run_id": "abcd1234"}))
    snapshot = MemorySnapshot.from_command_output((DATA / "guest-6.1-clean.txt").read_text())
    fragmented = MemorySnapshot.from_command_output(
        (DATA / "guest-6.1-anon-pinned.txt").read_text())
    fragment = {"profile": "anon-pinned", "seed": 7, "reached": True, "reason": None,
                "elapsed_s": 15.9, "free_blocks_before": 471, "free_blocks_after": 0,
                "probes": [{"gfp": "GFP_ATOMIC", "order": 10, "count": 4, "succeeded": 0,
                            "zones": {}}],
                "before": json.loads(snapshot.to_json()),
                "after": json.loads(fragmented.to_json())}
    (run / "artifacts" / "fragment-anon-pinned-cn1.json").write_text(json.dumps(fragment))
    return run


def _svgs(page: str) -> list[ET.Element]:
    root = ET.fromstring(page.replace("<!DOCTYPE html>", ""))
    return [e for e in root.iter() if e.tag.endswith("svg")]


def _external_references(page: str) -> list[str]:
    """Anything a page would fetch: it must work offline, from the file alone."""
    page = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    return re.findall(r"<link\b|\bsrc=|url\(|@import|https?://", page)


def test_report_holds_timeline_results_and_fragment_plots(run_dir: Path) -> None:
    page = report.write_report(run_dir).read_text()
    svgs = _svgs(page)
    classes = [svg.get("class") for svg in svgs]
    assert classes.count("plot timeline") == 1
    # One buddy panel per zone of the snapshot (DMA and DMA32), one per zone and
    # migratetype with free blocks before or after.
    assert classes.count("plot buddy") == 2
    # the zone/migratetype pairs with free blocks in the captured 6.1 snapshots
    panels = ["DMA Unmovable", "DMA Movable", "DMA32 Unmovable", "DMA32 Movable",
              "DMA32 Reclaimable"]
    assert classes.count("plot migratetype") == len(panels)
    for panel in panels:
        assert f"migratetype {panel} (log scale)" in page, panel
    assert "kernel-crash" in page and "flow_fill=123" in page
    assert '<a href="artifacts/dmesg/t.py_test_ok_cn1_-cn1.txt">' in page
    assert "test_&lt;b&gt;bad&lt;/b&gt;" in page
    assert "boot cn2: 8.00s FAILED" in page
    assert _external_references(page) == []
    assert 'href="artifacts/fragment-anon-pinned-cn1.json"' in page


def _section_order(page: str) -> list[str]:
    return re.findall(r'<(?:section|ul class="counts") id="([a-z-]+)"', page)


def test_report_opens_with_counts_then_failures_then_slowest(run_dir: Path) -> None:
    page = report.render(run_dir)
    assert _section_order(page)[:5] == ["counts", "failures", "slowest", "tests", "timings"]
    assert page.index('id="fragmentation"') > page.index('id="slowest"')
    counts = dict(re.findall(r'<li class="count[^"]*" data-class="([^"]+)"[^>]*>[^<]*<b>(\d+)',
                             page))
    assert counts == {"passed": "1", "test-failure": "0", "kernel-crash": "1", "hang": "0",
                      "infrastructure": "0", "precondition-unreachable": "0"}


def test_a_failure_shows_its_text_console_tail_and_artifacts(run_dir: Path) -> None:
    page = report.render(run_dir)
    failure = re.search(r'<article class="failure" id="failure-1".*?</article>', page, re.S)
    assert failure is not None
    text = failure.group(0)
    assert "test_&lt;b&gt;bad&lt;/b&gt;[cn2]" in text and ">kernel-crash</span>" in text
    assert "BUG: unable to handle page fault" in text
    assert "console line 059" in text and "console line 021" in text
    assert "console line 020" not in text  # the last 40 lines only
    assert "\x1b" not in text and "\r" not in text and "end of console" in text
    assert '<a href="artifacts/dmesg/t.py_test_bad_cn2_-cn2.txt">dmesg cn2</a>' in text
    assert '<a href="cn2/console.log">' in text and '<a href="artifacts/">' in text
    assert "6.1.0-9-amd64" in text and "node cn2" in text


def test_failures_are_listed_most_severe_first(run_dir: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    results.insert(0, {"nodeid": "t.py::test_assert", "outcome": "failed", "duration": 0.1,
                       "properties": {"outcome": "test-failure"}})
    results.append({"nodeid": "t.py::test_old", "outcome": "error", "duration": 0.1})
    (run_dir / "results.json").write_text(json.dumps(results))
    page = report.render(run_dir)
    ids = re.findall(r'<article class="failure" id="failure-\d+" data-class="([^"]+)"', page)
    assert ids == ["kernel-crash", "test-failure", UNCLASSIFIED]
    assert "No failure text recorded" in page  # the two without a message


def test_no_failure_says_so(run_dir: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())[:1]
    (run_dir / "results.json").write_text(json.dumps(results))
    assert "No test failed." in report.render(run_dir)


def test_the_ten_slowest_tests_slowest_first(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps([
        {"nodeid": f"t.py::test_{i:02d}", "outcome": "passed", "duration": float(i),
         "properties": {"outcome": "passed"}} for i in range(12)]))
    page = report.render(tmp_path)
    slowest = re.findall(r'<tr class="slow"><td>\d+</td><td><code>t.py::test_(\d+)', page)
    assert slowest == [f"{i:02d}" for i in range(11, 1, -1)]


def test_every_test_in_a_sortable_table_filtered_by_class_node_and_kernel(
        run_dir: Path) -> None:
    page = report.render(run_dir)
    table = page[page.index('<table id="all-tests" class="sortable">'):]
    assert '<tr data-class="kernel-crash" data-node="cn2" data-kernel="6.1.0-9-amd64"' in table
    assert '<tr data-class="passed" data-node="(none)" data-kernel="(none)"' in table
    filters = page[page.index('<div class="filters">'):page.index('<table id="all-tests"')]
    for name, values in (("class", ["kernel-crash", "passed"]), ("node", ["(none)", "cn2"]),
                         ("kernel", ["(none)", "6.1.0-9-amd64"])):
        select = re.search(rf'<select data-filter="{name}">(.*?)</select>', filters)
        assert select is not None
        assert re.findall(r'<option value="([^"]*)"', select.group(1)) == ["", *values]
    assert '<th data-type="number">seconds</th>' in table


def test_timeline_places_phases_by_start_and_length(run_dir: Path) -> None:
    bars = phase_bars(json.loads((run_dir / "events.json").read_text()))
    assert bars == [("cn1", "create", 0.5, 0.5, False), ("cn1", "boot", 1.0, 3.0, False),
                    ("cn2", "boot", 1.0, 8.0, True)]


def test_fragment_summary_buddyinfo_is_plotted_per_zone(run_dir: Path) -> None:
    summary = DATA / "fragment-summary-6.1-anon-pinned.json"
    target = run_dir / "artifacts" / "fragment-summary-cn1.json"
    target.write_text(summary.read_text())
    section = report.fragment_section(target)
    assert "zone DMA32" in section and "order 10 after: 0" in section
    assert "order 10 before: 476" in section


def test_empty_run_dir_renders_without_plots(tmp_path: Path) -> None:
    page = report.render(tmp_path)
    assert "No phase timings recorded" in page and "No test results recorded" in page
    assert _svgs(page) == []


def test_bad_json_names_the_file(run_dir: Path) -> None:
    (run_dir / "results.json").write_text("{nope")
    with pytest.raises(report.ReportError, match=r"results\.json: not JSON"):
        report.render(run_dir)


def test_missing_run_dir_is_a_clear_error(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", str(tmp_path / "absent")]) == 2
    assert "absent: not a run directory" in capsys.readouterr().err


def test_cli_report_writes_report_html(run_dir: Path) -> None:
    assert cli.main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").stat().st_size > 0


def test_page_renders_with_its_plots_in_headless_chromium(run_dir: Path) -> None:
    browser = chromium()
    page = report.write_report(run_dir)
    dom = browse(browser, page.as_uri(), run_dir / "artifacts" / "report.png")
    assert dom.count('class="plot buddy"') == 2 and 'class="plot timeline"' in dom
    counts = dict(re.findall(r'data-class="([^"]+)"[^>]*>[^<]*<b>(\d+)</b>', dom))
    assert counts["kernel-crash"] == "1" and counts["passed"] == "1"
    first = re.search(r'<article class="failure" id="failure-1".*?</article>', dom, re.S)
    assert first is not None
    assert "test_&lt;b&gt;bad&lt;/b&gt;[cn2]" in first.group(0)
    assert "BUG: unable to handle page fault" in first.group(0)
    assert "2 of 2 tests shown" in dom  # the table's script ran


def test_a_link_filters_and_sorts_the_table_in_headless_chromium(run_dir: Path) -> None:
    browser = chromium()
    page = report.write_report(run_dir)
    dom = browse(browser, f"{page.as_uri()}#class=kernel-crash&sort=-seconds")
    assert "1 of 2 tests shown" in dom
    rows = re.findall(r'<tr data-class="([^"]+)"[^>]*?( hidden="")?>', dom)
    assert rows == [("kernel-crash", ""), ("passed", ' hidden=""')]  # 2.0 s before 1.5 s


OUTCOMES = '''
import paramiko
import pytest
from lab.errors import GuestError, LabError


def sftp_failure():
    status = paramiko.Message()
    status.add_int(paramiko.sftp.SFTP_FAILURE)
    status.add_string("Failure")
    status.rewind()
    paramiko.SFTPClient._convert_status(None, status)


@pytest.fixture
def broken_lab():
    raise LabError("libvirt refused domain hplab-x-cn1")


@pytest.fixture
def sftp_put():
    sftp_failure()


@pytest.fixture
def teardown_ssh_lost(guest):
    yield
    raise GuestError("cn1: SSH to 127.0.0.1:4000 failed: Unable to connect")


@pytest.fixture
def teardown_check():
    yield
    assert False, "the module is still loaded"


def test_passes(lab, guest):
    guest.check("true")

def test_assertion():
    assert 1 == 2

def test_setup_lab_error(broken_lab):
    pass

def test_setup_sftp_failure(sftp_put):
    pass

def test_teardown_error_after_a_passed_call(teardown_ssh_lost):
    pass

def test_teardown_check_fails(teardown_check):
    pass

def test_call_fails_then_teardown_error(teardown_ssh_lost):
    assert False

def test_skipped():
    pytest.skip("needs 3 x 1G")
'''


def _report_classes(page: str) -> dict[str, str]:
    rows = re.findall(r"<tr[^>]*><td>([^<]*)</td><td>[^<]*</td><td class=\"class\">([^<]*)</td>",
                      page)
    return {html.unescape(nodeid).split("::", 1)[1]: kind for nodeid, kind in rows}


def test_report_junit_and_results_agree_on_every_class(pytester: pytest.Pytester,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    inner = run_inner(pytester, monkeypatch, OUTCOMES)
    expected = {
        "test_passes[cn1]": "passed",
        "test_assertion": "test-failure",
        "test_setup_lab_error": "infrastructure",
        "test_setup_sftp_failure": "infrastructure-ssh",
        "test_teardown_error_after_a_passed_call[cn1]": "infrastructure-ssh",
        "test_teardown_check_fails": "test-failure",
        "test_call_fails_then_teardown_error[cn1]": "test-failure",
        "test_skipped": "precondition-unreachable",
    }
    assert inner.classes() == expected
    assert inner.junit_classes() == expected  # one outcome property per test case
    assert _report_classes((inner.run_dir / "report.html").read_text()) == expected
    outcomes = {name: e["outcome"] for name, e in inner.results().items()}
    assert outcomes["test_teardown_error_after_a_passed_call[cn1]"] == "error"
    assert outcomes["test_setup_sftp_failure"] == "error"


def test_a_result_without_a_class_is_not_given_its_pytest_outcome_as_one(run_dir: Path) -> None:
    (run_dir / "results.json").write_text(json.dumps([
        {"nodeid": "t.py::test_old", "outcome": "error", "duration": 1.0, "properties": {}}]))
    assert _report_classes(report.render(run_dir)) == {"test_old": UNCLASSIFIED}


MESSAGES = '''
import pytest


@pytest.fixture
def breaks_in_teardown():
    yield
    raise RuntimeError("teardown broke")


def test_long_assertion(guest):
    assert False, "head " + "x" * 5000 + " tail"


def test_call_and_teardown_fail(guest, breaks_in_teardown):
    assert 1 == 2


def test_passes(guest):
    pass
'''


def test_results_json_holds_a_bounded_failure_message(pytester: pytest.Pytester,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    inner = run_inner(pytester, monkeypatch, MESSAGES)
    results = inner.results()
    long = results["test_long_assertion[cn1]"]["message"]
    assert len(long) < MESSAGE_CHARS + 100 and "characters cut" in long
    assert "AssertionError: head xxx" in long and "xxx tail" in long
    both = results["test_call_and_teardown_fail[cn1]"]["message"]
    assert both.index("assert 1 == 2") < both.index("[teardown] ")
    assert "RuntimeError: teardown broke" in both
    assert "message" not in results["test_passes[cn1]"]
    page = (inner.run_dir / "report.html").read_text()
    assert page.count('<article class="failure"') == 2 and "teardown broke" in page


BASELINE_RUN = '''
def test_breaks(guest):
    assert 1 == 2, "one is not two"


def test_fixed(guest):
    pass
'''


def test_baseline_writes_compare_html_and_a_summary_line(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    baseline = tmp_path / "last-night.xml"
    baseline.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="test_inner" name="test_breaks[cn1]" time="1.0"><properties>'
        '<property name="outcome" value="passed"/></properties></testcase>'
        '<testcase classname="test_inner" name="test_fixed[cn1]" time="1.0"><properties>'
        '<property name="outcome" value="kernel-crash"/></properties>'
        '<failure message="oops">Oops: 0000</failure></testcase></testsuite></testsuites>')
    inner = run_inner(pytester, monkeypatch, BASELINE_RUN, f"--baseline={baseline}")
    page = (inner.run_dir / "compare.html").read_text()
    assert re.search(r'<tr class="new-failure">.*?test_inner.py::test_breaks\[cn1\]', page)
    assert re.search(r'<tr class="fixed"><td><code>test_inner.py::test_fixed\[cn1\]', page)
    assert "one is not two" in page
    lines = [line for line in inner.result.outlines if line.startswith("hplab: compared")]
    assert lines == [f"hplab: compared with {baseline}: 1 new failure, 1 fixed, 0 slower, "
                     f"0 added, 0 removed ({inner.run_dir / 'compare.html'})"]


def test_a_missing_baseline_is_a_usage_error(pytester: pytest.Pytester,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    inner = run_inner(pytester, monkeypatch, BASELINE_RUN, "--baseline=nowhere.xml")
    assert inner.result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--baseline nowhere.xml: no such file or directory" in inner.result.stderr.str()


def test_a_bad_baseline_is_said_and_the_run_keeps_its_outcome(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    baseline = tmp_path / "broken.xml"
    baseline.write_text("<testsuites>")
    inner = run_inner(pytester, monkeypatch, BASELINE_RUN, f"--baseline={baseline}")
    inner.result.assert_outcomes(passed=1, failed=1)
    assert f"hplab: no comparison with {baseline}: {baseline}: not XML" in inner.result.stdout.str()
    assert (inner.run_dir / "report.html").exists()
