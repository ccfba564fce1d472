"""Fragmenting a guest's memory on demand and asking its allocator what it can still do."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lab.build import guesttools
from lab.build.kernel import Kernel
from lab.dut.kmod import build_kbuild
from lab.errors import GuestError
from lab.fragment.spec import (
    EXIT_MISSED,
    EXIT_REACHED,
    FragmentSpec,
    FragmentSummary,
    ProbeResult,
    ProbeSpec,
    cleanup_argv,
    find_probe_results,
    release_argv,
    summary_from_output,
)
from lab.guest.memory import SNAPSHOT_COMMAND, MemorySnapshot
from lab.guest.ssh import Guest
from lab.paths import GUEST_SOURCES

PROBE_SOURCE = GUEST_SOURCES / "allocprobe"
WORK_DIR = "/run/hplab-fragment"
# The fragmenter's files live on their own tmpfs, mounted for a run and unmounted at
# release, so nothing of one run outlives it as page cache.
FILES_DIR = "/mnt/hplab-fragment"
_MOUNTED = f"grep -q ' {FILES_DIR} ' /proc/mounts"  # busybox images have no mountpoint(1)
ProgressCallback = Callable[[str], None]


@dataclass(frozen=True)
class ReleaseOutcome:
    """How the held memory went back: ``released`` by the fragmenter itself, or
    ``killed`` because it did not release within its bound (``cause`` says why)."""

    how: str
    cause: str = ""

    def __str__(self) -> str:
        return self.how if not self.cause else f"{self.how}: {self.cause}"


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
            "elapsed_s": self.summary.elapsed_s, "thp": self.summary.thp,
            "rounds": self.summary.rounds, "held": dataclasses.asdict(self.summary.held),
            "free_blocks_before": self.summary.free_blocks_before,
            "free_blocks_after": self.summary.free_blocks_after,
            "memfree_kib_after": self.summary.memfree_kib_after,
            "free_outside_dma_kib_after": self.summary.free_outside_dma_kib_after,
            "blockers": {
                "error": self.summary.blockers.error,
                "mixed_blocks": self.summary.blockers.mixed_blocks,
                "blocks": self.summary.blockers.blocks,
                "pages": dict(self.summary.blockers.pages),
                "free_pages_by_migratetype":
                    dict(self.summary.blockers.free_pages_by_migratetype),
                "pageblocks_by_migratetype":
                    dict(self.summary.blockers.pageblocks_by_migratetype)},
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
        guest.check(f"mkdir -p {WORK_DIR}")
        guest.put(probe, self.probe_ko)
        self.pidfile = f"{WORK_DIR}/fragment.pid"
        self.held: FragmentSpec | None = None  # started, and not yet released or killed

    def snapshot(self) -> MemorySnapshot:
        return MemorySnapshot.from_command_output(self.guest.check(SNAPSHOT_COMMAND))

    def fragment(self, spec: FragmentSpec, timeout: float | None = None,
                 progress: ProgressCallback | None = None) -> FragmentRun:
        """Fragment until `spec.target` holds (or say why not) and keep the memory held.

        `progress` gets each of the fragmenter's progress lines as it prints them
        ("fill: free order-10 blocks 37, MemFree 402 MiB at 6.1 s ...").
        """
        if self.held is not None:
            raise GuestError(f"{self.guest.node}: fragment --profile {spec.profile}: the "
                             f"{self.held.profile} run still holds its memory; release it first")
        before = self.snapshot()
        spec.check_machine(before.meminfo_kib("MemTotal"), before.max_order)
        if spec.profile != "anon-pinned" and spec.dir == "/tmp":
            spec = dataclasses.replace(spec, dir=FILES_DIR)
        self.guest.check(f"mkdir -p {FILES_DIR} && ({_MOUNTED} || "
                         f"mount -t tmpfs -o nr_inodes=0,mode=0700 hplab-fragment {FILES_DIR})")
        # the tool's own cap, in this guest's seconds, stays inside the host's bound
        tool_spec = dataclasses.replace(spec, timeout_s=self.guest.scaled(spec.timeout_s))
        command = tool_spec.command(self.binary, hold=True, pidfile=self.pidfile, verbose=True)
        self.held = spec  # from here on, release() gives back whatever the command left
        bound = timeout or spec.timeout_s + self.guest.timeouts.fragment_slack
        result = self.guest.run(command, timeout=bound, on_stderr_line=_progress_lines(progress))
        if result.exit_status not in (EXIT_REACHED, EXIT_MISSED):
            self.held = None  # it gave everything back itself, or never took anything
        try:
            summary = summary_from_output(result.stdout, result.exit_status)
        except ValueError as exc:
            raise GuestError(f"{self.guest.node}: fragment --profile {spec.profile}: {exc}: "
                             f"{result.stderr.strip()[-500:]}") from None
        return FragmentRun(spec, summary, before, self.snapshot())

    def release(self, bound: float | None = None) -> ReleaseOutcome | None:
        """Give the held memory back: the fragmenter releases within `bound` reference
        seconds (default the guest's fragment_release), or its holder is killed and what
        it left is removed. None if nothing was held. Raises GuestError when even that
        fails: the node then needs a reboot."""
        if self.held is None:
            return None
        timeouts = self.guest.timeouts
        bound = timeouts.fragment_release if bound is None else bound
        outcome = ReleaseOutcome("released")
        try:
            answer = self.guest.check(shlex.join(release_argv(self.binary, self.pidfile,
                                                              self.guest.scaled(bound))),
                                      timeout=bound + timeouts.release_slack)
            if '"was_running":false' in answer:
                outcome = ReleaseOutcome("died", "the holder had exited before its release "
                                                 "(killed, or the OOM killer)")
        except GuestError as exc:
            outcome = ReleaseOutcome("killed", f"release did not finish: {_first_line(exc)}")
            self._kill_holder()
        self.held = None
        self.guest.check(f"{shlex.join(cleanup_argv(self.binary, FILES_DIR))} >/dev/null; "
                         f"! {_MOUNTED} || umount {FILES_DIR}",
                         timeout=timeouts.fragment_kill)
        return outcome

    def _kill_holder(self) -> None:
        """SIGKILL the process named in the pid file, and wait until it is gone."""
        self.guest.check(
            f"p=$(cat {self.pidfile} 2>/dev/null) || exit 0; kill -9 $p 2>/dev/null; "
            f"while [ -e /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status 2>/dev/null; "
            f"do sleep 0.1; done; rm -f {self.pidfile}",
            timeout=self.guest.timeouts.fragment_kill)

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


_PROGRESS = re.compile(r"^fragment: (\w+): (.*)$")


def _progress_lines(callback: ProgressCallback | None) -> Callable[[str], None] | None:
    if callback is None:
        return None

    def on_line(line: str) -> None:
        found = _PROGRESS.match(line.strip())
        if found:
            callback(f"{found.group(1)}: {found.group(2)}")
    return on_line


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
