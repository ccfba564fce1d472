"""A kernel spec to a `Kernel` ready to boot and to build modules against: the spec's form
is checked, then its flavour (debian, debug or local) fetches, builds or prepares it;
every kernel's config is checked for what the lab needs (lab.build.kconfig)."""

from __future__ import annotations

from pathlib import Path

from lab.build import debiankernel, debugkernel, kconfig, localkernel
from lab.build.kernel import Kernel
from lab.build.kernelspec import DEBUG, LOCAL, spec_is_valid
from lab.errors import BuildError


def fetch(spec: str, cache: Path, *, offline: bool = False) -> Kernel:
    """The kernel a spec names, ready to boot and to build modules against; `offline`:
    only taken from the cache, nothing downloaded or built (lab.cache.NotCached)."""
    if not spec_is_valid(spec):
        raise BuildError(f"kernel {spec!r} is not a kernel spec (debian:SERIES, "
                         "debian:SERIES-FLAVOUR, debian:RELEASE, local:DIR or debug:SERIES)")
    if spec.startswith(LOCAL):
        return localkernel.prepare(spec, cache, offline=offline)
    if spec.startswith(DEBUG):
        kernel = debugkernel.fetch(spec, cache, offline=offline)
        kconfig.check(kernel.config, kernel.release)
        return kernel
    return debiankernel.fetch(spec, cache, offline=offline)
