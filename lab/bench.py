"""`hplab bench fragment`: time to the fragmentation target and what the allocator can give."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from lab import topology as topologies
from lab.engine import Lab
from lab.errors import LabError
from lab.events import EventBus
from lab.fragment import GuestFragmenter
from lab.stress import PROFILES, FragmentSpec, Target

ORDERS = range(11)


@dataclass(frozen=True)
class FragmentSample:
    profile: str
    seed: int
    reached: bool
    seconds: float
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
        fragmenter = GuestFragmenter(lab.guest(node), rt.kernel, lab.cache)
        for spec in fragment_specs:
            with bus.phase("fragment", node, f"{spec.profile}, seed {spec.seed}"):
                result = fragmenter.fragment(spec)
            probes = fragmenter.probe_orders("atomic", probe_count, ORDERS)
            fragmenter.release()
            samples.append(FragmentSample(
                spec.profile, spec.seed, result.summary.reached, result.summary.elapsed_s,
                tuple(p.failed / p.count for p in probes)))
    return samples


def table(samples: list[FragmentSample]) -> list[str]:
    """Per profile: median/min/max seconds to target, targets reached, failed fraction per
    order (median over the repeats)."""
    orders = " ".join(f"{f'o{o}':>5}" for o in ORDERS)
    lines = [f"{'profile':12} {'median s':>8} {'min':>6} {'max':>6} {'reached':>7}  "
             f"failed fraction GFP_ATOMIC: {orders}"]
    for profile in PROFILES:
        rows = [s for s in samples if s.profile == profile]
        if not rows:
            continue
        seconds = [s.seconds for s in rows]
        fractions = " ".join(f"{statistics.median(s.failed_fraction[o] for s in rows):5.2f}"
                             for o in ORDERS)
        lines.append(f"{profile:12} {statistics.median(seconds):8.1f} {min(seconds):6.1f} "
                     f"{max(seconds):6.1f} {sum(s.reached for s in rows):3d}/{len(rows):<3d}  "
                     f"{'':27}{fractions}")
    return lines
