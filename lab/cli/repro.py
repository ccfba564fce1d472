"""`hplab repro`: fragment one node, try both backends, leave a replayable run directory."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import topology as topologies
from lab.dut import kmod
from lab.dut.abi import Outcome
from lab.dut.install import ModuleBuilds, install
from lab.dut.sizing import bridge_sizes, btable_failure, flow_sizes
from lab.engine import Lab, NodeRuntime
from lab.errors import LabError
from lab.events import EventBus
from lab.fragment.driver import FragmentRun, GuestFragmenter
from lab.fragment.spec import DEFAULT_FLOOR_MIB, FragmentSpec, Target
from lab.report.html import write_report
from lab.rundir import ResultEntry, write_results


@dataclass(frozen=True)
class ReproRequest:
    topology: Path
    profile: str = "anon-pinned"
    seed: int = 1
    node: str | None = None
    kernel: str | None = None
    kmod_source: Path = Path("kmod")
    target_order: int = 10
    max_free_blocks: int = 0
    floor_mib: int = DEFAULT_FLOOR_MIB


@dataclass
class Step:
    """One thing the reproduction tried, recorded like a test result."""

    name: str
    passed: bool = False
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def result(self) -> ResultEntry:
        return ResultEntry(nodeid=f"repro::{self.name}",
                           outcome="passed" if self.passed else "failed", duration=0.0,
                           reason=self.detail,
                           properties={k: str(v) for k, v in self.data.items()})


def prepare(request: ReproRequest) -> tuple[topologies.Topology, str, FragmentSpec]:
    """Everything that can be refused before a VM boots: topology, node, profile, seed."""
    overrides = {"kernel": request.kernel} if request.kernel else None
    topology = topologies.load(request.topology, overrides)
    names = [n.name for n in topology.nodes]
    node = request.node or names[0]
    if node not in names:
        raise LabError(f"--node {node!r} is not in {request.topology} (nodes: {', '.join(names)})")
    if not (request.kmod_source / "Makefile").is_file():
        raise LabError(f"--kmod-source {request.kmod_source}: no Makefile (the vrhp sources)")
    try:
        target = Target.blocks(request.target_order, request.max_free_blocks)
        spec = FragmentSpec(request.profile, target, request.seed, request.floor_mib)
        node_mib = topology.node(node).memory_mib
        spec.check_machine(node_mib * 1024)
    except ValueError as exc:
        raise LabError(f"repro of node {node!r}: {exc}") from None
    return topology, node, spec


def _try_btable(rt: NodeRuntime, module: kmod.GuestModule) -> Step:
    assert rt.guest is not None
    mark = rt.guest.canary("repro-btable")
    result = module.insmod(mem="btable")
    dmesg = rt.guest.dmesg_since(mark)
    if result.ok:
        module.rmmod()
        return Step("btable-insmod-fails", False, "mem=btable loaded: the memory was not "
                    "fragmented enough to defeat it", {"dmesg": dmesg.strip()})
    failure = btable_failure(result.stderr, dmesg)
    if failure is None:
        return Step("btable-insmod-fails", False, "mem=btable was refused, but not for want "
                    f"of contiguous memory: {result.stderr.strip()}", {"dmesg": dmesg.strip()})
    return Step("btable-insmod-fails", True,
                f"{failure.table} table got {failure.got} of {failure.wanted} 4 MiB chunks",
                {"dmesg": dmesg.strip(), "stderr": result.stderr.strip()})


def _try_hugepage(module: kmod.GuestModule) -> Step:
    try:
        module.load(mem="hugepage")
        setup = module.setup()
        data: dict[str, Any] = {"outcome": setup.outcome.name}
        tables = ", ".join(f"{name} {t.action} on {t.backend}{f' ({t.error})' if t.error else ''}"
                           for name, t in setup.tables.items())
        data["tables"] = tables
        if setup.outcome is not Outcome.SUCCESS:
            return Step("hugepage-setup-and-fill", False,
                        f"setup: {setup.outcome.name}: {tables}", data)
        for name, sizes in (("flow", flow_sizes()), ("bridge", bridge_sizes())):
            fill = module.fill(name, sizes.total_entries, seed=1)
            data[f"{name}_inserted"] = fill.inserted
            if not fill.full:
                return Step("hugepage-setup-and-fill", False,
                            f"{name} fill stopped on {fill.first_fail_error}", data)
        return Step("hugepage-setup-and-fill", True, "both tables on huge pages, filled", data)
    except LabError as exc:
        return Step("hugepage-setup-and-fill", False, str(exc))


def _git_revision(path: Path) -> str:
    done = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def write_replay(run_dir: Path, request: ReproRequest, topology: topologies.Topology,
                 release: str, node: str) -> Path:
    """Copies of the topology and module sources, and reproduce.sh pointing at them."""
    shutil.copy2(topology.path, run_dir / "topology.yaml")
    shutil.copytree(request.kmod_source, run_dir / "kmod", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.o", "*.ko", "*.mod*", ".*", "Module.symvers",
                                                  "modules.order", "vrhp-agent"))
    argv = ["hplab", "repro", "--topology", "topology.yaml", "--node", node,
            "--kernel", f"debian:{release}", "--profile", request.profile,
            "--seed", str(request.seed), "--target-order", str(request.target_order),
            "--max-free-blocks", str(request.max_free_blocks),
            "--floor-mib", str(request.floor_mib), "--kmod-source", "kmod"]
    script = run_dir / "reproduce.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"# Replays hplab repro run {run_dir.name}: the same topology, exact kernel, profile,\n"
        f"# seed and module sources (git {_git_revision(request.kmod_source)}).\n"
        'cd "$(dirname "$0")" && exec ' + shlex.join(argv) + "\n")
    script.chmod(0o755)
    return script


def run(request: ReproRequest, base_dir: Path, bus: EventBus) -> tuple[Path, list[Step]]:
    topology, node, spec = prepare(request)
    lab = Lab(topology, base_dir, bus)
    steps: list[Step] = []
    fragment: FragmentRun | None = None
    try:
        lab.start()
        rt = lab.nodes[node]
        guest = lab.guest(node)
        module = install(guest, rt.kernel, ModuleBuilds(lab.cache, bus, request.kmod_source))
        fragmenter = GuestFragmenter(guest, rt.kernel, lab.cache)
        with bus.phase("fragment", node, f"{spec.profile}, seed {spec.seed}"):
            fragment = fragmenter.fragment(spec)
        with bus.phase("probe", node, "GFP_ATOMIC, orders 0..10"):
            fragment.probes = fragmenter.probe_orders()
        summary = fragment.summary
        steps.append(Step("fragmentation-target", summary.reached,
                          f"{summary.free_blocks_after} order-{spec.target.order} blocks free "
                          f"outside ZONE_DMA after {summary.elapsed_s:.1f}s"
                          + (f" ({summary.reason})" if summary.reason else ""), {
                              "elapsed_s": fragment.summary.elapsed_s,
                              "free_blocks_after": fragment.summary.free_blocks_after}))
        with bus.phase("btable", node, "insmod mem=btable"):
            steps.append(_try_btable(rt, module))
        with bus.phase("hugepage", node, "insmod mem=hugepage, setup, fill"):
            steps.append(_try_hugepage(module))
        (lab.make_artifacts_dir() / f"dmesg-{node}.txt").write_text(guest.check("dmesg"))
        fragmenter.release()
        kmod.reset_guest(guest)
        write_replay(lab.run_dir, request, topology, rt.kernel.release, node)
    finally:
        if fragment is not None:
            (lab.make_artifacts_dir() / f"fragment-{spec.profile}-{node}.json").write_text(
                fragment.to_json())
        if lab.run_dir.exists():
            write_results(lab.run_dir, [s.result() for s in steps])
        lab.stop()
        if lab.run_dir.exists():
            with bus.phase("report", node, str(lab.run_dir / "report.html")):
                write_report(lab.run_dir)
    return lab.run_dir, steps
