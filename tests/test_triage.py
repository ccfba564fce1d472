from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import (
    BootError,
    CommandFailed,
    CommandTimedOut,
    GuestError,
    HostKeyMismatch,
    LabError,
    NodeDied,
    TopologyError,
)
from lab.guest import triage

OOPS = """\
[   12.000000] hplab-canary test_x abc
[   12.100000] BUG: kernel NULL pointer dereference, address: 0000000000000008
[   12.100001] #PF: supervisor read access in kernel mode
[   12.100002] Oops: 0000 [#1] PREEMPT SMP NOPTI
[   12.100003] CPU: 0 PID: 321 Comm: insmod Tainted: G           OE      6.1.0-56-amd64 #1
[   12.100004] RIP: 0010:vrhp_init+0x12/0x80 [vrhp]
[   12.100005] Call Trace:
[   12.100006]  <TASK>
[   12.100007]  do_one_initcall+0x41/0x200
[   12.100008]  </TASK>
[   12.200000] random later line
"""
WARN = """\
[    5.0] WARNING: CPU: 0 PID: 77 at mm/gup.c:1234 pin_user_pages+0x1/0x2
[    5.1] Modules linked in: vrhp(OE)
[    5.2] ---[ end trace 0000000000000000 ]---
"""


def test_oops_is_found_with_its_trace() -> None:
    findings = triage.scan_console(OOPS)
    assert [f.kind for f in findings] == ["bug", "oops"]
    assert findings[0].first_line.startswith("BUG: kernel NULL pointer dereference")
    assert "Call Trace:" in findings[1].excerpt
    assert "do_one_initcall" in findings[1].excerpt
    assert "random later line" not in findings[1].excerpt


@pytest.mark.parametrize(("line", "kind"), [
    ("[ 1.0] Kernel panic - not syncing: sysrq triggered crash", "panic"),
    ("[ 1.0] BUG: Bad page map in process vrhp-agent  pte:8000000", "bad-page-map"),
    ("[ 1.0] general protection fault, probably for non-canonical address", "oops"),
    ("[ 1.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [fill:99]", "lockup"),
    ("[ 1.0] rcu: INFO: rcu_preempt self-detected stall on CPU", "lockup"),
    ("[ 1.0] INFO: task insmod:123 blocked for more than 120 seconds.", "hung-task"),
    ("[ 1.0] BUG: KASAN: slab-out-of-bounds in vrhp_hp_attach+0x5c1/0x9a0 [vrhp]", "kasan"),
    ("[ 1.0] WARNING: possible circular locking dependency detected", "lockdep"),
    ("[ 1.0] list_add corruption. prev->next should be next (ffff88), but was 0",
     "list-corruption"),
    ("[ 1.0] UBSAN: shift-out-of-bounds in vrhp_main.c:300:9", "ubsan"),
])
def test_patterns(line: str, kind: str) -> None:
    assert [f.kind for f in triage.scan_console(line)] == [kind]


KASAN = """[ 9.1] ==================================================================
[ 9.1] BUG: KASAN: slab-out-of-bounds in vrhp_hp_attach+0x5c1/0x9a0 [vrhp]
[ 9.1] Read of size 1 at addr ffff888104c2a090 by task vrhp-agent/301
[ 9.1]
[ 9.1] The buggy address belongs to the object at ffff888104c2a080
[ 9.1] ==================================================================
[ 9.2] vrhp: hugepage tables ready
"""


def test_a_kasan_report_is_kept_whole_up_to_its_closing_line() -> None:
    (finding,) = triage.scan_console(KASAN)
    assert finding.kind == "kasan"
    assert "Read of size 1 at addr" in finding.excerpt
    assert "belongs to the object" in finding.excerpt
    assert "tables ready" not in finding.excerpt
    assert triage.classify(None, [finding], skipped=False) == "kernel-crash"


def test_warning_with_modules_line() -> None:
    (finding,) = triage.scan_console(WARN)
    assert finding.kind == "warning"
    assert "Modules linked in" in finding.excerpt


def test_clean_console_has_no_findings() -> None:
    text = "hplab-init: ready\n[ 3.0] vrhp: loaded, backend hugepage\n"
    assert triage.scan_console(text) == []


