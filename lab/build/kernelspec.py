"""Kernel specs, checked in form only (whether one exists is its flavour's business):
`debian:SERIES[-FLAVOUR]` or `debian:RELEASE` (lab.build.debiankernel), `debug:SERIES`
(lab.build.debugkernel) and `local:DIR` (lab.build.localkernel)."""

from __future__ import annotations

import re
from pathlib import Path

DEBIAN = "debian:"
LOCAL = "local:"
DEBUG = "debug:"  # built from Debian's linux-source with KASAN and lockdep
DEBUG_SPEC = re.compile(r"^debug:\d+\.\d+$")
DEBIAN_SPEC = re.compile(r"^debian:\d+\.\d+(?:[.+~-][0-9a-z]+)*$")


def spec_is_valid(spec: str) -> bool:
    """Whether `spec` is a kernel spec in form; whether it exists is resolution's business."""
    if spec.startswith(LOCAL):
        path = spec.removeprefix(LOCAL)
        return bool(path.strip()) and not any(c in path for c in "\n\r\0")
    return bool(DEBIAN_SPEC.match(spec) or DEBUG_SPEC.match(spec))


def local_spec(directory: str | Path, base: Path) -> str:
    """'local:DIR' with DIR made absolute against `base` (the topology file's directory
    or the working directory of a --kernel option)."""
    return f"{LOCAL}{(base / Path(directory).expanduser()).resolve()}"

