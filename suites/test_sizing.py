"""Table sizing: what the module reports, where the tables land, and their limits.

Per entry-count case (upstream defaults, small tables, a 4M-entry flow table that
spans two 1 GiB pages) one module is loaded and set up for the whole class; each
check is its own test. Then: too few huge pages (fallback or refusal, per the
module's policy), invalid parameters, and the same story on 2 MiB pages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from vrhp_support import (
    HUGETLB_1G,
    SETTLE_KERNEL_MEMORY,
    LoadedTables,
    RecordProperty,
    agent_refuses,
    meminfo,
    mount_1g,
)

from lab.build import guesttools
from lab.dut import abi, agent_output, sizing
from lab.dut.kmod import GuestModule, hugepage_pool, reset_guest
from lab.engine import Lab, NodeRuntime
from lab.guest.ssh import Guest

pytestmark = pytest.mark.lab

GIB = 1 << 30
MIB2 = 2 << 20


@dataclass(frozen=True)
class Case:
    """One entry-count configuration and the exact numbers it must produce."""

    name: str
    params: dict[str, int]
    # (entries, overflow entries, table bytes): from the design notes, not computed
    flow: tuple[int, int, int]
    bridge: tuple[int, int, int]
    setup_args: tuple[str, ...] = ()
    # expected segment per table: (file offset, length, huge pages, vmapped)
    segments: dict[str, tuple[int, int, int, bool]] = field(default_factory=dict)


CASES = [
    Case("upstream-defaults", {},
         (524_288, 105_472, 161_218_560), (262_144, 53_248, 20_185_088),
         segments={"flow": (0, GIB, 1, False), "bridge": (0, GIB, 1, False)}),
    Case("small", {"flow_entries": 4096, "bridge_entries": 1024},
         (4096, 1024, 1_310_720), (1024, 1024, 131_072),
         segments={"flow": (0, GIB, 1, False), "bridge": (0, GIB, 1, False)}),
    # 4M flows: 1,288,704,000 bytes with the header, two 1 GiB pages, vmapped. The
    # default node has two pages, so the agent puts both tables in one file: flow at
    # 0, bridge at the next 2 MiB boundary inside the second page's unused 819 MiB.
    Case("4m-flows-two-pages", {"flow_entries": 4_194_304},
         (4_194_304, 839_680, 1_288_699_904), (262_144, 53_248, 20_185_088),
         setup_args=("--one-file",),
         segments={"flow": (0, 1_288_704_000, 2, True),
                   "bridge": (1_289_748_480, 20_189_184, 1, False)}),
]
ENTRY_SIZE = {"flow": abi.FLOW_ENTRY_SIZE, "bridge": abi.BRIDGE_ENTRY_SIZE}


@pytest.fixture(scope="class", params=CASES, ids=[c.name for c in CASES])
def sized(request: pytest.FixtureRequest, class_module: GuestModule) -> Iterator[LoadedTables]:
    case: Case = request.param
    class_module.load(mem="hugepage", **case.params)
    setup = class_module.setup(*case.setup_args)
    yield LoadedTables(class_module, class_module.guest, case.params, setup,
                       class_module.info())
    reset_guest(class_module.guest)


def _case(sized: LoadedTables) -> Case:
    return next(c for c in CASES if c.params == sized.params)


@pytest.mark.hugepages(size="1G", count=2)
class TestSizing:
    @pytest.fixture(autouse=True)
    def _properties(self, node: NodeRuntime, sized: LoadedTables,
                    record_property: RecordProperty) -> None:
        record_property("backend", "hugepage")
        record_property("params", " ".join(f"{k}={v}" for k, v in sized.params.items())
                        or "defaults")

    def test_setup_puts_both_tables_on_huge_pages(self, node: NodeRuntime,
                                                 sized: LoadedTables) -> None:
        assert sized.setup.outcome is abi.Outcome.SUCCESS, sized.setup
        assert sized.setup.outcome_code == 0
        for name, table in sized.setup.tables.items():
            assert (table.backend, table.action, table.generation) == ("hugepage", "fresh", 1)
            assert table.header_matches_module is True, name

    def test_reported_sizes_are_entries_plus_overflow_times_entry_size(
            self, node: NodeRuntime, sized: LoadedTables) -> None:
        case = _case(sized)
        for name, (entries, oentries, table_bytes) in (("flow", case.flow),
                                                      ("bridge", case.bridge)):
            table = sized.info.tables[name]
            assert (table.entries, table.oentries, table.entry_size) == (
                entries, oentries, ENTRY_SIZE[name]), name
            assert table.table_bytes == (entries + oentries) * ENTRY_SIZE[name] == table_bytes
            assert table.file_bytes == abi.HDR_SIZE + table_bytes
            assert sized.setup.tables[name].table_bytes == table_bytes

    def test_segments_cover_the_tables(self, node: NodeRuntime, sized: LoadedTables) -> None:
        case = _case(sized)
        segments = {s.table: s for s in sized.info.segments}
        assert sorted(segments) == ["bridge", "flow"]
        for name, (offset, length, pages, vmapped) in case.segments.items():
            seg, table = segments[name], sized.info.tables[name]
            assert (seg.offset, seg.len, seg.page_size) == (offset, length, GIB), name
            assert seg.len >= table.file_bytes, name
            assert (seg.nr_hpages, seg.vmapped) == (pages, vmapped), name
            assert seg.pages_spanned() == pages == table.nr_chunks, name
            assert seg.path == sized.setup.tables[name].path and not seg.detached
        if case.setup_args == ("--one-file",):
            flow, bridge = segments["flow"], segments["bridge"]
            assert flow.path == bridge.path == f"{HUGETLB_1G}/tables"
            assert flow.end <= bridge.offset, "the tables overlap"
            assert bridge.end <= 2 * GIB, "the bridge table left the second page"
            # the bridge table lives in the flow table's second page
            assert bridge.offset // GIB == (flow.end - 1) // GIB == 1

    @pytest.mark.parametrize("table", ["flow", "bridge"])
    def test_kernel_writes_are_read_back_byte_for_byte_through_the_agent_mapping(
            self, node: NodeRuntime, sized: LoadedTables, table: str,
            record_property: RecordProperty) -> None:
        """Pattern through page_address()/vmap(), read through the hugetlbfs mapping."""
        size = sized.info.tables[table].table_bytes
        written = agent_output.parse_pattern(sized.module.agent_stdout("pattern", table, 0x5EED,
                                                                       timeout=600))
        record_property(f"{table}_pattern_kernel_mib_s",
                        round(size / 2**20 / max(written.kernel_write_ns, 1) * 1e9))
        record_property(f"{table}_pattern_agent_mib_s",
                        round(size / 2**20 / max(written.agent_read_ns, 1) * 1e9))
        assert (written.bytes_written, written.bytes_checked) == (size, size)
        assert (written.mismatched_bytes, written.first_mismatch_offset) == (0, None)
        assert written.source == {s.table: s for s in sized.info.segments}[table].path
        cleared = agent_output.parse_pattern(sized.module.agent_stdout("pattern", table, 0,
                                                                       timeout=600))
        assert (cleared.bytes_checked, cleared.mismatched_bytes) == (size, 0)
        stats = agent_output.parse_stats(sized.module.agent_stdout("stats", table))[table]
        assert stats.used == 0

    @pytest.mark.parametrize("table", ["flow", "bridge"])
    def test_fill_until_full_then_one_more_insert_fails_enospc(
            self, node: NodeRuntime, sized: LoadedTables, table: str,
            record_property: RecordProperty) -> None:
        info = sized.info.tables[table]
        total = info.entries + info.oentries
        # an empty table, whatever the class's earlier tests left in it
        sized.module.agent_stdout("pattern", table, 0, timeout=600)
        start = agent_output.parse_stats(sized.module.agent_stdout("stats", table))[table]
        assert start.used == 0, start
        fill = sized.module.fill(table, total, seed=11)
        record_property(f"{table}_inserted", fill.inserted)
        record_property(f"{table}_fill_entries_per_s", round(fill.entries_per_s))
        assert fill.full, f"fill stopped on {fill.first_fail_error}, not a full bucket"
        assert fill.inserted + fill.failed == total
        assert info.entries < fill.inserted < total
        stats = agent_output.parse_stats(sized.module.agent_stdout("stats", table))[table]
        assert stats.used == stats.inserts - start.inserts == fill.inserted
        assert stats.oflow_used == info.oentries, "ENOSPC before the overflow area was used up"
        assert stats.nospc_failures - start.nospc_failures == fill.failed

        assert fill.first_fail_key is not None
        again = agent_refuses(sized.module, "add", table,
                              *agent_output.key_args(table, fill.first_fail_key),
                              *(() if table == "flow" else ("1", "1")), status=2)
        assert "table full (bucket and overflow area) (ENOSPC)" in again.stderr
        after = agent_output.parse_stats(sized.module.agent_stdout("stats", table))[table]
        assert after.used == stats.used
        assert after.nospc_failures == stats.nospc_failures + 1
        scan = agent_output.parse_scan(sized.module.agent_stdout("scan", table, timeout=300))[table]
        assert (scan.used, scan.oflow_used) == (stats.used, info.oentries)


# ---------------------------------------------------------------- not enough pages

def _hold_pages(guest: Guest, lab: Lab, count: int) -> None:
    """Take `count` 1 GiB pages away from the agent with files of another user."""
    tool = guesttools.install(guest, "hugemap", lab.cache)
    mount_1g(guest)
    for i in range(count):
        guest.check(f"{tool} {HUGETLB_1G}/held{i} {GIB}", timeout=120)


@pytest.mark.hugepages(size="1G", count=2)
@pytest.mark.parametrize(("held", "fallback", "outcome", "backends"), [
    (1, 1, abi.Outcome.PARTIAL, {"flow": "hugepage", "bridge": "btable"}),
    (2, 1, abi.Outcome.HUGEPAGE_FAILURE_FALLBACK_IN_USE, {"flow": "btable", "bridge": "btable"}),
    (1, 0, abi.Outcome.REFUSED, {"flow": "none", "bridge": "none"}),
], ids=["one-page-short-fallback", "no-pages-fallback", "one-page-short-no-fallback"])
def test_not_enough_huge_pages_obeys_the_fallback_policy(
        guest: Guest, lab: Lab, vrhp: GuestModule, held: int, fallback: int,
        outcome: abi.Outcome, backends: dict[str, str],
        record_property: RecordProperty) -> None:
    total, _ = hugepage_pool(guest)
    _hold_pages(guest, lab, held)
    assert hugepage_pool(guest) == (total, total - held)
    vrhp.load(mem="hugepage", fallback=fallback)
    mark = guest.canary("short-of-pages")
    result = vrhp.agent("setup")
    assert result.exit_status == outcome.agent_exit_code, result.stderr
    setup = agent_output.parse_setup(result.stdout)
    record_property("backend", "+".join(f"{k}={v}" for k, v in sorted(backends.items())))
    assert (setup.outcome, setup.outcome_code) == (outcome, outcome.value)
    info = vrhp.info()
    assert {name: t.backend for name, t in info.tables.items()} == backends
    assert info.last_outcome is outcome
    dmesg = guest.dmesg_since(mark)
    assert f"vrhp: HP_CONFIG: {outcome.name}" in dmesg
    # the agent maps flow first: it gets the free page (if any), bridge goes short
    unmapped = ["bridge"] if held == 1 else ["flow", "bridge"]
    assert "not enough free huge pages?" in result.stderr
    for name in ("flow", "bridge"):
        table = setup.tables[name]
        assert table.mapped is (name not in unmapped), name
        if name in unmapped:
            assert table.map_error == "ENOMEM"
            assert f"vrhp: {name} table: the agent sent no huge-page segment" in dmesg
    if outcome is abi.Outcome.REFUSED:
        assert "vrhp: bridge table: no usable huge pages and fallback=0: refusing" in dmesg
        assert "falling back" not in dmesg
        assert "setup failed: REFUSED" in result.stderr
        assert info.state == "uninit" and not info.segments
        assert agent_refuses(vrhp, "stats", "flow", status=2)
        return
    assert f"setup degraded: {outcome.name}" in result.stderr
    for name in unmapped:
        assert f"vrhp: {name} table: falling back to btable" in dmesg
        assert setup.tables[name].action == "fallback"
        sizes = sizing.TableSizes(info.tables[name].entries, info.tables[name].oentries,
                                  info.tables[name].entry_size)
        assert info.tables[name].nr_chunks == sizes.btable_chunks
        fill = vrhp.fill(name, 10_000, seed=3)
        assert fill.inserted == 10_000, f"{name} on btable fallback does not work"


@pytest.mark.hugepages(size="1G", count=2)
def test_flow_short_of_pages_bridge_mapped_tables_stay_apart(
        guest: Guest, lab: Lab, vrhp: GuestModule,
        record_property: RecordProperty) -> None:
    """Upstream's agent read the bridge mapping as the flow table in exactly this case."""
    _hold_pages(guest, lab, 1)
    vrhp.load(mem="hugepage", flow_entries=4_194_304)
    result = vrhp.agent("setup")       # one file per table: flow needs 2 pages, 1 is free
    assert result.exit_status == 3, result.stderr
    setup = agent_output.parse_setup(result.stdout)
    record_property("backend", "flow=btable+bridge=hugepage")
    assert setup.outcome is abi.Outcome.PARTIAL
    assert (setup.tables["flow"].mapped, setup.tables["flow"].map_error) == (False, "ENOMEM")
    assert (setup.tables["bridge"].mapped, setup.tables["bridge"].action) == (True, "fresh")
    info = vrhp.info()
    assert (info.tables["flow"].backend, info.tables["flow"].nr_chunks) == ("btable", 308)
    assert [(s.table, s.path) for s in info.segments] == [("bridge", f"{HUGETLB_1G}/bridge")]
    flow = vrhp.agent_json("add", "flow", 1, "203.0.113.5", "198.51.100.5", 6, 1000, 80)
    bridge = vrhp.agent_json("add", "bridge", 1, "02:00:00:00:00:05", 5, 5)
    scan = agent_output.parse_scan(vrhp.agent_stdout("scan", timeout=300))
    assert {t: (s.backend, s.source, s.entries, s.used) for t, s in scan.items()} == {
        "flow": ("btable", "/dev/vrhp_flow", 4_194_304, 1),
        "bridge": ("hugepage", f"{HUGETLB_1G}/bridge", 262_144, 1)}
    raw_flow = vrhp.agent_json("raw", "flow", flow["index"])
    raw_bridge = vrhp.agent_json("raw", "bridge", bridge["index"])
    assert raw_flow["source"] == "/dev/vrhp_flow" and raw_flow["entry_size"] == 256
    assert raw_bridge["source"] == f"{HUGETLB_1G}/bridge" and raw_bridge["entry_size"] == 64
    assert bytes.fromhex(raw_flow["hex"])[8:12] == bytes([203, 0, 113, 5])
    assert bytes.fromhex(raw_bridge["hex"])[12:18] == bytes([2, 0, 0, 0, 0, 5])


