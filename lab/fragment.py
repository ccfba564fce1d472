"""Fragmenting a guest's memory on demand and asking its allocator what it can still do."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from lab import guesttools
from lab.errors import GuestError
from lab.guest import Guest
from lab.kernel import Kernel
from lab.kmod import build_kbuild
from lab.memory import SNAPSHOT_COMMAND, MemorySnapshot
from lab.stress import (
    EXIT_MISSED,
    EXIT_REACHED,
    FragmentSpec,
    FragmentSummary,
    ProbeResult,
    ProbeSpec,
    find_probe_results,
    release_argv,
    summary_from_output,
)

PROBE_SOURCE = Path(__file__).parent / "guestsrc" / "allocprobe"
WORK_DIR = "/run/hplab-fragment"
# The fragmenter's files live on their own tmpfs without an inode limit: the default
# limit stops the slab and pagecache profiles early with ENOSPC.
FILES_DIR = "/mnt/hplab-fragment"


@dataclass
class FragmentRun:
    """One fragmentation of one guest: what was asked, what it reached, the states."""

    spec: FragmentSpec
    summary: FragmentSummary
    before: MemorySnapshot
    after: MemorySnapshot
    probes: list[ProbeResult] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({
            "profile": self.spec.profile, "seed": self.spec.seed,
            "reached": self.summary.reached, "reason": self.summary.reason,
            "elapsed_s": self.summary.elapsed_s,
            "free_blocks_before": self.summary.free_blocks_before,
            "free_blocks_after": self.summary.free_blocks_after,
            "probes": [{"gfp": p.gfp, "order": p.order, "count": p.count,
                        "succeeded": p.succeeded, "zones": dict(p.zones)} for p in self.probes],
            "before": json.loads(self.before.to_json()),
            "after": json.loads(self.after.to_json()),
        }, indent=1)


class GuestFragmenter:
    """The fragmenter and the allocation probe installed in one guest."""

    def __init__(self, guest: Guest, kernel: Kernel, cache: Path) -> None:
        self.guest = guest
        self.binary = guesttools.install(guest, "fragment", cache)
        probe = build_kbuild(PROBE_SOURCE, kernel, cache, "hplab_allocprobe")
        self.probe_ko = f"{WORK_DIR}/hplab_allocprobe.ko"
        guest.check(f"mkdir -p {WORK_DIR} {FILES_DIR} && "
                    f"(mountpoint -q {FILES_DIR} || "
                    f"mount -t tmpfs -o nr_inodes=0,mode=0700 hplab-fragment {FILES_DIR})")
        guest.put(probe, self.probe_ko)
        self.pidfile = f"{WORK_DIR}/fragment.pid"
        self.held: FragmentSpec | None = None

    def snapshot(self) -> MemorySnapshot:
        return MemorySnapshot.from_command_output(self.guest.check(SNAPSHOT_COMMAND))

    def fragment(self, spec: FragmentSpec, timeout: float | None = None) -> FragmentRun:
        """Fragment until `spec.target` holds (or say why not) and keep the memory held."""
        before = self.snapshot()
        spec.check_machine(before.meminfo_kib("MemTotal"), before.max_order)
        if spec.profile != "anon-pinned" and spec.dir == "/tmp":
            spec = FragmentSpec(spec.profile, spec.target, spec.seed, spec.floor_mib,
                                spec.timeout_s, FILES_DIR, spec.sysctl)
        command = spec.command(self.binary, hold=True, pidfile=self.pidfile)
        result = self.guest.run(command, timeout=timeout or spec.timeout_s + 60)
        if result.exit_status in (EXIT_REACHED, EXIT_MISSED):
            self.held = spec
        try:
            summary = summary_from_output(result.stdout, result.exit_status)
        except ValueError as exc:
            raise GuestError(f"{self.guest.node}: fragment --profile {spec.profile}: {exc}: "
                             f"{result.stderr.strip()[-500:]}") from None
        return FragmentRun(spec, summary, before, self.snapshot())

    def release(self) -> None:
        if self.held is None:
            return
        self.guest.check(shlex.join(release_argv(self.binary, self.pidfile, 120.0)),
                         timeout=180)
        self.held = None
        self.guest.run(f"rm -rf {FILES_DIR}/*")

    def probe(self, spec: ProbeSpec) -> ProbeResult:
        """Attempt spec.count allocations of spec.order now; the probe frees them again."""
        tag = spec.tag or f"{spec.gfp}-o{spec.order}"
        spec = ProbeSpec(spec.order, spec.count, spec.gfp, tag)
        mark = self.guest.canary(f"probe-{tag}")
        self.guest.run(shlex.join(["insmod", self.probe_ko, *spec.params()]))
        results = find_probe_results(self.guest.dmesg_since(mark), tag)
        if not results:
            raise GuestError(f"{self.guest.node}: hplab_allocprobe {' '.join(spec.params())} "
                             "logged no result")
        return results[-1]

    def probe_orders(self, gfp: str = "atomic", count: int = 64,
                     orders: range = range(11)) -> list[ProbeResult]:
        """One probe per order: how much of each size the allocator can still give."""
        return [self.probe(ProbeSpec(order, count, gfp, f"{gfp}-o{order}")) for order in orders]
