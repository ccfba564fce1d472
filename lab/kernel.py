"""Kernels for guests: Debian packages by version -> vmlinuz, modules, headers.

Packages are downloaded and unpacked into the cache, never installed on the host.
"""

from __future__ import annotations

import json
import lzma
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from lab.errors import BuildError
from lab.shell import locked, run

SERIES_PATTERNS = {
    "6.1": re.compile(r"^linux-image-(6\.1\.0-\d+-amd64)$"),
    "6.12": re.compile(r"^linux-image-(6\.12\.\d+\+deb12-amd64)$"),
}


@dataclass(frozen=True)
class Kernel:
    """One unpacked kernel: what a guest boots and what modules are built against."""

    spec: str
    release: str  # uname -r of the guest, e.g. 6.1.0-56-amd64
    package_version: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def vmlinux(self) -> Path:
        """The uncompressed ELF kernel: QEMU boots it through its PVH entry, which skips
        the decompression a bzImage does first (1-3 s of every boot under TCG)."""
        return self.root / "boot" / f"vmlinux-{self.release}"

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


def _version_key(release: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", release)]


def resolve_release(spec: str) -> str:
    """'debian:6.1' -> the newest 6.1 release the host's apt lists know."""
    wanted = spec.removeprefix("debian:")
    if wanted not in SERIES_PATTERNS:
        return wanted
    pattern = SERIES_PATTERNS[wanted]
    names = run(["apt-cache", "pkgnames", "linux-image-6."]).split()
    releases = [m.group(1) for n in names if (m := pattern.match(n))]
    if not releases:
        raise BuildError(f"kernel {spec!r}: no package linux-image-{wanted}* in the apt lists; "
                         "run 'apt-get update' (hplab host prepare does)")
    return max(releases, key=_version_key)


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


def _read_vermagic(root: Path, release: str) -> str:
    modules = root / "lib" / "modules" / release / "kernel"
    sample = next(modules.rglob("virtio_net.ko*"), None)
    if sample is None:
        raise BuildError(f"kernel {release}: no virtio_net module in the package")
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


def decompress_kernel(payload: bytes, name: str) -> bytes:
    """gzip, xz or zstd payload -> the ELF vmlinux."""
    if payload.startswith(b"\xfd7zXZ\x00"):
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(b"\x28\xb5\x2f\xfd"):
        proc = subprocess.run(["zstd", "-dcq"], input=payload[:-4], capture_output=True,
                              check=False)  # the kernel appends the size after the frame
        if proc.returncode != 0:
            raise BuildError(f"{name}: zstd could not decompress the kernel: "
                             f"{proc.stderr.decode().strip()}")
        elf = proc.stdout
    elif payload.startswith(b"\x1f\x8b"):
        elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    else:
        raise BuildError(f"{name}: kernel compressed with an unsupported format "
                         f"(magic {payload[:6].hex()}; known: gzip, xz, zstd)")
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
            (root / "vermagic").write_text(_read_vermagic(root, release) + "\n")
            version = _package_version(f"linux-image-{release}")
            meta.write_text(json.dumps({"spec": spec, "release": release, "version": version,
                                        "packages": packages}, indent=1))
        info = json.loads(meta.read_text())
        kernel = Kernel(spec=spec, release=release, package_version=info["version"], root=root)
        if not kernel.vmlinux.exists():
            extract_vmlinux(kernel.vmlinuz, kernel.vmlinux)
    return kernel
