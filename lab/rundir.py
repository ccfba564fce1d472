"""The files of a run directory, `<lab dir>/runs/<run id>/`, read and written in one place.

This module's one job: own the shape of the files a run leaves behind. ``state.json`` is
a typed :class:`RunState` (its nodes :class:`NodeState`), read strictly with errors that
name the file and the field; ``results.json`` is a list of :class:`ResultEntry`;
``suite.json`` the run as a JUnit testsuite, :class:`SuiteRecord`; the owner's
``owner.lock``; and the work files only live VMs need. Every file is written
atomically (a temporary file renamed over the old one), so a reader never sees half of
one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import fields, lockfile
from lab.plan import NODE_DISK, NODE_INITRD

STATE_FILE = "state.json"
RESULTS_FILE = "results.json"
EVENTS_FILE = "events.json"
SUITE_FILE = "suite.json"
OWNER_LOCK = "owner.lock"
WORK_FILES = ("id_ed25519", "id_ed25519.pub")
STATUSES = ("starting", "running", "kept", "stopped", "reaped")


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path` and rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# -- state.json ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SpeedState:
    """A boot's measured speed (lab.timeouts.Speed), rounded as state.json keeps it."""

    loop_s: float
    memory_s: float
    unclamped: float

    def to_json(self) -> dict[str, Any]:
        return {"loop_s": self.loop_s, "memory_s": self.memory_s, "unclamped": self.unclamped}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> SpeedState:
        return cls(loop_s=fields.number(data, "loop_s", source),
                   memory_s=fields.number(data, "memory_s", source),
                   unclamped=fields.number(data, "unclamped", source))


@dataclass
class NodeState:
    """One node of a run as state.json records it."""

    domain: str
    port: int
    uri: str
    accel: str
    kernel: str
    image: str
    host_key: str
    console: str
    backing: str = "none"
    boot_seconds: float = 0.0
    boots: int = 0
    up: bool = False
    slowdown: float | None = None
    speed: SpeedState | None = None

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "port": self.port, "uri": self.uri,
                "accel": self.accel, "kernel": self.kernel, "image": self.image,
                "host_key": self.host_key, "backing": self.backing, "console": self.console,
                "boot_seconds": self.boot_seconds, "boots": self.boots, "up": self.up,
                "slowdown": self.slowdown,
                "speed": self.speed.to_json() if self.speed is not None else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> NodeState:
        """Strictly; fields later versions added (backing, boots, up, speed) default."""
        speed = fields.opt_obj(data, "speed", source, default=None)
        slowdown = None if data.get("slowdown") is None else fields.number(
            data, "slowdown", source)
        return cls(domain=fields.string(data, "domain", source),
                   port=fields.integer(data, "port", source, low=0),
                   uri=fields.string(data, "uri", source),
                   accel=fields.string(data, "accel", source),
                   kernel=fields.string(data, "kernel", source),
                   image=fields.string(data, "image", source),
                   host_key=fields.string(data, "host_key", source),
                   console=fields.string(data, "console", source),
                   backing=fields.string(data, "backing", source, default="none"),
                   boot_seconds=fields.number(data, "boot_seconds", source, default=0.0),
                   boots=fields.integer(data, "boots", source, low=0, default=0),
                   up=fields.boolean(data, "up", source, default=False),
                   slowdown=slowdown,
                   speed=None if speed is None else SpeedState.from_json(
                       speed, f"{source}.speed"))


@dataclass
class RunState:
    """What state.json says about a run: its status, owner pid and nodes."""

    run_id: str
    status: str
    pid: int
    keep: bool
    topology: str
    host_pages: int = 0  # host 1 GiB pages the run holds in the pool
    nodes: dict[str, NodeState] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "pid": self.pid,
                "keep": self.keep, "topology": self.topology, "host_pages": self.host_pages,
                "nodes": {name: node.to_json() for name, node in self.nodes.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> RunState:
        nodes = fields.obj(data, "nodes", source, default={})
        for name, node in nodes.items():
            if not isinstance(node, dict):
                raise fields.FieldError(f"{source}.nodes", str(name), "must be an object")
        return cls(run_id=fields.string(data, "run_id", source),
                   status=fields.choice(data, "status", source, STATUSES),
                   pid=fields.integer(data, "pid", source),
                   keep=fields.boolean(data, "keep", source),
                   topology=fields.string(data, "topology", source),
                   host_pages=fields.integer(data, "host_pages", source, low=0, default=0),
                   nodes={name: NodeState.from_json(node, f"{source}.nodes.{name}")
                          for name, node in nodes.items()})

    def domains(self) -> set[str]:
        return {node.domain for node in self.nodes.values()}

    def write(self, run_dir: Path) -> None:
        """state.json in `run_dir`, atomically."""
        write_atomic(run_dir / STATE_FILE, json.dumps(self.to_json(), indent=1))


def read_state(run_dir: Path) -> RunState:
    """The state.json of `run_dir`; ValueError naming the file (and field) when it is not
    what the engine writes."""
    path = run_dir / STATE_FILE
    return RunState.from_json(fields.load_object(path.read_text(), str(path), "state"),
                              str(path))


# -- results.json --------------------------------------------------------------------------
@dataclass
class ResultEntry:
    """One test in results.json; `message` and `reason` are left out while None."""

    nodeid: str
    outcome: str = "passed"
    duration: float = 0.0
    properties: dict[str, str] = field(default_factory=dict)
    message: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"nodeid": self.nodeid, "outcome": self.outcome,
                                 "duration": self.duration}
        if self.message is not None:
            entry["message"] = self.message
        if self.reason is not None:
            entry["reason"] = self.reason
        entry["properties"] = dict(self.properties)
        return entry


