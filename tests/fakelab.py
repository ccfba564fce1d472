"""A Lab without libvirt or QEMU for inner pytest sessions of the plugin's tests.

An inner session's conftest calls `install()`; its tests kill nodes with `lab.kill()`.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import engine
from lab.build.image.guestimage import Image
from lab.build.kernel import Kernel
from lab.errors import GuestError
from lab.events import EventBus
from lab.guest.ssh import Guest, Result
from lab.plan import NodePlan
from lab.pytest_plugin import session
from lab.topology import Topology


class FakeGuest(Guest):
    """A Guest whose commands succeed until its node's QEMU is killed; then SSH fails
    the way it does against a forwarded port nothing listens behind."""

    def __init__(self, lab: FakeLab, node: str, port: int) -> None:
        super().__init__(node, port, lab.run_dir / "id_ed25519", "ssh-ed25519 AAAA")
        self.lab = lab
        self.commands: list[str] = []

    def run(self, command: str, *, timeout: float | None = None, check: bool = False,
            **options: Any) -> Result:
        if self.retired:
            raise GuestError(f"{self.node}: {self.retired}: this connection is not usable")
        if self.node in self.lab.killed:
            raise GuestError(f"{self.node}: SSH to 127.0.0.1:{self.port} failed: "
                             "Unable to connect to port 22 on 127.0.0.1")
        self.commands.append(command)
        if command == "cat /proc/sys/kernel/tainted":
            return Result(0, f"{self.lab.taint.get(self.node, 0)}\n", "")
        return Result(0, f"{command} on boot {self.lab.nodes[self.node].boots}\n", "")

    def canary(self, label: str) -> str:
        self.run("canary")
        return f"hplab-canary {label}"

    def dmesg_since(self, mark: str) -> str:
        return self.check("dmesg")


class FakeLab(engine.Lab):
    """Booting is instant, the console a file, a node's death `kill()`."""

    def __init__(self, topology: Topology, base_dir: Path, bus: EventBus | None = None,
                 *, keep: bool = False) -> None:
        super().__init__(topology, base_dir, bus, keep=keep)
        self.killed: dict[str, int] = {}  # node -> wait status of its QEMU
        self.unseen: dict[str, int] = {}  # node -> looks before libvirt reports the death
        self.taint: dict[str, int] = {}  # node -> /proc/sys/kernel/tainted (default 0)

    def start(self) -> FakeLab:
        self.run_dir.mkdir(parents=True)
        root = self.run_dir / "fake"
        for node in self.topology.nodes:
            node_dir = self.run_dir / node.name
            node_dir.mkdir()
            self.nodes[node.name] = engine.NodeRuntime(
                plan=NodePlan(node, Kernel(node.kernel, "6.1.0-fake-amd64", "1", root),
                              Image(node.image, "fake", root / "initrd", "ssh-ed25519 AAAA")),
                accel="tcg", domain=f"hplab-{self.run_id}-{node.name}",
                console=node_dir / "console.log", initrd=root / "initrd")
            self._boot_again(self.nodes[node.name], "boot")
        return self

    def _boot_again(self, rt: engine.NodeRuntime, phase: str) -> float:
        with self.bus.phase(phase, rt.node.name, f"boot {rt.boots + 1}"):
            if rt.guest is not None:
                rt.guest.retire(f"rebooted into boot {rt.boots + 1}")
            self.killed.pop(rt.node.name, None)
            rt.console_from = rt.console.stat().st_size if rt.console.exists() else 0
            with rt.console.open("a") as console:
                console.write(f"boot {rt.boots + 1} of {rt.node.name}\nhplab-init: ready\n")
            rt.boots += 1
            rt.port = 40000 + rt.boots
            rt.guest = FakeGuest(self, rt.node.name, rt.port)
            rt.boot_seconds = 0.5
        self._write_state("running")
        return rt.boot_seconds

    def kill(self, name: str, status: int = 9, *, unseen: int = 0) -> None:
        """QEMU of node `name` exits with wait status `status`; libvirt says so only
        after `unseen` looks."""
        self.killed[name] = status
        self.unseen[name] = unseen

    def exit_cause(self, name: str) -> str | None:
        if name not in self.killed:
            return None
        if self.unseen.get(name, 0) > 0:
            self.unseen[name] -= 1
            return None
        return engine.describe_exit(self.killed[name], "")

    def stop(self) -> None:
        self._write_state("stopped")
        self._write_events()


def install() -> None:
    """Every lab of this session is a FakeLab."""
    pytest.MonkeyPatch().setattr(session, "Lab", FakeLab)


ROOT = Path(__file__).resolve().parent.parent
CONFTEST = "import fakelab\n\nfakelab.install()\n"


@dataclass
class InnerRun:
    """An inner session's outcome: pytest's result and what the lab wrote."""

    result: pytest.RunResult
    run_dir: Path

    def results(self) -> dict[str, dict[str, Any]]:
        """results.json by test name (the nodeid after '::')."""
        entries = json.loads((self.run_dir / "results.json").read_text())
        return {e["nodeid"].split("::", 1)[1]: e for e in entries}

    def classes(self) -> dict[str, str]:
        return {name: e["properties"].get("outcome", "") for name, e in self.results().items()}

    def junit_classes(self) -> dict[str, str]:
        root = ET.parse(self.run_dir / "junit.xml").getroot()
        classes = {}
        for case in root.iter("testcase"):
            values = [p.get("value", "") for p in case.iter("property")
                      if p.get("name") == "outcome"]
            # classname "test_inner.TestOnNode", name "test_a[cn1]": "TestOnNode::test_a[cn1]"
            scope = case.get("classname", "").split(".")[1:]
            classes["::".join([*scope, case.get("name", "")])] = ",".join(values)
        return classes


def run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str,
              *args: str, fake: bool = True) -> InnerRun:
    """`source` as the test module of an inner pytest session in a subprocess, with the
    lab plugin (its Lab a FakeLab unless `fake` is false) on the default topology."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(pytester.path / "locks"))  # not the host's
    if fake:
        pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=source)
    lab_dir = pytester.path / "labdir"
    junit = pytester.path / "junit.xml"
    earlier = set((lab_dir / "runs").glob("*"))  # runs of earlier inner sessions
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--rootdir={pytester.path}",
        f"--topology={ROOT / 'topologies' / 'single.yaml'}", f"--lab-dir={lab_dir}",
        f"--junitxml={junit}", *args)
    runs = sorted(set((lab_dir / "runs").glob("*")) - earlier)
    run_dir = runs[0] if runs else pytester.path
    if junit.exists():
        junit.replace(run_dir / "junit.xml")
    return InnerRun(result, run_dir)