def test_console_watch_reads_only_complete_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("boot line\n")
    watch = triage.ConsoleWatch(log)
    watch.skip_to_end()
    with log.open("a") as handle:
        handle.write("Kernel panic - not syncing: x\npartial")
    assert [f.kind for f in watch.new_findings()] == ["panic"]
    assert watch.read_new() == ""
    with log.open("a") as handle:
        handle.write(" line\n")
    assert watch.read_new() == "partial line\n"


def test_expected_taint_is_masked() -> None:
    assert triage.unexpected_taint(0, 12288) == 0
    assert triage.unexpected_taint(0, 12288 | 512) == 512  # W: a warning happened
    assert triage.taint_names(512) == "W"
    assert triage.taint_names(0) == "none"


@pytest.mark.parametrize(("exc", "kind"), [
    (None, "passed"),
    (BootError("x", node="cn1", phase="boot"), "infrastructure-boot"),
    (HostKeyMismatch("x"), "infrastructure-ssh"),
    (CommandTimedOut("cn1: command did not finish within 10s: x"), "hang"),
    (GuestError("cn1: sftp put failed"), "infrastructure-ssh"),
    (GuestError("cn1: SSH connection lost"), "infrastructure-ssh"),
    (CommandFailed("cn1: `vrhp-agent setup` exited 3: REFUSED"), "test-failure"),
    (LabError("libvirt refused"), "infrastructure"),
    (AssertionError("x"), "test-failure"),
    (pytest.fail.Exception("Timeout >2.0s"), "hang"),  # pytest-timeout up to 2.3
    (pytest.fail.Exception("Timeout (>2.0s) from pytest-timeout."), "hang"),  # 2.4 on
    (pytest.fail.Exception("Timeout of the agent: 3 retries"), "test-failure"),
])
def test_classify(exc: BaseException | None, kind: str) -> None:
    assert triage.classify(exc, [], skipped=False) == kind


def test_classify_console_findings_win() -> None:
    crash = triage.scan_console("Kernel panic - not syncing: x")
    hang = triage.scan_console("INFO: task a:1 blocked for more than 120 seconds.")
    assert triage.classify(None, crash, skipped=False) == "kernel-crash"
    assert triage.classify(AssertionError(), hang, skipped=False) == "hang"
    assert triage.classify(None, [], skipped=True) == "precondition-unreachable"


SYSRQ_CRASH = """\
[   20.100000] sysrq: Trigger a crash
[   20.100100] Kernel panic - not syncing: sysrq triggered crash
[   20.100200] CPU: 0 PID: 140 Comm: sh Not tainted 6.1.0-56-amd64 #1 Debian 6.1.158-1
[   20.100300] Call Trace:
[   20.100400]  <TASK>
[   20.100500]  panic+0x118/0x2f0
"""


def test_sysrq_crash_is_a_kernel_crash_even_when_ssh_broke_too() -> None:
    findings = triage.scan_console(SYSRQ_CRASH)
    assert [f.kind for f in findings] == ["panic"]
    assert "Call Trace:" in findings[0].excerpt
    lost = GuestError("cn1: SSH connection lost")
    assert triage.classify(lost, findings, skipped=False) == "kernel-crash"
    assert triage.classify(lost, [], skipped=False) == "infrastructure-ssh"


def _raised(exc: BaseException, module: str = __name__) -> BaseException:
    """`exc` raised by code of `module`, with its traceback."""
    try:
        exec("raise exc", {"__name__": module, "exc": exc})
    except BaseException as raised:
        return raised
    raise AssertionError("unreachable")


def _sftp_failure() -> OSError:
    """What paramiko raises when an SFTP request fails: `OSError: Failure`."""
    import paramiko

    status = paramiko.Message()
    status.add_int(paramiko.sftp.SFTP_FAILURE)
    status.add_string("Failure")
    status.rewind()
    try:
        convert = paramiko.SFTPClient._convert_status  # type: ignore[attr-defined]
        convert(None, status)
    except OSError as exc:
        return exc
    raise AssertionError("paramiko accepted a failure status")


def _raised_from(exc: BaseException, cause: BaseException) -> BaseException:
    try:
        raise exc from cause
    except BaseException as raised:
        return raised