def write_results(run_dir: Path, entries: Iterable[ResultEntry]) -> None:
    """results.json in `run_dir`, atomically."""
    write_atomic(run_dir / RESULTS_FILE, json.dumps([e.to_json() for e in entries], indent=1))


def write_events(run_dir: Path, events: list[dict[str, Any]]) -> None:
    """events.json in `run_dir`, atomically."""
    write_atomic(run_dir / EVENTS_FILE, json.dumps(events, indent=1))


# -- suite.json: the run as one JUnit testsuite ---------------------------------------------
SUITE_PREFIX = "hplab"
REQUIRED_SUITE_PROPERTIES = ("topology", "kernel", "host")
OPTIONAL_SUITE_PROPERTIES = ("kernel_release", "run_id", "run_dir", "shard")


@dataclass(frozen=True)
class SuiteRecord:
    """What names a run among shards and kernels: the testsuite name and properties of
    its JUnit file, and its suite.json. Several values (nodes of different kernels) are
    joined by ", "; a value the run never learnt (no lab booted, not sharded) is ""."""

    topology: str  # the topology file as the session was given it
    kernel: str  # the nodes' kernel specs, e.g. debian:6.1
    kernel_release: str  # the releases they resolved to, e.g. 6.1.0-57-amd64
    host: str  # the machine's hostname
    run_id: str
    run_dir: str
    shard: str  # pytest-split's group/splits, e.g. 2/3
    seconds: float = 0.0  # wall time of the session up to its end (JUnit's testsuite time)

    @property
    def name(self) -> str:
        """The testsuite name, the same for every shard of one topology and kernel."""
        return f"{SUITE_PREFIX} {Path(self.topology).name} {self.kernel}"

    def properties(self) -> list[tuple[str, str]]:
        """The testsuite properties: the required ones, then those the run has."""
        values = self.to_json()
        return [(name, str(values[name])) for name in REQUIRED_SUITE_PROPERTIES] + [
            (name, str(values[name])) for name in OPTIONAL_SUITE_PROPERTIES if values[name]]

    @classmethod
    def from_properties(cls, properties: Mapping[str, str], seconds: float,
                        source: str) -> SuiteRecord:
        """From a testsuite's properties; FieldError naming `source` without the lab's."""
        missing = [name for name in REQUIRED_SUITE_PROPERTIES if name not in properties]
        if missing:
            raise fields.FieldError(source, missing[0], "is missing: not a testsuite of an "
                                    "hplab run (its properties: "
                                    f"{', '.join(properties) or 'none'})")
        return cls.from_json({**properties, "seconds": seconds}, source)

    def to_json(self) -> dict[str, Any]:
        return {"topology": self.topology, "kernel": self.kernel,
                "kernel_release": self.kernel_release, "host": self.host,
                "run_id": self.run_id, "run_dir": self.run_dir, "shard": self.shard,
                "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> SuiteRecord:
        def optional(name: str) -> str:
            return fields.string(data, name, source, default="")

        return cls(topology=fields.string(data, "topology", source),
                   kernel=fields.string(data, "kernel", source),
                   kernel_release=optional("kernel_release"),
                   host=fields.string(data, "host", source),
                   run_id=optional("run_id"), run_dir=optional("run_dir"),
                   shard=optional("shard"),
                   seconds=fields.number(data, "seconds", source, default=0.0))


def write_suite(run_dir: Path, suite: SuiteRecord) -> None:
    """suite.json in `run_dir`, atomically."""
    write_atomic(run_dir / SUITE_FILE, json.dumps(suite.to_json(), indent=1))


def read_suite(run_dir: Path) -> SuiteRecord:
    """The suite.json of `run_dir`; ValueError naming the file (and field)."""
    path = run_dir / SUITE_FILE
    return SuiteRecord.from_json(fields.load_object(path.read_text(), str(path), "suite"),
                                 str(path))


# -- the owner's lock and the work files ---------------------------------------------------
def hold_owner_lock(run_dir: Path, run_id: str) -> lockfile.Held:
    """Take the run's owner lock (the run directory is new: no one else takes it); held
    until the returned lock is released."""
    return lockfile.acquire(run_dir / OWNER_LOCK,
                            lockfile.Holder.this_process(run_id=run_id, run_dir=run_dir),
                            wait_s=0, who=f"another owner of {run_dir}")


def owner_holds_lock(run_dir: Path) -> bool:
    """Whether a live process holds `run_dir`'s owner lock."""
    return lockfile.is_held(run_dir / OWNER_LOCK)


def remove_work_files(run_dir: Path) -> None:
    """What a run needs only while its VMs live: keys, per-VM initrds and disks."""
    for name in WORK_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for initrd in run_dir.glob(f"*/{NODE_INITRD}"):
        initrd.unlink(missing_ok=True)
    for disk in run_dir.glob(f"*/{NODE_DISK}"):
        disk.unlink(missing_ok=True)
