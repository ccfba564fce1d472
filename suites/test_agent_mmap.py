"""The agent's view of the tables: its mappings against the module's ioctls.

hugepage mode: entries added through ioctls appear byte for byte in the agent's
hugetlbfs mapping, and entries the agent ages through it are gone for the module.
btable mode: the read-only char-device mappings show the same entries, refuse write
access and survive 1,000 map/unmap cycles without a "Bad page map". Then the field
crash (tables absent, size 0), the agent daemon killed and restarted, and hugetlbfs
files that disappear under the module's pinned pages.
"""

from __future__ import annotations

import pytest
from vrhp_support import HUGETLB_1G, RecordProperty, agent_refuses, dump_to

from lab.dut import abi, agent_output
from lab.dut.agentd import AgentDaemon, realtime_ns
from lab.dut.kmod import GuestModule, hugepage_pool, reset_guest
from lab.guest.ssh import Guest

pytestmark = [pytest.mark.lab, pytest.mark.hugepages(size="1G", count=2)]

VALID = abi.EF_VALID
FLOWS = [  # vrf, src, dst, proto, sport, dport, action
    (1, "203.0.113.1", "198.51.100.1", 6, 40000, 443, 1),
    (1, "203.0.113.2", "198.51.100.1", 17, 5353, 53, 2),
    (7, "2001:db8::1", "2001:db8:1::2", 6, 1234, 22, 3),
    (4095, "192.0.2.200", "192.0.2.201", 1, 0, 0, 4),
]
BRIDGES = [  # vrf, mac, nexthop, label
    (1, "02:00:00:00:00:01", 10, 100),
    (2, "02:00:00:00:00:02", 11, 0xFFFFF),
    (63, "0a:bb:cc:dd:ee:ff", 65535, 7),
]


def _raw(module: GuestModule, table: str, index: int) -> tuple[bytes, str]:
    doc = module.agent_json("raw", table, index)
    assert doc["entry_size"] == (abi.FLOW_ENTRY_SIZE if table == "flow"
                                 else abi.BRIDGE_ENTRY_SIZE)
    return bytes.fromhex(doc["hex"]), doc["source"]


def _add_known_entries(module: GuestModule) -> tuple[list[dict[str, int]], list[dict[str, int]]]:
    flows = [module.agent_json("add", "flow", *(str(v) for v in f)) for f in FLOWS]
    bridges = [module.agent_json("add", "bridge", *(str(v) for v in b)) for b in BRIDGES]
    return flows, bridges


def _assert_entries_in_mapping(module: GuestModule, flows: list[dict[str, int]],
                               bridges: list[dict[str, int]], source: str) -> None:
    """Every entry, rebuilt from its GET answer and the UAPI layout, equals the mapping."""
    for (vrf, src, dst, proto, sport, dport, action), added in zip(FLOWS, flows, strict=True):
        got = module.agent_json("get", "flow", vrf, src, dst, proto, sport, dport)
        assert (got["index"], got["action"], got["flags"]) == (added["index"], action, VALID)
        key = abi.flow_key_bytes(vrf, src, dst, proto, sport, dport)
        want = abi.expected_flow_entry(got["flags"], key, action, got["packets"],
                                       got["bytes"], got["last_used"])
        raw, where = _raw(module, "flow", got["index"])
        assert where == source.format(table="flow")
        assert raw == want, f"flow entry {got['index']} differs in the agent's mapping"
    for (vrf, mac, nexthop, label), added in zip(BRIDGES, bridges, strict=True):
        got = module.agent_json("get", "bridge", vrf, mac)
        assert (got["index"], got["nexthop"], got["label"]) == (added["index"], nexthop, label)
        want = abi.expected_bridge_entry(got["flags"], vrf, mac, nexthop, label,
                                         got["last_used"], got["packets"])
        raw, where = _raw(module, "bridge", got["index"])
        assert where == source.format(table="bridge")
        assert raw == want, f"bridge entry {got['index']} differs in the agent's mapping"


@pytest.fixture
def hugepage_tables(vrhp: GuestModule, record_property: RecordProperty) -> GuestModule:
    vrhp.load(mem="hugepage")
    setup = vrhp.setup()
    assert setup.outcome is abi.Outcome.SUCCESS, setup
    record_property("backend", "hugepage")
    return vrhp