# ---------------------------------------------------------------- invalid parameters

INVALID: list[tuple[dict[str, int | str], str]] = [
    ({"flow_entries": 0}, "flow_entries=0 invalid"),
    ({"flow_entries": 1022}, "flow_entries=1022 invalid"),
    ({"oflow_entries": 6}, "oflow_entries=6 invalid"),
    ({"oflow_entries": -8}, "oflow_entries=-8 invalid"),
    ({"bridge_entries": 3}, "bridge_entries=3 invalid"),
    ({"bridge_oentries": 0}, "bridge_oentries=0 invalid"),
    ({"flow_entries": 2**64 - 4}, f"flow_entries={2**64 - 4} too large"),
    ({"flow_entries": 2**32}, f"flow_entries={2**32} oflow_entries=858993664: more than"),
    ({"bridge_entries": 2**61, "bridge_oentries": 2**61},
     f"bridge_entries={2**61} bridge_oentries={2**61}: table size overflows 64 bits"),
    ({"mem": "bogus"}, "mem=bogus invalid"),
    ({"flow_entries": "lots"}, "`lots' invalid for parameter `flow_entries'"),
]


REFUSALS = 5
REFUSAL_SLACK_KIB = 8192


@pytest.mark.parametrize(("params", "message"), INVALID,
                         ids=["-".join(f"{k}={v}" for k, v in p.items()) for p, _ in INVALID])
