"""Content-addressed cache entries: a key names a path under the cache; the entry is built
once, under a lock, into a temporary sibling that is renamed into place, and reused after.

Every builder of the lab (kernels, images, modules, guest tools) keeps its products in a
`CacheEntry`; `lookup` answers from the cache alone, `build` fills the entry when absent.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lab.errors import BuildError
from lab.lockfile import locked
from lab.timeouts import CACHE_LOCK_WAIT_S

STAGE = "entry"  # the name of the entry inside its temporary build directory


class NotCached(BuildError):
    """An entry a lookup-only caller needs is not in the cache."""

    def __init__(self, what: str, path: Path, command: str | None = None, *,
                 message: str | None = None) -> None:
        self.what, self.path, self.command = what, path, command
        super().__init__(message or self.describe())

    def describe(self, command: str | None = None) -> str:
        how = command or self.command
        return (f"{self.what} is not in the cache ({self.path})"
                + (f"; '{how}' builds it" if how else ""))


class CacheEntry:
    """<root>/<kind>/<name>: a directory (complete once it holds `marker`) or, without a
    marker, a single file. The lock is <root>/<kind>/<lock>, `.<name>.lock` unless given."""

    def __init__(self, root: Path, kind: str, name: str, *, marker: str | None = None,
                 lock: str | None = None, wait_s: float = CACHE_LOCK_WAIT_S) -> None:
        self.parent = root / kind
        self.name = name
        self.path = self.parent / name
        self.marker = marker
        self.lock_path = self.parent / (lock or f".{name}.lock")
        self.wait_s = wait_s

    def __repr__(self) -> str:
        return f"CacheEntry({self.path})"

    def _complete(self, path: Path) -> bool:
        return (path / self.marker).is_file() if self.marker else path.is_file()

    def ready(self) -> bool:
        return self._complete(self.path)

    def lookup(self) -> Path | None:
        """The entry's path when it is complete, else None; never builds."""
        return self.path if self.ready() else None

    def require(self, what: str, command: str | None = None) -> Path:
        """The entry's path, or NotCached naming `what` and the `command` that builds it."""
        if not self.ready():
            raise NotCached(what, self.path, command)
        return self.path

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the entry's lock (one builder at a time, across processes)."""
        with locked(self.lock_path, wait_s=self.wait_s):
            yield

    def build(self, fn: Callable[[Path], object]) -> Path:
        """The entry's path, built first when absent: `fn(stage)` creates `stage` (a
        directory holding the marker, or the file) in a temporary directory beside the
        entry, which is renamed into place; the temporary directory goes on every path."""
        with self.locked():
            if self.ready():
                return self.path
            self.parent.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(dir=self.parent, prefix=f".{self.name}.build-"))
            try:
                stage = scratch / STAGE
                fn(stage)
                if not self._complete(stage):
                    raise BuildError(f"{self.path}: the build left no "
                                     f"{self.marker or 'file'} in {stage}")
                if self.path.is_dir() and not self.path.is_symlink():
                    shutil.rmtree(self.path)  # an incomplete entry an interrupted build left
                elif self.path.exists() or self.path.is_symlink():
                    self.path.unlink()
                stage.rename(self.path)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return self.path
