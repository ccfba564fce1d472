"""The one cache mechanism: entries are built once, atomically, and every builder keeps the
path layout and keys the caches already on disk were made with; an offline plan (the dry
run) downloads and builds nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.build import debiankernel, debugkernel, guesttools, localkernel
from lab.build.image import debian, minimal
from lab.cache import CacheEntry, NotCached
from lab.cli import main as cli
from lab.dut import kmod
from lab.errors import BuildError
from lab.shell import digest

KEY = "0123456789abcdef"
REL = "6.1.0-57-amd64"


def test_an_entry_is_built_once_then_looked_up(tmp_path: Path) -> None:
    entry = CacheEntry(tmp_path, "things", f"t-{KEY}", marker="done")
    assert entry.lookup() is None
    built: list[Path] = []

    def build(stage: Path) -> None:
        built.append(stage)
        stage.mkdir()
        (stage / "done").write_text("x")

    assert entry.build(build) == entry.path == tmp_path / "things" / f"t-{KEY}"
    assert entry.build(build) == entry.path and len(built) == 1
    assert built[0].parent.parent == entry.path.parent  # built beside the final entry
    assert entry.lookup() == entry.path
    assert sorted(p.name for p in entry.parent.iterdir()) == [f".t-{KEY}.lock", f"t-{KEY}"]


@pytest.mark.parametrize("failure", ["raises", "no marker"])
def test_a_failed_build_leaves_neither_entry_nor_scratch(tmp_path: Path, failure: str) -> None:
    entry = CacheEntry(tmp_path, "things", "t", marker="done")

    def build(stage: Path) -> None:
        stage.mkdir()
        (stage / "half").write_text("x")
        if failure == "raises":
            raise BuildError("boom")

    with pytest.raises(BuildError):
        entry.build(build)
    assert [p.name for p in entry.parent.iterdir()] == [".t.lock"]


def test_an_incomplete_entry_an_older_build_left_is_replaced(tmp_path: Path) -> None:
    entry = CacheEntry(tmp_path, "things", "t", marker="done")
    entry.path.mkdir(parents=True)
    (entry.path / "stale").write_text("x")
    assert entry.lookup() is None

    def build(stage: Path) -> None:
        stage.mkdir()
        (stage / "done").write_text("x")

    entry.build(build)
    assert sorted(p.name for p in entry.path.iterdir()) == ["done"]


def test_a_file_entry(tmp_path: Path) -> None:
    entry = CacheEntry(tmp_path, "tools", "tool-k")
    assert entry.build(lambda stage: stage.write_text("elf")) == tmp_path / "tools" / "tool-k"
    assert entry.path.read_text() == "elf"


def test_require_names_what_is_missing_and_how_to_build_it(tmp_path: Path) -> None:
    entry = CacheEntry(tmp_path, "kernels", REL, marker="hplab-kernel.json")
    with pytest.raises(NotCached, match=rf"kernel debian:6.1 is not in the cache "
                                        rf"\({entry.path}\); 'hplab up t.yaml' builds it"):
        entry.require("kernel debian:6.1", "hplab up t.yaml")


# The caches on CI hold gigabytes built with these paths, locks and markers: keep them.
C = Path("/var/tmp/hplab/cache")
LAYOUTS = [
    (kmod.module_entry(C, "kmod", REL, KEY), f"kmod/{REL}-{KEY}", f"kmod/.{KEY}.lock", "done"),
    (kmod.module_entry(C, "modules", REL, KEY), f"modules/{REL}-{KEY}", f"modules/.{KEY}.lock",
     "done"),
    (guesttools.tool_entry(C, "vrhp_traffic", KEY), f"tools/vrhp_traffic-{KEY}",
     "tools/.vrhp_traffic.lock", None),
    (minimal.entry(C, KEY), f"images/minimal-{KEY}", f"images/.minimal-{KEY}.lock",
     "image.json"),
    (debian.entry(C, KEY), f"images/debian-{KEY}", f"images/.debian-{KEY}.lock", "image.json"),
    (debiankernel.entry(C, REL), f"kernels/{REL}", f"kernels/.{REL}.lock", "hplab-kernel.json"),
    (debugkernel.entry(C, KEY), f"debug-kernels/{KEY}", f"debug-kernels/.{KEY}.lock",
     "hplab-kernel.json"),
    (localkernel.entry(C, "6.13.0-rc1+", KEY), f"kernels/local-6.13.0-rc1+-{KEY}",
     f"kernels/.local-{KEY}.lock", "hplab-kernel.json"),
]


@pytest.mark.parametrize(("entry", "path", "lock", "marker"), LAYOUTS,
                         ids=["kmod", "probe-modules", "guesttools", "minimal", "debian-image",
                              "debian-kernel", "debug-kernel", "local-kernel"])
def test_every_builder_keeps_its_cache_layout(entry: CacheEntry, path: str, lock: str,
                                              marker: str | None) -> None:
    assert (entry.path, entry.lock_path, entry.marker) == (C / path, C / lock, marker)


def test_the_keys_are_the_ones_on_disk() -> None:
    assert digest("a", b"b") == "cf6ab613e3942391"
    assert debugkernel.cache_key("CONFIG_KASAN=y\n", "6.1.192-3") == "fc5475f5f56ea762"
    assert debugkernel.entry(C, KEY).wait_s == 6 * 3600


def test_a_dry_run_with_nothing_cached_downloads_and_builds_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def forbidden(*args: object, **kwargs: object) -> object:
        raise AssertionError(f"a dry run downloaded or built: {args}")

    monkeypatch.setattr(debiankernel, "resolve_release", lambda spec: REL)
    monkeypatch.setattr(debugkernel, "_source_version", lambda package: "6.1.192-3")
    for module, name in [(debiankernel, "run"), (debiankernel, "_packages_for"),
                         (debiankernel, "package_version"), (debiankernel, "extract_vmlinux"),
                         (debugkernel, "_build"), (debugkernel, "run"),
                         (minimal, "_build_minimal_tree"), (debian, "_build_into"),
                         (kmod, "run"), (CacheEntry, "build")]:
        monkeypatch.setattr(module, name, forbidden)
    topology = tmp_path / "t.yaml"
    topology.write_text("nodes:\n  - {name: cn1, kernel: 'debian:6.1'}\n"
                        "  - {name: cn2, kernel: 'debug:6.1', image: debian}\n")
    assert cli.main(["--lab-dir", str(tmp_path / "lab"), "up", str(topology), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"offline plan of {topology}: not everything is in the cache" in err
    assert (f"node cn1: kernel debian:6.1 ({REL}) is not in the cache "
            f"({tmp_path / 'lab'}") in err and f"'hplab up {topology}' builds it" in err
    assert "node cn2: kernel debug:6.1 (linux-source-6.1 6.1.192-3" in err
    assert "'hplab kernel build-debug --series 6.1' builds it" in err
    assert not list((tmp_path / "lab").rglob("*.build-*"))


def test_an_offline_plan_takes_what_is_cached(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debiankernel, "resolve_release", lambda spec: REL)
    monkeypatch.setattr(minimal, "image_key", lambda kernel: KEY)
    cache = tmp_path / "cache"
    root = debiankernel.entry(cache, REL).path
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"config-{REL}").write_text("")
    (root / "hplab-kernel.json").write_text('{"version": "6.1.158-1"}')
    kernel = debiankernel.fetch("debian:6.1", cache, offline=True)
    assert (kernel.root, kernel.package_version) == (root, "6.1.158-1")
    with pytest.raises(NotCached, match=f"image minimal for kernel {REL} is not in the cache"):
        minimal.build(kernel, cache, offline=True)
    image_dir = minimal.entry(cache, KEY).path
    image_dir.mkdir(parents=True)
    (image_dir / "image.json").write_text('{"host_key": "ssh-ed25519 AAAA"}')
    image = minimal.build(kernel, cache, offline=True)
    assert image.path == image_dir / "initramfs.cpio.gz"
