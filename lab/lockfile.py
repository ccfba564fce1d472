"""Locks between processes: a flock on a file that records its holder, and a bounded wait
that says whom it waits for.

This module's one job: every lock the lab takes across processes (a cache entry's
builder, the host's 1 GiB pool, the host-wide session lock, a run's owner lock and its
host-wide registration). The holder writes a JSON record of itself into the file it
locked: pid, since when, its command, run id and directories. A process that finds the
lock taken says who holds it, since when and how long it will wait, at once and then
every LOCK_REPORT_EVERY_S, and after its bound raises a LabError naming the holder. A
flock lives as long as its holder's descriptor, which Python opens close-on-exec: a killed
holder frees the lock and leaves a stale record, which no one trusts without checking
that its pid still holds the lock (/proc/locks).
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lab import fields
from lab.errors import LabError
from lab.timeouts import LOCK_POLL_S, LOCK_REPORT_EVERY_S

PROC_LOCKS = Path("/proc/locks")
COMMAND_SHOWN = 100  # characters of a holder's command line in a message

Report = Callable[[str], None]


def to_stderr(line: str) -> None:
    print(f"hplab: {line}", file=sys.stderr, flush=True)


def _program(argv0: str) -> str:
    """`python -m pytest` runs pytest/__main__.py: call it pytest."""
    path = Path(argv0)
    return path.parent.name if path.name == "__main__.py" else path.name


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as the holder records it in the locked file."""

    pid: int
    since: float  # time.time() when it took the lock
    argv: tuple[str, ...] = ()
    run_id: str | None = None
    lab_dir: str | None = None
    run_dir: str | None = None
    token: str | None = None  # proves an inherited claim on the lock (lab.host.sessionlock)

    @classmethod
    def this_process(cls, *, run_id: str | None = None, lab_dir: Path | None = None,
                     run_dir: Path | None = None, token: str | None = None) -> Holder:
        return cls(os.getpid(), time.time(), tuple(sys.argv), run_id,
                   None if lab_dir is None else str(lab_dir),
                   None if run_dir is None else str(run_dir), token)

    def describe(self) -> str:
        """"pid 4242, run id 1a2b3c4d", else "pid 4242, hplab matrix --kernels ..."."""
        if self.run_id:
            return f"pid {self.pid}, run id {self.run_id}"
        if self.argv:
            command = shlex.join([_program(self.argv[0]), *self.argv[1:]])
            if len(command) > COMMAND_SHOWN:
                command = command[:COMMAND_SHOWN - 3] + "..."
            return f"pid {self.pid}, {command}"
        return f"pid {self.pid}"

    def clock(self) -> str:
        """When it took the lock, HH:MM:SS local time."""
        return time.strftime("%H:%M:%S", time.localtime(self.since))

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "since": self.since, "argv": list(self.argv),
                "run_id": self.run_id, "lab_dir": self.lab_dir, "run_dir": self.run_dir,
                "token": self.token}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> Holder:
        return cls(pid=fields.integer(data, "pid", source, low=1),
                   since=fields.number(data, "since", source),
                   argv=fields.strings(data, "argv", source),
                   run_id=fields.opt_string(data, "run_id", source, default=None),
                   lab_dir=fields.opt_string(data, "lab_dir", source, default=None),
                   run_dir=fields.opt_string(data, "run_dir", source, default=None),
                   token=fields.opt_string(data, "token", source, default=None))


def read_holder(path: Path) -> Holder | None:
    """The holder `path` records; None when it records none (never locked, or a holder in
    the middle of writing its record)."""
    try:
        return Holder.from_json(fields.load_object(path.read_text(), str(path), "holder"),
                                str(path))
    except (OSError, ValueError):
        return None


def holding_pids(path: Path) -> set[int] | None:
    """The pids that hold a flock on `path` (/proc/locks); None where that cannot be read."""
    try:
        st = path.stat()
        table = PROC_LOCKS.read_text()
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    for line in table.splitlines():
        words = line.split()  # "4: FLOCK  ADVISORY  WRITE 5720 fe:00:1483174 0 EOF"
        if len(words) >= 6 and words[1] == "FLOCK" and words[5] == inode:
            pids.add(int(words[4]))  # a waiter's line reads "4: -> FLOCK ..." and is skipped
    return pids


