"""Where the lab keeps its cache, run directories and host-wide locks."""

from __future__ import annotations

import os
from pathlib import Path

# Under /var/tmp, not a home directory: QEMU runs as an unprivileged user and must be
# able to traverse to kernels, initramfs files and console logs.
DEFAULT_LAB_DIR = Path("/var/tmp/hplab")
# Host-wide locks (the session lock, the 1 GiB pool, live runs): on a tmpfs, so that none
# outlives a reboot.
DEFAULT_HOST_LOCK_DIR = Path("/run/lock/hplab")


def lab_dir(explicit: Path | str | None = None) -> Path:
    if explicit:
        return Path(explicit).resolve()
    env = os.environ.get("HPLAB_DIR")
    return Path(env).resolve() if env else DEFAULT_LAB_DIR


def host_lock_dir() -> Path:
    """$HPLAB_LOCK_DIR or /run/lock/hplab: every lab process on the host must agree on it."""
    env = os.environ.get("HPLAB_LOCK_DIR")
    return Path(env).resolve() if env else DEFAULT_HOST_LOCK_DIR


def cache_dir(base: Path) -> Path:
    path = base / "cache"
    path.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    return path


def runs_path(base: Path) -> Path:
    """Where the run directories are, without making it."""
    return base / "runs"


def runs_dir(base: Path) -> Path:
    path = runs_path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path

LAB_PACKAGE = Path(__file__).resolve().parent
# C sources the lab builds for guests: static tools and the allocation-probe module
GUEST_SOURCES = LAB_PACKAGE / "guestsrc"
# the module under test, beside lab/ in the repository
KMOD_SOURCE = LAB_PACKAGE.parent / "kmod"
