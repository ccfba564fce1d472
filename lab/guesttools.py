"""Guest-side helper programs: C sources in lab/guestsrc, built static on the host."""

from __future__ import annotations

from pathlib import Path

from lab.guest import Guest
from lab.shell import digest, locked, run

SOURCES = Path(__file__).parent / "guestsrc"
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-Werror")


def source(name: str) -> Path:
    path = SOURCES / f"{name}.c"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in SOURCES.glob("*.c")))
        raise FileNotFoundError(f"no guest tool {name!r} in {SOURCES} (known: {known})")
    return path


def build(name: str, cache: Path) -> Path:
    """A static binary of lab/guestsrc/NAME.c, cached by its source and flags."""
    src = source(name)
    key = digest(src.read_bytes(), " ".join(CFLAGS))
    out = cache / "tools" / f"{name}-{key}"
    with locked(cache / "tools" / f".{name}.lock"):
        if not out.exists():
            tmp = out.with_suffix(".tmp")
            run(["gcc", *CFLAGS, "-o", tmp, src])
            tmp.rename(out)
    return out


def install(guest: Guest, name: str, cache: Path, remote_dir: str = "/usr/local/bin") -> str:
    """Build NAME and copy it into the guest; returns its path there."""
    binary = build(name, cache)
    remote = f"{remote_dir}/{name}"
    guest.check(f"mkdir -p {remote_dir}")
    guest.put(binary, remote, mode=0o755)
    return remote
