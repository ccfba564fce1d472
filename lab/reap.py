"""The runs left behind: the catalogue of run directories and the reaping of dead runs.

This module's one job: find what earlier runs left (run directories, libvirt domains,
QEMU processes, host 1 GiB pages) and remove what no live or kept run owns. The engine
(lab.engine) runs a live lab; this module deals with the ones that ended.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lab.host import hugepages
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


def reap(base_dir: Path, *, include_kept: bool = False, uri: str = "qemu:///system") -> list[str]:
    """Destroy domains and work files of runs whose owner is gone. Returns what it removed."""
    removed: list[str] = []
    conn = libvirt_calls.connect(uri)
    try:
        live_domains = set(libvirt_calls.lab_domains(conn))
        owned: set[str] = set()
        for record in runs(base_dir):
            domains = record.state.domains()
            kept = record.state.status == "kept"
            if record.probe_owner_lock() or (kept and not include_kept):
                owned |= domains
                continue
            for name in sorted(domains & live_domains):
                libvirt_calls.destroy(conn, name)
                removed.append(name)
            remove_work_files(record.path)
            leaked = leaked_host_pages(record.state)
            if leaked:
                hugepages.release_host_pages(leaked)
                record.state.host_pages = 0
            if record.state.status not in ("stopped", "reaped"):
                record.state.status = "reaped"
                record.state.write(record.path)
        known_runs = {r.run_id for r in runs(base_dir)}
        for name in sorted(live_domains - owned - set(removed)):
            run_id = name.removeprefix(domain.DOMAIN_PREFIX).split("-", 1)[0]
            if run_id not in known_runs or include_kept:
                libvirt_calls.destroy(conn, name)
                removed.append(name)
    finally:
        conn.close()
    return removed


def owned_domains(base_dir: Path) -> set[str]:
    """Domains of runs whose owner still runs, or that were kept on purpose."""
    return {domain for r in runs(base_dir)
            if r.probe_owner_lock() or r.state.status == "kept"
            for domain in r.state.domains()}


def stray_qemu(processes: list[str], owned: set[str]) -> list[str]:
    """QEMU command lines of lab domains no live or kept run owns."""
    return [line for line in processes
            if not any(f"guest={domain}," in line for domain in owned)]


def remove_run(record: RunRecord) -> None:
    shutil.rmtree(record.path, ignore_errors=True)
