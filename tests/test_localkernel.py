"""Local kernels: an unpacked kernel or a build tree taken into the cache as a lab Kernel."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from lab.build import kconfig, kernelfetch, localkernel
from lab.errors import BuildError

REL = "6.1.0-99-hplab"
ELF = b"\x7fELF" + bytes(range(256)) * 16
MODULES_DEP = "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko\n"


def bzimage(payload: bytes) -> bytes:
    setup = bytearray(4 * 512)
    setup[0x1F1] = 3
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 0, len(payload))
    return bytes(setup) + payload


def config() -> str:
    return "".join(f"{need.option}=y\n" for need in kconfig.NEEDS)


@pytest.fixture(autouse=True)
def vermagic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake modules are no ELF objects modinfo could read."""
    monkeypatch.setattr(localkernel, "read_vermagic",
                        lambda modules, release: f"{release} SMP mod_unload")


def unpacked(root: Path, release: str = REL) -> Path:
    """An unpacked Debian kernel: its headers include /usr/src/...-common as packaged."""
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{release}").write_bytes(bzimage(gzip.compress(ELF)))
    (root / "boot" / f"config-{release}").write_text(config())
    modules = root / "lib" / "modules" / release
    (modules / "kernel" / "drivers" / "net").mkdir(parents=True)
    (modules / "kernel" / "drivers" / "net" / "virtio_net.ko").write_bytes(b"ko")
    (modules / "modules.dep").write_text(MODULES_DEP)
    (modules / "build").symlink_to(f"/usr/src/linux-headers-{release}")
    common = f"/usr/src/linux-headers-{release}-hplab-test-common"
    headers = root / "usr" / "src" / f"linux-headers-{release}"
    (headers / "include").mkdir(parents=True)
    (headers / "Module.symvers").write_text("")
    (headers / "Makefile").write_text(f"include {common}/Makefile\n")
    (root / common.lstrip("/")).mkdir(parents=True)
    (root / common.lstrip("/") / "Makefile").write_text("all:\n")
    return root


def build_tree(root: Path, release: str = "6.13.0-rc1-hplab+") -> Path:
    """A kernel build tree whose Makefile installs its modules as the kernel's does."""
    (root / "include" / "config").mkdir(parents=True)
    (root / "include" / "config" / "kernel.release").write_text(release + "\n")
    (root / ".config").write_text(config())
    (root / "vmlinux").write_bytes(ELF)
    (root / "Module.symvers").write_text("")
    mods = f"$(INSTALL_MOD_PATH)/lib/modules/{release}"
    (root / "Makefile").write_text(
        f"modules_install:\n\tmkdir -p {mods}/kernel\n\ttouch {mods}/kernel/virtio_net.ko\n"
        f"\techo 'kernel/virtio_net.ko:' > {mods}/modules.dep\n")
    return root


def test_unpacked_kernel_becomes_a_lab_kernel(tmp_path: Path) -> None:
    source = unpacked(tmp_path / "k")
    kernel = kernelfetch.fetch(f"local:{source}", tmp_path / "cache")
    assert kernel.release == REL and kernel.spec == f"local:{source}"
    assert kernel.package_version.startswith("local-")
    assert kernel.root.parent == tmp_path / "cache" / "kernels"
    assert kernel.vmlinux.read_bytes() == ELF
    assert kernel.probe_image == kernel.vmlinuz
    assert kernel.config.read_text() == config()
    assert kernel.modules_dir.resolve() == source / "lib" / "modules" / REL
    assert (kernel.modules_dir / "modules.dep").read_text() == MODULES_DEP
    assert kernel.vermagic == f"{REL} SMP mod_unload"


def test_unpacked_headers_include_the_common_headers_inside_dir(tmp_path: Path) -> None:
    source = unpacked(tmp_path / "k")
    kernel = localkernel.prepare(f"local:{source}", tmp_path / "cache")
    packaged = source / "usr" / "src" / f"linux-headers-{REL}"
    assert (kernel.headers_dir / "Makefile").read_text() == (
        f"include {source}/usr/src/linux-headers-{REL}-hplab-test-common/Makefile\n")
    assert (kernel.headers_dir / "include").resolve() == packaged / "include"
    assert (kernel.headers_dir / "Module.symvers").resolve() == packaged / "Module.symvers"


def test_headers_behind_the_build_link(tmp_path: Path) -> None:
    source = unpacked(tmp_path / "k")
    headers = source / "usr" / "src" / f"linux-headers-{REL}"
    elsewhere = source / "opt" / "headers"
    elsewhere.parent.mkdir()
    headers.rename(elsewhere)
    (elsewhere / "Makefile").write_text("all:\n")
    link = source / "lib" / "modules" / REL / "build"
    link.unlink()
    link.symlink_to("/opt/headers")  # absolute, as installed: found inside DIR
    kernel = localkernel.prepare(f"local:{source}", tmp_path / "cache")
    assert kernel.headers_dir.resolve() == elsewhere


def test_taken_once_per_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = unpacked(tmp_path / "k")
    first = localkernel.prepare(f"local:{source}", tmp_path / "cache")

    def no_staging(*args: object) -> None:
        raise AssertionError("staged again")

    monkeypatch.setattr(localkernel, "_stage", no_staging)
    assert localkernel.prepare(f"local:{source}", tmp_path / "cache") == first
    monkeypatch.undo()
    monkeypatch.setattr(localkernel, "read_vermagic", lambda modules, release: "v")
    (source / "boot" / f"config-{REL}").write_text(config() + "CONFIG_EXTRA=y\n")
    second = localkernel.prepare(f"local:{source}", tmp_path / "cache")
    assert second.root != first.root and second.package_version != first.package_version


