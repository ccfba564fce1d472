"""vrhp in hugepage mode end to end: setup, fill until full, scan, unload, pool whole;
load/unload loops in both backends leak nothing.

The hugepage cases run on the node's own pool: 1 GiB pages (one per table), else 2 MiB
pages (the agent's fallback); the btable loop needs no pool at all."""

from __future__ import annotations

import shlex

import pytest
from vrhp_support import DEFAULT_TABLES_POOL, SETTLE_KERNEL_MEMORY, RecordProperty, meminfo

from lab.dut import abi, agent_output, sizing
from lab.dut.kmod import GuestModule, hugepage_pool, reset_guest
from lab.engine import NodeRuntime
from lab.guest.ssh import Guest
from lab.topology import HugePages

pytestmark = [pytest.mark.lab]

DEFAULT_PAGES = sizing.default_table_pages()
DEFAULT_SIZES = {"flow": sizing.flow_sizes(), "bridge": sizing.bridge_sizes()}


@pytest.fixture
def tables(vrhp: GuestModule, record_property: RecordProperty) -> GuestModule:
    """vrhp loaded in hugepage mode with both tables set up by the agent."""
    record_property("backend", "hugepage")
    vrhp.load(mem="hugepage")
    setup = vrhp.setup()
    assert setup.outcome is abi.Outcome.SUCCESS, setup
    return vrhp


@DEFAULT_TABLES_POOL
def test_setup_places_each_table_on_huge_pages(tables: GuestModule, hugepool: HugePages,
                                               ) -> None:
    """1 GiB pool: each table on its own page, contiguous, not vmapped; 2 MiB pool: each
    table on as many pages as its file needs, vmapped unless they happen to be
    contiguous."""
    info = tables.info()
    assert (info.mem, info.last_outcome) == ("hugepage", abi.Outcome.SUCCESS)
    for name, sizes in DEFAULT_SIZES.items():
        table = info.tables[name]
        assert (table.entries, table.oentries, table.entry_size) == (
            sizes.entries, sizes.oentries, sizes.entry_size)
        assert (table.table_bytes, table.file_bytes) == (sizes.table_bytes, sizes.file_bytes)
        assert table.backend == "hugepage"
        assert table.generation == 1
    segments = {s.table: s for s in info.segments}
    assert sorted(segments) == ["bridge", "flow"]
    page = hugepool.size_bytes
    for name, segment in segments.items():
        pages = DEFAULT_SIZES[name].huge_pages(page)
        assert (segment.page_size, segment.nr_hpages) == (page, pages), name
        assert segment.nr_hpages == hugepool.pages_for(segment.len), name
        if pages == 1:
            assert segment.contiguous and not segment.vmapped, name
        else:
            assert segment.vmapped == (not segment.contiguous), name
        assert segment.len >= DEFAULT_SIZES[name].file_bytes


@DEFAULT_TABLES_POOL
@pytest.mark.parametrize("table", ["flow", "bridge"])
def test_fill_until_full_then_scan_agrees_with_stats(tables: GuestModule, table: str,
                                                     record_property: RecordProperty,
                                                     ) -> None:
    sizes = DEFAULT_SIZES[table]
    fill = tables.fill(table, sizes.total_entries, seed=7)
    record_property(f"{table}_inserted", fill.inserted)
    record_property(f"{table}_fill_entries_per_s", round(fill.entries_per_s))
    assert fill.full, f"fill stopped on {fill.first_fail_error}, not a full bucket"
    assert fill.inserted + fill.failed == sizes.total_entries
    # 4-entry buckets overflow into a shared area of 20%: more than the main table
    # holds, fewer than main + overflow.
    assert sizes.entries < fill.inserted < sizes.total_entries

    stats = agent_output.parse_stats(tables.agent_stdout("stats", table))[table]
    scan = agent_output.parse_scan(tables.agent_stdout("scan", table))[table]
    assert stats.used == fill.inserted == stats.inserts
    assert stats.nospc_failures == fill.failed
    assert (scan.used, scan.main_used, scan.oflow_used) == (
        stats.used, stats.main_used, stats.oflow_used)
    segment = {s.table: s for s in tables.info().segments}[table]
    assert (scan.backend, scan.source) == ("hugepage", segment.path)
    assert scan.bytes_scanned == sizes.table_bytes, "the scan did not visit every entry"
    assert sum(scan.bucket_histogram) == sizes.buckets


