"""Host preparation: the Debian packages and daemons the lab needs.

Runs with the standard library only (`python -m lab.host prepare`), so it can set up
the host before the package and its compiled dependencies are installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lab.errors import HostError

# Debian package -> a file that proves it is installed.
PACKAGES: dict[str, str] = {
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "qemu-utils": "/usr/bin/qemu-img",
    "libvirt-daemon-system": "/usr/sbin/libvirtd",
    "libvirt-clients": "/usr/bin/virsh",
    "libvirt-dev": "/usr/include/libvirt/libvirt.h",
    "pkg-config": "/usr/bin/pkg-config",
    "debootstrap": "/usr/sbin/debootstrap",
    "busybox-static": "/bin/busybox",
    "cpio": "/usr/bin/cpio",
    "gcc": "/usr/bin/gcc",
    "make": "/usr/bin/make",
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",
    "libelf-dev": "/usr/include/libelf.h",
    "dwarves": "/usr/bin/pahole",
    "kmod": "/usr/bin/kmod",
    "bc": "/usr/bin/bc",
    "flex": "/usr/bin/flex",  # flex, bison: building the debug kernel
    "bison": "/usr/bin/bison",
    "dropbear-bin": "/usr/sbin/dropbear",
    "openssh-sftp-server": "/usr/lib/openssh/sftp-server",
    "openssh-client": "/usr/bin/ssh",
    "e2fsprogs": "/usr/sbin/mkfs.ext4",
    "xz-utils": "/usr/bin/xz",
    "zstd": "/usr/bin/zstd",
    "lz4": "/usr/bin/lz4",
    "procps": "/usr/bin/pgrep",
    "chromium": "/usr/bin/chromium",  # renders the run report in its test
}
URI = "qemu:///system"
READY_TIMEOUT = 60.0


def say(message: str) -> None:
    print(f"[hplab host] {message}", file=sys.stderr, flush=True)


def missing_packages() -> list[str]:
    return [pkg for pkg, proof in PACKAGES.items() if not Path(proof).exists()]


def install_command(packages: list[str]) -> str:
    return ("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
            "--no-install-recommends " + " ".join(packages))


def is_root() -> bool:
    return os.geteuid() == 0


def libvirt_answers() -> bool:
    virsh = shutil.which("virsh")
    if not virsh:
        return False
    proc = subprocess.run([virsh, "-c", URI, "version"], capture_output=True, timeout=30,
                          check=False)
    return proc.returncode == 0


def daemon_running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True, check=False).returncode == 0


def _daemon_command(argv: list[str], *, check: bool) -> None:
    """systemctl or a daemon's own start, bounded by READY_TIMEOUT."""
    try:
        subprocess.run(argv, check=check, timeout=READY_TIMEOUT, capture_output=True)
    except subprocess.TimeoutExpired:
        raise HostError(f"{' '.join(argv)} did not finish within {READY_TIMEOUT:.0f}s") from None
    except subprocess.CalledProcessError as exc:
        raise HostError(f"{' '.join(argv)} failed with exit status {exc.returncode}: "
                        f"{exc.stderr.decode(errors='replace').strip()[-300:]}") from None


def start_daemons() -> list[str]:
    """Start virtlogd and libvirtd when no service manager runs them; wait for libvirt."""
    started = []
    if Path("/run/systemd/system").exists():
        for unit in ("virtlogd.socket", "libvirtd.service"):
            _daemon_command(["systemctl", "start", unit], check=False)
    else:
        for daemon in ("virtlogd", "libvirtd"):
            if not daemon_running(daemon):
                _daemon_command([f"/usr/sbin/{daemon}", "-d"], check=True)
                started.append(daemon)
    deadline = time.monotonic() + READY_TIMEOUT
    while not libvirt_answers():
        if time.monotonic() > deadline:
            raise HostError(f"libvirt at {URI} did not answer within {READY_TIMEOUT:.0f}s "
                             "(see /var/log/libvirt/libvirtd.log)")
        time.sleep(0.5)
    return started


