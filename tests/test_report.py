from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fakelab import run_inner

from lab import cli, report
from lab.memory import MemorySnapshot

pytest_plugins = ["pytester"]

DATA = Path(__file__).parent / "data" / "memory"


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
         "properties": {"outcome": "kernel-crash"}},
    ]
    (run / "results.json").write_text(json.dumps(results))
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
    assert "<script" not in page and "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert 'href="artifacts/fragment-anon-pinned-cn1.json"' in page


def test_timeline_places_phases_by_start_and_length(run_dir: Path) -> None:
    bars = report.phase_bars(json.loads((run_dir / "events.json").read_text()))
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


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")


def test_page_renders_with_its_plots_in_headless_chromium(run_dir: Path) -> None:
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        pytest.skip(f"no headless Chromium on this host (looked for {', '.join(BROWSERS)})")
    page = report.write_report(run_dir)
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert dom.count('class="plot buddy"') == 2 and 'class="plot timeline"' in dom
    shot = run_dir / "artifacts" / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


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
    assert _report_classes(report.render(run_dir)) == {"test_old": report.UNCLASSIFIED}
