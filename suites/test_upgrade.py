"""Module upgrade, migration and rollback keep every flow and bridge entry.

Each test populates both tables (N flows and M bridge entries, N, M >= 100k), dumps
them through the agent's mapping, swaps the module in one guest-side command (rmmod,
insmod, agent setup with the same files) and proves the tables survived: the dump is
identical, every dumped entry is found by the new module's hash lookup, and the
generation advanced. The time the module was absent is recorded per upgrade, as a
JUnit property and in ``artifacts/upgrade-times-<node>.json``. Then the living agent:
a running `vrhp-agent run` follows an upgrade, and five swaps under flow traffic lose
no acknowledged flow. The tables are on the node's pool: 1 GiB pages, else 2 MiB.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from vrhp_support import (
    DEFAULT_TABLES_POOL,
    RecordProperty,
    dump_to,
    fragmentation_lost,
    lookup_all,
)

from lab.dut import abi, agent_output
from lab.dut.agentd import AgentDaemon, realtime_ns
from lab.dut.kmod import GuestModule
from lab.dut.traffic import Traffic, dumped_keys
from lab.engine import Lab
from lab.fragment.driver import FragmentRun, GuestFragmenter
from lab.guest.ssh import Guest
from lab.topology import HugePages

pytestmark = [pytest.mark.lab, DEFAULT_TABLES_POOL]

FLOWS = 120_000
BRIDGES = 120_000
TABLES = ("flow", "bridge")
Variant = Callable[..., GuestModule]
SWAPS_UNDER_TRAFFIC = 5
# rmmod fails while a client holds /dev/vrhp (a daemon's INFO, a traffic batch): retried
RMMOD_RETRIED = ("i=0; until rmmod vrhp 2>/dev/null; do i=$((i+1)); "
                 "[ $i -ge 1000 ] && exit 10; done")


@dataclass(frozen=True)
class SwapTimes:
    """Seconds, measured inside the guest (CLOCK_MONOTONIC through `vrhp-agent clock`)."""

    rmmod_s: float
    insmod_s: float
    setup_s: float

    @property
    def module_absent_s(self) -> float:
        """From rmmod's start until the new module is loaded."""
        return round(self.rmmod_s + self.insmod_s, 4)

    @property
    def tables_unavailable_s(self) -> float:
        """From rmmod's start until the agent handed the tables to the new module."""
        return round(self.rmmod_s + self.insmod_s + self.setup_s, 4)


@dataclass(frozen=True)
class Swapped:
    times: SwapTimes
    setup_status: int
    setup_stdout: str
    setup_stderr: str


@pytest.fixture(scope="module")
def upgrade_times(lab: Lab, node_name: str) -> Iterator[dict[str, dict[str, float]]]:
    times: dict[str, dict[str, float]] = {}
    yield times
    if times:
        path = lab.make_artifacts_dir() / f"upgrade-times-{node_name}.json"
        path.write_text(json.dumps(times, indent=1))


def _populate(module: GuestModule) -> dict[str, tuple[int, str]]:
    """Fill both tables, dump them to /tmp/before-<table>; (lines, sha256) per table."""
    for table, count, seed in (("flow", FLOWS, 31), ("bridge", BRIDGES, 32)):
        fill = module.fill(table, count, seed=seed)
        assert fill.inserted == count >= 100_000, fill
    dumps = {t: dump_to(module, t, f"/tmp/before-{t}") for t in TABLES}
    assert dumps["flow"][0] == FLOWS and dumps["bridge"][0] == BRIDGES
    return dumps


def _swap(guest: Guest, new: GuestModule, *setup_args: str, **params: object) -> Swapped:
    """rmmod, insmod the new build, run its agent's setup: one command in the guest."""
    args = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in params.items())
    script = (
        f"up() {{ {shlex.quote(new.agent_path)} clock; }}; "
        "t0=$(up); rmmod vrhp || exit 10; t1=$(up); "
        f"insmod {new.ko} {args} || exit 11; t2=$(up); "
        f"{shlex.quote(new.agent_path)} setup {' '.join(setup_args)} "
        "> /tmp/swap-setup.json 2> /tmp/swap-setup.err; rc=$?; t3=$(up); "
        "echo $t0 $t1 $t2 $t3 $rc")
    result = guest.run(script, timeout=300)
    assert result.ok, f"module swap failed ({result.exit_status}): {result.stderr}"
    t0, t1, t2, t3, rc = result.stdout.split()
    t = [int(v) / 1e9 for v in (t0, t1, t2, t3)]
    times = SwapTimes(round(t[1] - t[0], 4), round(t[2] - t[1], 4), round(t[3] - t[2], 4))
    return Swapped(times, int(rc), guest.read("/tmp/swap-setup.json"),
                   guest.read("/tmp/swap-setup.err"))