def restart_libvirtd() -> float:
    """Restart libvirtd under whatever runs it; seconds until it answers again.

    Running QEMU domains survive: the new daemon reattaches to them. Every client of the
    host's daemon sees its connection drop, so only one lab session may run at a time.
    """
    started = time.monotonic()
    if Path("/run/systemd/system").exists():
        _daemon_command(["systemctl", "restart", "libvirtd.service"], check=True)
    else:
        _daemon_command(["pkill", "-TERM", "-x", "libvirtd"], check=False)
        deadline = started + READY_TIMEOUT
        while daemon_running("libvirtd"):
            if time.monotonic() > deadline:
                raise HostError(f"libvirtd did not exit within {READY_TIMEOUT:.0f}s of SIGTERM")
            time.sleep(0.1)
    try:
        start_daemons()
    except HostError as exc:
        raise HostError(f"libvirtd restart: {exc}") from None
    return time.monotonic() - started


def kvm_node_ok() -> bool:
    """/dev/kvm as udev sets it on Debian (root:kvm 0660), or absent.

    Without udev it can be root-only; libvirt 9 then finds KVM usable while probing but
    not for the QEMU user, discards its capability cache on every call, and each domain
    start takes ~40 s instead of ~0.4 s.
    """
    node = Path("/dev/kvm")
    if not node.exists():
        return True
    st = node.stat()
    return st.st_gid == _kvm_gid() and st.st_mode & 0o060 == 0o060


def _kvm_gid() -> int:
    import grp

    try:
        return grp.getgrnam("kvm").gr_gid
    except KeyError:
        return -1


def fix_kvm_node() -> None:
    if kvm_node_ok() or _kvm_gid() < 0:
        return
    os.chown("/dev/kvm", 0, _kvm_gid())
    Path("/dev/kvm").chmod(0o660)
    say("set /dev/kvm to root:kvm 0660 (Debian's udev default)")


def doctor() -> list[str]:
    """Everything that is wrong with this host, with the command that fixes it."""
    problems = []
    missing = missing_packages()
    if missing:
        problems.append(f"missing packages: {' '.join(missing)}; install with: "
                        f"{install_command(missing)}")
    if not kvm_node_ok():
        problems.append("/dev/kvm is not root:kvm 0660, which makes every libvirt domain "
                        "start re-probe QEMU (~40 s); fix with: chgrp kvm /dev/kvm && "
                        "chmod 0660 /dev/kvm (or 'hplab host prepare' as root)")
    if not missing and not libvirt_answers():
        problems.append(f"libvirt does not answer at {URI}; start it with: "
                        "virtlogd -d && libvirtd -d (or 'hplab host prepare' as root)")
    return problems


def prepare() -> None:
    missing = missing_packages()
    if missing:
        if not is_root():
            raise HostError("hplab needs these Debian packages: " + " ".join(missing) +
                             "\nRun as root: " + install_command(missing))
        say(f"installing {len(missing)} packages: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                       check=True, env=env)
    else:
        say("all host packages present")
    if is_root():
        fix_kvm_node()
    if libvirt_answers():
        say(f"libvirt answers at {URI}")
        return
    if not is_root():
        raise HostError(f"libvirt does not answer at {URI}. Run as root: "
                         "virtlogd -d && libvirtd -d")
    t0 = time.monotonic()
    started = start_daemons()
    say(f"started {' and '.join(started) or 'libvirt services'}; libvirt answers after "
        f"{time.monotonic() - t0:.1f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hplab host")
    parser.add_argument("action", choices=["prepare", "doctor"])
    args = parser.parse_args(argv)
    if args.action == "prepare":
        try:
            prepare()
        except HostError as exc:
            print(f"[hplab host] {exc}", file=sys.stderr)
            return 1
        return 0
    problems = doctor()
    for problem in problems:
        print(f"[hplab doctor] {problem}")
    if not problems:
        print("[hplab doctor] host is ready")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
