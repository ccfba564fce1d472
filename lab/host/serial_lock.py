"""The lock of the serial phase: a test that takes down a host-wide daemon (libvirtd) holds
it exclusively, every other lab test holds it shared for its duration.

Two flocks make it fair: a turnstile and the lock proper. A taker passes the turnstile
(exclusively, for a moment) before it takes the lock; an exclusive taker keeps the
turnstile while the shared holders drain, so no new shared holder gets past it and the
exclusive one is not starved. Each wait is bounded: past its bound the error names who
holds the lock (each holder leaves a note with its pid, until it releases). Standard
library only, like the rest of lab.host.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

from lab.timeouts import LOCK_POLL_S


class SerialLockTimeout(Exception):
    """The lock stayed held past the wait's bound; the message names its holders."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SerialLock:
    """The lock file `path`, its turnstile `path`.turnstile and the holders' notes in
    `path`.holders/<pid>."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.turnstile = path.with_name(f"{path.name}.turnstile")
        self.notes = path.with_name(f"{path.name}.holders")

    def holders(self) -> list[str]:
        """What each live holder wrote when it took the lock."""
        found = []
        for note in sorted(self.notes.glob("*")) if self.notes.is_dir() else []:
            if note.name.isdigit() and _alive(int(note.name)):
                try:
                    found.append(note.read_text().strip())
                except OSError:  # released meanwhile
                    continue
        return found

    @contextmanager
    def held(self, exclusive: bool, who: str, wait_s: float,
             waiting: Callable[[list[str]], None] | None = None) -> Iterator[float]:
        """Hold the lock (exclusively or shared) as `who`; yields the seconds waited.
        `waiting` hears the holders once when the lock is not free at once;
        SerialLockTimeout after `wait_s`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.notes.mkdir(exist_ok=True)
        started = time.monotonic()
        deadline = started + wait_s
        told = waiting is None
        with ExitStack() as stack:
            lock = stack.enter_context(self.path.open("a"))
            with self.turnstile.open("a") as turnstile:
                for handle, mode in ((turnstile, fcntl.LOCK_EX),
                                     (lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)):
                    while not self._try(handle, mode):
                        if not told and waiting is not None:
                            waiting(self.holders())
                            told = True
                        if time.monotonic() >= deadline:
                            raise SerialLockTimeout(
                                f"{self.path}: not free after {wait_s:.1f}s; held by "
                                f"{'; '.join(self.holders()) or 'no live holder left a note'}")
                        time.sleep(LOCK_POLL_S)
                # leaving the turnstile lets the next taker in
            note = self.notes / str(os.getpid())
            note.write_text(f"{who} (pid {os.getpid()}, "
                            f"{'exclusive' if exclusive else 'shared'})")
            stack.callback(note.unlink, missing_ok=True)
            yield time.monotonic() - started

    @staticmethod
    def _try(handle: IO[str], mode: int) -> bool:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
