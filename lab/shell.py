"""Running host commands with errors that name the command."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lab.errors import BuildError, LabError


def run(argv: Sequence[str | Path], *, cwd: Path | None = None, timeout: float = 600,
        env: dict[str, str] | None = None, error: type[Exception] = BuildError) -> str:
    """Run a host command; on failure raise `error` with the command and its stderr tail."""
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, check=False)
    except FileNotFoundError:
        raise error(f"command not found: {args[0]} (run 'hplab host prepare')") from None
    except subprocess.TimeoutExpired:
        raise error(f"{' '.join(args)} did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise error(f"{' '.join(args)} failed with exit status {proc.returncode}:\n{tail}")
    return proc.stdout


def digest(*parts: str | bytes) -> str:
    """A short stable hash of everything that shapes a cached artifact."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


LOCK_WAIT_S = 1800.0  # longer than any build or download a lock guards


@contextmanager
def locked(path: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Serialise builders of one cache entry across processes; LabError after `wait_s`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LabError(f"{path}: still locked by another process after "
                                   f"{wait_s:.0f}s (fuser -v {path} names it)") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
