"""Topology -> Plan: the kernel, image, memory, pool and command line of every node, decided
before anything boots. The engine boots a Plan; `hplab up --dry-run` prints the same one.
Only what exists at start is left open: the run id, the SSH port and the accel verdict."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from lab.build import kernelfetch
from lab.build.image import kinds as images
from lab.build.image.guestimage import Image
from lab.build.kernel import Kernel
from lab.cache import NotCached
from lab.events import EventBus
from lab.topology import Node, Topology
from lab.vm import domain

NODE_DISK = "disk.qcow2"
NODE_INITRD = "initrd.cpio.gz"
NODE_CONSOLE = "console.log"


def kernel_cmdline(node: Node, kernel_args: str = "") -> str:
    """The guest's command line: the lab's, the node's pool, the kernel's own (a debug
    kernel's), then the topology's."""
    # loglevel=5: every kernel warning (WARN, lockdep, KASAN) reaches the console watch on
    # every image, while the boot stays terse. cryptomgr.notests: the crypto self-tests
    # cost ~0.3 s of every boot under TCG.
    args = ["console=ttyS0", "panic=-1", "loglevel=5", "rdinit=/init", "cryptomgr.notests"]
    if node.hugepages is not None:
        size = node.hugepages.size
        args += [f"default_hugepagesz={size}", f"hugepagesz={size}",
                 f"hugepages={node.hugepages.count}"]
    if kernel_args:
        args.append(kernel_args)
    if node.cmdline:
        args.append(node.cmdline)
    return " ".join(args)


@dataclass(frozen=True)
class NodePlan:
    """One node as it will boot."""

    node: Node
    kernel: Kernel
    image: Image

    @property
    def cmdline(self) -> str:
        return kernel_cmdline(self.node, self.kernel.cmdline)

    def domain_spec(self, *, run_id: str, node_dir: Path, accel: str,
                    ssh_port: int) -> domain.DomainSpec:
        """The domain this node boots as in run `run_id`, its files under `node_dir`."""
        return domain.DomainSpec(
            name=domain.domain_name(run_id, self.node.name), run_id=run_id, node=self.node.name,
            memory_mib=self.node.memory_mib, vcpus=self.node.vcpus, accel=accel,
            kernel=self.kernel.boot_image, initrd=node_dir / NODE_INITRD, cmdline=self.cmdline,
            console=node_dir / NODE_CONSOLE, ssh_port=ssh_port,
            hugepage_backing=self.node.backing == "hugepages-1G",
            disk=node_dir / NODE_DISK if self.image.disk else None)

    def describe(self) -> str:
        pool = self.node.hugepages
        return (f"node {self.node.name}: kernel {self.node.kernel} -> {self.kernel.release} "
                f"({self.kernel.boot_image}); image {self.image.kind} ({self.image.path}); "
                f"{self.node.vcpus} vCPU, {self.node.memory_mib} MiB, "
                f"pool {f'{pool.count} x {pool.size}' if pool else 'none'}, "
                f"backing {self.node.backing}, accel {self.node.accel}; "
                f"cmdline: {self.cmdline}")


@dataclass(frozen=True)
class Plan:
    """Every node of a topology as it will boot."""

    topology: Topology
    nodes: tuple[NodePlan, ...]

    def node(self, name: str) -> NodePlan:
        return next(n for n in self.nodes if n.node.name == name)


def make(topology: Topology, cache: Path, bus: EventBus | None = None, *,
         offline: bool = False) -> Plan:
    """Fetch or build (from the cache when there) each node's kernel and image; `offline`:
    take them from the cache only, downloading and building nothing, and raise NotCached
    naming every kernel and image that is not there and the command that builds it."""
    nodes, missing = [], []
    build = f"hplab up {topology.path}"
    for node in topology.nodes:
        try:
            with bus.phase("kernel", node.name, node.kernel) if bus else nullcontext():
                kernel = kernelfetch.fetch(node.kernel, cache, offline=offline)
            with (bus.phase("image", node.name, f"{node.image} for {kernel.release}") if bus
                  else nullcontext()):
                image = images.build(node.image, kernel, cache, offline=offline)
        except NotCached as absent:
            missing.append(f"node {node.name}: {absent.describe(absent.command or build)}")
            continue
        nodes.append(NodePlan(node, kernel, image))
    if missing:
        raise NotCached("the plan's kernels and images", cache, build, message=(
            f"offline plan of {topology.path}: not everything is in the cache {cache}:\n  "
            + "\n  ".join(missing)))
    return Plan(topology, tuple(nodes))
