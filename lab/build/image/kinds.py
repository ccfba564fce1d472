"""Guest images by kind, each cached by a key made of everything that shapes it.

`minimal` is a busybox + dropbear initramfs carrying the kernel's virtio modules.
`debian` is a debootstrap minbase root filesystem (systemd, OpenSSH, python3) with the
kernel's modules, in a qcow2 base that every VM reaches through its own overlay; a tiny
busybox initramfs loads virtio_blk and ext4, mounts /dev/vda and switches to it.

The SSH host key is generated at build time and pinned by the lab; per-VM data goes
into each VM's own boot files (lab.build.image.nodefiles).
"""

from __future__ import annotations

from pathlib import Path

from lab.build.image import debian, minimal
from lab.build.image.guestimage import Image
from lab.build.kernel import Kernel
from lab.errors import BuildError


def build(kind: str, kernel: Kernel, cache: Path, *, offline: bool = False) -> Image:
    """The image of `kind` for `kernel`; `offline`: from the cache only (NotCached)."""
    if kind == "minimal":
        return minimal.build(kernel, cache, offline=offline)
    if kind == "debian":
        return debian.build(kernel, cache, offline=offline)
    raise BuildError(f"unknown image kind {kind!r} (known: minimal, debian)")
