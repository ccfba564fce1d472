"""`hplab bench boot`: image build time cold and warm, seconds from domain create to SSH."""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lab import topology as topologies
from lab.build import kernelfetch
from lab.build.image import kinds as images
from lab.build.kernel import Kernel
from lab.engine import Lab
from lab.errors import LabError
from lab.events import EventBus

SCRATCH = "bench-images"


@dataclass(frozen=True)
class BootRow:
    """One image kind on one kernel."""

    image: str
    kernel: str
    build_cold: float
    build_warm: float
    boots: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.boots)


def _timed(action: Callable[[], object]) -> float:
    start = time.monotonic()
    action()
    return time.monotonic() - start


def build_times(kind: str, kernel: Kernel, cache: Path) -> tuple[float, float]:
    """(cold, warm) seconds: a build into an empty scratch cache, then one from the cache."""
    scratch = cache / SCRATCH
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        cold = _timed(lambda: images.build(kind, kernel, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    images.build(kind, kernel, cache)  # the real cache holds the image from here on
    warm = _timed(lambda: images.build(kind, kernel, cache))
    return cold, warm


def image_kind(topology: topologies.Topology) -> str:
    kinds = {node.image for node in topology.nodes}
    if len(kinds) != 1:
        raise LabError(f"{topology.path}: bench boot needs one image kind for every node, "
                       f"got {', '.join(sorted(kinds))}")
    return kinds.pop()


def boot_times(topology: topologies.Topology, base: Path, repeat: int,
               bus: EventBus) -> list[float]:
    """Create-to-SSH seconds of every node over `repeat` fresh labs."""
    boots: list[float] = []
    for _ in range(repeat):
        lab = Lab(topology, base, bus)
        try:
            lab.start()
            boots.extend(rt.boot_seconds for rt in lab.nodes.values())
        finally:
            lab.stop()
    return boots


def measure(topology_path: Path, spec: str, base: Path, cache: Path, repeat: int,
            bus: EventBus) -> BootRow:
    topology = topologies.load(topology_path, {"kernel": spec})
    kind = image_kind(topology)
    kernel = kernelfetch.fetch(spec, cache)
    cold, warm = build_times(kind, kernel, cache)
    boots = boot_times(topology, base, repeat, bus)
    return BootRow(kind, kernel.release, cold, warm, tuple(boots))


def table(rows: list[BootRow]) -> list[str]:
    lines = [f"{'image':8} {'kernel':24} {'build cold s':>12} {'build warm s':>12} "
             f"{'boot median s':>13} {'min':>6} {'max':>6} {'n':>3}"]
    for row in rows:
        lines.append(f"{row.image:8} {row.kernel:24} {row.build_cold:12.2f} "
                     f"{row.build_warm:12.3f} {row.median:13.2f} {min(row.boots):6.2f} "
                     f"{max(row.boots):6.2f} {len(row.boots):3d}")
    return lines