def _record(name: str, swapped: Swapped, record_property: RecordProperty,
            upgrade_times: dict[str, dict[str, float]]) -> None:
    record_property("module_absent_s", swapped.times.module_absent_s)
    record_property("tables_unavailable_s", swapped.times.tables_unavailable_s)
    upgrade_times[name] = {**asdict(swapped.times),
                           "module_absent_s": swapped.times.module_absent_s,
                           "tables_unavailable_s": swapped.times.tables_unavailable_s}


def _assert_adopted(module: GuestModule, swapped: Swapped, generation: int,
                    before: dict[str, tuple[int, str]]) -> None:
    """The new module adopted both tables unchanged, and finds every entry."""
    assert swapped.setup_status == 0, swapped.setup_stderr
    setup = agent_output.parse_setup(swapped.setup_stdout)
    assert setup.outcome is abi.Outcome.SUCCESS, setup
    for table in TABLES:
        assert (setup.tables[table].action, setup.tables[table].generation) == (
            "adopted", generation), table
    info = module.info()
    assert info.module_version == module.build.version
    assert {t: info.tables[t].generation for t in TABLES} == {t: generation for t in TABLES}
    for table in TABLES:
        assert dump_to(module, table, f"/tmp/after-{table}") == before[table], \
            f"{table} dump differs after the swap"
        # byte for byte the dump from before the swap (same sha256)
        found = lookup_all(module, table, f"/tmp/after-{table}")
        assert (found.lines, found.found, found.missing, found.mismatched) == (
            before[table][0], before[table][0], 0, 0), found
    stats = agent_output.parse_stats(module.agent_stdout("stats"))
    assert (stats["flow"].used, stats["bridge"].used) == (FLOWS, BRIDGES)


def _assert_migrated(module: GuestModule, migrated: dict[str, Any],
                     before: dict[str, tuple[int, str]], mount: str) -> None:
    """`migrate` copied every byte of each btable table, header included, to its file:
    the bytes it copied, then the bytes of the file equal to the table's."""
    info = module.info()
    for table in TABLES:
        doc = migrated["tables"][table]
        assert doc["path"] == f"{mount}/{table}"
        assert doc["bytes_copied"] == doc["bytes_verified"] == info.tables[table].file_bytes, (
            f"{table}: {doc['bytes_copied']} bytes copied, {doc['bytes_verified']} equal to "
            f"the table's {info.tables[table].file_bytes}")
        assert doc["used"] == before[table][0]


def _header_digest(guest: Guest, path: str) -> str:
    return guest.check(f"dd if={path} bs=4096 count=1 2>/dev/null | sha256sum").split()[0]


def test_hugepage_v1_to_v2_keeps_every_entry(
        guest: Guest, vrhp_variant: Variant, record_property: RecordProperty,
        upgrade_times: dict[str, dict[str, float]]) -> None:
    v1, v2 = vrhp_variant(1, 1), vrhp_variant(2, 1)
    record_property("backend", "hugepage")
    v1.load(mem="hugepage")
    assert v1.setup().outcome is abi.Outcome.SUCCESS
    before = _populate(v1)
    swapped = _swap(guest, v2)
    _record("hugepage v1 -> v2", swapped, record_property, upgrade_times)
    _assert_adopted(v2, swapped, 2, before)


def test_btable_to_hugepage_by_migration_keeps_every_entry(
        guest: Guest, vrhp_variant: Variant, record_property: RecordProperty,
        upgrade_times: dict[str, dict[str, float]], hugepool: HugePages) -> None:
    v1 = vrhp_variant(1, 1)
    record_property("backend", "btable->hugepage")
    v1.load(mem="btable")
    before = _populate(v1)
    _assert_migrated(v1, v1.agent_json("migrate", timeout=300), before, hugepool.mount)
    swapped = _swap(guest, v1, mem="hugepage")
    _record("btable -> hugepage (migrate)", swapped, record_property, upgrade_times)
    _assert_adopted(v1, swapped, 2, before)
    assert {s.table: s.path for s in v1.info().segments} == {
        t: f"{hugepool.mount}/{t}" for t in TABLES}


