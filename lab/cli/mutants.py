"""`hplab mutants`: plant each known defect in vrhp and show the suite named for it fails.

Each mutant is a build of vrhp (or its agent) with one defect planted (VRHP_DEFECT, see
kmod/README.md). Only the suite that exists to catch that defect runs against it, and
the mutant is killed only when that suite fails with the expected message: a failure
for another reason says nothing about the check.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.errors import LabError


class MutantError(LabError):
    """Bad mutant input; names the mutant or the file."""


@dataclass(frozen=True)
class Mutant:
    defect: str  # VRHP_DEFECT name, built into the module and the agent
    planted: str  # what is wrong in that build
    suite: str  # the suite that exists to catch it
    select: str  # pytest -k expression within the suite
    topology: str
    expected: str  # regular expression the failure message must match


MUTANTS = (
    Mutant("SHORT_TABLE", "each overflow area one entry short", "suites/test_sizing.py",
           "test_reported_sizes_are_entries_plus_overflow_times_entry_size and upstream",
           "topologies/single.yaml",
           r"AssertionError: flow\s+assert \(\d+, \d+, \d+\) == \(\d+, \d+, \d+\)"),
    Mutant("LEAKED_PIN", "teardown leaves one page of each table pinned",
           "suites/test_kmod_smoke.py", "test_unload_and_file_removal_return_every_huge_page",
           "topologies/single.yaml", r"assert \(2, [01]\) == \(2, 2\)"),
    Mutant("NO_FALLBACK", "fallback=1 is ignored: tables short of huge pages are refused",
           "suites/test_sizing.py",
           "test_not_enough_huge_pages_obeys_the_fallback_policy and one-page-short-fallback",
           "topologies/single.yaml", r"setup failed: REFUSED"),
    Mutant("DUMP_DROPS_ONE", "the agent's dump leaves out the last entry",
           "suites/test_upgrade.py", "test_hugepage_v1_to_v2_keeps_every_entry",
           "topologies/single.yaml", r"assert \(?119999 == 120000\)?"),
    Mutant("WARN_IN_RMMOD", "rmmod hits a WARN_ON (on the debian image's console)",
           "suites/test_kmod_smoke.py", "test_setup_places_each_table_on_huge_pages",
           "topologies/single-debian.yaml",
           r"kernel warning on node cn1:\nWARNING: CPU: \d+ PID: \d+ at \S+ vrhp_exit\+"),
    Mutant("LOSES_LAST_ADD", "the last flow added before rmmod is lost in the swap",
           "suites/test_upgrade.py", "test_upgrade_under_traffic_loses_no_acknowledged_flow",
           "topologies/single.yaml", r"\d+ acknowledged flows lost"),
    Mutant("KMALLOC_OVERRUN", "one byte past a kmalloc'd array read and written back",
           "suites/test_kmod_smoke.py", "test_setup_places_each_table_on_huge_pages",
           "topologies/single-debug.yaml",
           r"kernel kasan on node cn1:\nBUG: KASAN: slab-out-of-bounds in vrhp_"),
    Mutant("DAEMON_KEEPS_OLD_MAP", "the agent daemon never maps a new generation",
           "suites/test_upgrade.py", "test_agent_daemon_follows_a_module_upgrade_and_keeps_aging",
           "topologies/single.yaml", r"did not reach v2's tables adopted and mapped"),
)
DEFECTS = tuple(m.defect for m in MUTANTS)


@dataclass(frozen=True)
class Verdict:
    mutant: Mutant
    outcome: str  # killed | survived | wrong-message | no-result
    exit_code: int
    message: str  # the first failure's message, or why there is none

    @property
    def killed(self) -> bool:
        return self.outcome == "killed"


def check_defect(name: str) -> str:
    """`name` if it is a known planted defect; MutantError naming the known ones if not."""
    if name not in DEFECTS:
        raise MutantError(f"--kmod-defect {name!r}: unknown defect (known: {', '.join(DEFECTS)})")
    return name


def select(names: list[str]) -> list[Mutant]:
    for name in names:
        check_defect(name)
    return [m for m in MUTANTS if not names or m.defect in names]


def first_failure(junit: Path) -> str | None:
    """The message and text of the first failed or errored testcase, or None."""
    try:
        root = ET.parse(junit).getroot()
    except (ET.ParseError, OSError) as exc:
        raise MutantError(f"{junit}: not a readable JUnit XML file: {exc}") from exc
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            found = case.find(tag)
            if found is not None:
                return f"{found.get('message', '')}\n{found.text or ''}"
    return None


def judge(mutant: Mutant, exit_code: int, junit: Path) -> Verdict:
    if not junit.exists():
        return Verdict(mutant, "no-result", exit_code, f"pytest exited {exit_code}, no {junit}")
    failure = first_failure(junit)
    if failure is None:
        return Verdict(mutant, "survived", exit_code, "every selected test passed")
    found = re.search(mutant.expected, failure)
    outcome = "killed" if found else "wrong-message"
    shown = found.group(0) if found else failure.strip().splitlines()[0][:300]
    return Verdict(mutant, outcome, exit_code, shown)


def command(mutant: Mutant, junit: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", mutant.suite, "-k", mutant.select, "-q", "-x",
            "--topology", mutant.topology, "--kmod-defect", mutant.defect,
            f"--junitxml={junit}", *extra]


def run(mutants: list[Mutant], out_dir: Path, extra: list[str]) -> list[Verdict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    verdicts = []
    for n, mutant in enumerate(mutants, 1):
        junit = out_dir / f"junit-{mutant.defect}.xml"
        junit.unlink(missing_ok=True)
        argv = command(mutant, junit, extra)
        print(f"[hplab] mutant {n}/{len(mutants)} {mutant.defect}: {mutant.planted}; "
              f"running {mutant.suite} -k {mutant.select!r}", file=sys.stderr, flush=True)
        code = subprocess.call(argv)
        verdict = judge(mutant, code, junit)
        print(f"[hplab] mutant {mutant.defect}: {verdict.outcome}: {verdict.message}",
              file=sys.stderr, flush=True)
        verdicts.append(verdict)
    return verdicts


def table(verdicts: list[Verdict]) -> str:
    lines = ["| planted defect | suite (test) | verdict | message |", "|---|---|---|---|"]
    for v in verdicts:
        m = v.mutant
        message = " ".join(v.message.split()).replace("|", "\\|")
        lines.append(f"| {m.defect}: {m.planted} | {m.suite} ({m.select}) | {v.outcome} | "
                     f"`{message}` |")
    return "\n".join(lines)


def write_json(verdicts: list[Verdict], path: Path) -> None:
    path.write_text(json.dumps([{**asdict(v.mutant), "outcome": v.outcome,
                                 "exit_code": v.exit_code, "message": v.message}
                                for v in verdicts], indent=1))
