"""Kernel configs: whether a kernel has what a lab guest needs.

Read from a kernel package's `boot/config-RELEASE` or a build tree's `.config`, before
anything is built or booted with the kernel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lab.errors import BuildError

OPTION = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")


@dataclass(frozen=True)
class Need:
    option: str
    why: str
    modular: bool = False  # =m will do: the image loads it before it is used


# 1 GiB pages on x86_64 need no option beyond HUGETLB_PAGE: gbpages is a CPU flag.
NEEDS = (
    Need("CONFIG_X86_64", "x86_64 guest"),
    Need("CONFIG_PVH", "boot of the vmlinux through its PVH entry"),
    Need("CONFIG_SERIAL_8250_CONSOLE", "console on ttyS0"),
    Need("CONFIG_BLK_DEV_INITRD", "initramfs"),
    Need("CONFIG_RD_GZIP", "gzip initramfs"),
    Need("CONFIG_BINFMT_ELF", "ELF programs"),
    Need("CONFIG_BINFMT_SCRIPT", "the /init script"),
    Need("CONFIG_PROC_FS", "/proc"),
    Need("CONFIG_SYSFS", "/sys"),
    Need("CONFIG_DEVTMPFS", "devtmpfs on /dev"),
    Need("CONFIG_TMPFS", "tmpfs on /run"),
    Need("CONFIG_NET", "network"),
    Need("CONFIG_INET", "SSH over IPv4"),
    Need("CONFIG_VIRTIO_PCI", "virtio devices", modular=True),
    Need("CONFIG_VIRTIO_NET", "virtio network", modular=True),
    Need("CONFIG_VIRTIO_BLK", "virtio root disk", modular=True),
    Need("CONFIG_MODULES", "loadable modules"),
    Need("CONFIG_MODULE_UNLOAD", "module unload"),
    Need("CONFIG_HUGETLBFS", "hugetlbfs"),
    Need("CONFIG_HUGETLB_PAGE", "huge pages"),
)


def parse(text: str) -> dict[str, str]:
    """Options set in a kernel config; an option that is not set is absent."""
    return {m.group(1): m.group(2) for line in text.splitlines() if (m := OPTION.match(line))}


def missing(options: dict[str, str]) -> list[str]:
    """What the config lacks, one entry per option: 'CONFIG_X (why)' or, for an option
    built as a module that must be built in, 'CONFIG_X=m (why; needs =y)'."""
    lacks = []
    for need in NEEDS:
        value = options.get(need.option)
        if value == "y" or (value == "m" and need.modular):
            continue
        if value is None or value == "n":
            lacks.append(f"{need.option} ({need.why})")
        else:
            wanted = "=y or =m" if need.modular else "=y"
            lacks.append(f"{need.option}={value} ({need.why}; needs {wanted})")
    return lacks


def check(config: Path, kernel: str) -> None:
    """Refuse a kernel whose config lacks what the lab needs, naming every missing option."""
    try:
        text = config.read_text(errors="replace")
    except OSError as exc:
        raise BuildError(f"kernel {kernel}: cannot read its config {config}: "
                         f"{exc.strerror}") from None
    lacks = missing(parse(text))
    if lacks:
        raise BuildError(f"kernel {kernel}: config {config} lacks what the lab needs: "
                         f"{', '.join(lacks)}")