def test_build_tree_installs_its_modules_and_is_its_own_headers(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "linux")
    kernel = localkernel.prepare(f"local:{tree}", tmp_path / "cache")
    assert kernel.release == "6.13.0-rc1-hplab+"
    assert kernel.vmlinux.read_bytes() == ELF
    assert kernel.probe_image == kernel.vmlinux  # no bzImage in this tree
    assert kernel.headers_dir.resolve() == tree
    assert not kernel.modules_dir.is_symlink()
    assert (kernel.modules_dir / "modules.dep").read_text() == "kernel/virtio_net.ko:\n"


def test_build_tree_prefers_the_bzimage(tmp_path: Path) -> None:
    tree = build_tree(tmp_path / "linux")
    (tree / "arch" / "x86" / "boot").mkdir(parents=True)
    (tree / "arch" / "x86" / "boot" / "bzImage").write_bytes(bzimage(gzip.compress(ELF[:-1])))
    kernel = localkernel.prepare(f"local:{tree}", tmp_path / "cache")
    assert kernel.vmlinux.read_bytes() == ELF[:-1]
    assert kernel.probe_image == kernel.vmlinuz


def test_config_lacking_what_the_lab_needs_is_refused_before_anything_is_taken(
        tmp_path: Path) -> None:
    source = unpacked(tmp_path / "k")
    (source / "boot" / f"config-{REL}").write_text(config().replace("CONFIG_HUGETLBFS=y\n", ""))
    with pytest.raises(BuildError, match=rf"kernel {REL} \({source}\): config .* lacks what the "
                       r"lab needs: CONFIG_HUGETLBFS \(hugetlbfs\)$"):
        localkernel.prepare(f"local:{source}", tmp_path / "cache")
    assert not (tmp_path / "cache" / "kernels").exists()


def test_relative_directory_is_taken_from_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    unpacked(tmp_path / "k")
    monkeypatch.chdir(tmp_path)
    kernel = kernelfetch.fetch("local:k", tmp_path / "cache")
    assert kernel.modules_dir.resolve() == tmp_path / "k" / "lib" / "modules" / REL


def broken(case: str, root: Path) -> Path:
    if case == "not a directory":
        root.write_text("")
    elif case == "empty":
        root.mkdir()
    elif case == "two kernels":
        unpacked(root)
        (root / "lib" / "modules" / "6.1.0-58-amd64").mkdir()
        (root / "boot" / "config-6.1.0-58-amd64").write_text(config())
    elif case == "no modules.dep":
        (unpacked(root) / "lib" / "modules" / REL / "modules.dep").unlink()
    elif case == "no kernel image":
        (unpacked(root) / "boot" / f"vmlinuz-{REL}").unlink()
    elif case == "no headers":
        source = unpacked(root)
        (source / "usr" / "src" / f"linux-headers-{REL}" / "Makefile").unlink()
    elif case == "unbuilt tree":
        (build_tree(root) / "include" / "config" / "kernel.release").unlink()
    elif case == "tree without Module.symvers":
        (build_tree(root) / "Module.symvers").unlink()
    return root


@pytest.mark.parametrize(("case", "message"), [
    ("not a directory", "is not a directory"),
    ("empty", "neither a build tree (.config, include/config/kernel.release, vmlinux or "
              "arch/x86/boot/bzImage) nor an unpacked kernel (boot/vmlinuz-REL or "
              "boot/vmlinux-REL, boot/config-REL, lib/modules/REL)"),
    ("two kernels", "holds 2 kernels (6.1.0-58-amd64, 6.1.0-99-hplab); give a directory with one"),
    ("no modules.dep", f"no lib/modules/{REL}/modules.dep (run 'depmod -b "),
    ("no kernel image", f"no boot/vmlinuz-{REL} or boot/vmlinux-{REL}"),
    ("no headers", f"no kernel headers for {REL} (usr/src/linux-headers-{REL} or "
                   f"lib/modules/{REL}/build with a Makefile)"),
    ("unbuilt tree", "a build tree without include/config/kernel.release (build the kernel "
                     "first)"),
    ("tree without Module.symvers", "a build tree without Module.symvers (run 'make modules')"),
])
def test_unusable_directory_gets_one_line_naming_it(case: str, message: str,
                                                   tmp_path: Path) -> None:
    source = broken(case, tmp_path / "k")
    with pytest.raises(BuildError) as info:
        localkernel.prepare(f"local:{source}", tmp_path / "cache")
    text = str(info.value)
    assert text.startswith(f"local kernel {source}: ") and message in text and "\n" not in text


def test_same_kernel_in_two_directories_is_two_entries(tmp_path: Path) -> None:
    """An entry links to its DIR's modules and headers: a copy elsewhere is its own entry."""
    one = localkernel.prepare(f"local:{unpacked(tmp_path / 'a')}", tmp_path / "cache")
    two = localkernel.prepare(f"local:{unpacked(tmp_path / 'b')}", tmp_path / "cache")
    assert one.root != two.root
    assert two.modules_dir.resolve() == tmp_path / "b" / "lib" / "modules" / REL