@pytest.fixture
def btable_tables(vrhp: GuestModule, record_property: RecordProperty) -> GuestModule:
    vrhp.load(mem="btable")
    record_property("backend", "btable")
    return vrhp


# ---------------------------------------------------------------- hugepage mapping

def test_ioctl_entries_appear_byte_for_byte_in_the_hugetlbfs_mapping(
        hugepage_tables: GuestModule) -> None:
    flows, bridges = _add_known_entries(hugepage_tables)
    _assert_entries_in_mapping(hugepage_tables, flows, bridges, f"{HUGETLB_1G}/{{table}}")
    # a deleted entry: VALID cleared and its body zeroed, in the mapping too
    vrf, src, dst, proto, sport, dport, _ = FLOWS[0]
    hugepage_tables.agent_stdout("del", "flow", vrf, src, dst, proto, sport, dport)
    raw, _ = _raw(hugepage_tables, "flow", flows[0]["index"])
    assert int.from_bytes(raw[:4], "little") & VALID == 0
    assert raw[8:] == bytes(abi.FLOW_ENTRY_SIZE - 8)


def test_entries_aged_by_the_agent_are_gone_for_the_module(
        hugepage_tables: GuestModule, record_property: RecordProperty) -> None:
    module = hugepage_tables
    for table in ("flow", "bridge"):
        assert module.fill(table, 20_000, seed=21).inserted == 20_000
    fresh = FLOWS[1]
    module.agent_stdout("add", "flow", *(str(v) for v in fresh))
    before = agent_output.parse_stats(module.agent_stdout("stats"))
    aged = module.agent_json("age", "--older-than", 1800)
    record_property("aged", {t: v["aged"] for t, v in aged["tables"].items()})
    after = agent_output.parse_stats(module.agent_stdout("stats"))
    scan = agent_output.parse_scan(module.agent_stdout("scan"))
    for table in ("flow", "bridge"):
        counts = aged["tables"][table]
        assert counts["examined"] == before[table].used
        # synthetic entries are 0..3600 s old: about half are older than 1800 s
        assert 0.3 * 20_000 < counts["aged"] < 0.7 * 20_000, counts
        assert after[table].used == before[table].used - counts["aged"] == scan[table].used
    fresh_key = [str(v) for v in fresh[:6]]
    assert module.agent_json("get", "flow", *fresh_key)["flags"] == VALID
    # aging everything: the module sees empty tables and answers ENOENT
    module.agent_stdout("age", "--older-than", 0)
    stats = agent_output.parse_stats(module.agent_stdout("stats"))
    assert {t: s.used for t, s in stats.items()} == {"flow": 0, "bridge": 0}
    gone = agent_refuses(module, "get", "flow", *fresh_key, status=2)
    assert "no such entry (ENOENT)" in gone.stderr
    # and reuses the aged slots
    assert module.fill("flow", 1000, seed=22).inserted == 1000


# ---------------------------------------------------------------- btable mapping

def test_btable_read_only_mapping_shows_the_same_entries(btable_tables: GuestModule) -> None:
    flows, bridges = _add_known_entries(btable_tables)
    _assert_entries_in_mapping(btable_tables, flows, bridges, "/dev/vrhp_{table}")
    dumped = agent_output.parse_dump(btable_tables.agent_stdout("dump", "flow"))
    assert sorted((d["vrf"], d["src"], d["dst"], d["proto"], d["sport"], d["dport"], d["action"])
                  for d in dumped) == sorted(FLOWS)
    bridges_dumped = agent_output.parse_dump(btable_tables.agent_stdout("dump", "bridge"))
    assert sorted((d["vrf"], d["mac"], d["nexthop"], d["label"]) for d in bridges_dumped) == \
        sorted(BRIDGES)
    scan = agent_output.parse_scan(btable_tables.agent_stdout("scan"))
    assert {t: (s.backend, s.source, s.used) for t, s in scan.items()} == {
        "flow": ("btable", "/dev/vrhp_flow", len(FLOWS)),
        "bridge": ("btable", "/dev/vrhp_bridge", len(BRIDGES))}


