"""Host-wide registrations of live runs, so that `hplab reap` on any lab directory leaves
the domains of a run that still lives alone.

A run's owner holds `<host lock dir>/runs/<run id>.lock` (lab.lockfile) from claiming its
run directory until its teardown, the record naming that directory. A registration whose
owner died is free, and whoever looks next removes it.
"""

from __future__ import annotations

from pathlib import Path

from lab import lockfile
from lab.lockfile import Holder
from lab.paths import host_lock_dir

REGISTRY = "runs"


def registration(run_id: str) -> Path:
    return host_lock_dir() / REGISTRY / f"{run_id}.lock"


def register(run_id: str, run_dir: Path, lab_dir: Path) -> lockfile.Held:
    """Register run `run_id` as live until the returned lock's `release(remove=True)`."""
    return lockfile.acquire(registration(run_id),
                            Holder.this_process(run_id=run_id, lab_dir=lab_dir,
                                                run_dir=run_dir),
                            wait_s=0, who=f"another process registered as run {run_id}")


def live_runs() -> dict[str, Holder]:
    """Every run registered live on this host: its run id and its owner's record (run
    directory, pid). Registrations of runs whose owner died are removed."""
    directory = host_lock_dir() / REGISTRY
    if not directory.is_dir():
        return {}
    live = {}
    for path in sorted(directory.glob("*.lock")):
        run_id = path.name.removesuffix(".lock")
        if lockfile.remove_if_free(path):
            continue
        live[run_id] = lockfile.read_holder(path) or Holder(pid=0, since=0.0, run_id=run_id)
    return live


def describe(run_id: str, holder: Holder) -> str:
    """"run 1a2b3c4d is live (pid 4242, run directory /var/tmp/hplab/runs/1a2b3c4d)"."""
    where = f", run directory {holder.run_dir}" if holder.run_dir else ""
    owner = f"pid {holder.pid}" if holder.pid else "no record of its owner"
    return f"run {run_id} is live ({owner}{where})"
