"""The runs left behind: the catalogue of run directories and the reaping of dead runs.

This module's one job: find what earlier runs left (run directories, libvirt domains,
QEMU processes, host 1 GiB pages) and remove what no live or kept run owns. A run is live
while its owner holds its owner lock, or its host-wide registration (lab.host.liveruns),
which covers runs of every lab directory on the host. The engine (lab.engine) runs a live
lab; this module deals with the ones that ended.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lab.host import hugepages, liveruns
from lab.lockfile import Holder
from lab.paths import runs_dir
from lab.rundir import (
    STATE_FILE,
    RunState,
    owner_holds_lock,
    read_state,
    remove_work_files,
)
from lab.vm import domain, libvirt_calls


@dataclass(frozen=True)
class RunRecord:
    """A run directory and what its state.json says."""

    run_id: str
    path: Path
    state: RunState

    def probe_owner_lock(self) -> bool:
        """Whether the run's owner still runs: takes the owner's flock without waiting
        (and releases it at once) to see whether a live process holds it."""
        return owner_holds_lock(self.path)


def runs(base_dir: Path) -> list[RunRecord]:
    """Every run directory with a state.json, oldest first."""
    records = []
    for path in sorted(runs_dir(base_dir).iterdir(), key=lambda p: p.stat().st_mtime):
        if (path / STATE_FILE).exists():
            records.append(RunRecord(path.name, path, read_state(path)))
    return records


def leaked_host_pages(state: RunState) -> int:
    """Host 1 GiB pages a run whose owner died still holds in the pool."""
    if state.status not in ("starting", "running"):
        return 0
    return state.host_pages


@dataclass
class Reaped:
    """What a reap removed, and what it left alone with the reason."""

    removed: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)  # domain -> why it stays


def run_of(domain_name: str) -> str:
    """The run id in a lab domain's name, `hplab-<run id>-<node>`."""
    return domain_name.removeprefix(domain.DOMAIN_PREFIX).split("-", 1)[0]


def _why_owned(record: RunRecord, live: dict[str, Holder], include_kept: bool) -> str | None:
    if record.run_id in live:
        return liveruns.describe(record.run_id, live[record.run_id])
    if record.probe_owner_lock():
        return (f"run {record.run_id} is live (pid {record.state.pid}, run directory "
                f"{record.path})")
    if record.state.status == "kept" and not include_kept:
        return f"run {record.run_id} was kept on purpose ('hplab down' or 'hplab reap --all')"
    return None


def reap(base_dir: Path, *, include_kept: bool = False, uri: str = "qemu:///system") -> Reaped:
    """Destroy domains and work files of runs whose owner is gone, and lab domains of no
    run. A domain whose run is live anywhere on the host (its owner lock here, or its
    host-wide registration from any lab directory) or that was kept is left alone."""
    reaped = Reaped()
    conn = libvirt_calls.connect(uri)
    try:
        live_domains = set(libvirt_calls.lab_domains(conn))
        live = liveruns.live_runs()  # after the listing: a listed domain's run registered first
        for record in runs(base_dir):
            domains = record.state.domains()
            why = _why_owned(record, live, include_kept)
            if why is not None:
                reaped.left.update((name, why) for name in sorted(domains & live_domains))
                continue
            for name in sorted(domains & live_domains):
                libvirt_calls.destroy(conn, name)
                reaped.removed.append(name)
            remove_work_files(record.path)
            leaked = leaked_host_pages(record.state)
            if leaked:
                hugepages.release_host_pages(leaked)
                record.state.host_pages = 0
            if record.state.status not in ("stopped", "reaped"):
                record.state.status = "reaped"
                record.state.write(record.path)
        known_runs = {r.run_id for r in runs(base_dir)}
        for name in sorted(live_domains - set(reaped.left) - set(reaped.removed)):
            run_id = run_of(name)
            if run_id in live:
                reaped.left[name] = liveruns.describe(run_id, live[run_id])
            elif run_id not in known_runs or include_kept:
                libvirt_calls.destroy(conn, name)
                reaped.removed.append(name)
    finally:
        conn.close()
    return reaped


def owned_runs(base_dir: Path) -> set[str]:
    """Run ids of runs whose owner still runs (here or, registered, from any lab
    directory) or that were kept on purpose."""
    return {r.run_id for r in runs(base_dir)
            if r.probe_owner_lock() or r.state.status == "kept"} | set(liveruns.live_runs())


def stray_qemu(processes: list[str], owned: set[str]) -> list[str]:
    """QEMU command lines of lab domains of no run in `owned` (run ids)."""
    return [line for line in processes
            if not any(f"guest={domain.DOMAIN_PREFIX}{run_id}-" in line for run_id in owned)]


def remove_run(record: RunRecord) -> None:
    shutil.rmtree(record.path, ignore_errors=True)