@pytest.mark.parametrize("table", ["flow", "bridge"])
def test_btable_mapping_refuses_write_access(btable_tables: GuestModule, table: str) -> None:
    doc = btable_tables.agent_json("maptest", table)
    assert doc == {"table": table, "open_rdwr_error": "EACCES", "mmap_write_error": "EACCES",
                   "mprotect_write_error": "EACCES", "read_only": True}


@pytest.mark.parametrize("table", ["flow", "bridge"])
def test_btable_map_unmap_1000_times_leaves_no_warning(
        guest: Guest, btable_tables: GuestModule, table: str,
        record_property: RecordProperty) -> None:
    btable_tables.fill(table, 5000, seed=4)
    mark = guest.canary(f"remap-{table}")
    remap = agent_output.parse_remap(btable_tables.agent_stdout("remap", table, 1000, timeout=600))
    record_property("remap_1000_s", round(remap.elapsed_ns / 1e9, 2))
    assert (remap.iterations, remap.bad_headers, remap.backend) == (1000, 0, "btable")
    dmesg = guest.dmesg_since(mark)
    for bad in ("Bad page map", "BUG", "WARNING", "bad pte", "Call Trace"):
        assert bad not in dmesg, dmesg
    # the module is held by no mapping any more
    assert guest.check("cat /sys/module/vrhp/refcnt").strip() == "0"


# ---------------------------------------------------------------- the field crash

@pytest.mark.parametrize("args", [("scan",), ("dump", "flow"), ("age",), ("raw", "bridge", "0"),
                                  ("pattern", "flow", "1"), ("stats",), ("fill", "flow", "10", "1"),
                                  ("migrate",)],
                         ids=lambda a: "-".join(a))
def test_agent_before_tables_exist_exits_with_a_message(
        vrhp: GuestModule, args: tuple[str, ...], record_property: RecordProperty) -> None:
    record_property("backend", "none (hugepage mode before setup)")
    vrhp.load(mem="hugepage")
    result = agent_refuses(vrhp, *args, status=2)
    assert ("does not exist" in result.stderr or "backend is none" in result.stderr), \
        result.stderr


def test_agent_without_module_exits_with_a_message(
        vrhp: GuestModule, record_property: RecordProperty) -> None:
    record_property("backend", "none (module absent)")
    result = agent_refuses(vrhp, "setup", status=1)
    assert "/dev/vrhp: No such file or directory (is the vrhp module loaded?)" in result.stderr


@pytest.mark.parametrize("mem", ["hugepage", "btable"])
@pytest.mark.parametrize("args", [("setup",), ("scan", "flow"), ("dump", "bridge"),
                                  ("pattern", "flow", "1")], ids=lambda a: "-".join(a))
def test_table_size_zero_is_refused_not_crashed_on(
        vrhp: GuestModule, mem: str, args: tuple[str, ...],
        record_property: RecordProperty) -> None:
    """The upstream agent asserted table_size_ != 0 and died; this one refuses."""
    record_property("backend", mem)
    vrhp.load(mem=mem, fault_zero_size=1)
    info = vrhp.info()
    assert info.tables["flow"].table_bytes == 0
    result = agent_refuses(vrhp, *args, status=2)
    if mem == "hugepage" and args[0] in ("scan", "dump"):
        # no setup could have run: the table does not exist, and the agent says so
        assert "does not exist (module state uninit; run setup)" in result.stderr
    else:
        assert "table size 0" in result.stderr and "(table_size_ != 0)" in result.stderr


# ---------------------------------------------------------------- agent restart

# fill stamps entries up to an hour in the past: only the cutoff file ages here
NO_AGING_BY_TIME = ("--older-than", "7200")


def _add_fresh_flows(module: GuestModule, count: int) -> None:
    """`count` flows through the ADD ioctl, each stamped with the current time."""
    module.guest.check(f"for i in $(seq 1 {count}); do {module.agent_path} add flow 9 "
                       "198.18.0.1 198.19.0.1 17 $i 4789 > /dev/null || exit 1; done")


def _live(module: GuestModule) -> dict[str, int]:
    return {t: s.used for t, s in agent_output.parse_stats(module.agent_stdout("stats")).items()}