def test_invalid_parameter_refused_with_einval_naming_it(
        guest: Guest, vrhp: GuestModule, params: dict[str, int | str], message: str,
        record_property: RecordProperty) -> None:
    record_property("backend", "none (insmod refused)")
    guest.check(SETTLE_KERNEL_MEMORY)
    before = meminfo(guest)
    for _ in range(REFUSALS - 1):  # repeated, so that one leaked chunk each stands out
        assert not vrhp.insmod(**params).ok
    mark = guest.canary("invalid-param")
    result = vrhp.insmod(**params)
    assert not result.ok
    # EINVAL as busybox insmod ("Invalid argument") or kmod's ("Invalid parameters") says it
    assert re.search("Invalid (argument|parameters)", result.stderr), result.stderr
    assert re.search(re.escape(message), guest.dmesg_since(mark)), message
    assert not vrhp.loaded()
    assert guest.run("ls /dev/vrhp /dev/vrhp_flow /dev/vrhp_bridge 2>/dev/null").stdout == ""
    guest.check(SETTLE_KERNEL_MEMORY)
    after = meminfo(guest)
    for counter in ("HugePages_Total", "HugePages_Free", "HugePages_Rsvd"):
        assert after[counter] == before[counter], counter
    # a refused insmod must not keep even one 4 MiB btable chunk: REFUSALS of them would
    # take 20 MiB, far above what MemFree moves by on its own
    lost_kib = before["MemFree"] - after["MemFree"]
    assert lost_kib < REFUSAL_SLACK_KIB, (
        f"{REFUSALS} refused insmods took {lost_kib} KiB of MemFree "
        f"({before['MemFree']} -> {after['MemFree']} KiB)")


