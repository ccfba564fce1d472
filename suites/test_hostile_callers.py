"""Privileged but hostile callers of vrhp.

Huge-page memory that aliases itself or the other table, is private, or is not the file
it names; table memory whose chains loop; churn past the overflow area; a reset that is
refused; a configuration racing a mapping of the same process; a flood of rejected
calls. The module refuses each with a clear errno, keeps its tables and keeps answering;
an Oops, a soft lockup or a hung task on the console fails the test through the plugin.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from vrhp_support import RecordProperty

from lab.build import guesttools
from lab.dut import abi, agent_output
from lab.dut.kmod import GuestModule, hugepage_pool, reset_guest
from lab.engine import Lab
from lab.errors import CanaryLost
from lab.guest import hugetlbfs
from lab.guest.ssh import Guest

pytestmark = pytest.mark.lab

MOUNT = "/mnt/hplab-hostile"
POOL_2M = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
PAGES_2M = 96        # the default flow table (77 pages) and bridge table (10) on 2 MiB pages
KIB = {"1G": 1048576, "2M": 2048}
REFUSED, FAILED = 7, 5
UNINIT, READY = 0, 1
# where the table size does not matter: tables that are quick to zero
SMALL = {"flow_entries": 8192, "bridge_entries": 8192}


@dataclass
class Hostile:
    """The vrhp_hostile tool in a guest, with one hugetlbfs mount per page size."""

    guest: Guest
    module: GuestModule
    tool: str

    def mount(self, size: str) -> str:
        directory = f"{MOUNT}-{size}"
        if size == "2M":
            self.guest.check(f"echo {PAGES_2M} > {POOL_2M}")
            total, _ = hugepage_pool(self.guest, KIB["2M"])
            assert total >= PAGES_2M, f"only {total} 2 MiB pages could be reserved"
        self.guest.check(hugetlbfs.mount_command(directory, size))
        return directory

    def run(self, size: str | None, *args: str | int, timeout: float | None = None) -> Any:
        directory = self.mount(size) if size else "/tmp"
        command = " ".join(str(a) for a in (self.tool, directory, *args))
        out = self.guest.check(command, timeout=timeout)
        try:
            return json.loads(out)
        except json.JSONDecodeError as exc:
            raise AssertionError(f"{command} printed no JSON ({exc}): {out[:300]!r}") from None


@pytest.fixture
def hostile(vrhp: GuestModule, guest: Guest, lab: Lab,
            uapi: tuple[Path, ...]) -> Iterator[Hostile]:
    tool = guesttools.install(guest, "vrhp_hostile", lab.cache, include_dirs=uapi)
    yield Hostile(guest, vrhp, tool)
    reset_guest(guest)
    guest.run(f"for d in {MOUNT}-*; do umount \"$d\" && rmdir \"$d\"; done; "
              f"echo 0 > {POOL_2M}; true")


def assert_pools_whole(guest: Guest) -> None:
    reset_guest(guest)
    for size, kib in KIB.items():
        total, free = hugepage_pool(guest, kib)
        assert free == total, f"{size} pool: {free} of {total} pages free after the test"


@dataclass(frozen=True)
class Segment:
    name: str
    size: str | None
    args: tuple[str | int, ...]
    table: int
    params: dict[str, int]


SEGMENTS = [
    # the Oops this suite began with: one 2 MiB page at ten adjacent addresses
    Segment("alias-2M-bridge", "2M", ("alias", "2M", 1), 1, {}),
    # one 1 GiB page twice under a 1.2 GiB flow table
    Segment("alias-1G-flow", "1G", ("alias", "1G", 0), 0, {"flow_entries": 4_194_304}),
    Segment("private", "1G", ("private", "1G"), 0, {}),
    Segment("wrong-path", "2M", ("wrong-path", "2M"), 0, {}),
    Segment("wrong-offset", "2M", ("wrong-offset", "2M"), 0, {}),
    # 64 GiB of anonymous memory: refused before anything is pinned
    Segment("anon-huge", "1G", ("anon-huge",), 0, {}),
]


@pytest.mark.hugepages(size="1G", count=2)
@pytest.mark.parametrize("case", SEGMENTS, ids=[s.name for s in SEGMENTS])
def test_memory_that_is_not_the_named_file_is_refused(
        hostile: Hostile, guest: Guest, case: Segment,
        record_property: RecordProperty) -> None:
    """One hostile segment and a proper one for the other table, fallback=0: the hostile
    one is refused, so nothing is built and the proper one is released too."""
    hostile.module.load(mem="hugepage", fallback=0, **case.params)
    answer = hostile.run(case.size, *case.args)
    record_property("hostile", json.dumps(answer, sort_keys=True))
    assert answer["errno"] == "OK", answer
    assert (answer["outcome"], answer["state"]) == (REFUSED, UNINIT), answer
    table, other = answer["tables"][case.table], answer["tables"][1 - case.table]
    assert (table["action"], table["err"]) == (FAILED, "EINVAL"), answer
    assert (other["action"], other["err"]) == (0, "OK"), answer  # proper, never built
    assert hostile.module.info().state == "uninit"
    assert_pools_whole(guest)


@pytest.mark.hugepages(size="1G", count=1)
def test_both_tables_on_the_same_physical_pages_are_refused(
        hostile: Hostile, guest: Guest, record_property: RecordProperty) -> None:
    """Two mappings of one file, one per table: the virtual ranges differ, the pages do
    not."""
    hostile.module.load(mem="hugepage", fallback=0)
    answer = hostile.run("2M", "cross", "2M")
    record_property("hostile", json.dumps(answer, sort_keys=True))
    assert (answer["errno"], answer["state"]) == ("EINVAL", UNINIT), answer
    assert_pools_whole(guest)


@pytest.mark.hugepages(size="1G", count=2)
def test_a_refused_reset_leaves_the_tables_as_they_were(
        hostile: Hostile, record_property: RecordProperty) -> None:
    hostile.module.load(mem="hugepage", fallback=0, **SMALL)
    assert hostile.module.setup().outcome is abi.Outcome.SUCCESS
    before = hostile.module.info()
    hostile.module.fill("flow", 1000, seed=3)
    answer = hostile.run(None, "reset-refused")
    record_property("hostile", json.dumps(answer, sort_keys=True))
    assert (answer["outcome"], answer["state"]) == (REFUSED, READY), answer
    after = hostile.module.info()
    for name in ("flow", "bridge"):
        assert after.tables[name].instance == before.tables[name].instance, name
        assert after.tables[name].backend == "hugepage", name
    assert after.segments == before.segments
    stats = agent_output.parse_stats(hostile.module.agent_stdout("stats"))
    assert stats["flow"].used == 1000


@pytest.mark.hugepages(size="1G", count=2)
def test_churn_past_the_overflow_area_never_runs_out(
        hostile: Hostile, record_property: RecordProperty) -> None:
    """1,536 flows into 1,024 main and 1,024 overflow entries, all deleted, ten times
    with new keys: every deleted overflow entry goes back to the free pool."""
    hostile.module.load(mem="hugepage", flow_entries=1024, oflow_entries=1024,
                        bridge_entries=1024, bridge_oentries=1024)
    assert hostile.module.setup().outcome is abi.Outcome.SUCCESS
    answer = hostile.run(None, "churn", 10, 1536)
    record_property("hostile", json.dumps(answer, sort_keys=True))
    assert (answer["nospc"], answer["other_errors"]) == (0, 0), answer
    assert (answer["added"], answer["used_after"]) == (15_360, 0), answer


@pytest.mark.hugepages(size="1G", count=2)
def test_cyclic_chains_in_table_memory_end_every_walk_and_are_not_adopted(
        hostile: Hostile, guest: Guest, record_property: RecordProperty) -> None:
    """Every bucket of the default flow table chained into one cycle through all 105,472
    overflow entries, written through the agent's mapping: STATS, GET and FILL end with
    EUCLEAN within a bound, and a new module refuses to adopt the file."""
    hostile.module.load(mem="hugepage", fallback=0)
    setup = hostile.module.setup()
    assert setup.outcome is abi.Outcome.SUCCESS
    bound = guest.bound(10)
    answer = hostile.run(None, "cycle", setup.tables["flow"].path, timeout=3 * bound.seconds)
    record_property("hostile", json.dumps(answer, sort_keys=True))
    for call in ("stats", "get", "fill"):
        assert answer[call]["errno"] == "EUCLEAN", (call, answer)
        assert answer[call]["ms"] <= bound.seconds * 1000, f"{call} took " \
            f"{answer[call]['ms']:.0f} ms, past {bound}"
    hostile.module.rmmod()
    hostile.module.load(mem="hugepage", fallback=0)
    again = hostile.module.setup()
    assert again.outcome is abi.Outcome.LAYOUT_MISMATCH, again
    assert (again.tables["flow"].action, again.tables["flow"].error) == ("mismatch", "EUCLEAN")


@pytest.mark.hugepages(size="1G", count=2)
def test_a_config_racing_a_mapping_of_the_same_process_cannot_deadlock(
        hostile: Hostile, guest: Guest, record_property: RecordProperty) -> None:
    """HP_CONFIG sleeps in its critical window (fault_cfg_delay_ms) while a second thread
    maps the flow device and a third asks INFO: both answer once the config is done."""
    delay_ms = 1500
    hostile.module.load(mem="hugepage", fault_cfg_delay_ms=delay_ms, **SMALL)
    bound = guest.bound(10)
    wait_ms = delay_ms + int(bound.seconds * 1000)
    answer = hostile.run("1G", "lockorder", "1G", delay_ms, wait_ms,
                         timeout=2 * bound.seconds + delay_ms / 1000)
    record_property("hostile", json.dumps(answer, sort_keys=True))
    assert (answer["config"]["errno"], answer["config"]["outcome"]) == ("OK", 0), answer
    assert answer["map"]["errno"] == "ENODEV", answer   # huge-page tables map via hugetlbfs
    assert answer["info"]["errno"] == "OK", answer
    assert answer["info"]["ms"] <= wait_ms, f"INFO answered after {answer['info']['ms']} ms"


def test_a_flood_of_rejected_calls_keeps_the_kernel_log(
        hostile: Hostile, guest: Guest, record_property: RecordProperty) -> None:
    """50,000 refused HP_CONFIG calls: the module's messages are rate-limited, so the
    kernel log still holds what came before them."""
    hostile.module.load(mem="hugepage")
    mark = guest.canary("flood")
    answer = hostile.run(None, "flood", 50_000, timeout=guest.scaled(300))
    assert answer["refused"] == 50_000, answer
    try:
        log = guest.dmesg_since(mark)
    except CanaryLost as exc:
        pytest.fail(f"the module's messages wrapped the kernel log: {exc}")
    lines = [line for line in log.splitlines() if "vrhp:" in line]
    record_property("flood_log_lines", len(lines))
    assert len(lines) <= 500, f"{len(lines)} vrhp lines for 50,000 refused calls"


@pytest.mark.hugepages(size="1G", count=2)
def test_fill_asks_for_at_most_twice_the_table(hostile: Hostile) -> None:
    hostile.module.load(mem="hugepage", **SMALL)
    assert hostile.module.setup().outcome is abi.Outcome.SUCCESS
    answer = hostile.run(None, "fill-cap")
    assert (answer["fill"]["errno"], answer["inserted"]) == ("EINVAL", 0), answer


@pytest.mark.hugepages(size="1G", count=2)
def test_setup_against_other_files_than_the_modules_fails(hostile: Hostile) -> None:
    """Tables exist; a second setup maps other, empty files: ALREADY_INITIALISED, but
    the agent exits 2 and says the headers do not match."""
    hostile.module.load(mem="hugepage", **SMALL)
    assert hostile.module.setup().outcome is abi.Outcome.SUCCESS
    other = hostile.mount("2M")
    result = hostile.module.agent("setup", "--mount", other, "--pagesize", "2M")
    assert result.exit_status == 2, result
    again = agent_output.parse_setup(result.stdout)
    assert again.outcome is abi.Outcome.ALREADY_INITIALISED
    assert not again.ok
    assert "is not the one in" in result.stderr