@pytest.mark.fresh_guest
def test_btable_to_hugepage_by_migration_in_a_fragmented_guest(
        guest: Guest, vrhp_variant: Variant, fragmenter: GuestFragmenter,
        fragmented: Callable[..., FragmentRun], record_property: RecordProperty,
        upgrade_times: dict[str, dict[str, float]], hugepool: HugePages) -> None:
    """The seed's case: a btable module loaded while memory was young, the host fragments
    over time, and the upgrade to huge pages still keeps every entry.

    The guest is freshly booted: movable memory earlier tests left behind (page cache,
    tmpfs files) is what compaction rebuilds order-10 blocks from."""
    v1 = vrhp_variant(1, 1)
    record_property("backend", "btable->hugepage")
    v1.load(mem="btable")
    before = _populate(v1)
    # the dumps are movable tmpfs pages: none may exist while the guest is fragmented
    guest.check("rm -f /tmp/before-*; sync; echo 3 > /proc/sys/vm/drop_caches")
    run = fragmented("anon-pinned")
    assert run.summary.reached, (
        f"fragmentation target not reached: {run.summary.free_blocks_after} order-10 "
        f"blocks free outside ZONE_DMA ({run.summary.reason})")
    record_property("fragment_seconds", run.summary.elapsed_s)
    lost = fragmentation_lost(fragmenter, run, "upgrade")
    assert lost is None, lost
    _assert_migrated(v1, v1.agent_json("migrate", timeout=300), before, hugepool.mount)
    swapped = _swap(guest, v1, mem="hugepage")
    _record("btable -> hugepage (migrate, fragmented)", swapped, record_property,
            upgrade_times)
    _assert_adopted(v1, swapped, 2, before)


def test_incompatible_layout_is_refused_and_the_old_module_rolls_back(
        guest: Guest, vrhp_variant: Variant, record_property: RecordProperty,
        upgrade_times: dict[str, dict[str, float]], hugepool: HugePages) -> None:
    v1, v3 = vrhp_variant(1, 1), vrhp_variant(3, 2)
    record_property("backend", "hugepage")
    v1.load(mem="hugepage")
    assert v1.setup().outcome is abi.Outcome.SUCCESS
    before = _populate(v1)
    headers = {t: _header_digest(guest, f"{hugepool.mount}/{t}") for t in TABLES}
    mark = guest.canary("layout-v3")

    refused = _swap(guest, v3)
    assert refused.setup_status == abi.Outcome.LAYOUT_MISMATCH.agent_exit_code == 2
    setup = agent_output.parse_setup(refused.setup_stdout)
    assert (setup.outcome, setup.outcome_code) == (abi.Outcome.LAYOUT_MISMATCH, 6)
    assert "setup failed: LAYOUT_MISMATCH" in refused.setup_stderr
    for table in TABLES:
        assert (setup.tables[table].action, setup.tables[table].error,
                setup.tables[table].backend) == ("mismatch", "EPROTO", "none"), table
    dmesg = guest.dmesg_since(mark)
    for table in TABLES:
        assert (f"vrhp: {table} table: file header layout_version 1, module expects 2: "
                f"layout mismatch") in dmesg
    info = v3.info()
    assert (info.layout_version, info.state, info.segments) == (2, "uninit", [])
    assert {t: _header_digest(guest, f"{hugepool.mount}/{t}") for t in TABLES} == headers, \
        "the refused module wrote to the tables"

    rolled_back = _swap(guest, v1)
    _record("layout mismatch -> rollback to v1", rolled_back, record_property, upgrade_times)
    _assert_adopted(v1, rolled_back, 2, before)


def test_v2_to_v1_downgrade_with_the_same_layout_keeps_every_entry(
        guest: Guest, vrhp_variant: Variant, record_property: RecordProperty,
        upgrade_times: dict[str, dict[str, float]]) -> None:
    v2, v1 = vrhp_variant(2, 1), vrhp_variant(1, 1)
    record_property("backend", "hugepage")
    v2.load(mem="hugepage")
    assert v2.setup().outcome is abi.Outcome.SUCCESS
    before = _populate(v2)
    swapped = _swap(guest, v1)
    _record("hugepage v2 -> v1", swapped, record_property, upgrade_times)
    _assert_adopted(v1, swapped, 2, before)


def _replace_module(guest: Guest, new: GuestModule, *then: str) -> None:
    """rmmod (retried while a client holds the device), insmod `new`, then `then`."""
    script = "; ".join((f"{RMMOD_RETRIED}", f"insmod {new.ko} mem=hugepage || exit 11", *then))
    result = guest.run(script, timeout=300)
    assert result.ok, f"module swap to {new.build.label} failed ({result.exit_status}): " \
        f"{result.stderr.strip()}"