# ---------------------------------------------------------------- 2 MiB pages

PAGES_2M = {"flow": 77, "bridge": 10}   # ceil(161,222,656 / 2 MiB), ceil(20,189,184 / 2 MiB)


@pytest.mark.hugepages(size="2M", count=PAGES_2M["flow"] + PAGES_2M["bridge"])
def test_default_tables_on_2m_pages(guest: Guest, vrhp: GuestModule,
                                    record_property: RecordProperty) -> None:
    record_property("backend", "hugepage-2M")
    vrhp.load(mem="hugepage")
    setup = vrhp.setup()      # no 1 GiB pool: the agent picks 2 MiB pages itself
    assert (setup.outcome, setup.page_size) == (abi.Outcome.SUCCESS, MIB2), setup
    assert setup.mount == "/dev/hugepages2M"
    info = vrhp.info()
    for seg in info.segments:
        table = info.tables[seg.table]
        assert (seg.page_size, seg.nr_hpages) == (MIB2, PAGES_2M[seg.table])
        assert seg.len == PAGES_2M[seg.table] * MIB2 >= table.file_bytes > seg.len - MIB2
        assert seg.vmapped, "several 2 MiB pages must be vmapped"
        pattern = agent_output.parse_pattern(vrhp.agent_stdout("pattern", seg.table, 77,
                                                               timeout=600))
        assert (pattern.bytes_checked, pattern.mismatched_bytes) == (table.table_bytes, 0)
        vrhp.agent_stdout("pattern", seg.table, 0, timeout=600)
        fill = vrhp.fill(seg.table, table.entries + table.oentries, seed=5)
        assert fill.full and table.entries < fill.inserted
    total, free = hugepage_pool(guest, 2048)
    assert total - free == PAGES_2M["flow"] + PAGES_2M["bridge"]
