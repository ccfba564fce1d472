"""Choosing the accelerator: whether a guest really boots under KVM on this host (a cached
probe boot), and resolving a node's `accel` setting to "kvm" or "tcg"."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from lab.errors import HostError
from lab.shell import digest, run
from lab.vm.domain import QEMU


def _qemu_version() -> str:
    return run([QEMU, "--version"], error=HostError).splitlines()[0]


def kvm_works(kernel: Path, initrd: Path, ready_mark: str, cache: Path,
              timeout: float) -> bool:
    """Whether a guest really boots under KVM here (a /dev/kvm can exist and hang).

    Boots the image once with -accel kvm and waits for the init's ready mark on the
    serial line. The verdict is cached per host kernel and QEMU version.
    """
    if not Path("/dev/kvm").exists():
        return False
    host = Path("/proc/sys/kernel/osrelease").read_text().strip()
    verdict = cache / f"accel-{digest(host, _qemu_version())}.json"
    if verdict.exists():
        return bool(json.loads(verdict.read_text())["kvm"])
    argv = [str(QEMU), "-accel", "kvm", "-cpu", "host", "-m", "512", "-nodefaults",
            "-nographic", "-no-reboot", "-serial", "stdio", "-net", "none",
            "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    ok = False
    try:
        ok = _read_until(proc, ready_mark, started + timeout)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    verdict.write_text(json.dumps({"kvm": ok, "host": host,
                                   "seconds": round(time.monotonic() - started, 1)}))
    return ok


def _read_until(proc: subprocess.Popen[bytes], mark: str, deadline: float) -> bool:
    import os
    import select

    assert proc.stdout is not None
    seen = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return False
            seen = (seen + chunk)[-4096:]
            if mark.encode() in seen:
                return True
    return False


def resolve_accel(wanted: str, probe: Callable[[], bool]) -> str:
    if wanted in ("tcg", "kvm"):
        return wanted
    return "kvm" if probe() else "tcg"
