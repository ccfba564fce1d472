"""`hplab bench fragment`: time to the fragmentation target and what the allocator can give."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from lab import topology as topologies
from lab.dut import kmod
from lab.dut.agent_output import BenchResult, parse_bench
from lab.dut.install import ModuleBuilds, install
from lab.engine import Lab
from lab.errors import LabError
from lab.events import EventBus
from lab.fragment.driver import GuestFragmenter
from lab.fragment.spec import PROFILES, FragmentSpec, Target

ORDERS = range(11)


@dataclass(frozen=True)
class FragmentSample:
    profile: str
    seed: int
    reached: bool
    seconds: float
    release_seconds: float  # from the release request until the holder is gone
    free_mib_after: int  # free outside ZONE_DMA once fragmented
    blocking_kind: str  # the kind most pages in the way are (/proc/kpageflags)
    blocking_share: float
    free_migratetype: str  # where most free pages sit (/proc/pagetypeinfo)
    failed_fraction: tuple[float, ...]  # per order 0..10, GFP_ATOMIC


def specs(profiles: list[str], repeat: int, seed: int) -> list[FragmentSpec]:
    """Validated before anything boots; an unknown profile names itself."""
    if repeat < 1:
        raise LabError(f"--repeat must be >= 1, got {repeat}")
    try:
        return [FragmentSpec(profile, Target(), seed + i)
                for profile in profiles for i in range(repeat)]
    except ValueError as exc:
        raise LabError(f"--profile: {exc}") from None


def run(topology_path: Path, fragment_specs: list[FragmentSpec], base_dir: Path,
        bus: EventBus, probe_count: int = 64) -> list[FragmentSample]:
    topology = topologies.load(topology_path)
    node = topology.nodes[0].name
    samples = []
    with Lab(topology, base_dir, bus) as lab:
        rt = lab.nodes[node]
        for n, spec in enumerate(fragment_specs):
            # each sample in a freshly booted guest, as in the suite: the probes' atomic
            # high-order allocations leave HighAtomic reserves that only atomic callers use
            if n:
                lab.reboot(node)
            fragmenter = GuestFragmenter(lab.guest(node), rt.kernel, lab.cache)
            with bus.phase("fragment", node, f"{spec.profile}, seed {spec.seed}") as phase:
                result = fragmenter.fragment(spec, progress=phase.info)
            probes = fragmenter.probe_orders("atomic", probe_count, ORDERS)
            started = time.monotonic()
            fragmenter.release()
            released = time.monotonic() - started
            summary, blockers = result.summary, result.summary.blockers
            free = blockers.free_pages_by_migratetype
            samples.append(FragmentSample(
                spec.profile, spec.seed, summary.reached, summary.elapsed_s, released,
                summary.free_outside_dma_kib_after // 1024, blockers.dominant or "-",
                blockers.share(blockers.dominant) if blockers.dominant else 0.0,
                max(free, key=lambda m: free[m]) if free else "-",
                tuple(p.failed / p.count for p in probes)))
    return samples


def table(samples: list[FragmentSample]) -> list[str]:
    """Per profile: seconds to the target (median, min, max) and to release (median),
    targets reached, MiB still free, what blocks order 10 and where the free pages sit,
    and the failed fraction per order (medians over the repeats)."""
    orders = " ".join(f"{f'o{o}':>5}" for o in ORDERS)
    lines = [f"{'profile':12} {'target s':>8} {'min':>5} {'max':>5} {'release s':>9} "
             f"{'reached':>7} {'free MiB':>8}  {'blocked by':18} {'free pages in':13}  "
             f"failed fraction GFP_ATOMIC: {orders}"]
    for profile in PROFILES:
        rows = [s for s in samples if s.profile == profile]
        if not rows:
            continue
        seconds = [s.seconds for s in rows]
        fractions = " ".join(f"{statistics.median(s.failed_fraction[o] for s in rows):5.2f}"
                             for o in ORDERS)
        kind = statistics.mode(s.blocking_kind for s in rows)
        share = statistics.median(s.blocking_share for s in rows if s.blocking_kind == kind)
        blocked = f"{kind} ({share:.0%})"
        lines.append(
            f"{profile:12} {statistics.median(seconds):8.1f} {min(seconds):5.1f} "
            f"{max(seconds):5.1f} {statistics.median(s.release_seconds for s in rows):9.2f} "
            f"{sum(s.reached for s in rows):3d}/{len(rows):<3d} "
            f"{statistics.median(s.free_mib_after for s in rows):8.0f}  {blocked:18} "
            f"{statistics.mode(s.free_migratetype for s in rows):13}  {'':27}{fractions}")
    return lines


@dataclass(frozen=True)
class VrhpSample:
    backend: str
    result: BenchResult


def vrhp_run(topology_path: Path, repeat: int, entries: int, base_dir: Path, bus: EventBus,
             kmod_source: Path) -> list[VrhpSample]:
    """The agent's bench on a fresh module per repetition, for each backend."""
    if repeat < 1 or entries < 1:
        raise LabError(f"--repeat and --entries must be >= 1, got {repeat} and {entries}")
    topology = topologies.load(topology_path)
    node = topology.nodes[0].name
    samples = []
    with Lab(topology, base_dir, bus) as lab:
        rt = lab.nodes[node]
        guest = lab.guest(node)
        module = install(guest, rt.kernel, ModuleBuilds(lab.cache, bus, kmod_source))
        for backend in ("hugepage", "btable"):
            for seed in range(1, repeat + 1):
                module.load(mem=backend)
                if backend == "hugepage":
                    setup = module.setup()
                    if not setup.ok:
                        raise LabError(f"node {node!r}: setup {setup.outcome.name}")
                text = module.agent_stdout("bench", entries, seed,
                                           timeout=guest.timeouts.agent_bench)
                samples.append(VrhpSample(backend, parse_bench(text)))
                kmod.reset_guest(guest)
    return samples


def vrhp_table(samples: list[VrhpSample]) -> list[str]:
    lines = [f"{'backend':9} {'fill entries/s':>14} {'scan MiB/s':>10} {'map read MiB/s':>14} "
             f"{'anon read MiB/s':>15} {'scan/anon':>9} {'min':>5} {'max':>5} {'n':>3}"]
    for backend in ("hugepage", "btable"):
        rows = [s.result for s in samples if s.backend == backend]
        if not rows:
            continue
        ratios = [r.scan_vs_anon for r in rows]
        lines.append(
            f"{backend:9} {statistics.median(r.fill_entries_per_s for r in rows):14,.0f} "
            f"{statistics.median(r.scan_mib_per_s for r in rows):10,.0f} "
            f"{statistics.median(r.map_read_mib_per_s for r in rows):14,.0f} "
            f"{statistics.median(r.anon_read_mib_per_s for r in rows):15,.0f} "
            f"{statistics.median(ratios):9.2f} {min(ratios):5.2f} {max(ratios):5.2f} "
            f"{len(rows):3d}")
    return lines
