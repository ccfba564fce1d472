"""The deep fuzzer: mostly well-formed calls, so that the bodies run, over hostile
huge-page geometry, hostile table memory and threads racing inside one process.

`lab/guestsrc/vrhp_deepfuzz.c` runs against each backend with small tables (every call
stays cheap under TCG); the module's own reach counters (`/sys/module/vrhp/parameters/
reach`) prove that every deep path ran: each ioctl of DEEP got past input validation
into its body at least once. Afterwards the module answers INFO, unloads, and the pools
are whole; an Oops, BUG, WARNING, soft lockup or hung task on the console fails the test
through the plugin. On huge pages a second, shorter run after a reload first adopts the
clean tables the first run left and finds every entry again.

`--fuzz-calls N` (or $HPLAB_FUZZ_CALLS) sets the operations per run: 5,000 by default,
about a minute under TCG; `tox -e lab-fuzz` runs 100,000 per backend on two vCPUs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from vrhp_support import HUGETLB_1G, RecordProperty, mount_1g

from lab.build import guesttools
from lab.dut import abi, agent_output
from lab.dut.kmod import GuestModule, hugepage_pool, reset_guest
from lab.engine import Lab
from lab.guest import hugetlbfs
from lab.guest.ssh import Guest

SEED = 20261203
THREADS = 3
# small tables: a STATS, a PATTERN or a reset costs milliseconds under TCG; the flow
# table (2.25 MiB) spans two 2 MiB pages, the bridge table (324 KiB) shares one
TABLES = {"flow_entries": 8192, "oflow_entries": 1024, "bridge_entries": 4096,
          "bridge_oentries": 1024}
MOUNT_2M = "/mnt/hplab-deepfuzz-2M"
POOL_2M = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
PAGES_2M = 40   # the fuzzer's files use at most about 30
KIB_2M = 2048
STATE = "/tmp/vrhp_deepfuzz.state"
ADOPT_SHARE = 10  # the run after the reload is a tenth as long
ADOPTED = 2       # enum vrhp_table_action

TABLE_OPS = ("flow_add", "flow_del", "flow_get", "bridge_add", "bridge_del", "bridge_get",
             "fill", "stats", "pattern")
# reach rows that must count a call past input validation (kmod/README.md, "Reach")
DEEP = {
    "hugepage": ("hp_config", "hp_pin", "hp_commit", "hp_reset", *TABLE_OPS),
    "btable": (*TABLE_OPS, "mmap"),
}


@contextmanager
def pool_2m(guest: Guest) -> Iterator[int]:
    """A 2 MiB pool and a hugetlbfs mount of it, for the 2 MiB and mixed geometries;
    afterwards the module is gone, the files removed and the pool empty again."""
    try:
        guest.check(f"echo {PAGES_2M} > {POOL_2M}")
        total, _ = hugepage_pool(guest, KIB_2M)
        guest.check(hugetlbfs.mount_command(MOUNT_2M, "2M"))
        yield total
    finally:
        reset_guest(guest)
        guest.run(f"{hugetlbfs.unmount_command(MOUNT_2M)}; echo 0 > {POOL_2M}; true")


def fuzz(guest: Guest, tool: str, seed: int, calls: int, backend: str,
         mount: str) -> agent_output.DeepFuzzRun:
    """One run of the deep fuzzer; its bound grows with the calls."""
    command = (f"{tool} {seed} {calls} {THREADS} {mount} --backend {backend}"
               f"{f' --state {STATE}' if backend == 'hugepage' else ''}")
    out = guest.check(command, timeout=120 + calls * 0.01)
    try:
        return agent_output.parse_deepfuzz(out)
    except ValueError as exc:
        raise AssertionError(f"{command}: {exc}") from None


def record(record_property: RecordProperty, backend: str, run: agent_output.DeepFuzzRun,
           suffix: str = "") -> None:
    key = f"{backend}{suffix}"
    record_property(f"fuzz_calls_{key}", run.calls)
    record_property(f"fuzz_calls_per_s_{key}", run.calls_per_s)
    record_property(f"fuzz_seconds_{key}", run.elapsed_s)
    record_property(f"fuzz_ioctls_{key}", run.ioctls)
    record_property(f"fuzz_reached_{key}", json.dumps(run.reached, sort_keys=True))
    record_property(f"fuzz_reach_calls_{key}", json.dumps(run.reach_calls, sort_keys=True))
    record_property(f"fuzz_errno_{key}", json.dumps(run.errno, sort_keys=True))
    record_property(f"fuzz_outcomes_{key}", json.dumps(run.outcomes, sort_keys=True))
    record_property(f"fuzz_ops_{key}", json.dumps(run.ops, sort_keys=True))
    record_property(f"fuzz_op_ms_{key}", json.dumps(run.op_ms, sort_keys=True))
    record_property(f"fuzz_events_{key}", json.dumps(run.events, sort_keys=True))
    if run.skipped:
        record_property(f"fuzz_skipped_{key}", "; ".join(run.skipped))


def assert_sound(run: agent_output.DeepFuzzRun, calls: int) -> None:
    assert run.calls == calls, run
    assert not run.violations, (f"{run.violations} violations seen by the fuzzer: "
                                f"{'; '.join(run.violation_notes)}")


@pytest.mark.lab
@pytest.mark.fuzz_deep
@pytest.mark.parametrize("backend", [
    pytest.param("hugepage", marks=pytest.mark.hugepages(size="1G", count=1)),
    "btable",
])
def test_deep_fuzzer_reaches_every_deep_path_and_leaves_the_module_whole(
        vrhp: GuestModule, guest: Guest, lab: Lab, uapi: tuple[Path, ...], fuzz_calls: int,
        backend: str, record_property: RecordProperty) -> None:
    tool = guesttools.install(guest, "vrhp_deepfuzz", lab.cache, include_dirs=uapi)
    pool_1g = hugepage_pool(guest)
    with ExitStack() as stack:
        total_2m = stack.enter_context(pool_2m(guest)) if backend == "hugepage" else 0
        vrhp.load(mem=backend, **TABLES)
        mount = "/tmp"
        if backend == "hugepage":
            mount_1g(guest)
            mount = HUGETLB_1G
        guest.check(f"rm -f {STATE}")
        run = fuzz(guest, tool, SEED, fuzz_calls, backend, mount)
        record(record_property, backend, run)
        assert_sound(run, fuzz_calls)
        missing = run.unreached(DEEP[backend])
        assert not missing, (f"{backend}: no call of {run.calls} got past input validation "
                             f"into {', '.join(missing)} (reached: {run.reached}; calls: "
                             f"{run.reach_calls}; errno: {run.errno})")

        if backend == "hugepage":
            assert run.setup is not None and run.setup["outcome"] == abi.Outcome.SUCCESS, \
                f"the first valid setup failed: {run.setup}"
            assert run.final is not None and run.final["outcome"] == abi.Outcome.SUCCESS, \
                f"the clean tables at the end could not be built: {run.final}"
            # a new module instance adopts what the fuzzed one left, entry for entry
            vrhp.rmmod()
            vrhp.load(mem=backend, **TABLES)
            short = max(fuzz_calls // ADOPT_SHARE, 200)
            again = fuzz(guest, tool, SEED + 1, short, backend, mount)
            record(record_property, backend, again, "_after_reload")
            assert_sound(again, short)
            adopt = again.adopt
            assert adopt is not None, "the second run found no state to adopt"
            record_property("fuzz_adopt", json.dumps(adopt, sort_keys=True))
            assert (adopt["errno"], adopt["outcome"]) == ("OK", abi.Outcome.SUCCESS), adopt
            assert adopt["actions"] == [ADOPTED, ADOPTED], adopt
            assert adopt["used_after"] == adopt["used_before"], adopt
            assert again.reached.get("hp_adopt") == 2, again.reached

        info = vrhp.info()
        assert info.mem == backend
        vrhp.rmmod()
        assert not vrhp.loaded()
        reset_guest(guest)
        assert hugepage_pool(guest) == pool_1g, "a 1 GiB page stayed pinned or allocated"
        if backend == "hugepage":
            total, free = hugepage_pool(guest, KIB_2M)
            assert (total, free) == (total_2m, total_2m), \
                f"2 MiB pool: {free} of {total} pages free after the test"
