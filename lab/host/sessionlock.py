"""The host-wide lock of a lab session, so that two sessions never fight over libvirtd and
the host's 1 GiB pool.

A session is one whole pytest run with its xdist workers and the inner pytest sessions it
starts, or one `hplab up`, `hplab matrix`, `hplab repeat` or `hplab mutants` with every
pytest it starts. Its first process takes the flock on `<host lock dir>/session.lock`
(lab.lockfile; /run/lock/hplab) and exports HPLAB_SESSION=PID:TOKEN to the processes it
starts. A process that finds the variable checks that the lock's record names that pid
and token and that this pid is alive and holds the lock; then it is part of that session
and goes on without taking the lock. A variable that fails the check is ignored, saying
why: its process waits like any other. Another session waits, saying whom for, up to
--session-wait / $HPLAB_SESSION_WAIT seconds (SESSION_WAIT_S; 0 refuses at once), then
fails naming the holder. The lock goes with `release()` or with its holder's death.

A pytest-xdist controller calls `hold()` before its workers start and keeps the result
until they ended (`config.add_cleanup(lock.release)`): the workers inherit the variable
through their environment, so their `LabSession.lab()` goes on at once.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from lab import lockfile
from lab.errors import LabError
from lab.events import Event, EventBus
from lab.lockfile import Holder
from lab.paths import host_lock_dir
from lab.timeouts import SESSION_WAIT_S

ENV = "HPLAB_SESSION"
WAIT_ENV = "HPLAB_SESSION_WAIT"
LOCK_NAME = "session.lock"
WHO = "another hplab session"
HINT = f" (--session-wait SECONDS or ${WAIT_ENV} sets how long a session waits)"


def lock_path() -> Path:
    return host_lock_dir() / LOCK_NAME


def parse_wait(text: str) -> float:
    """Seconds >= 0 from `text`; ValueError saying what it must be otherwise."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise ValueError(f"must be a number of seconds >= 0, got {text!r}")
    return seconds


def wait_option(text: str) -> float:
    """argparse's `type` of --session-wait (the hplab command's and pytest's)."""
    try:
        return parse_wait(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def wait_seconds(option: float | None) -> float:
    """How long a session waits: --session-wait if given, else $HPLAB_SESSION_WAIT, else
    SESSION_WAIT_S."""
    if option is not None:
        return option
    text = os.environ.get(WAIT_ENV)
    if text is None:
        return SESSION_WAIT_S
    try:
        return parse_wait(text)
    except ValueError as exc:
        raise LabError(f"${WAIT_ENV} {exc}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True


def check_claim(claim: str, path: Path) -> Holder | str:
    """The holder whose session an HPLAB_SESSION value `claim` belongs to, or why it
    belongs to none."""
    pid_text, _, token = claim.partition(":")
    if not pid_text.isdigit() or not token:
        return "it is not PID:TOKEN"
    pid = int(pid_text)
    holder = lockfile.read_holder(path)
    if holder is None:
        return f"{path} records no holder"
    if holder.pid != pid or holder.token != token:
        return f"{path} is held by another session ({holder.describe()})"
    if not _alive(pid):
        return f"pid {pid} is not running"
    pids = lockfile.holding_pids(path)
    holds = lockfile.is_held(path) if pids is None else pid in pids
    if not holds:
        return f"pid {pid} does not hold {path}"
    return holder


def _reporter(bus: EventBus | None) -> lockfile.Report:
    if bus is None:
        return lockfile.to_stderr
    return lambda line: bus.emit(Event("session-lock", "host", "info", line))


@dataclass
class SessionLock:
    """This process's part in the host's lab session: it holds the lock (`held`), or it
    runs in the session of `holder`, which started it."""

    holder: Holder
    held: lockfile.Held | None = None

    @property
    def inherited(self) -> bool:
        return self.held is None

    def release(self) -> None:
        """Free the lock when this process holds it, and stop exporting it; safe twice."""
        if self.held is None or self.held.handle is None:
            return
        self.held.release()
        os.environ.pop(ENV, None)

    def __enter__(self) -> SessionLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold(*, run_id: str | None = None, lab_dir: Path | None = None,
         wait_s: float | None = None, bus: EventBus | None = None) -> SessionLock:
    """Join the session that started this process (a valid HPLAB_SESSION), else take the
    session lock, waiting as `wait_seconds(wait_s)` says, and export it to the processes
    this one starts. The wait is reported through `bus`, else on stderr."""
    report = _reporter(bus)
    path = lock_path()
    claim = os.environ.get(ENV)
    if claim:
        parent = check_claim(claim, path)
        if isinstance(parent, Holder):
            return SessionLock(parent)
        report(f"ignoring {ENV}={claim}: {parent}; taking the session lock like any session")
    token = secrets.token_hex(16)
    held = lockfile.acquire(path, Holder.this_process(run_id=run_id, lab_dir=lab_dir,
                                                      token=token),
                            wait_s=wait_seconds(wait_s), who=WHO, hint=HINT, report=report)
    os.environ[ENV] = f"{os.getpid()}:{token}"
    return SessionLock(held.holder, held)


def status() -> str:
    """Who holds the session lock since when, or that it is free."""
    path = lock_path()
    if not lockfile.is_held(path):
        return f"no lab session holds {path}"
    return lockfile.holder_text(path, "a lab session")
