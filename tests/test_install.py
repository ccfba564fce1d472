"""Putting vrhp in a guest: each build made once per kernel and variant, then copied in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_kmod_guest import RecordingGuest

from lab.build.kernel import Kernel
from lab.dut import install as installing
from lab.dut import kmod
from lab.errors import BuildError
from lab.events import EventBus


def kernel(release: str) -> Kernel:
    return Kernel(f"debian:{release}", release, "1", Path("/k") / release)


class FakeBuild:
    """Stands in for kmod.build: records each call, answers with a build."""

    def __init__(self, fails: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fails = fails

    def __call__(self, kernel: Kernel, cache: Path, *, version: int = 1, layout: int = 1,
                 source: Path, defect: str | None = None) -> kmod.ModuleBuild:
        self.calls.append({"release": kernel.release, "cache": cache, "version": version,
                           "layout": layout, "source": source, "defect": defect})
        if self.fails:
            raise BuildError("make: *** [vrhp] Error 1")
        key = f"{kernel.release}-v{version}-l{layout}"
        return kmod.ModuleBuild(kernel.release, version, layout, key,
                                Path(f"/c/{key}/vrhp.ko"), Path(f"/c/{key}/vrhp-agent"))


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> FakeBuild:
    fake = FakeBuild()
    monkeypatch.setattr(kmod, "build", fake)
    return fake


def test_install_builds_for_the_kernel_and_copies_module_and_agent(built: FakeBuild) -> None:
    bus = EventBus()
    builds = installing.ModuleBuilds(Path("/cache"), bus, Path("/src"), defect="leak")
    guest = RecordingGuest()
    module = installing.install(guest, kernel("6.1.0-x"), builds)  # type: ignore[arg-type]
    assert built.calls == [{"release": "6.1.0-x", "cache": Path("/cache"), "version": 1,
                            "layout": 1, "source": Path("/src"), "defect": "leak"}]
    assert module.guest is guest  # type: ignore[comparison-overlap]
    assert module.build.key == "6.1.0-x-v1-l1"
    assert module.ko == "/opt/vrhp/v1-layout1/vrhp.ko"
    assert guest.commands == ["mkdir -p /opt/vrhp/v1-layout1"]
    assert guest.puts == ["/opt/vrhp/v1-layout1/vrhp.ko", "/opt/vrhp/v1-layout1/vrhp-agent"]
    assert [(e.phase, e.subject, e.state) for e in bus.history] == [
        ("kmod-build", "cn1", "start"), ("kmod-build", "cn1", "end")]
    assert bus.history[0].detail == "v1 layout 1"


def test_each_kernel_and_variant_is_built_once(built: FakeBuild) -> None:
    bus = EventBus()
    builds = installing.ModuleBuilds(Path("/cache"), bus)
    first, second = RecordingGuest(), RecordingGuest()
    a = installing.install(first, kernel("6.1.0-x"), builds)  # type: ignore[arg-type]
    b = installing.install(second, kernel("6.1.0-x"), builds)  # type: ignore[arg-type]
    installing.install(first, kernel("6.1.0-x"), builds, version=2, layout=3)  # type: ignore[arg-type]
    installing.install(first, kernel("6.12.0-y"), builds)  # type: ignore[arg-type]
    assert a.build is b.build
    assert [(c["release"], c["version"], c["layout"]) for c in built.calls] == [
        ("6.1.0-x", 1, 1), ("6.1.0-x", 2, 3), ("6.12.0-y", 1, 1)]
    assert set(builds.builds) == {("6.1.0-x", 1, 1), ("6.1.0-x", 2, 3), ("6.12.0-y", 1, 1)}
    assert len(second.puts) == 2  # the memo spares the build, never another guest's copy
    assert [e.detail for e in bus.history if e.state == "start"] == [
        "v1 layout 1", "v2 layout 3", "v1 layout 1"]


def test_a_build_asked_for_earlier_is_installed_without_building_again(
        built: FakeBuild) -> None:
    builds = installing.ModuleBuilds(Path("/cache"), EventBus())
    build = builds.build(kernel("6.1.0-x"), "cn1")
    module = installing.install(RecordingGuest(), kernel("6.1.0-x"), builds)  # type: ignore[arg-type]
    assert module.build is build
    assert len(built.calls) == 1


def test_a_failed_build_copies_nothing_and_is_tried_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    failing = FakeBuild(fails=True)
    monkeypatch.setattr(kmod, "build", failing)
    bus = EventBus()
    builds = installing.ModuleBuilds(Path("/cache"), bus)
    guest = RecordingGuest()
    for _ in range(2):
        with pytest.raises(BuildError, match="Error 1"):
            installing.install(guest, kernel("6.1.0-x"), builds)  # type: ignore[arg-type]
    assert (guest.commands, guest.puts, builds.builds) == ([], [], {})
    assert len(failing.calls) == 2
    assert [e.state for e in bus.history] == ["start", "fail", "start", "fail"]
