"""Busybox initramfs trees and their archives, shared by every image kind: busybox with
its applets, the kernel's modules in load order, the init script, and the gzipped newc
cpio archive a tree is packed into."""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
import subprocess
from pathlib import Path

from lab.build.kernel import Kernel
from lab.errors import BuildError
from lab.shell import run

BUSYBOX = Path("/bin/busybox")


def module_order(kernel: Kernel, names: tuple[str, ...]) -> list[str]:
    """Module paths (relative to the modules dir) in load order, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (kernel.modules_dir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()
        by_name[re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", Path(target).name)] = target
    builtin_list = kernel.modules_dir / "modules.builtin"
    builtin = builtin_list.read_text() if builtin_list.exists() else ""
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in names:
        if name in by_name:
            visit(by_name[name])
        elif f"/{name}.ko" not in builtin:
            raise BuildError(f"kernel {kernel.release}: module {name} is neither built in "
                             "nor in modules.dep")
    return order


def _copy_module(src: Path, dest: Path) -> None:
    """Copy a module, decompressed: busybox insmod takes plain .ko files."""
    data = src.read_bytes()
    if src.suffix == ".xz":
        data = lzma.decompress(data)
    elif src.suffix == ".gz":
        data = gzip.decompress(data)
    elif src.suffix == ".zst":
        data = subprocess.run(["zstd", "-dc", str(src)], capture_output=True,
                              check=True).stdout
    dest.write_bytes(data)


def pack_cpio(tree: Path, out: Path) -> None:
    """A gzipped newc archive of `tree`, every file owned by root."""
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    listing = "\n".join([".", *files]) + "\n"
    proc = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=tree,
                          input=listing.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"cpio of {tree} failed: {proc.stderr.decode().strip()}")
    out.write_bytes(gzip.compress(proc.stdout, compresslevel=6))


def install_busybox(root: Path) -> None:
    """busybox at /bin/busybox with a symlink for every applet."""
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "root", "tmp",
              "run", "lib/modules", "mnt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = run([BUSYBOX, "--list-full"]).split()
    for applet in applets:
        link = root / applet
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")


def install_modules(kernel: Kernel, names: tuple[str, ...], root: Path) -> None:
    """Decompressed modules in /lib/modules and their load order in hplab.order."""
    loaded = []
    for rel in module_order(kernel, names):
        name = re.sub(r"\.(xz|gz|zst)$", "", Path(rel).name)
        _copy_module(kernel.modules_dir / rel, root / "lib" / "modules" / name)
        loaded.append(name)
    (root / "lib" / "modules" / "hplab.order").write_text("\n".join(loaded) + "\n")


def write_init(root: Path, script: str) -> None:
    (root / "init").write_text(script)
    (root / "init").chmod(0o755)
