"""lab.fragment.spec: specs, command lines, and parsing of the fragmenter's and probe's output."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from lab.fragment.spec import (
    EXIT_MISSED,
    EXIT_REACHED,
    EXIT_USAGE,
    MIN_FREE_AFTER_MIB,
    FragmentSpec,
    ProbeSpec,
    Target,
    cleanup_argv,
    find_probe_results,
    parse_fragment_summary,
    parse_probe_line,
    release_argv,
    summary_from_output,
)

DATA = Path(__file__).parent / "data" / "memory"
SUMMARY = DATA / "fragment-summary-6.1-anon-pinned.json"
PROFILE_SUMMARIES = {p: DATA / f"fragment-summary-6.1-{p}.json"
                     for p in ("anon-pinned", "pagecache", "slab", "mixed")}
DMESG = DATA / "allocprobe-6.12-dmesg.txt"


def summary_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SUMMARY.read_text())
    return data


# --------------------------------------------------------------------- specs


def test_target_validation() -> None:
    assert Target().args() == ["--target-order", "10", "--max-free-blocks", "0"]
    assert Target.unusable(9, 0.95).args() == ["--target-order", "9", "--unusable-index", "0.950"]
    with pytest.raises(ValueError, match="target order 11 is impossible"):
        Target(order=11)
    with pytest.raises(ValueError, match="target order 0 is impossible"):
        Target(order=0)
    with pytest.raises(ValueError, match="exactly one"):
        Target(order=10, max_free_blocks=1, unusable_index=0.5)
    with pytest.raises(ValueError, match="max_free_blocks must be >= 0"):
        Target.blocks(10, -1)
    with pytest.raises(ValueError, match=r"unusable_index must be in \(0, 1\]"):
        Target.unusable(10, 1.5)


def test_spec_validation_names_the_parameter() -> None:
    with pytest.raises(ValueError, match="profile 'swap' is unknown"):
        FragmentSpec("swap")
    with pytest.raises(ValueError, match="floor_mib 4 is below the safe minimum"):
        FragmentSpec("anon-pinned", floor_mib=4)
    with pytest.raises(ValueError, match="timeout_s"):
        FragmentSpec("anon-pinned", timeout_s=0)
    with pytest.raises(ValueError, match="seed"):
        FragmentSpec("anon-pinned", seed=-1)
    with pytest.raises(ValueError, match="dir must be an absolute path"):
        FragmentSpec("pagecache", dir="tmp")
    spec = FragmentSpec("anon-pinned", floor_mib=4096)
    with pytest.raises(ValueError, match="floor_mib 4096 is not below MemTotal"):
        spec.check_machine(mem_total_kib=3 * 1024 * 1024)
    spec.check_machine(mem_total_kib=8 * 1024 * 1024)


def test_fragment_command_line() -> None:
    spec = FragmentSpec("pagecache", Target.blocks(10, 2), seed=7, floor_mib=16, timeout_s=300)
    argv = spec.argv("/usr/local/bin/hplab-fragment", pidfile="/run/f.pid", summary="/run/f.json")
    assert argv == [
        "/usr/local/bin/hplab-fragment", "--profile", "pagecache", "--seed", "7",
        "--target-order", "10", "--max-free-blocks", "2", "--floor-mib", "16",
        "--area-mib", "448", "--timeout", "300", "--dir", "/tmp", "--hold",
        "--pidfile", "/run/f.pid", "--summary", "/run/f.json",
    ]  # fmt: skip
    assert shlex.split(spec.command("/x", pidfile="/p")) == spec.argv("/x", pidfile="/p")
    anon = FragmentSpec("anon-pinned", sysctl=False).argv("/x", hold=False)
    assert "--dir" not in anon and "--no-sysctl" in anon and "--hold" not in anon
    with pytest.raises(ValueError, match="pidfile is required"):
        spec.argv("/x")
    assert release_argv("/x", "/p", 30) == ["/x", "--release", "--pidfile", "/p", "--timeout", "30"]
    assert cleanup_argv("/x", "/mnt/f") == ["/x", "--cleanup", "--dir", "/mnt/f"]
    fault = FragmentSpec("slab", fault="release-hang", area_mib=256).argv("/x", hold=False)
    assert fault[-2:] == ["--fault", "release-hang"] and "256" in fault


def test_area_and_fault_are_validated() -> None:
    with pytest.raises(ValueError, match="area_mib must be an integer >= 16, got 8"):
        FragmentSpec("slab", area_mib=8)
    with pytest.raises(ValueError, match="fault 'oops' is unknown"):
        FragmentSpec("slab", fault="oops")
    with pytest.raises(ValueError, match="area_mib 4096 is not below MemTotal"):
        FragmentSpec("slab", area_mib=4096).check_machine(mem_total_kib=3 * 1024 * 1024)


def test_probe_spec() -> None:
    spec = ProbeSpec(order=10, count=64, gfp="atomic", tag="before")
    assert spec.params() == ["order=10", "count=64", "gfp=atomic", "tag=before"]
    cmd = spec.command("/lib/hplab_allocprobe.ko")
    assert cmd.startswith("insmod /lib/hplab_allocprobe.ko order=10 count=64 gfp=atomic tag=before")
    with pytest.raises(ValueError, match="probe gfp 'dma' is unknown"):
        ProbeSpec(gfp="dma")
    with pytest.raises(ValueError, match="probe count 0"):
        ProbeSpec(count=0)
    with pytest.raises(ValueError, match="probe order 11"):
        ProbeSpec(order=11)
    with pytest.raises(ValueError, match="probe tag"):
        ProbeSpec(tag="a b")


# --------------------------------------------------------------------- fragmenter summary


def test_parse_real_summary() -> None:
    s = parse_fragment_summary(SUMMARY.read_text())
    assert s.profile == "anon-pinned" and s.reached and s.reason is None
    assert s.target == Target.blocks(10, 0)
    assert s.free_blocks_before > 0 and s.free_blocks_after == 0
    dma32 = next(z for z in s.buddyinfo_after if z.zone == "DMA32")
    assert dma32.free[10] == 0
    assert s.sysctl_saved["vm.min_free_kbytes"] == "67584"
    assert s.bytes_held == (s.held.bulk_bytes + s.held.anon_bytes + s.held.thp_bytes
                            + s.held.pool_finish_bytes + s.held.pagecache_bytes
                            + s.held.slab_bytes)
    assert s.held.pool_finish_bytes == 0  # a summary from before the pool finisher
    assert s.released is not None and s.released.free_blocks > 0
    assert s.free_outside_dma_kib_after // 1024 >= MIN_FREE_AFTER_MIB


@pytest.mark.parametrize(("profile", "kind"), [("anon-pinned", "anon"), ("pagecache", "file"),
                                               ("slab", "slab")])
def test_real_summaries_name_what_blocks_order_10(profile: str, kind: str) -> None:
    s = parse_fragment_summary(PROFILE_SUMMARIES[profile].read_text())
    assert s.reached and s.profile == profile and s.blockers.error is None
    assert s.blockers.dominant == kind and s.blockers.share(kind) > 0.5
    assert s.blockers.mixed_blocks > 0 and s.released is not None
    assert s.released.elapsed_s < 1.0
    assert kind in s.blockers.describe()
    if profile == "slab":  # slab pages come from unmovable and reclaimable pageblocks
        assert s.blockers.free_share("Unmovable", "Reclaimable") > 0.8
    else:
        assert s.blockers.free_share("Movable") > 0.8


def test_real_mixed_summary_is_held_by_all_three_kinds() -> None:
    s = parse_fragment_summary(PROFILE_SUMMARIES["mixed"].read_text())
    assert all(s.blockers.pages[k] > 1000 for k in ("anon", "file", "slab"))
    assert s.held.slab_entries and s.held.pagecache_bytes and s.held.anon_bytes


def test_blockers_error_and_bad_counts_are_named() -> None:
    data = summary_data()
    data["blockers"] = {"error": "/proc/kpageflags: Permission denied"}
    s = parse_fragment_summary(json.dumps(data))
    assert s.blockers.error == "/proc/kpageflags: Permission denied"
    assert s.blockers.dominant is None and s.blockers.share("anon") == 0.0
    data = summary_data()
    data["blockers"]["pages"]["slab"] = -1
    with pytest.raises(ValueError, match=r"blockers\.pages: field 'slab' must be >= 0, got -1"):
        parse_fragment_summary(json.dumps(data))


def test_summary_says_whether_the_kernel_had_transparent_huge_pages() -> None:
    data = summary_data()
    assert "thp" not in data and parse_fragment_summary(json.dumps(data)).thp
    data["thp"] = False  # a kernel without THP (Debian's rt flavour)
    assert not parse_fragment_summary(json.dumps(data)).thp
    data["thp"] = "no"
    with pytest.raises(ValueError, match="field 'thp' must be a boolean, got 'no'"):
        parse_fragment_summary(json.dumps(data))


def test_summary_names_what_the_pool_finisher_took() -> None:
    """Without THP (rt) the last order-10 blocks go to the 2 MiB hugetlb pool."""
    data = summary_data()
    data["thp"] = False
    data["held"]["thp_bytes"] = 0
    data["held"]["pool_finish_bytes"] = 12 * 2 * 1024 * 1024
    s = parse_fragment_summary(json.dumps(data))
    assert not s.thp and s.held.pool_finish_bytes == 25165824 and s.held.thp_bytes == 0
    data["held"]["pool_finish_bytes"] = "24 MiB"
    with pytest.raises(ValueError, match=r"held: field 'pool_finish_bytes' must be an integer"):
        parse_fragment_summary(json.dumps(data))
    del data["held"]["anon_bytes"]  # the other held fields stay required
    with pytest.raises(ValueError, match=r"held: field 'anon_bytes' is missing"):
        parse_fragment_summary(json.dumps(data))


def test_summary_missing_field_is_named() -> None:
    data = summary_data()
    del data["rounds"]
    with pytest.raises(ValueError, match="field 'rounds' is missing"):
        parse_fragment_summary(json.dumps(data))


def test_summary_wrong_types_and_contradictions() -> None:
    data = summary_data()
    data["free_blocks_after"] = "0"
    with pytest.raises(ValueError, match="field 'free_blocks_after' must be an integer, got '0'"):
        parse_fragment_summary(json.dumps(data))
    data = summary_data()
    data["reached"] = False
    with pytest.raises(ValueError, match="'reason' must say why"):
        parse_fragment_summary(json.dumps(data))
    data = summary_data()
    data["profile"] = "swap"
    with pytest.raises(ValueError, match=r"field 'profile' must be one of .*, got 'swap'"):
        parse_fragment_summary(json.dumps(data))
    data = summary_data()
    data["buddyinfo_after"][0]["free"][3] = -1
    with pytest.raises(ValueError, match=r"buddyinfo_after\[0\]: field 'free'"):
        parse_fragment_summary(json.dumps(data))
    with pytest.raises(ValueError, match="not JSON"):
        parse_fragment_summary("{")
    with pytest.raises(ValueError, match="not an hplab-fragment"):
        parse_fragment_summary('{"tool": "other"}')


def test_summary_from_output_checks_exit_status() -> None:
    text = SUMMARY.read_text()
    assert summary_from_output(text, EXIT_REACHED).reached
    with pytest.raises(ValueError, match="contradicts"):
        summary_from_output(text, EXIT_MISSED)
    with pytest.raises(ValueError, match="rejected its arguments"):
        summary_from_output("", EXIT_USAGE)
    with pytest.raises(ValueError, match="exit status 1"):
        summary_from_output("", 1)


# --------------------------------------------------------------------- probe


def test_probe_results_from_real_dmesg() -> None:
    results = find_probe_results(DMESG.read_text())
    by_tag = {r.tag: r for r in results}
    assert by_tag["b-kernel"].succeeded == 64 and by_tag["b-kernel"].zones == {"DMA32": 64}
    assert by_tag["f-atomic"].succeeded == 0 and by_tag["f-atomic"].failed == 64
    assert by_tag["f-kernel"].outside_dma == 0
    assert find_probe_results(DMESG.read_text(), tag="r-kernel")[0].succeeded == 64


def test_probe_line_errors() -> None:
    with pytest.raises(ValueError, match="no hplab_allocprobe: result"):
        parse_probe_line("something else")
    bad = 'hplab_allocprobe: {"tag":"x","order":10,"count":64,"gfp":"kernel",'
    with pytest.raises(ValueError, match="not JSON"):
        parse_probe_line(bad)
    wrong = (
        'hplab_allocprobe: {"tag":"x","order":10,"count":64,"gfp":"kernel",'
        '"succeeded":2,"failed":63,"zones":{"DMA":2},"elapsed_us":1}'
    )
    with pytest.raises(ValueError, match="do not add up"):
        parse_probe_line(wrong)
    missing = 'hplab_allocprobe: {"tag":"x","order":10}'
    with pytest.raises(ValueError, match="field 'zones' is missing"):
        parse_probe_line(missing)


def test_real_6_1_run() -> None:
    s = parse_fragment_summary((DATA / "fragment-summary-6.1-anon-pinned.json").read_text())
    assert s.reached and s.free_blocks_after == 0 and s.released is not None
    probes = {r.tag: r for r in find_probe_results((DATA / "allocprobe-6.1-dmesg.txt").read_text())}
    for tag in ("f-atomic", "f-noretry", "f-kernel", "f-kernel2"):
        assert probes[tag].outside_dma == 0  # only the tolerated stray ZONE_DMA block
    assert probes["r-kernel"].succeeded == 64


def test_schema_3_counts_the_blocks_each_kind_holds() -> None:
    data = summary_data()
    data["schema"] = 3
    with pytest.raises(ValueError, match=r"blockers: field 'blocks_with' is missing"):
        parse_fragment_summary(json.dumps(data))
    data["blockers"]["blocks_with"] = {"slab": 112, "anon": 4, "file": 1, "pgtable": 3,
                                       "hugetlb": 2, "other": 9}
    blockers = parse_fragment_summary(json.dumps(data)).blockers
    assert blockers.block_share("slab") == 112 / blockers.mixed_blocks
    assert blockers.block_share("file") == 1 / blockers.mixed_blocks
    assert "blocks holding each kind: slab 112, other 9" in blockers.describe()


def test_schema_2_summaries_read_without_block_counts() -> None:
    blockers = parse_fragment_summary(SUMMARY.read_text()).blockers
    assert blockers.blocks_with == {} and blockers.block_share("anon") == 0.0
    assert "blocks holding each kind: not recorded" in blockers.describe()
