"""Failure triage: kernel console patterns, taint, and the class of an outcome."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lab.errors import CommandFailed, LabError

# (kind, pattern of the first line). Order matters: the first match names the finding.
CONSOLE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern)) for kind, pattern in (
        ("panic", r"Kernel panic - not syncing"),
        ("bad-page-map", r"BUG: Bad page map"),
        ("lockup", r"soft lockup - CPU|hard LOCKUP|self-detected stall|detected stalls on CPUs"),
        ("hung-task", r"INFO: task .* blocked for more than"),
        # the debug kernel's reports: KASAN, lockdep, DEBUG_LIST, UBSAN
        ("kasan", r"BUG: KASAN: "),
        ("lockdep", r"WARNING: (possible circular locking dependency|possible recursive "
                    r"locking|inconsistent lock state|suspicious RCU usage|bad unlock balance)"),
        ("list-corruption", r"list_(add|del) corruption"),
        ("ubsan", r"UBSAN: "),
        ("bug", r"BUG: |kernel BUG at"),
        ("oops", r"Oops: |general protection fault"),
        ("warning", r"WARNING: CPU: \d+ PID: \d+ at |WARNING: .* at .*\+0x"),
    ))
TRACE_LINE = re.compile(r"(Call Trace:|^\s*\[?<|^\s+\S+\+0x[0-9a-f]+/0x[0-9a-f]+|RIP:|Code:|"
                        r"---\[ end trace|Modules linked in:|CPU: \d+ PID:|Hardware name:)")
EXCERPT_LINES = 40
# reports of many unindented lines, closed by a line of '=': kept whole in the excerpt
REPORT_KINDS = ("kasan", "lockdep", "ubsan")

# Taint bits set by loading an out-of-tree (O, 4096) unsigned (E, 8192) module.
EXPECTED_TAINT = (1 << 12) | (1 << 13)
TAINT_FLAGS = "PFSRMBUDAWCIOELKXTN"


@dataclass(frozen=True)
class Finding:
    kind: str
    first_line: str
    excerpt: str


def _strip_timestamp(line: str) -> str:
    return re.sub(r"^\[\s*\d+\.\d+\]\s?", "", line.rstrip("\r"))


def scan_console(text: str) -> list[Finding]:
    """Every kernel failure in `text`, each with its first line and following trace."""
    lines = [_strip_timestamp(line) for line in text.splitlines()]
    findings = []
    i = 0
    while i < len(lines):
        kind = next((k for k, pattern in CONSOLE_PATTERNS if pattern.search(lines[i])), None)
        if kind is None:
            i += 1
            continue
        excerpt = [lines[i]]
        j = i + 1
        while j < len(lines) and len(excerpt) < EXCERPT_LINES and (
                TRACE_LINE.search(lines[j]) or lines[j].startswith((" ", "\t"))
                or (kind in REPORT_KINDS and not lines[j].startswith("====="))):
            excerpt.append(lines[j])
            j += 1
        findings.append(Finding(kind, lines[i], "\n".join(excerpt)))
        i = max(j, i + 1)
    return findings


def read_from(path: Path, offset: int) -> tuple[int, bytes]:
    """A console file's bytes from `offset`, and where they start: from the top when the
    file is shorter than `offset` (virtlogd rotated it)."""
    with path.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size < offset:
            offset = 0
        handle.seek(offset)
        return offset, handle.read()


def console_since(path: Path, mark: str) -> str | None:
    """What a node's console shows after the last line holding `mark`, or None when the
    console never showed it."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    at = text.rfind(mark)
    if at < 0:
        return None
    after = text[at:]
    return after.split("\n", 1)[1] if "\n" in after else ""


class ConsoleWatch:
    """Reads a node's console file from where it last stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def skip_to_end(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def read_new(self) -> str:
        if not self.path.exists():
            return ""
        start, data = read_from(self.path, self.offset)
        # Only complete lines: a trace still being written is read next time.
        complete = data[: data.rfind(b"\n") + 1]
        self.offset = start + len(complete)
        return complete.decode(errors="replace")

    def new_findings(self) -> list[Finding]:
        return scan_console(self.read_new())


def taint_names(bits: int) -> str:
    return "".join(flag for i, flag in enumerate(TAINT_FLAGS) if bits & (1 << i)) or "none"


def unexpected_taint(before: int, after: int) -> int:
    """Taint bits that appeared and are not the ones loading our module sets."""
    return (after & ~before) & ~EXPECTED_TAINT


KERNEL_CLASSES = ("kernel-crash", "hang")
NO_FAILURE = ("passed", "precondition-unreachable")


def _innermost_module(exc: BaseException) -> str:
    """The module whose code raised `exc`."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", ""))


def from_paramiko(exc: BaseException) -> bool:
    """SSHException, or an OSError or EOFError that paramiko raised (SFTP's
    `OSError: Failure`, a closed channel)."""
    return (type(exc).__module__.startswith("paramiko.")
            or (isinstance(exc, OSError | EOFError)
                and _innermost_module(exc).startswith("paramiko.")))


def _lab_cause(exc: BaseException) -> BaseException | None:
    """The lab error, or paramiko's, that `exc` was raised from (raise ... from ...)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, LabError) or from_paramiko(current):
            return current
        current = current.__cause__
    return None


# how pytest-timeout ends a test that outlived its bound: "Timeout >2.0s" up to 2.3,
# "Timeout (>2.0s) from pytest-timeout." from 2.4 on
SAFETY_NET_MESSAGE = re.compile(r"Timeout \(?>[0-9.]+s\b")


def _exception_class(exc: BaseException, when: str) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return _exception_class(exc.exceptions[0], when)
    if when != "call":
        exc = _lab_cause(exc) or exc
    if SAFETY_NET_MESSAGE.match(str(exc)):
        return "hang"
    if isinstance(exc, CommandFailed) and when != "call":  # a fixture's command said no
        return "infrastructure"
    if isinstance(exc, LabError):
        return exc.outcome
    if from_paramiko(exc):
        return "infrastructure-ssh"
    if when == "call":
        return "test-failure"
    # in a fixture: a host error, or an assertion of the lab's own code, is no check of
    # the test's
    if isinstance(exc, OSError) or (isinstance(exc, AssertionError)
                                    and _innermost_module(exc).startswith("lab.")):
        return "infrastructure"
    return "test-failure"


def classify(excinfo: BaseException | None, findings: list[Finding], skipped: bool,
             *, when: str = "call", earlier: str | None = None, tainted: bool = False) -> str:
    """The outcome class recorded in JUnit, results.json and the report: what kind of
    failure this was, after phase `when` (setup, call or teardown) of a test whose
    earlier phases were classed `earlier`.

    The first failure of a test names its class (a teardown error after a passed call
    does), except that a kernel crash or hang found later explains an earlier one. Taint
    the kernel gained in the phase is a kernel failure even where the console said nothing.
    """
    if findings:
        current = "hang" if findings[0].kind in ("lockup", "hung-task") else "kernel-crash"
    elif tainted:
        current = "kernel-crash"
    elif skipped:
        current = "precondition-unreachable"
    elif excinfo is None:
        current = "passed"
    else:
        current = _exception_class(excinfo, when)
    if earlier is None or earlier == "passed" or (
            earlier == "precondition-unreachable" and current != "passed"):
        return current
    if earlier in NO_FAILURE:
        return earlier
    if current in KERNEL_CLASSES and earlier not in KERNEL_CLASSES:
        return current
    return earlier
