"""Guest-side helper programs: C sources in lab/guestsrc, built static on the host."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lab.cache import CacheEntry
from lab.guest.ssh import Guest
from lab.paths import GUEST_SOURCES
from lab.shell import digest, run

SOURCES = GUEST_SOURCES
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-Werror")
# Flags a tool needs besides CFLAGS, by tool name (after CFLAGS on the command line).
EXTRA_FLAGS: dict[str, tuple[str, ...]] = {
    "vrhp_deepfuzz": ("-pthread",),
}


def flags(name: str) -> tuple[str, ...]:
    """The compiler flags of guest tool NAME: CFLAGS and its own extra ones."""
    return (*CFLAGS, *EXTRA_FLAGS.get(name, ()))


def source(name: str) -> Path:
    path = SOURCES / f"{name}.c"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in SOURCES.glob("*.c")))
        raise FileNotFoundError(f"no guest tool {name!r} in {SOURCES} (known: {known})")
    return path


def tool_entry(cache: Path, name: str, key: str) -> CacheEntry:
    """<cache>/tools/<name>-<key>: the binary itself."""
    return CacheEntry(cache, "tools", f"{name}-{key}", lock=f".{name}.lock")


def build(name: str, cache: Path, include_dirs: Sequence[Path] = ()) -> Path:
    """A static binary of lab/guestsrc/NAME.c, cached by its source, the headers it can
    include from `include_dirs` and its flags (`flags(name)`)."""
    src = source(name)
    for directory in include_dirs:
        if not directory.is_dir():
            raise FileNotFoundError(f"guest tool {name!r}: include directory {directory} "
                                    "does not exist")
    headers = sorted(h for d in include_dirs for h in d.glob("*.h"))
    includes = [f"-I{d}" for d in include_dirs]
    cflags = flags(name)
    key = digest(src.read_bytes(), *(h.read_bytes() for h in headers), " ".join(cflags))

    def compile_to(out: Path) -> None:
        run(["gcc", *cflags, *includes, "-o", out, src])

    return tool_entry(cache, name, key).build(compile_to)


def install(guest: Guest, name: str, cache: Path, remote_dir: str = "/usr/local/bin",
            include_dirs: Sequence[Path] = ()) -> str:
    """Build NAME and copy it into the guest; returns its path there."""
    binary = build(name, cache, include_dirs)
    remote = f"{remote_dir}/{name}"
    if guest.installed.get(remote) == binary.name:  # copied in this boot already
        return remote
    guest.check(f"mkdir -p {remote_dir}")
    guest.put(binary, remote, mode=0o755)
    guest.installed[remote] = binary.name
    return remote
