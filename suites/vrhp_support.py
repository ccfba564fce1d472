"""Helpers of the vrhp qualification suites: agent refusals, dumps, lookups, mounts,
the fragmentation check."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.build import guesttools
from lab.dut import agent_output, sizing
from lab.dut.kmod import GuestModule
from lab.fragment.driver import FragmentRun, GuestFragmenter
from lab.fragment.spec import ProbeSpec
from lab.guest import hugetlbfs
from lab.guest.memory import parse_meminfo
from lab.guest.ssh import Guest, Result

HUGETLB_1G = "/dev/hugepages1G"
# The test sets up the default tables: two 1 GiB pages, or 87 of 2 MiB (the agent's fallback).
DEFAULT_TABLES_POOL = pytest.mark.hugepages(count=sizing.default_table_pages())
# A 4 MiB block can stray into ZONE_DMA (16 MiB, never fragmented by user memory) and
# a single order-10 block can be freed between the fragmenter's check and the probe.
STRAY_BLOCKS = 2
PROBE_COUNT = 64

# Writes back and drops caches, then shrinks every slab cache: on a KASAN kernel that also
# empties the quarantine, which otherwise holds freed objects (up to 1/32 of RAM) as used.
SETTLE_KERNEL_MEMORY = ("sync; echo 3 > /proc/sys/vm/drop_caches; "
                        "for c in /sys/kernel/slab/*/shrink; do echo 1 > $c; done 2>/dev/null; "
                        "sleep 1")

RecordProperty = Callable[[str, object], None]  # the suites' record_property fixture


def fragmentation_lost(fragmenter: GuestFragmenter, run: FragmentRun, tag: str) -> str | None:
    """None while the order-10 probe confirms what the fragmenter reached; otherwise what
    the probe found (the probe is kept in `run`)."""
    probe = fragmenter.probe(ProbeSpec(order=10, count=PROBE_COUNT, gfp="atomic", tag=tag))
    run.probes.append(probe)
    if probe.outside_dma <= STRAY_BLOCKS:
        return None
    return (f"{probe.outside_dma} of {PROBE_COUNT} GFP_ATOMIC order-10 allocations succeeded "
            f"outside ZONE_DMA after {run.spec.profile} ({tag})")


def agent_refuses(module: GuestModule, *args: str | int, status: int) -> Result:
    """Run the agent and require exit `status` with a message on stderr, never a crash."""
    result = module.agent(*args)
    assert result.exit_status == status, (
        f"vrhp-agent {' '.join(map(str, args))} exited {result.exit_status}, want {status}: "
        f"{result.stderr.strip()[-400:]}")
    assert result.stderr.startswith("vrhp-agent: "), result.stderr
    return result


def dump_to(module: GuestModule, table: str, path: str) -> tuple[int, str]:
    """`dump TABLE` into a guest file; returns (lines, sha256) of it."""
    module.guest.check(f"{shlex.quote(module.agent_path)} dump {table} > {path}", timeout=300)
    lines, digest = module.guest.check(f"wc -l < {path}; sha256sum {path}").split()[:2]
    return int(lines), digest


def lookup_all(module: GuestModule, table: str, path: str) -> agent_output.LookupResult:
    """Every line of a dump file looked up through the loaded module."""
    result = module.agent("lookup", table, path, timeout=300)
    assert result.exit_status in (0, 2), result.stderr
    return agent_output.parse_lookup(result.stdout)


def file_pfns(guest: Guest, cache: Path, path: str, page_size: int) -> list[int]:
    """The physical frame of each huge page behind a hugetlbfs file (pagemap, as root)."""
    tool = guesttools.install(guest, "pfns", cache)
    return [int(pfn) for pfn in json.loads(guest.check(f"{tool} {path} {page_size}"))["pfns"]]


def mount_1g(guest: Guest) -> None:
    """The agent's 1 GiB hugetlbfs mount, mounted now (the agent reuses it)."""
    guest.check(hugetlbfs.mount_command(HUGETLB_1G, "1G"))


@dataclass
class LoadedTables:
    """vrhp loaded with some parameters and set up by the agent, shared by a class."""

    module: GuestModule
    guest: Guest
    params: Mapping[str, object]
    setup: agent_output.SetupOutcome
    info: agent_output.Info


def meminfo(guest: Guest) -> dict[str, int]:
    """/proc/meminfo in kB (or pages for the HugePages_ counters)."""
    return parse_meminfo(guest.check("cat /proc/meminfo"))
