"""The `minimal` guest image: a busybox + dropbear initramfs carrying the kernel's virtio
modules, the whole guest in one archive, built once per key and then taken from the cache.

The SSH host key is generated at build time and pinned by the lab.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from lab.build.image.guestimage import BOOTED_MARK, READY_MARK, Image
from lab.build.image.initramfs import (
    BUSYBOX,
    install_busybox,
    install_modules,
    pack_cpio,
    write_init,
)
from lab.build.kernel import Kernel
from lab.cache import CacheEntry
from lab.errors import BuildError
from lab.shell import digest, file_digest, run

BUILDER_VERSION = "1"
DROPBEAR = Path("/usr/sbin/dropbear")
DROPBEARKEY = Path("/usr/bin/dropbearkey")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
GUEST_MODULES = ("virtio_pci", "virtio_net")

INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "{booted}" > /dev/console
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
hostname "$(cat /etc/hostname)"
for m in $(cat /lib/modules/hplab.order); do
    insmod "/lib/modules/$m" || echo "hplab-init: insmod $m failed"
done
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
/usr/sbin/dropbear -r /etc/dropbear/dropbear_ed25519_host_key -s -p 22 -P /run/dropbear.pid
echo 7 > /proc/sys/kernel/printk
echo "{ready}" > /dev/console
exec /bin/busybox init
""".replace("{ready}", READY_MARK).replace("{booted}", BOOTED_MARK)

INITTAB = "::ctrlaltdel:/bin/poweroff -f\n::shutdown:/bin/sync\n"


def _libraries(binary: Path) -> list[Path]:
    out = run(["ldd", binary])
    libs = re.findall(r"(/\S+) \(0x", out)
    return [Path(p) for p in libs]


def _install_binary(binary: Path, root: Path, dest: str) -> None:
    target = root / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, target)
    for lib in _libraries(binary):
        lib_target = root / str(lib).lstrip("/")
        lib_target.parent.mkdir(parents=True, exist_ok=True)
        if not lib_target.exists():
            shutil.copy2(lib.resolve(), lib_target)


def image_key(kernel: Kernel) -> str:
    inputs = [BUILDER_VERSION, "minimal", kernel.release, kernel.package_version, INIT, INITTAB,
              ",".join(GUEST_MODULES)]
    inputs += [file_digest(p) for p in (BUSYBOX, DROPBEAR, SFTP_SERVER)]
    return digest(*inputs)


def _build_minimal_tree(kernel: Kernel, root: Path) -> str:
    install_busybox(root)
    for d in ("etc/dropbear", "var/log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    _install_binary(DROPBEAR, root, "/usr/sbin/dropbear")
    _install_binary(SFTP_SERVER, root, "/usr/lib/sftp-server")
    install_modules(kernel, GUEST_MODULES, root)
    write_init(root, INIT)
    (root / "etc" / "inittab").write_text(INITTAB)
    (root / "etc" / "passwd").write_text("root:*:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "shells").write_text("/bin/sh\n")
    (root / "etc" / "hostname").write_text("hplab\n")
    (root / "root").chmod(0o700)
    host_key = root / "etc" / "dropbear" / "dropbear_ed25519_host_key"
    run([DROPBEARKEY, "-t", "ed25519", "-f", host_key])
    public = run([DROPBEARKEY, "-y", "-f", host_key])
    line = next((ln for ln in public.splitlines() if ln.startswith("ssh-ed25519 ")), None)
    if line is None:
        raise BuildError(f"dropbearkey printed no ed25519 public key for {host_key}")
    return " ".join(line.split()[:2])


def entry(cache: Path, key: str) -> CacheEntry:
    """<cache>/images/minimal-<key>/: initramfs.cpio.gz, then image.json."""
    return CacheEntry(cache, "images", f"minimal-{key}", marker="image.json")


def build(kernel: Kernel, cache: Path, *, offline: bool = False) -> Image:
    """The minimal image for `kernel`, built once per key and then taken from the cache;
    `offline`: only taken from the cache (NotCached when absent)."""
    key = image_key(kernel)
    cached = entry(cache, key)
    if offline:
        out_dir = cached.require(f"image minimal for kernel {kernel.release}")
    else:
        def build_into(out: Path) -> None:
            out.mkdir()
            with tempfile.TemporaryDirectory() as tmp:
                tree = Path(tmp) / "root"
                host_key = _build_minimal_tree(kernel, tree)
                pack_cpio(tree, out / "initramfs.cpio.gz")
            (out / "image.json").write_text(json.dumps(
                {"kind": "minimal", "kernel": kernel.release, "host_key": host_key}, indent=1))
        out_dir = cached.build(build_into)
    info = json.loads((out_dir / "image.json").read_text())
    return Image(kind="minimal", key=key, path=out_dir / "initramfs.cpio.gz",
                 host_key=info["host_key"])
