"""Insert at any time: on a fragmented guest the legacy module fails, huge pages succeed.

Each profile runs the whole story in a freshly booted guest: show that order-10
allocations succeed there, fragment until no order-10 block is free outside ZONE_DMA
with enough memory still free that a refusal means fragmentation and not exhaustion,
check that the pages in the way are the profile's own kind, prove the state with the
allocation probe, watch `mem=btable` fail with ENOMEM on its first chunk, then load
`mem=hugepage`, set up, fill both tables until full, unload and load again and find
the same tables on the same pages. The huge pages are the node's pool (1 GiB, else
2 MiB); the release-hang case needs none.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from vrhp_support import DEFAULT_TABLES_POOL, PROBE_COUNT, file_pfns, fragmentation_lost

from lab.dut import abi, agent_output, sizing
from lab.dut.kmod import GuestModule
from lab.engine import Lab, NodeRuntime
from lab.fragment.driver import FragmentRun, GuestFragmenter
from lab.fragment.spec import MIN_FREE_AFTER_MIB, ProbeSpec
from lab.guest.ssh import Guest

pytestmark = [pytest.mark.lab]

# anon-pinned is the recipe that holds on every guest; the others depend on what the
# kernel can reclaim and are skipped, with the state they reached, when they cannot.
REQUIRED_PROFILE = "anon-pinned"
MSG_KEY = 0x68706C00  # the fragmenter's System V message queue keys start here
# The kind of page (/proc/kpageflags) that must hold most of the blocks with free pages.
BLOCKING_KIND = {"anon-pinned": "anon", "pagecache": "file", "slab": "slab"}
# Where the free pages of each profile sit (/proc/pagetypeinfo): slab pages come from
# unmovable and reclaimable pageblocks, anonymous and file pages from movable ones.
FREE_MIGRATETYPES = {"anon-pinned": ("Movable",), "pagecache": ("Movable",),
                     "slab": ("Unmovable", "Reclaimable")}
# The btable load asks for every chunk of a table in turn; on fragmented memory the
# flow table, first, gets none of its chunks.
EXPECTED_CHUNKS = {"flow": sizing.flow_sizes().btable_chunks,
                   "bridge": sizing.bridge_sizes().btable_chunks}


def _fragment(fragmented: Callable[..., FragmentRun], profile: str) -> FragmentRun:
    run = fragmented(profile)
    if not run.summary.reached:
        message = (f"fragmentation target not reached by {profile}: "
                   f"{run.summary.free_blocks_after} order-10 blocks free outside ZONE_DMA "
                   f"after {run.summary.elapsed_s:.0f}s ({run.summary.reason})")
        if profile == REQUIRED_PROFILE:
            pytest.fail(message)
        pytest.skip(message)
    return run


def _assert_still_fragmented(fragmenter: GuestFragmenter, run: FragmentRun, profile: str,
                             tag: str) -> None:
    """The probe confirms the target; a profile other than anon-pinned whose state did not
    hold (the kernel reclaimed what it built) is skipped with what the probe found."""
    lost = fragmentation_lost(fragmenter, run, tag)
    if lost and profile != REQUIRED_PROFILE:
        pytest.skip(f"fragmentation by {profile} did not hold: {lost}")
    assert lost is None, f"the guest is not fragmented: {lost}"


def _order_10_available(fragmenter: GuestFragmenter) -> None:
    """The positive control: before fragmenting, this guest does give order-10 blocks."""
    probe = fragmenter.probe(ProbeSpec(order=10, count=PROBE_COUNT, gfp="atomic",
                                       tag="control"))
    assert probe.outside_dma == PROBE_COUNT, (
        f"only {probe.outside_dma} of {PROBE_COUNT} order-10 allocations succeeded before "
        "fragmenting: the guest was not fresh")


def _assert_profile_blocks(run: FragmentRun, profile: str) -> None:
    """Fragmentation, not exhaustion, and by the profile's own kind of page."""
    summary = run.summary
    free_mib = summary.free_outside_dma_kib_after // 1024
    assert free_mib >= MIN_FREE_AFTER_MIB, (
        f"{profile}: only {free_mib} MiB free outside ZONE_DMA after fragmenting; a refused "
        f"btable load then proves exhaustion, not fragmentation (want >= {MIN_FREE_AFTER_MIB})")
    blockers = summary.blockers
    assert blockers.error is None, f"{profile}: {blockers.error}"
    if profile in BLOCKING_KIND:
        kind = BLOCKING_KIND[profile]
        # by blocks, not pages: a finishing THP beside a half-full slab adds 512 anon pages
        # to a block that the slab pages already keep from merging
        assert blockers.dominant == kind and blockers.block_share(kind) > 0.5, (
            f"{profile}: most blocks in the way do not hold {kind} pages: "
            f"{blockers.describe()}")
        types = FREE_MIGRATETYPES[profile]
        assert blockers.free_share(*types) > 0.6, (
            f"{profile}: free pages are not mostly in {'/'.join(types)} pageblocks: "
            f"{blockers.describe()}")
    else:
        assert all(blockers.share(kind) > 0.1 for kind in BLOCKING_KIND.values()), (
            f"{profile}: not every kind holds a tenth of the blocking pages: "
            f"{blockers.describe()}")