@pytest.mark.parametrize("when", ["setup", "teardown"])
@pytest.mark.parametrize(("exc", "kind"), [
    (LabError("libvirt refused"), "infrastructure"),
    (BootError("x", node="cn1", phase="boot"), "infrastructure-boot"),
    (GuestError("cn1: SSH to 127.0.0.1:4000 failed: Unable to connect"), "infrastructure-ssh"),
    (CommandFailed("cn1: `mkdir -p /opt/vrhp` exited 1: read-only"), "infrastructure"),
    (NodeDied("cn1", "signal 9", "during t"), "infrastructure"),
    (TopologyError("t.yaml: node 'cn1': memory"), "configuration"),
    (_sftp_failure(), "infrastructure-ssh"),
    (_raised(EOFError(), "paramiko.transport"), "infrastructure-ssh"),
    (_raised(OSError(28, "No space left on device")), "infrastructure"),
    (_raised(AssertionError("unreachable"), "lab.engine"), "infrastructure"),
    (_raised(AssertionError("module still loaded")), "test-failure"),  # the suite's check
    (_raised(ValueError("agent output is not JSON")), "test-failure"),
    (_raised_from(RuntimeError("fixture gave up"), GuestError("cn1: lost")), "infrastructure-ssh"),
    (ExceptionGroup("errors during test teardown", [GuestError("cn1: lost"), ValueError()]),
     "infrastructure-ssh"),
])
def test_a_lab_failure_in_a_fixture_is_infrastructure(exc: BaseException, kind: str,
                                                       when: str) -> None:
    assert triage.classify(exc, [], skipped=False, when=when) == kind


@pytest.mark.parametrize(("exc", "kind"), [
    (_sftp_failure(), "infrastructure-ssh"),
    (_raised(OSError(28, "No space left on device")), "test-failure"),
    (_raised(AssertionError("unreachable"), "lab.engine"), "test-failure"),
    (_raised_from(RuntimeError("x"), GuestError("cn1: lost")), "test-failure"),
])
def test_in_the_call_only_lab_errors_and_ssh_are_not_the_tests_own(exc: BaseException,
                                                                   kind: str) -> None:
    assert triage.classify(exc, [], skipped=False, when="call") == kind


@pytest.mark.parametrize(("earlier", "exc", "findings", "skipped", "kind"), [
    ("passed", GuestError("cn1: lost"), "", False, "infrastructure-ssh"),
    ("passed", AssertionError("leaked a page"), "", False, "test-failure"),
    ("passed", None, "", False, "passed"),
    ("test-failure", GuestError("cn1: lost"), "", False, "test-failure"),
    ("infrastructure-ssh", AssertionError(), "", False, "infrastructure-ssh"),
    ("precondition-unreachable", None, "", False, "precondition-unreachable"),
    ("precondition-unreachable", LabError("x"), "", False, "infrastructure"),
    ("test-failure", None, "Kernel panic - not syncing: x", False, "kernel-crash"),
    ("kernel-crash", None, "INFO: task a:1 blocked for more than 120 seconds.", False,
     "kernel-crash"),
    (None, None, "", True, "precondition-unreachable"),
])
def test_a_teardown_after_the_call_keeps_the_first_failure(
        earlier: str | None, exc: BaseException | None, findings: str, skipped: bool,
        kind: str) -> None:
    found = triage.scan_console(findings)
    assert triage.classify(exc, found, skipped, when="teardown", earlier=earlier) == kind


def test_console_watch_starts_again_when_virtlogd_rotated_the_file(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("boot\n" * 100)
    watch = triage.ConsoleWatch(console)
    watch.read_new()
    console.write_text("[    1.0] Kernel panic - not syncing: sysrq triggered crash\n")
    assert [f.kind for f in watch.new_findings()] == ["panic"]


def test_console_since_gives_what_follows_the_last_mark_or_none(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("boot\nhplab-canary t1 abc\nold\nhplab-canary t1 abc\nvrhp: one\n"
                       "vrhp: two\n")
    assert triage.console_since(console, "hplab-canary t1 abc") == "vrhp: one\nvrhp: two\n"
    assert triage.console_since(console, "hplab-canary t2 def") is None
    assert triage.console_since(tmp_path / "absent.log", "x") is None
