"""The files one VM boots from a cached image: its initrd, which is the image's
initramfs with a small second cpio archive appended carrying the lab's authorized key
and the node's hostname (so the cached image never changes between runs), and, for a
kind with a root disk, a qcow2 overlay on the image's base."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lab.build.image.guestimage import Image
from lab.build.image.initramfs import pack_cpio
from lab.shell import run


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
        pack_cpio(tree, overlay)
        with out.open("wb") as dest:
            dest.write(image.path.read_bytes())
            dest.write(overlay.read_bytes())
    out.chmod(0o644)
    return out
