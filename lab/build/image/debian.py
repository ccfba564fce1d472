"""The `debian` guest image: a debootstrap minbase root filesystem on a qcow2 base.

Built without loop mounts: debootstrap into a directory, the kernel's modules copied
in, the system configured for a lab guest, `mkfs.ext4 -d` into a raw file and
`qemu-img convert` to the qcow2 base that every VM reaches through its own overlay.
A tiny busybox initramfs loads virtio_pci, virtio_net, virtio_blk and ext4, sets the
network statically (QEMU user networking always gives 10.0.2.15, so nothing waits for
DHCP or udev), copies the per-VM data (authorized key, hostname, a fresh machine id)
into the VM's overlay and switches root to systemd, which prints the ready mark on the
console once sshd listens.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from lab.build import apt
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

BUILDER_VERSION = "2"
DEBOOTSTRAP_TIMEOUT = 1800.0
PACKAGES = ("openssh-server", "python3", "kmod", "procps", "iproute2", "systemd",
            "systemd-sysv", "udev", "netbase")
# ext4 wants crc32c; virtio_net so that stage 1 sets the address before systemd runs
ROOT_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "crc32c_generic", "ext4")
HEADROOM = 1024**3  # free space in the guest's root filesystem
# Nothing a lab guest needs; on one TCG vCPU each costs the boot time.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer",
                "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
                "systemd-tmpfiles-clean.timer", "getty@tty1.service", "systemd-pstore.service",
                "remote-fs.target", "getty-static.service", "serial-getty@ttyS0.service",
                "systemd-binfmt.service", "modprobe@drm.service", "modprobe@dm_mod.service",
                # no hugetlbfs mounted behind the tests' back (as in minimal): tools mount
                # the page size they need where they expect it
                "dev-hugepages.mount")

INIT = """#!/bin/sh
# hplab stage 1: mount the VM's root disk, give it the per-VM data and the network
# (QEMU user networking always gives 10.0.2.15), hand over to systemd.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "{booted}" > /dev/console
fail() { echo "hplab-init: $*" > /dev/console; poweroff -f; }
for m in $(cat /lib/modules/hplab.order); do
    insmod "/lib/modules/$m" || echo "hplab-init: insmod $m failed"
done
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
n=0
while [ ! -b /dev/vda ]; do
    n=$((n + 1)); [ $n -gt 200 ] && fail "no root disk /dev/vda after 20s"
    sleep 0.1
done
mkdir -p /newroot
mount -t ext4 -o rw,relatime /dev/vda /newroot || fail "cannot mount /dev/vda"
cp /etc/hostname /newroot/etc/hostname
mkdir -p /newroot/root/.ssh
chmod 700 /newroot/root /newroot/root/.ssh
cp /root/.ssh/authorized_keys /newroot/root/.ssh/authorized_keys
chmod 600 /newroot/root/.ssh/authorized_keys
if [ ! -s /newroot/etc/machine-id ]; then
    tr -d - < /proc/sys/kernel/random/uuid > /newroot/etc/machine-id
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
""".replace("{booted}", BOOTED_MARK)

READY_UNIT = """[Unit]
Description=hplab readiness mark on the console once sshd listens
DefaultDependencies=no
After=ssh.service
Requires=ssh.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{ready}" > /dev/console'

[Install]
WantedBy=multi-user.target
""".replace("{ready}", READY_MARK)

# sshd needs only the root filesystem (mounted read-write by stage 1), the network (set
# by stage 1) and the journal socket: starting it ahead of basic.target halves the time
# to SSH under TCG. The config test before every start is dropped, the image's is fixed.
SSH_DROPIN = """[Unit]
DefaultDependencies=no
After=systemd-journald.socket
Conflicts=shutdown.target
Before=shutdown.target

[Service]
ExecStartPre=
"""

SSHD_CONFIG = """HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
"""

FSTAB = "/dev/vda / ext4 rw,relatime 0 0\n"


def image_key(kernel: Kernel, suite: str) -> str:
    """Everything that shapes the image: suite, packages, kernel, scripts, busybox."""
    return digest(BUILDER_VERSION, "debian", suite, ",".join(PACKAGES),
                  ",".join(ROOT_MODULES), kernel.release, kernel.package_version, INIT,
                  READY_UNIT, SSH_DROPIN, SSHD_CONFIG, FSTAB, ",".join(MASKED_UNITS),
                  str(HEADROOM),
                  file_digest(BUSYBOX))


def debootstrap(suite: str, mirror: str, root: Path) -> None:
    run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", suite, root,
         mirror], timeout=DEBOOTSTRAP_TIMEOUT)


def install_kernel_modules(kernel: Kernel, root: Path) -> None:
    """The kernel's whole module tree, hard-linked from the cache where possible."""
    dest = root / "usr" / "lib" / "modules" / kernel.release
    if not (root / "lib").is_symlink():
        dest = root / "lib" / "modules" / kernel.release

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(kernel.modules_dir, dest, copy_function=link_or_copy,
                    ignore=lambda _dir, names: [n for n in names if n in ("build", "source")])


def _mask(root: Path, unit: str) -> None:
    system = root / "etc" / "systemd" / "system"
    for wants in system.glob("*.wants"):
        link = wants / unit  # links point into the guest's tree: never resolve them here
        if link.is_symlink():
            link.unlink()
    target = system / unit
    target.unlink(missing_ok=True)
    target.symlink_to("/dev/null")