def _btable_refused(guest: Guest, module: GuestModule) -> tuple[str, int, int]:
    mark = guest.canary("btable-insmod")
    result = module.insmod(mem="btable")
    assert not result.ok, "mem=btable loaded on fragmented memory"
    failure = sizing.btable_failure(result.stderr, guest.dmesg_since(mark))
    assert failure, f"mem=btable refused, but not for want of 4 MiB chunks: {result.stderr}"
    assert failure.wanted == EXPECTED_CHUNKS[failure.table], (
        f"{failure.table} table asked for {failure.wanted} chunks, its default size needs "
        f"{EXPECTED_CHUNKS[failure.table]}")
    assert not module.loaded()
    return failure.table, failure.got, failure.wanted


def _fill_to_full(module: GuestModule) -> dict[str, int]:
    inserted = {}
    for name, sizes in (("flow", sizing.flow_sizes()), ("bridge", sizing.bridge_sizes())):
        fill = module.fill(name, sizes.total_entries, seed=11)
        assert fill.full, f"{name}: fill stopped on {fill.first_fail_error}"
        assert sizes.entries < fill.inserted < sizes.total_entries
        inserted[name] = fill.inserted
    return inserted


def _segments(module: GuestModule) -> dict[str, tuple[str, int, int]]:
    return {s.table: (s.path, s.len, s.page_size) for s in module.info().segments}


def _frames(guest: Guest, lab: Lab, placed: dict[str, tuple[str, int, int]]
            ) -> dict[str, list[int]]:
    """The physical frames of each table's huge pages."""
    return {table: file_pfns(guest, lab.cache, path, page_size)
            for table, (path, _, page_size) in placed.items()}


@DEFAULT_TABLES_POOL
@pytest.mark.fresh_guest
@pytest.mark.parametrize("profile", ["anon-pinned", "pagecache", "slab", "mixed"])
def test_insert_at_any_time(profile: str, guest: Guest, node: NodeRuntime, lab: Lab,
                            vrhp: GuestModule,
                            fragmenter: GuestFragmenter,
                            fragmented: Callable[..., FragmentRun],
                            record_property: Callable[[str, object], None]) -> None:
    record_property("backend", "btable (refused), hugepage")
    _order_10_available(fragmenter)
    run = _fragment(fragmented, profile)
    record_property("fragment_seconds", run.summary.elapsed_s)
    record_property("free_mib_after", run.summary.free_outside_dma_kib_after // 1024)
    record_property("blockers", run.summary.blockers.describe())
    _assert_profile_blocks(run, profile)
    _assert_still_fragmented(fragmenter, run, profile, f"{profile}-before")

    table, got, wanted = _btable_refused(guest, vrhp)
    record_property("btable_failure", f"{table} {got}/{wanted} chunks")

    vrhp.load(mem="hugepage")
    setup = vrhp.setup()
    assert setup.outcome is abi.Outcome.SUCCESS, setup
    assert {t.backend for t in setup.tables.values()} == {"hugepage"}
    inserted = _fill_to_full(vrhp)
    placed = _segments(vrhp)
    frames = _frames(guest, lab, placed)

    vrhp.rmmod()
    vrhp.load(mem="hugepage")
    again = vrhp.setup()
    assert again.outcome is abi.Outcome.SUCCESS, again
    assert {n: t.action for n, t in again.tables.items()} == {"flow": "adopted",
                                                             "bridge": "adopted"}
    assert _segments(vrhp) == placed
    assert _frames(guest, lab, placed) == frames, "the tables came back on other huge pages"
    stats = agent_output.parse_stats(vrhp.agent_stdout("stats"))
    assert {name: stats[name].used for name in inserted} == inserted

    _assert_still_fragmented(fragmenter, run, profile, f"{profile}-after")


@pytest.mark.fresh_guest
def test_a_release_that_hangs_is_killed_and_says_so(guest: Guest, fragmenter: GuestFragmenter,
                                                    fragmented: Callable[..., FragmentRun],
                                                    record_property: Callable[[str, object],
                                                                              None]) -> None:
    """A holder that never lets go (the fragmenter's release-hang fault) is killed, what
    it left is removed, and the outcome names the cause; the next test gets a fresh
    guest anyway."""
    free_before = _free_mib(guest)
    run = fragmented("anon-pinned", fault="release-hang")
    assert run.summary.reached, run.summary.reason
    outcome = fragmenter.release(bound=2.0)
    assert outcome is not None and outcome.how == "killed", outcome
    assert "release did not finish" in outcome.cause
    record_property("release", str(outcome))
    assert guest.run("ps | grep '[f]ragment --profile'").exit_status == 1, "the holder runs"
    queues = guest.check(f"awk 'NR > 1 && $1 >= {MSG_KEY} && $1 < {MSG_KEY + 0x10000}' "
                         "/proc/sysvipc/msg")
    assert not queues.strip(), f"message queues of the killed holder are left: {queues}"
    free_after = _free_mib(guest)
    assert free_after > free_before - 16, (
        f"the killed holder's memory did not come back: {free_before} MiB free before "
        f"fragmenting, {free_after} MiB after the kill")


def _free_mib(guest: Guest) -> int:
    """MemFree plus the pages on per-cpu lists, which MemFree leaves out: a process that
    exits frees through them, and they hold tens of MiB afterwards."""
    kib = guest.check("awk '/^MemFree:/ {print $2}' /proc/meminfo; "
                      "awk '$1 == \"count:\" {n += $2} END {print n * 4}' /proc/zoneinfo")
    return sum(int(v) for v in kib.split()) // 1024
