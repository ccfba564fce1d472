"""The Plan: one place builds a node's domain, the dry run prints what the engine creates,
and the engine boots a Plan it is given without making another."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from lab import engine
from lab import plan as plans
from lab.build.image.guestimage import Image
from lab.build.kernel import Kernel
from lab.cli.main import DRY_RUN_ID, dry_run_text
from lab.errors import LabError
from lab.plan import NodePlan, Plan
from lab.topology import parse
from lab.vm import domain, libvirt_calls

LAB = Path(__file__).resolve().parent.parent / "lab"
TOPOLOGY = """
nodes:
  - {name: cn1, memory: 3G, hugepages: {size: 1G, count: 1}, image: debian}
  - {name: cn2, vcpus: 2, cmdline: "mitigations=off"}
"""


def _plan(tmp_path: Path) -> Plan:
    topology = parse(TOPOLOGY, Path("t.yaml"))
    kernel = Kernel("debian:6.1", "6.1.0-57-amd64", "1", tmp_path / "k")
    return Plan(topology, tuple(
        NodePlan(node, kernel, Image(node.image, "key", tmp_path / "img", "ssh-ed25519 AAAA",
                                     disk=tmp_path / "disk.qcow2" if node.image == "debian"
                                     else None))
        for node in topology.nodes))


def test_only_the_plan_builds_a_domain_spec() -> None:
    builders = []
    for path in LAB.rglob("*.py"):
        for call in ast.walk(ast.parse(path.read_text())):
            if isinstance(call, ast.Call) and (
                    getattr(call.func, "id", None) == "DomainSpec"
                    or getattr(call.func, "attr", None) == "DomainSpec"):
                builders.append(path.relative_to(LAB).as_posix())
    assert builders == ["plan.py"]


def test_the_dry_run_prints_the_domain_the_engine_creates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan(tmp_path)
    lab = engine.Lab(plan.topology, tmp_path, plan=plan)
    created: list[domain.DomainSpec] = []
    monkeypatch.setattr(domain, "free_port", lambda: 40022)
    monkeypatch.setattr(libvirt_calls, "create", lambda conn, spec: created.append(spec))

    def no_pid(domain: str) -> int:
        raise LabError("no pid file")
    monkeypatch.setattr(libvirt_calls, "qemu_pid", no_pid)
    monkeypatch.setattr(lab, "_conn", lambda uri: object())
    for planned in plan.nodes:
        node_dir = lab.run_dir / planned.node.name
        node_dir.mkdir(parents=True)
        rt = engine.NodeRuntime(plan=planned, accel="tcg", domain="d",
                                console=node_dir / plans.NODE_CONSOLE,
                                initrd=node_dir / plans.NODE_INITRD)
        lab._create(rt)
    booted = "\n".join(domain.domain_xml(spec) for spec in created)
    printed = dry_run_text(plan, tmp_path).replace(DRY_RUN_ID, lab.run_id)
    printed = "\n".join(line for line in printed.splitlines() if not line.startswith("<!--"))
    assert re.sub(r"\b40022\b", "0", booted).splitlines() == printed.splitlines()
    assert "mitigations=off" in printed and "disk.qcow2" in printed


def test_the_engine_boots_the_plan_it_is_given(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan(tmp_path)
    prepared: list[NodePlan] = []

    class Stop(Exception):
        pass

    def make(*args: Any) -> Plan:
        raise AssertionError("a second plan was made")

    def prepare(self: engine.Lab, planned: NodePlan) -> engine.NodeRuntime:
        prepared.append(planned)
        if len(prepared) == len(plan.nodes):
            raise Stop
        return engine.NodeRuntime(plan=planned, accel="tcg", domain="d",
                                  console=tmp_path / "c", initrd=tmp_path / "i")

    monkeypatch.setattr(plans, "make", make)
    monkeypatch.setattr(engine.Lab, "_prepare_node", prepare)
    monkeypatch.setattr(engine.Lab, "stop", lambda self: None)  # nothing was booted
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(tmp_path / "locks"))  # not the host's
    with pytest.raises(Stop):
        engine.Lab(plan.topology, tmp_path, plan=plan).start()
    assert prepared == list(plan.nodes)


def test_a_node_plan_says_what_boots(tmp_path: Path) -> None:
    text = _plan(tmp_path).node("cn1").describe()
    assert text.startswith("node cn1: kernel debian:6.1 -> 6.1.0-57-amd64")
    assert "3072 MiB, pool 1 x 1G" in text and "hugepages=1" in text
