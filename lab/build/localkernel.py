"""Local kernels (`local:DIR`): a kernel build tree or an unpacked kernel, as a lab Kernel.

DIR is either
- a build tree: `.config`, `include/config/kernel.release`, `arch/x86/boot/bzImage` or
  `vmlinux`, `Module.symvers`; its modules are installed into the cache with
  `make modules_install` and the tree itself is the headers modules are built against;
- an unpacked kernel, laid out like an unpacked Debian kernel: `boot/vmlinuz-REL` or
  `boot/vmlinux-REL`, `boot/config-REL`, `lib/modules/REL/modules.dep` and headers in
  `usr/src/linux-headers-REL` or behind `lib/modules/REL/build`.

What the lab takes is cached under a hash of the files it takes, in the layout of an
unpacked Debian kernel (boot/vmlinux-REL, boot/config-REL, lib/modules/REL,
usr/src/linux-headers-REL, vermagic), so the rest of the lab treats both alike.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from lab.build import kconfig
from lab.build.kernel import Kernel, read_vermagic
from lab.build.kernelspec import LOCAL
from lab.build.vmlinux import extract_vmlinux
from lab.cache import CacheEntry
from lab.errors import BuildError
from lab.shell import run

BUILDER_VERSION = "1"
MODULES_INSTALL_TIMEOUT = 1800.0
BUILD_TREE_FILES = ".config, include/config/kernel.release, vmlinux or arch/x86/boot/bzImage"
UNPACKED_FILES = "boot/vmlinuz-REL or boot/vmlinux-REL, boot/config-REL, lib/modules/REL"


@dataclass(frozen=True)
class LocalSource:
    """The files the lab takes from a local kernel directory."""

    directory: Path
    release: str
    image: Path  # a bzImage (vmlinuz) or an ELF vmlinux
    config: Path
    headers: Path
    modules: Path | None  # lib/modules/REL; None: a build tree's, installed from it
    taken: tuple[Path, ...]  # what the cache key hashes

    @property
    def build_tree(self) -> bool:
        return self.modules is None


def _fail(directory: Path, message: str) -> BuildError:
    return BuildError(f"local kernel {directory}: {message}")


def _build_tree(directory: Path) -> LocalSource:
    release_file = directory / "include" / "config" / "kernel.release"
    if not release_file.is_file():
        raise _fail(directory, "a build tree without include/config/kernel.release "
                    "(build the kernel first)")
    release = release_file.read_text().strip()
    bzimage, vmlinux = directory / "arch" / "x86" / "boot" / "bzImage", directory / "vmlinux"
    image = bzimage if bzimage.is_file() else vmlinux
    if not image.is_file():
        raise _fail(directory, "a build tree without arch/x86/boot/bzImage or vmlinux "
                    "(build the kernel first)")
    symvers = directory / "Module.symvers"
    if not symvers.is_file():
        raise _fail(directory, "a build tree without Module.symvers (run 'make modules')")
    config = directory / ".config"
    return LocalSource(directory, release, image, config, directory, None,
                       (image, config, symvers))


def _releases(directory: Path) -> list[str]:
    """Releases with both a config in boot/ and a directory in lib/modules/."""
    modules = directory / "lib" / "modules"
    found = [d.name for d in modules.iterdir() if d.is_dir()] if modules.is_dir() else []
    return sorted(r for r in found if (directory / "boot" / f"config-{r}").is_file())


def _headers(directory: Path, release: str) -> Path:
    """usr/src/linux-headers-REL, else where lib/modules/REL/build points: inside DIR
    first (an unpacked package's link is absolute), then on the host."""
    candidates = [directory / "usr" / "src" / f"linux-headers-{release}"]
    build = directory / "lib" / "modules" / release / "build"
    if build.is_symlink():
        target = Path(build.readlink())
        if target.is_absolute():
            candidates += [directory / target.relative_to("/"), target]
        else:
            candidates.append(build.parent / target)
    found = next((c for c in candidates if (c / "Makefile").is_file()), None)
    if found is None:
        raise _fail(directory, f"no kernel headers for {release} (usr/src/linux-headers-"
                    f"{release} or lib/modules/{release}/build with a Makefile)")
    return found


def _unpacked(directory: Path) -> LocalSource:
    releases = _releases(directory)
    if not releases:
        raise _fail(directory, f"neither a build tree ({BUILD_TREE_FILES}) nor an unpacked "
                    f"kernel ({UNPACKED_FILES})")
    if len(releases) > 1:
        raise _fail(directory, f"holds {len(releases)} kernels ({', '.join(releases)}); "
                    "give a directory with one")
    release = releases[0]
    boot = directory / "boot"
    image = next((p for p in (boot / f"vmlinuz-{release}", boot / f"vmlinux-{release}")
                  if p.is_file()), None)
    if image is None:
        raise _fail(directory, f"no boot/vmlinuz-{release} or boot/vmlinux-{release}")
    config = boot / f"config-{release}"
    modules = directory / "lib" / "modules" / release
    if not (modules / "modules.dep").is_file():
        raise _fail(directory, f"no lib/modules/{release}/modules.dep "
                    f"(run 'depmod -b {directory} {release}')")
    return LocalSource(directory, release, image, config, _headers(directory, release),
                       modules, (image, config, modules / "modules.dep"))


def inspect(directory: Path) -> LocalSource:
    """What the lab takes from DIR, by its layout."""
    if not directory.is_dir():
        raise _fail(directory, "is not a directory")
    if (directory / ".config").is_file() and (directory / "Makefile").is_file():
        return _build_tree(directory)
    return _unpacked(directory)


def content_key(source: LocalSource) -> str:
    """A hash of the files taken and of DIR, whose modules and headers the entry links to."""
    h = hashlib.sha256()
    for part in (BUILDER_VERSION, str(source.directory), source.release,
                 *(p.name for p in source.taken)):
        h.update(part.encode() + b"\0")
    for path in source.taken:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def _install_image(source: LocalSource, boot: Path) -> None:
    vmlinux = boot / f"vmlinux-{source.release}"
    if _is_elf(source.image):
        shutil.copyfile(source.image, vmlinux)
        vmlinux.chmod(0o644)
        return
    vmlinuz = boot / f"vmlinuz-{source.release}"
    shutil.copyfile(source.image, vmlinuz)
    extract_vmlinux(vmlinuz, vmlinux)


def _foreign_includes(makefile: Path, directory: Path) -> dict[str, Path]:
    """Absolute includes of a headers Makefile that exist only inside DIR (an unpacked
    Debian package's headers include /usr/src/linux-headers-REL-common/Makefile)."""
    found = {}
    for target in re.findall(r"^include\s+(/\S+)", makefile.read_text(), re.MULTILINE):
        inside = directory / Path(target).relative_to("/")
        if not Path(target).exists() and inside.exists():
            found[target] = inside
    return found


def _install_headers(source: LocalSource, dest: Path) -> None:
    """dest: the headers themselves, or a directory of links to them whose Makefile
    includes the copies inside DIR."""
    makefile = source.headers / "Makefile"
    includes = {} if source.build_tree else _foreign_includes(makefile, source.directory)
    if not includes:
        dest.symlink_to(source.headers.resolve())
        return
    dest.mkdir()
    for entry in source.headers.iterdir():
        if entry.name != "Makefile":
            (dest / entry.name).symlink_to(entry.resolve())
    text = makefile.read_text()
    for target, inside in includes.items():
        text = text.replace(f"include {target}", f"include {inside}")
    (dest / "Makefile").write_text(text)


def _install_modules(source: LocalSource, stage: Path) -> None:
    dest = stage / "lib" / "modules" / source.release
    if source.modules is not None:
        dest.parent.mkdir(parents=True)
        dest.symlink_to(source.modules.resolve())
        return
    run(["make", "-C", source.directory, "modules_install", f"INSTALL_MOD_PATH={stage}"],
        timeout=MODULES_INSTALL_TIMEOUT)
    if not (dest / "modules.dep").is_file():
        raise _fail(source.directory, f"make modules_install wrote no {dest}/modules.dep")


def _stage(source: LocalSource, stage: Path, key: str) -> None:
    boot = stage / "boot"
    boot.mkdir(parents=True)
    _install_image(source, boot)
    shutil.copyfile(source.config, boot / f"config-{source.release}")
    _install_modules(source, stage)
    headers = stage / "usr" / "src" / f"linux-headers-{source.release}"
    headers.parent.mkdir(parents=True)
    _install_headers(source, headers)
    modules = stage / "lib" / "modules" / source.release
    (stage / "vermagic").write_text(read_vermagic(modules, source.release) + "\n")
    (stage / "hplab-kernel.json").write_text(json.dumps(
        {"spec": f"{LOCAL}{source.directory}", "release": source.release,
         "version": f"local-{key}", "source": str(source.directory),
         "image": str(source.image), "headers": str(source.headers)}, indent=1))


def entry(cache: Path, release: str, key: str) -> CacheEntry:
    """<cache>/kernels/local-<release>-<key>/: the staged kernel, then hplab-kernel.json."""
    return CacheEntry(cache, "kernels", f"local-{release}-{key}", marker="hplab-kernel.json",
                      lock=f".local-{key}.lock")


def prepare(spec: str, cache: Path, *, offline: bool = False) -> Kernel:
    """The kernel in `local:DIR`, checked and taken into the cache once per content;
    `offline`: only taken from the cache (NotCached when absent)."""
    source = inspect(Path(spec.removeprefix(LOCAL)).expanduser().absolute())
    kconfig.check(source.config, f"{source.release} ({source.directory})")
    key = content_key(source)
    cached = entry(cache, source.release, key)
    if offline:
        root = cached.require(f"kernel {spec} ({source.release})")
    else:
        root = cached.build(lambda stage: _stage(source, stage, key))
    return Kernel(spec=spec, release=source.release, package_version=f"local-{key}", root=root)
