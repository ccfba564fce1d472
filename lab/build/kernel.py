"""Kernels for guests: vmlinux, modules and headers from a spec.

`debian:SERIES[-FLAVOUR]` (the newest such release), `debian:RELEASE` (exactly that one):
Debian packages found in the host's apt lists, downloaded and unpacked into the cache,
never installed on the host. `local:DIR`: a kernel build tree or unpacked kernel
(lab.localkernel). Every kernel's config is checked for what the lab needs (lab.kconfig).
"""

from __future__ import annotations

import difflib
import itertools
import json
import lzma
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lab.build import kconfig
from lab.errors import BuildError
from lab.shell import locked, run

DEBIAN = "debian:"
LOCAL = "local:"
DEBUG = "debug:"  # built from Debian's linux-source with KASAN and lockdep (lab.debugkernel)
DEBUG_SPEC = re.compile(r"^debug:\d+\.\d+$")
DEBIAN_SPEC = re.compile(r"^debian:\d+\.\d+(?:[.+~-][0-9a-z]+)*$")
SERIES_SPEC = re.compile(r"^(?P<series>\d+\.\d+)(?:-(?P<flavour>[a-z][a-z0-9]*))?$")
FLAVOUR_SUFFIX = re.compile(r"-(?:(?P<flavour>[a-z][a-z0-9]*)-)?amd64$")
# -dbg, -unsigned and the meta packages (linux-image-6.12-rt-amd64) are no kernels to boot
IMAGE_PACKAGE = re.compile(
    r"^linux-image-(?P<release>(?P<series>\d+\.\d+)\.\d+(?:-\d+)?(?:\+[a-z0-9]+)?"
    r"-(?:(?P<flavour>[a-z][a-z0-9]*)-)?amd64)$")


def spec_is_valid(spec: str) -> bool:
    """Whether `spec` is a kernel spec in form; whether it exists is resolution's business."""
    if spec.startswith(LOCAL):
        path = spec.removeprefix(LOCAL)
        return bool(path.strip()) and not any(c in path for c in "\n\r\0")
    return bool(DEBIAN_SPEC.match(spec) or DEBUG_SPEC.match(spec))


def local_spec(directory: str | Path, base: Path) -> str:
    """'local:DIR' with DIR made absolute against `base` (the topology file's directory
    or the working directory of a --kernel option)."""
    return f"{LOCAL}{(base / Path(directory).expanduser()).resolve()}"


@dataclass(frozen=True)
class Kernel:
    """One unpacked kernel: what a guest boots and what modules are built against."""

    spec: str
    release: str  # uname -r of the guest, e.g. 6.1.0-56-amd64
    package_version: str
    root: Path
    # False: the PVH entry does not boot it (the debug kernel, KASAN and lockdep on 6.1,
    # stops before its first console line there) and it boots as a bzImage
    pvh_boots: bool = True
    cmdline: str = ""  # what every boot of this kernel needs on its command line

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def vmlinux(self) -> Path:
        """The uncompressed ELF kernel: QEMU boots it through its PVH entry, which skips
        the decompression a bzImage does first (1-3 s of every boot under TCG)."""
        return self.root / "boot" / f"vmlinux-{self.release}"

    @property
    def boot_image(self) -> Path:
        """What a guest boots: the vmlinux through PVH, or the bzImage where PVH fails."""
        return self.vmlinux if self.pvh_boots else self.vmlinuz

    @property
    def probe_image(self) -> Path:
        """What the KVM probe boots: the bzImage, or the vmlinux of a kernel without one."""
        return self.vmlinuz if self.vmlinuz.exists() else self.vmlinux

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.release}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release

    @property
    def headers_dir(self) -> Path:
        return self.root / "usr" / "src" / f"linux-headers-{self.release}"

    @property
    def series(self) -> str:
        return ".".join(self.release.split(".")[:2]).split("-")[0]

    @property
    def vermagic(self) -> str:
        return (self.root / "vermagic").read_text().strip()


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


def _package_version(package: str) -> str:
    return run(["apt-cache", "show", "--no-all-versions", package]).split("Version: ")[1].split()[0]


def _fix_headers(root: Path, release: str) -> None:
    """Point the headers' Makefile at the unpacked common headers, not /usr/src."""
    makefile = root / "usr" / "src" / f"linux-headers-{release}" / "Makefile"
    text = makefile.read_text()
    makefile.write_text(text.replace("include /usr/src/", f"include {root}/usr/src/"))


