"""Running host commands with errors that name the command."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from lab.errors import BuildError


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
