"""Debian kernels from the host's apt lists: `debian:SERIES[-FLAVOUR]` (the newest such
release) or `debian:RELEASE` (exactly that one), the image and headers packages
downloaded and unpacked into the cache, never installed on the host."""

from __future__ import annotations

import difflib
import itertools
import json
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lab.build import kconfig
from lab.build.kernel import Kernel, read_vermagic
from lab.build.kernelspec import DEBIAN
from lab.build.vmlinux import extract_vmlinux
from lab.cache import CacheEntry
from lab.errors import BuildError
from lab.shell import run

SERIES_SPEC = re.compile(r"^(?P<series>\d+\.\d+)(?:-(?P<flavour>[a-z][a-z0-9]*))?$")
FLAVOUR_SUFFIX = re.compile(r"-(?:(?P<flavour>[a-z][a-z0-9]*)-)?amd64$")
# -dbg, -unsigned and the meta packages (linux-image-6.12-rt-amd64) are no kernels to boot
IMAGE_PACKAGE = re.compile(
    r"^linux-image-(?P<release>(?P<series>\d+\.\d+)\.\d+(?:-\d+)?(?:\+[a-z0-9]+)?"
    r"-(?:(?P<flavour>[a-z][a-z0-9]*)-)?amd64)$")


def version_key(release: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", release)]


@dataclass(frozen=True)
class DebianRelease:
    """A Debian kernel the apt lists have with its headers."""

    name: str  # uname -r, e.g. 6.12.117+deb12-rt-amd64
    series: str  # 6.12
    flavour: str  # rt, cloud; "" for the plain amd64 flavour

    @property
    def series_spec(self) -> str:
        return f"{DEBIAN}{self.series}" + (f"-{self.flavour}" if self.flavour else "")


def debian_releases(images: Iterable[str], headers: Iterable[str]) -> list[DebianRelease]:
    """Kernels among `apt-cache pkgnames` output that have a headers package, oldest first."""
    have_headers = set(headers)
    found = [DebianRelease(m["release"], m["series"], m["flavour"] or "")
             for name in images if (m := IMAGE_PACKAGE.match(name))
             and f"linux-headers-{m['release']}" in have_headers]
    return sorted(found, key=lambda r: version_key(r.name))


def _series_wanted(body: str) -> tuple[str, str] | None:
    """'6.12-rt' -> ('6.12', 'rt'); '6.1' -> ('6.1', ''); an exact release -> None."""
    match = SERIES_SPEC.match(body.removesuffix("-amd64"))
    return (match["series"], match["flavour"] or "") if match else None


def _closest_series(spec: str, releases: list[DebianRelease]) -> str:
    newest = {r.series_spec: r.name for r in releases}
    best = difflib.get_close_matches(spec, list(newest), n=3, cutoff=0.0)
    return ", ".join(f"{s} ({newest[s]})" for s in best)


def _version_numbers(release: str) -> list[int]:
    return version_key(FLAVOUR_SUFFIX.sub("", release))


def _closest_releases(body: str, releases: list[DebianRelease]) -> str:
    """The three releases nearest by version, of the wanted flavour if it has any."""
    flavour = FLAVOUR_SUFFIX.search(body)
    pool = [r for r in releases if flavour and r.flavour == (flavour["flavour"] or "")]
    wanted = _version_numbers(body)

    def distance(r: DebianRelease) -> tuple[tuple[int, ...], list[int]]:
        numbers = _version_numbers(r.name)
        gaps = tuple(abs(a - b) for a, b in itertools.zip_longest(wanted, numbers, fillvalue=0))
        return gaps, [-n for n in numbers]

    return ", ".join(f"{DEBIAN}{r.name}" for r in sorted(pool or releases, key=distance)[:3])


def resolve_debian(spec: str, images: Iterable[str], headers: Iterable[str]) -> str:
    """The release a debian: spec names, given the image and headers package names the
    apt lists have: a series (and flavour) -> its newest release; a release -> itself."""
    images = list(images)
    releases = debian_releases(images, headers)
    if not releases:
        raise BuildError(f"kernel {spec!r}: the apt lists have no Debian kernel with its "
                         "headers; run 'apt-get update' (hplab host prepare does)")
    body = spec.removeprefix(DEBIAN)
    wanted = _series_wanted(body)
    if wanted is not None:
        matches = [r for r in releases if (r.series, r.flavour) == wanted]
        if matches:
            return matches[-1].name
        raise BuildError(f"kernel {spec!r}: no such Debian kernel series or flavour in the apt "
                         f"lists; closest: {_closest_series(spec, releases)}")
    if any(r.name == body for r in releases):
        return body
    reason = (f"the apt lists have linux-image-{body} but no linux-headers-{body} to build "
              "modules with" if f"linux-image-{body}" in images
              else "no such Debian kernel (with headers) in the apt lists")
    raise BuildError(f"kernel {spec!r}: {reason}; closest: {_closest_releases(body, releases)}")


def resolve_release(spec: str) -> str:
    """'debian:6.12-rt' -> the newest 6.12 rt release the host's apt lists know."""
    images = run(["apt-cache", "pkgnames", "linux-image-"]).split()
    headers = run(["apt-cache", "pkgnames", "linux-headers-"]).split()
    return resolve_debian(spec, images, headers)


def _dependencies(package: str) -> list[str]:
    out = run(["apt-cache", "depends", "--no-recommends", "--no-suggests", package])
    deps = re.findall(r"Depends: (linux-(?:headers|kbuild)-\S+)", out)
    return [d for d in deps if not d.startswith("<")]


def _packages_for(release: str) -> list[str]:
    headers = f"linux-headers-{release}"
    packages = [f"linux-image-{release}", headers]
    packages += _dependencies(headers)
    return sorted(set(packages))


def package_version(package: str) -> str:
    return run(["apt-cache", "show", "--no-all-versions", package]).split("Version: ")[1].split()[0]


def _fix_headers(root: Path, release: str, final: Path) -> None:
    """Point the headers' Makefile at the unpacked common headers under `final` (where
    `root` is renamed to), not /usr/src."""
    makefile = root / "usr" / "src" / f"linux-headers-{release}" / "Makefile"
    text = makefile.read_text()
    makefile.write_text(text.replace("include /usr/src/", f"include {final}/usr/src/"))


def entry(cache: Path, release: str) -> CacheEntry:
    """<cache>/kernels/<release>/: the unpacked packages, then hplab-kernel.json."""
    return CacheEntry(cache, "kernels", release, marker="hplab-kernel.json")


def fetch(spec: str, cache: Path, *, offline: bool = False) -> Kernel:
    """Download and unpack a Debian kernel with its headers, once per release;
    `offline`: only taken from the cache (NotCached when absent)."""
    release = resolve_release(spec)
    cached = entry(cache, release)
    if offline:
        root = cached.require(f"kernel {spec} ({release})")
        return _kernel(spec, release, root)

    def unpack(stage: Path) -> None:
        packages = _packages_for(release)
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            downloads = Path(tmp) / "debs"
            downloads.mkdir()
            downloads.chmod(0o777)  # apt's download sandbox user writes here
            run(["apt-get", "download", *packages], cwd=downloads)
            for deb in sorted(downloads.glob("*.deb")):
                run(["dpkg-deb", "-x", deb, stage])
        _fix_headers(stage, release, cached.path)
        run(["depmod", "-b", stage, release])
        modules = stage / "lib" / "modules" / release
        (stage / "vermagic").write_text(read_vermagic(modules, release) + "\n")
        kernel = _kernel(spec, release, stage)
        kconfig.check(kernel.config, release)
        extract_vmlinux(kernel.vmlinuz, kernel.vmlinux)
        version = package_version(f"linux-image-{release}")
        (stage / "hplab-kernel.json").write_text(json.dumps(
            {"spec": spec, "release": release, "version": version, "packages": packages},
            indent=1))

    root = cached.build(unpack)
    kernel = _kernel(spec, release, root)
    kconfig.check(kernel.config, release)
    if not kernel.vmlinux.exists():  # an entry unpacked before the lab booted vmlinux
        with cached.locked():
            if not kernel.vmlinux.exists():
                extract_vmlinux(kernel.vmlinuz, kernel.vmlinux)
    return kernel


def _kernel(spec: str, release: str, root: Path) -> Kernel:
    version = (json.loads((root / "hplab-kernel.json").read_text())["version"]
               if (root / "hplab-kernel.json").exists() else "")
    return Kernel(spec=spec, release=release, package_version=version, root=root)