def _try_flock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _free(path: Path, *, remove: bool) -> bool:
    """Whether no live process holds `path`'s flock (a missing file is free). Checks by
    taking it without waiting and releasing it at once; with `remove`, removes the file
    while holding it, so that a process about to take it sees it replaced and opens the
    new one."""
    try:
        handle = path.open()
    except FileNotFoundError:
        return True
    with handle:
        if not _try_flock(handle):
            return False
        if remove:
            path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def is_held(path: Path) -> bool:
    """Whether a live process holds `path`'s flock."""
    return not _free(path, remove=False)


def remove_if_free(path: Path) -> bool:
    """Remove `path` unless a live process holds it; whether it is gone."""
    return _free(path, remove=True)


def holder_text(path: Path, who: str) -> str:
    """"WHO (pid P, run id R) holds PATH since HH:MM:SS", from the record when its pid holds
    the lock, else from /proc/locks alone."""
    holder = read_holder(path)
    pids = holding_pids(path)
    if holder is not None and (pids is None or holder.pid in pids):
        return f"{who} ({holder.describe()}) holds {path} since {holder.clock()}"
    if pids:
        shown = ", ".join(str(pid) for pid in sorted(pids))
        return f"{who} (pid {shown}, no record of itself) holds {path}"
    return f"{who} holds {path} (no record of the holder)"


@dataclass
class Held:
    """A lock this process holds, until `release`."""

    path: Path
    holder: Holder
    handle: IO[str] | None

    def release(self, *, remove: bool = False) -> None:
        """Unlock (first removing the file with `remove`); safe to call twice."""
        handle, self.handle = self.handle, None
        if handle is None:
            return
        with handle:
            if remove:
                self.path.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    try:
        directory.mkdir(parents=True)
        directory.chmod(0o755)
    except FileExistsError:
        pass  # another process made it first
    except OSError as exc:
        raise LabError(f"cannot create the lock directory {directory}: {exc.strerror}") from None


def _open(path: Path) -> IO[str]:
    try:
        return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+")
    except OSError as exc:
        raise LabError(f"cannot open the lock file {path}: {exc.strerror}") from None


def _same_file(handle: IO[str], path: Path) -> bool:
    """Whether `handle` is still the file at `path` (remove_if_free may have replaced it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


def _record(handle: IO[str], holder: Holder) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(holder.to_json()))
    handle.flush()


def acquire(path: Path, holder: Holder, *, wait_s: float, who: str = "another hplab process",
            hint: str = "", report: Report = to_stderr,
            report_every_s: float = LOCK_REPORT_EVERY_S) -> Held:
    """Take `path`'s flock and record `holder` in it. While another process holds it, wait up
    to `wait_s` seconds (0: not at all), reporting "WHO (pid, run id) holds PATH since
    HH:MM:SS; waiting up to N s" at once and every `report_every_s`; then LabError naming
    the holder, with `hint` (how to wait longer) at its end."""
    _make_dir(path.parent)
    started = time.monotonic()
    next_report = started
    reported = False
    while True:
        handle = _open(path)
        if _try_flock(handle):
            if _same_file(handle, path):
                _record(handle, holder)
                if reported:
                    report(f"got {path} after {time.monotonic() - started:.0f} s")
                return Held(path, holder, handle)
            handle.close()
            continue
        handle.close()
        waited = time.monotonic() - started
        held_by = holder_text(path, who)
        if waited >= wait_s:
            gave_up = "not waiting for it" if wait_s == 0 else f"gave up after {wait_s:.0f} s"
            raise LabError(f"{held_by}; {gave_up}{hint}")
        if time.monotonic() >= next_report:
            since = f" (waited {waited:.0f} s)" if reported else ""
            report(f"{held_by}; waiting up to {wait_s:.0f} s{since}")
            reported = True
            next_report += report_every_s
        time.sleep(min(LOCK_POLL_S, wait_s - waited))


@contextmanager
def locked(path: Path, *, wait_s: float, holder: Holder | None = None,
           who: str = "another hplab process", hint: str = "",
           report: Report = to_stderr) -> Iterator[Held]:
    """`acquire` for the length of a with block (the holder: this process by default)."""
    held = acquire(path, holder or Holder.this_process(), wait_s=wait_s, who=who, hint=hint,
                   report=report)
    try:
        yield held
    finally:
        held.release()
