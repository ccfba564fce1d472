"""One unpacked kernel, whichever flavour it came from: the `Kernel` record of what a guest
boots and what modules are built against, and the vermagic its modules carry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.errors import BuildError
from lab.shell import run


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


def read_vermagic(modules_dir: Path, release: str) -> str:
    """The vermagic of the kernel's modules (virtio_net's, or any when it is built in)."""
    modules = modules_dir / "kernel"
    sample = next(modules.rglob("virtio_net.ko*"), None) or next(modules.rglob("*.ko*"), None)
    if sample is None:
        raise BuildError(f"kernel {release}: no module under {modules} to read the vermagic of")
    return run(["modinfo", "-F", "vermagic", sample]).strip()