@DEFAULT_TABLES_POOL
def test_unload_and_file_removal_return_every_huge_page(guest: Guest, tables: GuestModule,
                                                        hugepool: HugePages) -> None:
    total, free_in_use = hugepage_pool(guest, hugepool.size_kib)
    assert free_in_use == total - DEFAULT_PAGES[hugepool.size]
    tables.fill("flow", 100_000)
    reset_guest(guest)
    assert hugepage_pool(guest, hugepool.size_kib) == (total, total)
    assert not tables.loaded()


LEAK_CYCLES = 10
SMALL_TABLES = "flow_entries=8192 bridge_entries=8192"
# kB of slack over the whole loop; one leaked btable chunk is 4096 kB, one table 20-160 MiB
LEAK_SLACK_KB = {"MemFree": 16384, "SUnreclaim": 1024, "VmallocUsed": 1024}


@pytest.mark.parametrize("mem", ["btable", pytest.param("hugepage", marks=DEFAULT_TABLES_POOL)])
def test_load_use_unload_loop_leaks_nothing(mem: str, guest: Guest, node: NodeRuntime,
                                            vrhp: GuestModule,
                                            record_property: RecordProperty) -> None:
    """Each pass: an insmod refused with EINVAL, a load, (hugepage) setup, fills of both
    tables, rmmod. The huge-page files stay from pass to pass, so every later pass adopts
    them (a freed 1 GiB page is zeroed again on its next fault, seconds under TCG), and
    go at the end. Kernel memory and the pool (if the node has one) end where they
    started."""
    ko, agent = shlex.quote(vrhp.ko), shlex.quote(vrhp.agent_path)
    setup = f"{agent} setup > /dev/null || exit 12; " if mem == "hugepage" else ""
    # small tables on the same huge pages: every allocation the module makes per pass
    # (pinned-page arrays, physical runs, chunk lists) without zeroing 180 MiB
    sizes = SMALL_TABLES if mem == "hugepage" else ""
    one_pass = (f"out=$(insmod {ko} flow_entries=3 2>&1) && exit 10; "
                'case "$out" in *"Invalid argument"*|*"Invalid parameters"*) ;; '
                '*) exit 16;; esac; '
                f"insmod {ko} mem={mem} {sizes} || exit 11; {setup}"
                f"{agent} fill flow 1000 $i > /dev/null || exit 13; "
                f"{agent} fill bridge 1000 $i > /dev/null || exit 14; "
                f"rmmod vrhp || exit 15")
    pool = node.node.hugepages
    remove = f"rm -f {pool.mount}/*" if pool is not None else "true"
    settle = SETTLE_KERNEL_MEMORY
    guest.check(f"i=0; {one_pass}; {remove}; {settle}")  # first-load allocations are not leaks
    before = meminfo(guest)
    guest.check(f"for i in $(seq {LEAK_CYCLES}); do {one_pass}; done; {remove}; {settle}",
                timeout=900)
    after = meminfo(guest)
    record_property("backend", mem)
    for field, slack in LEAK_SLACK_KB.items():
        grew = before[field] - after[field] if field == "MemFree" else after[field] - before[field]
        record_property(f"{field}_growth_kb", grew)
        assert grew < slack, (f"{field} moved by {grew} kB over {LEAK_CYCLES} passes "
                              f"({before[field]} -> {after[field]})")
    assert after["HugePages_Free"] == before["HugePages_Free"] == after["HugePages_Total"]
    assert not vrhp.loaded()
