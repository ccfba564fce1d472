"""Puts vrhp in a node's guest: built for the node's exact kernel, then installed with its agent.

`ModuleBuilds` builds the module from one source tree (with at most one planted defect,
lab.mutants) and keeps each build of a lab run by (kernel release, version, layout);
`install` copies the build for a guest's kernel into that guest. The hplab commands and
the pytest fixtures put the module in a guest only through these.
"""

from __future__ import annotations

from pathlib import Path

from lab.build.kernel import Kernel
from lab.dut import kmod
from lab.events import EventBus
from lab.guest.ssh import Guest
from lab.paths import KMOD_SOURCE

BuildKey = tuple[str, int, int]  # (kernel release, version, layout)


class ModuleBuilds:
    """vrhp builds from `source` (with `defect` planted, if any), each made once per
    (kernel release, version, layout) and kept for the life of this object."""

    def __init__(self, cache: Path, bus: EventBus, source: Path = KMOD_SOURCE,
                 defect: str | None = None) -> None:
        self.cache, self.bus, self.source, self.defect = cache, bus, source, defect
        self.builds: dict[BuildKey, kmod.ModuleBuild] = {}

    def build(self, kernel: Kernel, node: str, version: int = 1,
              layout: int = 1) -> kmod.ModuleBuild:
        """The build for `kernel` in a version and layout; built (a kmod-build phase of
        `node`) only the first time it is asked for."""
        key = (kernel.release, version, layout)
        if key not in self.builds:
            with self.bus.phase("kmod-build", node, f"v{version} layout {layout}"):
                self.builds[key] = kmod.build(kernel, self.cache, version=version,
                                              layout=layout, source=self.source,
                                              defect=self.defect)
        return self.builds[key]


def install(guest: Guest, kernel: Kernel, builds: ModuleBuilds, *, version: int = 1,
            layout: int = 1) -> kmod.GuestModule:
    """vrhp of a version and layout, built for `kernel` (the guest's) and installed in
    `guest` (not loaded)."""
    build = builds.build(kernel, guest.node, version, layout)
    return kmod.GuestModule(guest, build).install()