def test_agent_daemon_killed_and_restarted_keeps_every_entry_and_ages_them(
        guest: Guest, vrhp: GuestModule, record_property: RecordProperty) -> None:
    """`vrhp-agent run` sets the tables up; SIGKILL takes the daemon, not the tables; a
    new daemon adopts the loaded module's tables and goes on aging them."""
    record_property("backend", "hugepage")
    vrhp.load(mem="hugepage")
    first = AgentDaemon(vrhp, *NO_AGING_BY_TIME).start()
    ready = first.wait_for("tables set up", lambda s: s.state == "aging")
    assert (ready.setups, ready.last_setup_exit) == (1, 0), ready
    old = {"flow": 50_000, "bridge": 20_000}
    for table, count in old.items():
        assert vrhp.fill(table, count, seed=8).inserted == count
    dumps = {t: dump_to(vrhp, t, f"/tmp/restart-{t}-1") for t in old}
    seen = first.after_next_cycle()
    assert {t: seen.tables[t].examined for t in old} == old, seen
    assert {t: seen.tables[t].aged_total for t in old} == {"flow": 0, "bridge": 0}

    first.kill("KILL")
    assert {t: dump_to(vrhp, t, f"/tmp/restart-{t}-2") for t in old} == dumps
    second = AgentDaemon(vrhp, *NO_AGING_BY_TIME).start()
    adopted = second.after_next_cycle()
    assert adopted.setups == 0, "the tables were ready: the new daemon must not set up again"
    assert {t: (adopted.tables[t].generation, adopted.tables[t].examined) for t in old} == {
        t: (1, n) for t, n in old.items()}, adopted

    # entries not used since the restart are aged; flows added after it stay
    cutoff = realtime_ns(vrhp)
    _add_fresh_flows(vrhp, 100)
    second.age_not_used_since(cutoff)
    aged = second.wait_for("the entries from before the restart aged", lambda s: (
        s.tables["flow"].aged_total, s.tables["bridge"].aged_total) == (50_000, 20_000))
    record_property("daemon_cycle_ms", round(aged.last_cycle_ns / 1e6, 1))
    assert _live(vrhp) == {"flow": 100, "bridge": 0}
    second.kill("TERM")
    stopped = second.status()
    assert stopped is not None and stopped.state == "stopped", stopped


# ---------------------------------------------------------------- files gone under the module

def test_hugetlbfs_file_deleted_or_truncated_while_pinned(
        guest: Guest, hugepage_tables: GuestModule) -> None:
    module = hugepage_tables
    total, _ = hugepage_pool(guest)
    for table in ("flow", "bridge"):
        assert module.fill(table, 10_000, seed=9).inserted == 10_000
    mark = guest.canary("files-gone")

    guest.check(f"rm {HUGETLB_1G}/flow")
    gone = agent_refuses(module, "scan", "flow", status=2)
    assert "was deleted while the module holds its pages" in gone.stderr
    segments = {s.table: s for s in module.info().segments}
    assert segments["flow"].detached and not segments["bridge"].detached
    assert "vrhp: flow table: hugetlbfs file /dev/hugepages1G/flow no longer holds the " \
           "pinned pages (deleted or truncated); keeping the pinned memory" in \
           guest.dmesg_since(mark)

    guest.check(f": > {HUGETLB_1G}/bridge")       # O_TRUNC: size 0, pages out of the file
    short = agent_refuses(module, "dump", "bridge", status=2)
    assert "was truncated to 0 bytes" in short.stderr
    assert all(s.detached for s in module.info().segments)
    guest.check(f"truncate -s 1G {HUGETLB_1G}/bridge")    # same size again, other memory
    replaced = agent_refuses(module, "scan", "bridge", status=2)
    assert "no longer holds its pinned pages" in replaced.stderr

    # the module keeps working on the memory it pinned
    stats = agent_output.parse_stats(module.agent_stdout("stats"))
    assert (stats["flow"].used, stats["bridge"].used) == (10_000, 10_000)
    assert module.fill("flow", 1000, seed=10).inserted == 1000
    assert module.fill("bridge", 1000, seed=10).inserted == 1000
    assert module.agent_json("add", "flow", *(str(v) for v in FLOWS[0]))["flags"] == VALID
    # the pinned pages come back to the pool when the module lets go
    reset_guest(guest)
    assert hugepage_pool(guest) == (total, total)