def test_agent_daemon_follows_a_module_upgrade_and_keeps_aging(
        guest: Guest, vrhp_variant: Variant, record_property: RecordProperty) -> None:
    """The module is swapped under a running `vrhp-agent run`: the daemon sees it go,
    adopts the new generation's tables itself, maps them again and goes on aging."""
    v1, v2 = vrhp_variant(1, 1), vrhp_variant(2, 1)
    record_property("backend", "hugepage")
    v1.load(mem="hugepage")
    daemon = AgentDaemon(v1, "--older-than", "7200").start()
    ready = daemon.wait_for("tables set up by v1", lambda s: s.state == "aging")
    counts = {"flow": 20_000, "bridge": 20_000}
    for table, count in counts.items():
        assert v1.fill(table, count, seed=41).inserted == count
    before = {t: dump_to(v1, t, f"/tmp/before-{t}") for t in TABLES}

    _replace_module(guest, v2)
    moved = daemon.wait_for("v2's tables adopted and mapped", lambda s: (
        s.module_version, s.state, s.tables["flow"].generation,
        s.tables["bridge"].generation) == (2, "aging", 2, 2))
    record_property("daemon_remaps", moved.remaps)
    assert moved.setups == ready.setups + 1 and moved.last_setup_exit == 0, moved
    assert moved.remaps == 2, moved
    for table in TABLES:
        assert dump_to(v2, table, f"/tmp/after-{table}") == before[table], \
            f"{table} dump differs after the upgrade under the daemon"
    assert {t: moved.tables[t].examined for t in TABLES} == counts

    cutoff = realtime_ns(v2)
    v2.agent_stdout("add", "flow", 9, "198.18.0.1", "198.19.0.1", 17, 1, 4789)
    daemon.age_not_used_since(cutoff)
    aged = daemon.wait_for("v1's entries aged under v2", lambda s: (
        s.tables["flow"].aged_total, s.tables["bridge"].aged_total) == (20_000, 20_000))
    assert aged.module_version == 2
    stats = agent_output.parse_stats(v2.agent_stdout("stats"))
    assert (stats["flow"].used, stats["bridge"].used) == (1, 0)
    daemon.kill("TERM")


def test_upgrade_under_traffic_loses_no_acknowledged_flow(
        guest: Guest, lab: Lab, vrhp_variant: Variant, uapi: tuple[Path, ...],
        record_property: RecordProperty) -> None:
    """Flows are added, looked up and deleted without pause while the module is swapped
    v1 -> v2 -> v1 ... five times. Every add acknowledged and not deleted is in the table
    afterwards and nothing else is; each swap's unavailability is measured by the
    generator itself."""
    builds = [vrhp_variant(1, 1), vrhp_variant(2, 1)]
    record_property("backend", "hugepage")
    builds[0].load(mem="hugepage")
    assert builds[0].setup().outcome is abi.Outcome.SUCCESS
    traffic = Traffic(guest, lab.cache, uapi).start(seed=20261203)
    guest.check("sleep 1")
    for swap in range(1, SWAPS_UNDER_TRAFFIC + 1):
        new = builds[swap % 2]
        _replace_module(guest, new, f"{shlex.quote(new.agent_path)} setup > /dev/null",
                        "sleep 1")
    result = traffic.stop()
    last = builds[SWAPS_UNDER_TRAFFIC % 2]
    windows = sorted(result.unavailable_ms)
    record_property("traffic", f"{result.adds} adds, {result.dels} dels, {result.gets} gets")
    record_property("adds_before_each_swap", ", ".join(map(str, result.adds_before_window)))
    record_property("unavailable_ms", ", ".join(f"{w:.1f}" for w in result.unavailable_ms))
    record_property("unavailable_ms_median", round(result.median_unavailable_ms, 1))
    dumped = dumped_keys(last.agent_stdout("dump", "flow"))
    lost, extra = result.acked - dumped, dumped - result.acked
    missed = result.get_misses + result.del_misses
    assert not lost and not missed, (
        f"{len(lost) + missed} acknowledged flows lost: {len(lost)} absent from the table "
        f"(e.g. {sorted(lost)[:2]}), {result.get_misses} not found by GET, "
        f"{result.del_misses} by DEL")
    assert not extra, f"{len(extra)} flows nobody acknowledged, e.g. {sorted(extra)[:3]}"
    assert (result.errors, result.still_unavailable) == (0, False), result
    assert len(windows) == SWAPS_UNDER_TRAFFIC, f"one unavailable window per swap: {windows}"
    assert result.adds > 0 and result.dels > 0 and result.gets > 0, result
    assert last.info().tables["flow"].generation == SWAPS_UNDER_TRAFFIC + 1