def configure(root: Path) -> None:
    """Turn the bootstrapped tree into a lab guest (network, sshd, no timers, clean ids)."""
    etc = root / "etc"
    (etc / "fstab").write_text(FSTAB)
    (etc / "hostname").write_text("hplab\n")
    (etc / "machine-id").write_text("")
    (root / "var" / "lib" / "dbus").mkdir(parents=True, exist_ok=True)
    (root / "var" / "lib" / "dbus" / "machine-id").unlink(missing_ok=True)
    network = etc / "systemd" / "network"
    network.mkdir(parents=True, exist_ok=True)
    (network / "99-default.link").unlink(missing_ok=True)
    (network / "99-default.link").symlink_to("/dev/null")  # keep the kernel's eth0
    system = etc / "systemd" / "system"
    (system / "hplab-ready.service").write_text(READY_UNIT)
    wants = system / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "hplab-ready.service").symlink_to("/etc/systemd/system/hplab-ready.service")
    for unit in MASKED_UNITS:
        _mask(root, unit)
    (etc / "ssh" / "sshd_config.d" / "hplab.conf").write_text(SSHD_CONFIG)
    (system / "ssh.service.d").mkdir(exist_ok=True)
    (system / "ssh.service.d" / "hplab.conf").write_text(SSH_DROPIN)
    for archive in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        archive.unlink()


def generate_host_key(root: Path) -> str:
    """A fresh ed25519 host key (the only one sshd offers); returns the line to pin."""
    ssh = root / "etc" / "ssh"
    for old in ssh.glob("ssh_host_*"):
        old.unlink()
    key = ssh / "ssh_host_ed25519_key"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hplab-debian", "-f", key])
    public = key.with_name(key.name + ".pub").read_text().split()
    if len(public) < 2 or public[0] != "ssh-ed25519":
        raise BuildError(f"ssh-keygen wrote no ed25519 public key next to {key}")
    return " ".join(public[:2])


def disk_bytes(used: int) -> int:
    """Filesystem size for `used` bytes of files: a quarter on top plus headroom, MiB-aligned."""
    size = used + used // 4 + HEADROOM
    mib = 1024**2
    return (size + mib - 1) // mib * mib


def make_disk(root: Path, out: Path, scratch: Path) -> None:
    """ext4 of `root` (mkfs.ext4 -d, no loop mount) converted to a qcow2 file."""
    used = int(run(["du", "-sb", "--apparent-size", root]).split()[0])
    raw = scratch / "root.raw"
    with raw.open("wb") as handle:
        handle.truncate(disk_bytes(used))
    run(["mkfs.ext4", "-q", "-F", "-L", "hplab-root", "-d", root, raw])
    run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, out])
    raw.unlink()
    out.chmod(0o644)


def build_initramfs(kernel: Kernel, out: Path, scratch: Path) -> None:
    tree = scratch / "initramfs"
    install_busybox(tree)
    (tree / "etc").mkdir(exist_ok=True)
    install_modules(kernel, ROOT_MODULES, tree)
    write_init(tree, INIT)
    pack_cpio(tree, out)
    out.chmod(0o644)


def mounts_below(path: Path, mounts: str) -> list[Path]:
    """Mount points under `path` in a /proc/mounts text, deepest first."""
    prefix = str(path).rstrip("/") + "/"
    points = [Path(line.split()[1].replace("\\040", " ")) for line in mounts.splitlines()
              if len(line.split()) > 1 and line.split()[1].startswith(prefix)]
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def _unmount_below(path: Path) -> None:
    """Undo mounts a failed debootstrap left in its target, before the tree is deleted."""
    for point in mounts_below(path.resolve(), Path("/proc/mounts").read_text()):
        run(["umount", "-l", point])


def _build_into(kernel: Kernel, suite: str, mirror: str, out_dir: Path) -> str:
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".debian-build-") as tmp:
        scratch = Path(tmp)
        root = scratch / "root"
        try:
            debootstrap(suite, mirror, root)
        finally:
            _unmount_below(root)
        install_kernel_modules(kernel, root)
        configure(root)
        host_key = generate_host_key(root)
        make_disk(root, out_dir / "root.qcow2", scratch)
        build_initramfs(kernel, out_dir / "initramfs.cpio.gz", scratch)
    return host_key


def entry(cache: Path, key: str) -> CacheEntry:
    """<cache>/images/debian-<key>/: root.qcow2, initramfs.cpio.gz, then image.json."""
    return CacheEntry(cache, "images", f"debian-{key}", marker="image.json")


def build(kernel: Kernel, cache: Path, etc_apt: Path = apt.APT_ETC, *,
          offline: bool = False) -> Image:
    """The debian image for `kernel`, built once per key and then taken from the cache;
    `offline`: only taken from the cache (NotCached when absent)."""
    mirror, suite = apt.debian_archive(etc_apt)
    key = image_key(kernel, suite)
    cached = entry(cache, key)
    if offline:
        out_dir = cached.require(f"image debian ({suite}) for kernel {kernel.release}")
    else:
        def build_into(out: Path) -> None:
            out.mkdir()
            out.chmod(0o755)
            host_key = _build_into(kernel, suite, mirror, out)
            (out / "image.json").write_text(json.dumps(
                {"kind": "debian", "kernel": kernel.release, "suite": suite,
                 "packages": list(PACKAGES), "host_key": host_key}, indent=1))
        out_dir = cached.build(build_into)
    info = json.loads((out_dir / "image.json").read_text())
    return Image(kind="debian", key=key, path=out_dir / "initramfs.cpio.gz",
                 host_key=info["host_key"], disk=out_dir / "root.qcow2")
