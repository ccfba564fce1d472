"""The debug kernel: config check, cache key, output layout and build steps (no kernel build)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lab.build import debugkernel as dk
from lab.build.kernel import Kernel
from lab.cli import main as cli
from lab.errors import BuildError

RELEASE = "6.1.192-hplab-debug-0123abcd"
FRAGMENT = """\
# a comment
CONFIG_KASAN=y
CONFIG_VIRTIO_NET=m
CONFIG_NR_CPUS=8
# CONFIG_MODULE_SIG is not set
"""
MAKEFILE = "# SPDX\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION =\nNAME = x\n"


def test_config_lines_of_both_forms_are_read() -> None:
    assert dk.parse_config(FRAGMENT) == {"CONFIG_KASAN": "y", "CONFIG_VIRTIO_NET": "m",
                                         "CONFIG_NR_CPUS": "8", "CONFIG_MODULE_SIG": "n"}


def test_a_final_config_with_every_option_passes() -> None:
    final = "CONFIG_KASAN=y\nCONFIG_VIRTIO_NET=m\nCONFIG_NR_CPUS=8\nCONFIG_OTHER=y\n"
    dk.check_config(FRAGMENT, final, ".config")  # MODULE_SIG absent counts as not set


def test_an_option_kconfig_dropped_is_named() -> None:
    final = "CONFIG_VIRTIO_NET=m\nCONFIG_NR_CPUS=8\n# CONFIG_KASAN is not set\n"
    with pytest.raises(BuildError, match=r"^/t/\.config: CONFIG_KASAN is n, the fragment "
                                         r"debugkernel.config asks for y"):
        dk.check_config(FRAGMENT, final, "/t/.config")


@pytest.mark.parametrize(("final", "name"), [
    ("CONFIG_KASAN=y\nCONFIG_VIRTIO_NET=y\nCONFIG_NR_CPUS=8\n", "CONFIG_VIRTIO_NET is y"),
    ("CONFIG_KASAN=y\nCONFIG_VIRTIO_NET=m\nCONFIG_NR_CPUS=8\nCONFIG_MODULE_SIG=y\n",
     "CONFIG_MODULE_SIG is y"),
])
def test_a_different_value_is_named(final: str, name: str) -> None:
    with pytest.raises(BuildError, match=name):
        dk.check_config(FRAGMENT, final, ".config")


def test_the_fragment_asks_for_the_debug_options_and_no_debug_info() -> None:
    wanted = dk.parse_config(dk.FRAGMENT.read_text())
    for option in ("KASAN", "KASAN_GENERIC", "PROVE_LOCKING", "DEBUG_VM", "DEBUG_LIST",
                   "DETECT_HUNG_TASK", "SOFTLOCKUP_DETECTOR", "DEBUG_KERNEL", "PVH", "SMP",
                   "MODULES", "MODULE_UNLOAD", "HUGETLBFS", "SYSVIPC", "DEVTMPFS",
                   "BLK_DEV_INITRD", "SERIAL_8250_CONSOLE", "UNIX", "INET", "MAGIC_SYSRQ",
                   "KALLSYMS"):
        assert wanted[f"CONFIG_{option}"] == "y", option
    for option in ("DEBUG_INFO", "DEBUG_INFO_BTF", "MODULE_SIG"):
        assert wanted[f"CONFIG_{option}"] == "n", option
    assert wanted["CONFIG_VIRTIO_NET"] == "m"  # its vermagic is read like a Debian kernel's


def test_the_cache_key_follows_fragment_source_and_recipe() -> None:
    key = dk.cache_key(FRAGMENT, "6.1.192-3")
    assert key == dk.cache_key(FRAGMENT, "6.1.192-3", dk.RECIPE_VERSION)
    assert len({key, dk.cache_key(FRAGMENT + "CONFIG_X=y\n", "6.1.192-3"),
                dk.cache_key(FRAGMENT, "6.1.192-4"),
                dk.cache_key(FRAGMENT, "6.1.192-3", recipe="other")}) == 4


def test_the_release_comes_from_the_makefile_and_the_key() -> None:
    assert dk.kernel_release(MAKEFILE, dk.release_suffix("0123abcd99")) == RELEASE
    extra = MAKEFILE.replace("EXTRAVERSION =", "EXTRAVERSION = -rc1")
    assert dk.kernel_release(extra, "-x") == "6.1.192-rc1-x"
    with pytest.raises(BuildError, match="no VERSION, PATCHLEVEL and SUBLEVEL"):
        dk.kernel_release("VERSION = 6\n", "-x")


def built_tree(root: Path) -> Path:
    """A build tree after `make all` and a root after `make modules_install`."""
    tree = dk.headers_dir(root, RELEASE)
    for name, data in (("arch/x86/boot/bzImage", "bz"), ("vmlinux", "\x7fELF"),
                       (".config", "CONFIG_KASAN=y\n"), ("System.map", "map")):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(data)
    modules = root / "lib" / "modules" / RELEASE
    modules.mkdir(parents=True)
    (modules / "modules.dep").write_text("kernel/drivers/net/virtio_net.ko:\n")
    (modules / "modules.builtin").write_text("")
    (modules / "build").symlink_to(tree)  # what modules_install leaves: an absolute link
    return tree


def test_the_layout_is_what_a_debian_kernel_unpacks_to(tmp_path: Path) -> None:
    root = tmp_path / "KEY"
    tree = built_tree(root)
    dk.install_layout(tree, root, RELEASE, f"{RELEASE} SMP mod_unload ")
    kernel = Kernel(spec="debug:6.1", release=RELEASE, package_version="6.1.192-3", root=root)
    assert kernel.vmlinux.read_text() == "\x7fELF"
    assert kernel.vmlinuz.read_text() == "bz"
    assert (root / "boot" / f"config-{RELEASE}").read_text() == "CONFIG_KASAN=y\n"
    assert kernel.vermagic == f"{RELEASE} SMP mod_unload"
    assert kernel.headers_dir == tree
    for link in ("build", "source"):
        path = kernel.modules_dir / link
        assert not Path(path.readlink()).is_absolute()  # the cache directory may move
        assert path.resolve() == tree.resolve()


def test_a_layout_without_modules_install_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "KEY"
    tree = built_tree(root)
    (root / "lib" / "modules" / RELEASE / "modules.builtin").unlink()
    with pytest.raises(BuildError, match=r"no modules.builtin \(did 'make modules_install'"):
        dk.install_layout(tree, root, RELEASE, "v")


def test_a_missing_build_product_is_named(tmp_path: Path) -> None:
    root = tmp_path / "KEY"
    tree = built_tree(root)
    (tree / "vmlinux").unlink()
    with pytest.raises(BuildError, match=r"no vmlinux after the build"):
        dk.install_layout(tree, root, RELEASE, "v")


def script(tmp_path: Path, body: str) -> list[str | Path]:
    path = tmp_path / "step.py"
    path.write_text(body)
    return [sys.executable, path]


def test_a_step_reports_compiled_objects_while_it_runs(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dk, "PROGRESS_EVERY_S", 0.2)
    argv = script(tmp_path, "import sys, time\n"
                  "for name in ('kernel/fork.o', 'mm/slub.o'):\n"
                  "    print('  CC      ' + name, flush=True)\n"
                  "print('  CC [M]  drivers/net/virtio_net.o', flush=True)\n"
                  "time.sleep(0.7)\n")
    said: list[str] = []
    log = tmp_path / "build.log"
    dk._step(argv, tmp_path, log, "6.1.1-x: compile", said.append)
    assert said
    assert "6.1.1-x: compile: 3 objects compiled, last drivers/net/virtio_net.o" in said[-1]
    assert "  CC      mm/slub.o" in log.read_text()


def test_a_failed_step_names_the_log_and_its_last_lines(tmp_path: Path) -> None:
    argv = script(tmp_path, "import sys\nprint('mm/slub.c:1: error: boom')\nsys.exit(2)\n")
    log = tmp_path / "build.log"
    with pytest.raises(BuildError) as failure:
        dk._step(argv, tmp_path, log, "6.1.1-x: compile", lambda _: None)
    assert str(failure.value).startswith("debug kernel 6.1.1-x: compile failed with exit "
                                         f"status 2; full log {log}, last lines:")
    assert str(failure.value).endswith("mm/slub.c:1: error: boom")


def fake_sources(monkeypatch: pytest.MonkeyPatch, built: list[str]) -> None:
    monkeypatch.setattr(dk, "_source_version", lambda package: "6.1.192-3")

    def build(series: str, version: str, key: str, root: Path, say: dk.Say,
              log: Path) -> str:
        built.append(key)
        root.mkdir(parents=True)
        (root / dk.META).write_text(json.dumps({"release": RELEASE, "version": version}))
        return RELEASE

    monkeypatch.setattr(dk, "_build", build)


def test_fetch_builds_once_and_then_reuses(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    fake_sources(monkeypatch, built)
    first = dk.fetch("debug:6.1", tmp_path)
    second = dk.fetch("debug:6.1", tmp_path)
    key = dk.cache_key(dk.FRAGMENT.read_text(), "6.1.192-3")
    assert built == [key]
    assert first == second == Kernel(spec="debug:6.1", release=RELEASE,
                                     package_version="6.1.192-3",
                                     root=tmp_path / "debug-kernels" / key, pvh_boots=False,
                                     cmdline="watchdog_thresh=60")
    assert first.boot_image == first.vmlinuz


def test_a_spec_without_a_series_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"debug kernel 'debug:latest': expected debug:SERIES"):
        dk.fetch("debug:latest", tmp_path)


def test_the_command_prints_the_directory_and_how_to_boot_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    built: list[str] = []
    fake_sources(monkeypatch, built)
    assert cli.main(["--lab-dir", str(tmp_path), "kernel", "build-debug"]) == 0
    out = capsys.readouterr().out.splitlines()
    root = tmp_path / "cache" / "debug-kernels" / built[0]
    assert out[0] == str(root)
    assert out[-1].endswith(f"--kernel local:{root}")
