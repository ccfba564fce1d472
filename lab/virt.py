"""libvirt: domain XML, start and stop, the accelerator probe, the reaper."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from lab.errors import BootError, HostError, LabError
from lab.shell import digest, run

DOMAIN_PREFIX = "hplab-"
METADATA_NS = "urn:hplab:domain:1"
QEMU = Path("/usr/bin/qemu-system-x86_64")
TRANSIENT_ERRORS = ("Could not set up host forwarding rule", "cannot acquire state change lock",
                    "Address already in use")


@dataclass(frozen=True)
class DomainSpec:
    """Everything one transient domain is made of."""

    name: str
    run_id: str
    node: str
    memory_mib: int
    vcpus: int
    accel: str  # "tcg" | "kvm"
    kernel: Path
    initrd: Path
    cmdline: str
    console: Path
    ssh_port: int
    hugepage_backing: bool = False


def domain_name(run_id: str, node: str) -> str:
    return f"{DOMAIN_PREFIX}{run_id}-{node}"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released; the caller retries on a race)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def domain_xml(spec: DomainSpec) -> str:
    cpu = ("<cpu mode='host-passthrough' check='none'/>" if spec.accel == "kvm"
           else "<cpu mode='maximum' check='none'/>")
    backing = ("<memoryBacking><hugepages><page size='1048576' unit='KiB'/></hugepages>"
               "</memoryBacking>" if spec.hugepage_backing else "")
    netdev = f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
    return f"""<domain type='{"kvm" if spec.accel == "kvm" else "qemu"}'
    xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{spec.name}</name>
  <metadata><hplab:node xmlns:hplab='{METADATA_NS}' run={quoteattr(spec.run_id)}
    node={quoteattr(spec.node)} port='{spec.ssh_port}'/></metadata>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  {backing}
  <vcpu>{spec.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{spec.kernel}</kernel>
    <initrd>{spec.initrd}</initrd>
    <cmdline>{spec.cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{QEMU}</emulator>
    <serial type='file'><source path={quoteattr(str(spec.console))} append='off'/>
      <target port='0'/></serial>
    <console type='file'><source path={quoteattr(str(spec.console))} append='off'/>
      <target type='serial' port='0'/></console>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/><qemu:arg value='{netdev}'/>
    <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev=n0'/>
  </qemu:commandline>
</domain>
"""


def connect(uri: str):  # type: ignore[no-untyped-def]
    """A libvirt connection, with an error that says how to start libvirt."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise HostError(f"cannot connect to libvirt at {uri}: {exc}; "
                        "run 'hplab host prepare' (as root) to start it") from None


def create(conn, spec: DomainSpec):  # type: ignore[no-untyped-def]
    import libvirt

    try:
        return conn.createXML(domain_xml(spec), 0)
    except libvirt.libvirtError as exc:
        raise LabError(f"libvirt refused domain {spec.name}: {exc}") from None


def is_transient_error(exc: Exception) -> bool:
    return any(marker in str(exc) for marker in TRANSIENT_ERRORS)


def destroy(conn, name: str) -> bool:  # type: ignore[no-untyped-def]
    """Destroy a domain by name; True if it existed."""
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return False
    persistent = dom.isPersistent()
    try:
        dom.destroy()
    except libvirt.libvirtError:
        if is_active(conn, name):
            raise
    if persistent:
        dom.undefine()
    return True


def lab_domains(conn) -> list[str]:  # type: ignore[no-untyped-def]
    names = [dom.name() for dom in conn.listAllDomains()]
    return sorted(n for n in names if n.startswith(DOMAIN_PREFIX))


def is_active(conn, name: str) -> bool:  # type: ignore[no-untyped-def]
    import libvirt

    try:
        return bool(conn.lookupByName(name).isActive())
    except libvirt.libvirtError:
        return False


def console_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no console file at {path})"
    return "\n".join(text.splitlines()[-lines:])


def wait_ssh_banner(port: int, deadline: float, alive: Callable[[], bool], node: str,
                    console: Path, started: float) -> None:
    """Wait for the SSH banner on 127.0.0.1:port (user networking accepts TCP early)."""
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.settimeout(2)
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        elapsed = time.monotonic() - started
        if not alive():
            raise BootError(f"{node}: guest stopped during boot after {elapsed:.1f}s "
                            "(panic or crash)", node=node, phase="boot",
                            console_tail=console_tail(console))
        if time.monotonic() > deadline:
            raise BootError(f"{node}: no SSH banner on 127.0.0.1:{port} after {elapsed:.1f}s",
                            node=node, phase="ssh-banner", console_tail=console_tail(console))
        time.sleep(0.25)


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


@contextmanager
def hugepage_pool(count: int) -> Iterator[None]:
    """Reserve `count` host 1 GiB pages for guest backing and give them back afterwards."""
    nr = Path("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
    if not nr.exists():
        raise HostError("this host kernel has no 1 GiB huge page support")
    before = int(nr.read_text())
    try:
        nr.write_text(str(before + count))
    except OSError as exc:
        raise HostError(f"cannot reserve {count} host 1 GiB pages via {nr}: {exc}") from None
    got = int(nr.read_text()) - before
    if got < count:
        nr.write_text(str(before))
        raise HostError(f"asked the host for {count} 1 GiB pages, got {got}: host memory is "
                        "too fragmented (try 'echo 1 > /proc/sys/vm/compact_memory')")
    try:
        yield
    finally:
        nr.write_text(str(before))


def qemu_processes() -> list[str]:
    if not shutil.which("pgrep"):
        return []
    out = subprocess.run(["pgrep", "-af", "qemu-system.*guest=hplab-"], capture_output=True,
                         text=True, check=False).stdout
    return [line for line in out.splitlines() if line.strip()]
