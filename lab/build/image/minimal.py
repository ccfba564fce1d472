"""Guest images, cached by a key made of everything that shapes them.

`minimal` is a busybox + dropbear initramfs carrying the kernel's virtio modules.
`debian` is a debootstrap minbase root filesystem (systemd, OpenSSH, python3) with the
kernel's modules, in a qcow2 base that every VM reaches through its own overlay; a tiny
busybox initramfs loads virtio_blk and ext4, mounts /dev/vda and switches to it.

The SSH host key is generated at build time and pinned by the lab. Per-VM data (the
lab's authorized key, the hostname) goes into a small second cpio archive that is
appended to the cached initramfs, so the cached image never changes between runs; the
debian initramfs copies it into the VM's overlay before it switches root.
"""

from __future__ import annotations

import gzip
import json
import lzma
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab.errors import BuildError
from lab.build.kernel import Kernel
from lab.shell import digest, file_digest, locked, run

BUILDER_VERSION = "1"
BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
DROPBEARKEY = Path("/usr/bin/dropbearkey")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
GUEST_MODULES = ("virtio_pci", "virtio_net")
READY_MARK = "hplab-init: ready"  # on the console once sshd/dropbear listens
BOOTED_MARK = "hplab-init: booted"  # on the console as soon as the first init runs

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


@dataclass(frozen=True)
class Image:
    """A built guest image: the boot files and the SSH host key to pin."""

    kind: str
    key: str
    path: Path  # initramfs: the whole guest (minimal) or the root-mounting stage (debian)
    host_key: str  # "ssh-ed25519 AAAA..."
    disk: Path | None = None  # qcow2 base of the root filesystem (debian)

    def host_key_parts(self) -> tuple[str, str]:
        kind, blob = self.host_key.split()[:2]
        return kind, blob


def _module_order(kernel: Kernel, names: tuple[str, ...]) -> list[str]:
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


def _pack_cpio(tree: Path, out: Path) -> None:
    """A gzipped newc archive of `tree`, every file owned by root."""
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    listing = "\n".join([".", *files]) + "\n"
    proc = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=tree,
                          input=listing.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"cpio of {tree} failed: {proc.stderr.decode().strip()}")
    out.write_bytes(gzip.compress(proc.stdout, compresslevel=6))


def minimal_key(kernel: Kernel) -> str:
    inputs = [BUILDER_VERSION, "minimal", kernel.release, kernel.package_version, INIT, INITTAB,
              ",".join(GUEST_MODULES)]
    inputs += [file_digest(p) for p in (BUSYBOX, DROPBEAR, SFTP_SERVER)]
    return digest(*inputs)


def _install_busybox(root: Path) -> None:
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


def _install_modules(kernel: Kernel, names: tuple[str, ...], root: Path) -> None:
    """Decompressed modules in /lib/modules and their load order in hplab.order."""
    loaded = []
    for rel in _module_order(kernel, names):
        name = re.sub(r"\.(xz|gz|zst)$", "", Path(rel).name)
        _copy_module(kernel.modules_dir / rel, root / "lib" / "modules" / name)
        loaded.append(name)
    (root / "lib" / "modules" / "hplab.order").write_text("\n".join(loaded) + "\n")


def _write_init(root: Path, script: str) -> None:
    (root / "init").write_text(script)
    (root / "init").chmod(0o755)


def _build_minimal_tree(kernel: Kernel, root: Path) -> str:
    _install_busybox(root)
    for d in ("etc/dropbear", "var/log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    _install_binary(DROPBEAR, root, "/usr/sbin/dropbear")
    _install_binary(SFTP_SERVER, root, "/usr/lib/sftp-server")
    _install_modules(kernel, GUEST_MODULES, root)
    _write_init(root, INIT)
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


def build_minimal(kernel: Kernel, cache: Path) -> Image:
    key = minimal_key(kernel)
    out_dir = cache / "images" / f"minimal-{key}"
    meta = out_dir / "image.json"
    with locked(cache / "images" / f".minimal-{key}.lock"):
        if not meta.exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                tree = Path(tmp) / "root"
                host_key = _build_minimal_tree(kernel, tree)
                _pack_cpio(tree, out_dir / "initramfs.cpio.gz")
            meta.write_text(json.dumps({"kind": "minimal", "kernel": kernel.release,
                                        "host_key": host_key}, indent=1))
    info = json.loads(meta.read_text())
    return Image(kind="minimal", key=key, path=out_dir / "initramfs.cpio.gz",
                 host_key=info["host_key"])


def build(kind: str, kernel: Kernel, cache: Path) -> Image:
    if kind == "minimal":
        return build_minimal(kernel, cache)
    if kind == "debian":
        from lab.build.image import debian

        return debian.build(kernel, cache)
    raise BuildError(f"unknown image kind {kind!r} (known: minimal, debian)")


def node_disk(image: Image, out: Path) -> Path | None:
    """A qcow2 overlay on the image's root disk for one VM, or None for diskless kinds."""
    if image.disk is None:
        return None
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image.disk, out])
    out.chmod(0o644)
    return out


def node_initrd(image: Image, out: Path, *, hostname: str, authorized_key: str) -> Path:
    """The image plus a per-VM archive with the lab's key and the node's hostname."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        ssh = tree / "root" / ".ssh"
        ssh.mkdir(parents=True)
        (tree / "root").chmod(0o700)
        ssh.chmod(0o700)
        (ssh / "authorized_keys").write_text(authorized_key.strip() + "\n")
        (ssh / "authorized_keys").chmod(0o600)
        (tree / "etc").mkdir()
        (tree / "etc" / "hostname").write_text(hostname + "\n")
        overlay = Path(tmp) / "overlay.cpio.gz"
        _pack_cpio(tree, overlay)
        with out.open("wb") as dest:
            dest.write(image.path.read_bytes())
            dest.write(overlay.read_bytes())
    out.chmod(0o644)
    return out
