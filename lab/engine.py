"""The lab engine: a topology in, running guests out, and everything torn down again.

It runs a live lab; the runs it leaves behind are lab.reap's, their files lab.rundir's.

The CLI and the pytest plugin are thin front ends over `Lab`.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import lockfile
from lab import plan as plans
from lab.build.image import nodefiles
from lab.build.image.guestimage import BOOTED_MARK, READY_MARK, Image
from lab.build.kernel import Kernel
from lab.errors import LabError
from lab.events import EventBus
from lab.guest.ssh import Guest
from lab.guest.triage import read_from
from lab.host import hugepages, liveruns
from lab.paths import cache_dir, runs_dir
from lab.plan import NODE_CONSOLE, NODE_DISK, NODE_INITRD, NodePlan, Plan
from lab.rundir import (
    NodeState,
    RunState,
    SpeedState,
    hold_owner_lock,
    remove_work_files,
    write_events,
)
from lab.shell import run
from lab.timeouts import Speed, Timeouts
from lab.topology import Node, Topology
from lab.vm import accel, domain, libvirt_calls, readiness

CREATE_ATTEMPTS = 3
LIBVIRT_RECONNECT_S = 60.0  # a restarted libvirtd answers after ~8 s here (host prepare)
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")  # qemu:///system's log of each domain's QEMU
CONSOLE_TAIL_LINES = 30


def host_pages_needed(node: Node) -> int:
    """Host 1 GiB pages a node backed by them maps: all of its RAM."""
    return -(-node.memory // (1 << 30)) if node.backing == "hugepages-1G" else 0


def new_run_id() -> str:
    return secrets.token_hex(4)


# The kernel's process events connector (linux/connector.h, linux/cn_proc.h).
NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_EXIT = 0x80000000
NLMSG_DONE = 3
NLMSG_HEADER = struct.Struct("=IHHII")
CN_HEADER = struct.Struct("=IIIIHH")
EVENT_HEADER = struct.Struct("=IIQ")
EXIT_EVENT = struct.Struct("=IIII")


def parse_proc_exits(data: bytes) -> list[tuple[int, int]]:
    """(pid, wait status) of every process exit in a datagram of the proc connector."""
    exits = []
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length = NLMSG_HEADER.unpack_from(data, offset)[0]
        if length < NLMSG_HEADER.size:
            break
        event = offset + NLMSG_HEADER.size + CN_HEADER.size
        if event + EVENT_HEADER.size + EXIT_EVENT.size <= offset + length:
            what = EVENT_HEADER.unpack_from(data, event)[0]
            if what == PROC_EVENT_EXIT:
                pid, tgid, status, _ = EXIT_EVENT.unpack_from(data, event + EVENT_HEADER.size)
                if pid == tgid:  # the process, not one of its threads
                    exits.append((pid, status))
        offset += (length + 3) & ~3
    return exits


class QemuExits:
    """How this run's QEMU processes ended, from the kernel's process events.

    QEMU is not our child and a SIGKILL leaves no line in libvirt's log, so the exit
    status comes from the proc connector (root only); without it the status stays
    unknown and the log is all there is.
    """

    def __init__(self) -> None:
        self._domains: dict[int, str] = {}
        self._status: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> bool:
        """Listen for process exits; False where the kernel or our privileges refuse."""
        if self._thread is not None:
            return True
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError:
            return False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, CN_IDX_PROC))
            listen = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            message = CN_HEADER.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(listen), 0) + listen
            sock.send(NLMSG_HEADER.pack(NLMSG_HEADER.size + len(message), NLMSG_DONE, 0, 0,
                                        0) + message)
            sock.settimeout(0.5)
        except OSError:
            sock.close()
            return False
        self._sock = sock
        self._stop.clear()
        self._thread = threading.Thread(target=self._listen, name="hplab-qemu-exits",
                                        daemon=True)
        self._thread.start()
        return True

    def _listen(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:  # ENOBUFS after a burst of process events: keep listening
                if self._stop.is_set():
                    break
                continue
            for pid, status in parse_proc_exits(data):
                with self._lock:
                    domain = self._domains.pop(pid, None)
                    if domain is not None:
                        self._status[domain] = status

    def watch(self, domain: str, pid: int) -> None:
        with self._lock:
            self._domains = {p: d for p, d in self._domains.items() if d != domain}
            self._domains[pid] = domain
            self._status.pop(domain, None)

    @property
    def listening(self) -> bool:
        return self._thread is not None

    def status(self, domain: str, wait: float = 0.0) -> int | None:
        """The wait status of the domain's QEMU once it exited, else None (after up to
        `wait` seconds for the event)."""
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                status = self._status.get(domain)
            if status is not None or time.monotonic() >= deadline:
                return status
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


TERMINATING = re.compile(r"terminating on signal (\d+)(?: from pid (\d+)(?: \((.*)\))?)?")
SHUTTING_DOWN = re.compile(r"shutting down, reason=(\w+)")


def describe_exit(status: int | None, qemu_log: str) -> str:
    """How QEMU ended, from its wait status or else from libvirt's log of its last start:
    "signal 9", "exit status 1", "signal 15 from pid 4287 (/usr/sbin/libvirtd)"."""
    last_start = qemu_log.rfind("starting up")
    text = qemu_log[last_start:] if last_start >= 0 else qemu_log
    terminated = TERMINATING.search(text)
    if status is not None and not status & 0x7F:
        return f"exit status {status >> 8}"
    if status is not None and (not terminated or int(terminated.group(1)) != status & 0x7F):
        return f"signal {status & 0x7F}"
    if terminated:
        signum, pid, command = terminated.groups()
        sender = f" from pid {pid}" + (f" ({command})" if command else "") if pid else ""
        return f"signal {signum}{sender}"
    stopped = SHUTTING_DOWN.search(text)
    if stopped:
        return f"libvirt: {stopped.group(1)}"
    return "no exit status known"


@dataclass
class NodeRuntime:
    """A node of a running lab."""

    plan: NodePlan
    accel: str
    domain: str
    console: Path
    initrd: Path
    disk: Path | None = None  # the VM's qcow2 overlay on the image's root disk
    port: int = 0
    guest: Guest | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    boot_seconds: float = 0.0
    boots: int = 0
    console_from: int = 0  # where the current boot's output starts in `console`
    speed: Speed | None = None  # measured once the current boot answers SSH

    @property
    def node(self) -> Node:
        return self.plan.node

    @property
    def kernel(self) -> Kernel:
        return self.plan.kernel

    @property
    def image(self) -> Image:
        return self.plan.image

    def state(self) -> NodeState:
        speed = self.speed
        return NodeState(domain=self.domain, port=self.port, uri=self.node.uri,
                         accel=self.accel, kernel=self.kernel.release,
                         image=self.image.kind, host_key=self.image.host_key,
                         backing=self.node.backing, console=str(self.console),
                         boot_seconds=round(self.boot_seconds, 2), boots=self.boots,
                         up=self.guest is not None,
                         slowdown=round(speed.slowdown, 3) if speed else None,
                         speed=SpeedState(loop_s=round(speed.loop_s, 3),
                                          memory_s=round(speed.memory_s, 3),
                                          unclamped=round(speed.unclamped, 3))
                         if speed else None)


class Lab:
    """Boots the nodes of a topology as transient libvirt domains and tears them down."""

    def __init__(self, topology: Topology, base_dir: Path, bus: EventBus | None = None,
                 *, keep: bool = False, timeouts: Timeouts | None = None,
                 plan: Plan | None = None) -> None:
        self.topology = topology
        self.plan = plan  # made at start when not given
        self.base_dir = base_dir
        self.cache = cache_dir(base_dir)
        self.bus = bus or EventBus()
        self.keep = keep
        self.base_timeouts = timeouts or Timeouts()
        self.run_id = new_run_id()
        self.run_dir = runs_dir(base_dir) / self.run_id
        self.nodes: dict[str, NodeRuntime] = {}
        self._conns: dict[str, Any] = {}
        self._owner_lock: lockfile.Held | None = None
        self._registration: lockfile.Held | None = None  # live on the host (lab.host.liveruns)
        self._host_resources = ExitStack()
        self.host_pages = 0  # host 1 GiB pages this run holds in the pool
        self.started_at = 0.0
        self.exits = QemuExits()

    # -- preparation ----------------------------------------------------------------
    def _conn(self, uri: str) -> Any:
        """The run's connection to `uri`; a new one when the daemon restarted under it."""
        conn = self._conns.get(uri)
        if conn is not None and not libvirt_calls.alive(conn):
            del self._conns[uri]
            with suppress(Exception):
                conn.close()
            with self.bus.phase("libvirt", uri, "connection lost (daemon restarted?)") as t:
                self._conns[uri] = libvirt_calls.connect(uri, wait_s=LIBVIRT_RECONNECT_S)
                t.info("reconnected")
        elif conn is None:
            self._conns[uri] = libvirt_calls.connect(uri)
        return self._conns[uri]

    def _claim_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True)
        self.run_dir.chmod(0o755)
        self._owner_lock = hold_owner_lock(self.run_dir, self.run_id)
        self._registration = liveruns.register(self.run_id, self.run_dir, self.base_dir)
        key = self.run_dir / "id_ed25519"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"hplab-{self.run_id}",
             "-f", key])

    def _prepare_node(self, planned: NodePlan) -> NodeRuntime:
        node, kernel, image = planned.node, planned.kernel, planned.image
        accel = self._accel(node, kernel, image)
        node_dir = self.run_dir / node.name
        node_dir.mkdir()
        node_dir.chmod(0o755)
        initrd = nodefiles.node_initrd(image, node_dir / NODE_INITRD, hostname=node.name,
                                    authorized_key=(self.run_dir / "id_ed25519.pub").read_text())
        disk = nodefiles.node_disk(image, node_dir / NODE_DISK)
        return NodeRuntime(plan=planned, accel=accel,
                           domain=domain.domain_name(self.run_id, node.name),
                           console=node_dir / NODE_CONSOLE, initrd=initrd, disk=disk,
                           timeouts=self.base_timeouts.for_accel(accel))

    def _reserve_host_pages(self) -> None:
        """Host 1 GiB pages for every node backed by them, before anything boots."""
        backed = [n for n in self.topology.nodes if n.backing == "hugepages-1G"]
        pages = sum(host_pages_needed(n) for n in backed)
        if pages:
            with self.bus.phase("host-pages", ",".join(n.name for n in backed),
                                f"{pages} x 1G") as t:
                self._host_resources.enter_context(
                    hugepages.hugepage_pool(pages, run_id=self.run_id, report=t.info))
            self.host_pages = pages
            self._write_state("starting")  # reap gives the pages back if this process dies

    def _accel(self, node: Node, kernel: Kernel, image: Image) -> str:
        def probe() -> bool:
            with self.bus.phase("accel-probe", node.name, "does KVM boot a guest here?"):
                return accel.kvm_works(kernel.probe_image, image.path, BOOTED_MARK,
                                       self.cache, self.base_timeouts.accel_probe)
        return accel.resolve_accel(node.accel, probe)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> Lab:
        self.started_at = time.monotonic()
        self._claim_run_dir()
        self.exits.start()
        try:
            if self.plan is None:
                self.plan = plans.make(self.topology, self.cache, self.bus)
            for planned in self.plan.nodes:
                self.nodes[planned.node.name] = self._prepare_node(planned)
            self._reserve_host_pages()
            self._write_state("starting")
            booted = {}
            for rt in self.nodes.values():
                booted[rt.node.name] = self._create(rt)
            for rt in self.nodes.values():
                self._wait_ready(rt, booted[rt.node.name])
            self._write_state("running")
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, rt: NodeRuntime) -> float:
        conn = self._conn(rt.node.uri)
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            rt.port = domain.free_port()
            spec = rt.plan.domain_spec(run_id=self.run_id, node_dir=rt.console.parent,
                                       accel=rt.accel, ssh_port=rt.port)
            (rt.console.parent / "domain.xml").write_text(domain.domain_xml(spec))
            rt.console_from = rt.console.stat().st_size if rt.console.exists() else 0
            try:
                with self.bus.phase("create", rt.node.name, f"{rt.accel}, port {rt.port}"):
                    libvirt_calls.create(conn, spec)
                with suppress(LabError):  # no pid file: not a qemu:///system domain
                    self.exits.watch(rt.domain, libvirt_calls.qemu_pid(rt.domain))
                self._write_state("starting")
                return time.monotonic()
            except LabError as exc:
                if attempt == CREATE_ATTEMPTS or not libvirt_calls.is_transient_error(exc):
                    raise
                self.bus.phase("create", rt.node.name).info(
                    f"transient libvirt error, retry {attempt}/{CREATE_ATTEMPTS - 1}: {exc}")
        raise AssertionError("unreachable")

    def _wait_ready(self, rt: NodeRuntime, created: float) -> None:
        rt.timeouts, rt.speed = rt.timeouts.for_accel(rt.accel), None  # a new boot's speed
        stall = rt.timeouts.boot_bound(rt.timeouts.boot_stall)
        cap = rt.timeouts.boot_bound(rt.timeouts.boot_cap)
        with self.bus.phase("boot", rt.node.name, f"waiting for the SSH banner while the "
                                                  f"console grows: stall {stall}, cap {cap}"):
            readiness.wait_ssh_banner(
                rt.port, created + cap.seconds,
                lambda: libvirt_calls.is_active(self._conn(rt.node.uri), rt.domain),
                rt.node.name, rt.console, created, ready_mark=READY_MARK,
                console_from=rt.console_from, stall=stall.seconds)
        with self.bus.phase("ssh", rt.node.name):
            guest = Guest(rt.node.name, rt.port, self.run_dir / "id_ed25519",
                          rt.image.host_key, timeouts=rt.timeouts)
            guest.check("true")
        rt.boot_seconds = time.monotonic() - created
        with self.bus.phase("speed", rt.node.name, "a fixed workload timed in the guest") as t:
            rt.speed = guest.measure_speed(rt.image.kind)
            t.info(rt.speed.describe())
        rt.timeouts = guest.timeouts
        rt.guest = guest
        rt.boots += 1

    def _node(self, name: str) -> NodeRuntime:
        rt = self.nodes.get(name)
        if rt is None:
            raise LabError(f"node {name!r} is not in lab {self.run_id} "
                           f"(nodes: {', '.join(self.nodes)})")
        return rt

    def reboot(self, name: str) -> float:
        """Destroy node `name` and boot it again: memory no test has touched, a new root
        disk overlay, a new SSH port, the same console file. Returns the boot seconds."""
        return self._boot_again(self._node(name), "reboot")

    def revive(self, name: str) -> float:
        """Boot node `name` again after its QEMU exited under it, as a reboot does; the
        boot seconds."""
        return self._boot_again(self._node(name), "revive")

    def _boot_again(self, rt: NodeRuntime, phase: str) -> float:
        name = rt.node.name
        backed = rt.node.backing == "hugepages-1G"
        with self.bus.phase(phase, name, f"boot {rt.boots + 1}") as timer:
            try:
                # the pages the old domain frees stay in the pool until the new one has them
                pool = (hugepages.pool_locked(run_id=self.run_id, report=timer.info) if backed
                        else nullcontext())
                with pool:
                    libvirt_calls.destroy(self._conn(rt.node.uri), rt.domain)
                    if rt.guest is not None:
                        rt.guest.retire(f"rebooted into boot {rt.boots + 1}")
                        rt.guest = None
                    if rt.disk is not None:
                        rt.disk = nodefiles.node_disk(rt.image, rt.disk)
                    created = self._create(rt)
                try:
                    self._wait_ready(rt, created)
                except BaseException as exc:
                    try:  # a half-booted node holds no CPU or memory
                        libvirt_calls.destroy(self._conn(rt.node.uri), rt.domain)
                    except Exception as failed:
                        exc.add_note(f"destroying the half-booted {rt.domain} failed too: "
                                     f"{failed} ('hplab reap' retries)")
                    raise
            finally:
                self._write_state("running")
        return rt.boot_seconds

    def exit_cause(self, name: str) -> str | None:
        """None while node `name`'s domain runs; once its QEMU is gone, how it ended
        ("signal 9", "libvirt: crashed", ...)."""
        rt = self._node(name)
        status = self.exits.status(rt.domain)
        if status is None:
            if libvirt_calls.is_active(self._conn(rt.node.uri), rt.domain):
                return None
            if self.exits.listening:  # libvirt can see the exit before the event is read
                status = self.exits.status(rt.domain, wait=0.5)
        log = ""
        if rt.node.uri == "qemu:///system":
            with suppress(OSError):
                log = (QEMU_LOG_DIR / f"{rt.domain}.log").read_text(errors="replace")
        return describe_exit(status, log)

    def retire(self, name: str, why: str) -> None:
        """Node `name` is down (its QEMU exited): its Guest refuses every command, naming
        `why`, and state.json says so."""
        rt = self._node(name)
        if rt.guest is not None:
            rt.guest.retire(why)
            rt.guest = None
        self._write_state("running")

    def console_tail(self, name: str, lines: int = CONSOLE_TAIL_LINES) -> str:
        """The last console lines of node `name`'s current boot."""
        rt = self._node(name)
        try:
            _, data = read_from(rt.console, rt.console_from)
        except OSError:
            return f"(no console file at {rt.console})"
        return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

    def guest(self, name: str) -> Guest:
        rt = self.nodes.get(name)
        if rt is None or rt.guest is None:
            raise LabError(f"node {name!r} is not running in lab {self.run_id} "
                           f"(nodes: {', '.join(self.nodes)})")
        return rt.guest

    def stop(self) -> None:
        """Close connections and destroy every domain of this run; safe to call twice.
        Every step runs even when an earlier one fails; the failures are raised together."""
        errors: list[str] = []

        def attempt(what: str, action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as exc:  # every step of the teardown runs whatever failed
                errors.append(f"{what}: {exc}")

        for rt in self.nodes.values():
            if rt.guest is not None:
                attempt(f"close SSH to {rt.node.name}", rt.guest.close)
        if not self.keep:
            for rt in self.nodes.values():
                attempt(f"destroy {rt.domain}", functools.partial(self._destroy, rt))
            attempt("remove work files", lambda: remove_work_files(self.run_dir))
        # pages a kept VM still maps return to the host when it exits
        attempt("release host resources", self._host_resources.close)
        self.host_pages = 0
        if self.run_dir.exists():
            attempt("write state", lambda: self._write_state("kept" if self.keep else "stopped"))
            attempt("write events", self._write_events)
        for uri, conn in self._conns.items():
            attempt(f"close {uri}", conn.close)
        self._conns.clear()
        if self._registration is not None:
            attempt("end the run's registration",
                    functools.partial(self._registration.release, remove=True))
            self._registration = None
        if self._owner_lock is not None:
            attempt("release the run lock", self._owner_lock.release)
            self._owner_lock = None
        attempt("stop watching QEMU exits", self.exits.close)
        if errors:
            raise LabError("teardown: " + "; ".join(errors) + " ('hplab reap' retries)")

    def _destroy(self, rt: NodeRuntime) -> None:
        with self.bus.phase("destroy", rt.node.name):
            libvirt_calls.destroy(self._conn(rt.node.uri), rt.domain)

    def make_artifacts_dir(self) -> Path:
        """The run's artifacts directory, created when it does not exist yet."""
        path = self.run_dir / "artifacts"
        path.mkdir(exist_ok=True)
        return path

    def _write_events(self) -> None:
        events = [{"phase": e.phase, "subject": e.subject, "state": e.state,
                   "detail": e.detail, "elapsed": e.elapsed,
                   "at": round(e.at - self.started_at, 3)} for e in self.bus.history]
        write_events(self.run_dir, events)

    def _write_state(self, status: str) -> None:
        RunState(run_id=self.run_id, status=status, pid=os.getpid(), keep=self.keep,
                 topology=str(self.topology.path), host_pages=self.host_pages,
                 nodes={name: rt.state() for name, rt in self.nodes.items()}
                 ).write(self.run_dir)

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