def read_vermagic(modules_dir: Path, release: str) -> str:
    """The vermagic of the kernel's modules (virtio_net's, or any when it is built in)."""
    modules = modules_dir / "kernel"
    sample = next(modules.rglob("virtio_net.ko*"), None) or next(modules.rglob("*.ko*"), None)
    if sample is None:
        raise BuildError(f"kernel {release}: no module under {modules} to read the vermagic of")
    return run(["modinfo", "-F", "vermagic", sample]).strip()


def bzimage_payload(data: bytes, name: str) -> bytes:
    """The compressed kernel inside a bzImage, located by its boot protocol header."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise BuildError(f"{name} is not a bzImage (no 'HdrS' boot header)")
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(data):
        raise BuildError(f"{name}: payload offset {offset} length {length} is outside the file")
    return data[start:start + length]


def _decompress_with(tool: str, payload: bytes, name: str) -> bytes:
    proc = subprocess.run([tool, "-dcq"], input=payload[:-4], capture_output=True,
                          check=False)  # the kernel appends the size after the frame
    if proc.returncode != 0:
        raise BuildError(f"{name}: {tool} could not decompress the kernel: "
                         f"{proc.stderr.decode().strip()}")
    return proc.stdout


def decompress_kernel(payload: bytes, name: str) -> bytes:
    """gzip, xz, zstd or lz4 payload -> the ELF vmlinux."""
    if payload.startswith(b"\xfd7zXZ\x00"):
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(b"\x28\xb5\x2f\xfd"):
        elf = _decompress_with("zstd", payload, name)
    elif payload.startswith(b"\x02\x21\x4c\x18"):  # lz4 legacy frame (Debian's cloud 6.1)
        elf = _decompress_with("lz4", payload, name)
    elif payload.startswith(b"\x1f\x8b"):
        elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    else:
        raise BuildError(f"{name}: kernel compressed with an unsupported format "
                         f"(magic {payload[:6].hex()}; known: gzip, xz, zstd, lz4)")
    if not elf.startswith(b"\x7fELF"):
        raise BuildError(f"{name}: the decompressed kernel is not an ELF file")
    return elf


def extract_vmlinux(bzimage: Path, out: Path) -> None:
    data = bzimage.read_bytes()
    elf = decompress_kernel(bzimage_payload(data, str(bzimage)), str(bzimage))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(elf)
    tmp.chmod(0o644)
    tmp.replace(out)


def fetch(spec: str, cache: Path) -> Kernel:
    """The kernel a spec names, ready to boot and to build modules against."""
    if not spec_is_valid(spec):
        raise BuildError(f"kernel {spec!r} is not a kernel spec (debian:SERIES, "
                         "debian:SERIES-FLAVOUR, debian:RELEASE, local:DIR or debug:SERIES)")
    if spec.startswith(LOCAL):
        from lab.build import localkernel

        return localkernel.prepare(spec, cache)
    if spec.startswith(DEBUG):
        from lab.build import debugkernel

        kernel = debugkernel.fetch(spec, cache)
        kconfig.check(kernel.config, kernel.release)
        return kernel
    return fetch_debian(spec, cache)


def fetch_debian(spec: str, cache: Path) -> Kernel:
    """Download and unpack a Debian kernel with its headers, once per release."""
    release = resolve_release(spec)
    root = cache / "kernels" / release
    meta = root / "hplab-kernel.json"
    with locked(cache / "kernels" / f".{release}.lock"):
        if not meta.exists():
            packages = _packages_for(release)
            root.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
                work = Path(tmp)
                downloads = work / "debs"
                downloads.mkdir()
                downloads.chmod(0o777)  # apt's download sandbox user writes here
                run(["apt-get", "download", *packages], cwd=downloads)
                unpacked = work / "root"
                for deb in sorted(downloads.glob("*.deb")):
                    run(["dpkg-deb", "-x", deb, unpacked])
                if root.exists():
                    shutil.rmtree(root)
                unpacked.rename(root)
            _fix_headers(root, release)
            run(["depmod", "-b", root, release])
            modules = root / "lib" / "modules" / release
            (root / "vermagic").write_text(read_vermagic(modules, release) + "\n")
            version = _package_version(f"linux-image-{release}")
            meta.write_text(json.dumps({"spec": spec, "release": release, "version": version,
                                        "packages": packages}, indent=1))
        info = json.loads(meta.read_text())
        kernel = Kernel(spec=spec, release=release, package_version=info["version"], root=root)
        kconfig.check(kernel.config, release)
        if not kernel.vmlinux.exists():
            extract_vmlinux(kernel.vmlinuz, kernel.vmlinux)
    return kernel
