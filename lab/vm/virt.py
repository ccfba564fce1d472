"""libvirt: domain XML, start and stop, the accelerator probe, the reaper."""

from __future__ import annotations

import functools
import json
import math
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from lab import timeouts
from lab.errors import BootError, HostError, LabError
from lab.guest import triage
from lab.guest.memory import parse_meminfo
from lab.shell import digest, locked, run

DOMAIN_PREFIX = "hplab-"
METADATA_NS = "urn:hplab:domain:1"
QEMU = Path("/usr/bin/qemu-system-x86_64")
HUGETLBFS_1G = Path("/dev/hugepages1G")
BANNER_PAUSE = 0.4  # seconds between connection attempts to the SSH port (BannerProbe)
BANNER_WINDOW = 5  # attempts watched at once
BANNER_PATIENCE = 10.0  # seconds one connection waits for the banner once the guest is up
RAM_BACKEND = "hplab.ram"
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
    disk: Path | None = None  # qcow2 root disk, attached as /dev/vda


def domain_name(run_id: str, node: str) -> str:
    return f"{DOMAIN_PREFIX}{run_id}-{node}"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released; the caller retries on a race)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _disk_xml(disk: Path | None) -> str:
    if disk is None:
        return ""
    # cache='unsafe': the overlay is thrown away with the VM, flushes buy nothing.
    # A fixed slot: QEMU gives the first free one (2) to the command-line virtio-net.
    return f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='unsafe'/>
      <source file={quoteattr(str(disk))}/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </disk>"""


def _backing_args(spec: DomainSpec) -> list[str]:
    """QEMU arguments that put guest RAM in a file on the host's 1 GiB hugetlbfs.

    libvirt's own <memoryBacking><hugepages> needs the hugetlbfs mount to exist when
    libvirtd starts (it looks for mounts once); a lab must not restart a shared daemon,
    so the RAM backend is given to QEMU directly and replaces libvirt's pc.ram.
    """
    if not spec.hugepage_backing:
        return []
    size = spec.memory_mib * 1024 * 1024
    return ["-object", f"memory-backend-file,id={RAM_BACKEND},size={size},"
            f"mem-path={HUGETLBFS_1G},share=off,prealloc=on",
            "-machine", f"memory-backend={RAM_BACKEND}"]


# TCG runs `rep stosb`/`rep movsb` a byte per step, 6x slower than `rep stosq`: without
# ERMS the guest kernel zeroes a fresh 1 GiB huge page in 0.6 s instead of 3.5-5 s.
TCG_CPU = "<cpu mode='maximum' check='none'><feature policy='disable' name='erms'/></cpu>"


def domain_xml(spec: DomainSpec) -> str:
    cpu = "<cpu mode='host-passthrough' check='none'/>" if spec.accel == "kvm" else TCG_CPU
    netdev = f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
    backing = "".join(f"\n    <qemu:arg value={quoteattr(arg)}/>" for arg in _backing_args(spec))
    return f"""<domain type='{"kvm" if spec.accel == "kvm" else "qemu"}'
    xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{spec.name}</name>
  <metadata><hplab:node xmlns:hplab='{METADATA_NS}' run={quoteattr(spec.run_id)}
    node={quoteattr(spec.node)} port='{spec.ssh_port}'/></metadata>
  <memory unit='MiB'>{spec.memory_mib}</memory>
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
    <serial type='file'><source path={quoteattr(str(spec.console))} append='on'/>
      <target port='0'/></serial>
    <console type='file'><source path={quoteattr(str(spec.console))} append='on'/>
      <target type='serial' port='0'/></console>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>{_disk_xml(spec.disk)}
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/><qemu:arg value='{netdev}'/>
    <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev=n0'/>{backing}
  </qemu:commandline>
</domain>
"""


# A daemon that answers none of 3 keepalive probes sent 5 s apart is gone: the connection
# closes and every call blocked on it returns an error instead of waiting forever.
KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 5, 3


@functools.cache
def _event_loop() -> threading.Thread:
    """libvirt's default event loop, which keepalive needs; one per process, as libvirt
    allows, registered before the first connection opens."""
    import libvirt

    libvirt.virEventRegisterDefaultImpl()

    def loop() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    thread = threading.Thread(target=loop, name="libvirt-events", daemon=True)
    thread.start()
    return thread


def connect(uri: str, wait_s: float = 0.0):  # type: ignore[no-untyped-def]
    """A libvirt connection that notices a daemon gone silent (keepalive), with an error
    that says how to start libvirt.

    `wait_s` rides out a daemon that is restarting: the open is retried until then.
    """
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    _event_loop()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn = libvirt.open(uri)
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
            return conn
        except libvirt.libvirtError as exc:
            if time.monotonic() >= deadline:
                waited = f" (retried for {wait_s:.0f}s)" if wait_s else ""
                raise HostError(f"cannot connect to libvirt at {uri}{waited}: {exc}; "
                                "run 'hplab host prepare' (as root) to start it") from None
            time.sleep(0.5)


def alive(conn) -> bool:  # type: ignore[no-untyped-def]
    """Whether a libvirt connection still reaches its daemon (False after a restart)."""
    import libvirt

    try:
        return bool(conn.isAlive()) and conn.getLibVersion() > 0
    except libvirt.libvirtError:
        return False


def _lookup(conn, name: str):  # type: ignore[no-untyped-def]
    """The domain `name`, or None when libvirt says there is none; other errors raise."""
    import libvirt

    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise LabError(f"libvirt: looking up domain {name}: {exc}") from None


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

    dom = _lookup(conn, name)
    if dom is None:
        return False
    try:
        persistent = dom.isPersistent()
        dom.destroy()
        if persistent:
            dom.undefine()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return True  # it went away on its own (a transient domain that crashed)
        if is_active(conn, name):
            raise LabError(f"libvirt: destroying domain {name}: {exc}") from None
    return True


def lab_domains(conn) -> list[str]:  # type: ignore[no-untyped-def]
    names = [dom.name() for dom in conn.listAllDomains()]
    return sorted(n for n in names if n.startswith(DOMAIN_PREFIX))


def is_active(conn, name: str) -> bool:  # type: ignore[no-untyped-def]
    import libvirt

    dom = _lookup(conn, name)
    if dom is None:
        return False
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise LabError(f"libvirt: domain {name}: {exc}") from None


def console_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no console file at {path})"
    return "\n".join(text.splitlines()[-lines:])


class BannerProbe:
    """Overlapping connection attempts to a forwarded SSH port.

    QEMU's user network accepts a forwarded connection at once, then retries the SYN
    towards a guest that has no address yet only after seconds. Instead of waiting on
    one such connection, a new one is opened every BANNER_PAUSE seconds and the last
    BANNER_WINDOW are watched together, so a banner is seen within a fraction of a
    second of the server starting, and a server slow to send it still has
    BANNER_PAUSE x BANNER_WINDOW seconds (at most BANNER_WINDOW sessions at once).
    When the guest has its address already, one connection at a time is enough (and
    spares a busy guest the extra sessions): `pause` long, `window` 1. A refused or
    closed connection is replaced at once.
    """

    def __init__(self, port: int, pause: float = 0.0, window: int = 0) -> None:
        self.port = port
        self.pause = pause or BANNER_PAUSE
        self.window = window or BANNER_WINDOW
        self.socks: list[socket.socket] = []
        self.next_open = 0.0

    def _open(self) -> None:
        now = time.monotonic()
        if self.socks and now < self.next_open:
            return
        self.next_open = now + self.pause
        if len(self.socks) >= self.window:
            self.socks.pop(0).close()
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=BANNER_PAUSE)
        except OSError:
            return
        sock.setblocking(False)
        self.socks.append(sock)

    def poll(self, wait: float) -> bool:
        """True once some connection has received an SSH banner."""
        self._open()
        if not self.socks:
            time.sleep(wait)
            return False
        readable, _, _ = select.select(self.socks, [], [], wait)
        for sock in readable:
            try:
                data = sock.recv(64)
            except OSError:
                data = b""
            if data.startswith(b"SSH-"):
                return True
            self.socks.remove(sock)  # refused, closed or not SSH: drop it
            sock.close()
        return False

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks.clear()


def _check_boot(node: str, port: int, console: Path, started: float, deadline: float,
                alive: Callable[[], bool], waiting_for: str) -> None:
    """Raise BootError if the guest died or the deadline passed."""
    elapsed = time.monotonic() - started
    if not alive():
        raise BootError(f"{node}: guest stopped during boot after {elapsed:.1f}s "
                        "(panic or crash)", node=node, phase="boot",
                        console_tail=console_tail(console))
    if time.monotonic() > deadline:
        raise BootError(f"{node}: no {waiting_for} after {elapsed:.1f}s", node=node,
                        phase="ssh-banner", console_tail=console_tail(console))


class ConsoleMark:
    """Whether a line has appeared on a console file after `offset`, reading only what
    is new (a rebooted node appends its boot to the same file)."""

    def __init__(self, console: Path, mark: str, offset: int = 0) -> None:
        self.console, self.mark = console, mark.encode()
        self.offset, self.tail = offset, b""

    def seen(self) -> bool:
        try:
            start, chunk = triage.read_from(self.console, self.offset)
        except OSError:
            return False
        self.offset = start + len(chunk)
        text = self.tail + chunk
        self.tail = text[-len(self.mark):]
        return self.mark in text


def wait_ssh_banner(port: int, deadline: float, alive: Callable[[], bool], node: str,
                    console: Path, started: float, ready_mark: str | None = None,
                    console_from: int = 0, stall: float | None = None) -> None:
    """Wait for the SSH banner on 127.0.0.1:port (user networking accepts TCP early).

    The boot comes before anything can say how fast the guest is, so it is waited for
    while it shows progress: with `stall`, the wait ends once the console has not grown
    for `stall` seconds; `deadline` is the hard cap. The console counts from byte
    `console_from`, where this boot's output starts (a rebooted node appends its boot to
    the same file).

    With `ready_mark`, nothing connects before the guest printed it on its console:
    every connection QEMU's user network accepts before the guest has an address is
    delivered to the guest's sshd later, and a storm of them slows its first minutes.
    """
    patience = timeouts.Patience(started, deadline - started, stall, console_from)

    def check(waiting_for: str) -> None:
        _check_boot(node, port, console, started, math.inf, alive, waiting_for)
        now = time.monotonic()
        with suppress(OSError):
            patience.observe(console.stat().st_size, now)
        reason = patience.exhausted(now, "bytes of console output since the domain was "
                                         "created")
        if reason is not None:
            raise BootError(f"{node}: no {waiting_for} after {now - started:.1f}s: {reason}",
                            node=node, phase="ssh-banner", console_tail=console_tail(console))

    if ready_mark is not None:
        mark = ConsoleMark(console, ready_mark, console_from)
        while not mark.seen():
            check(f"ready mark {ready_mark!r} on the console")
            time.sleep(BANNER_PAUSE / 4)
    probe = BannerProbe(port) if ready_mark is None else BannerProbe(port, BANNER_PATIENCE, 1)
    try:
        while not probe.poll(BANNER_PAUSE / 2):
            check(f"SSH banner on 127.0.0.1:{port}")
    finally:
        probe.close()


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


NR_1G = Path("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
POOL_LOCK = Path("/run/hplab-hugepages-1G.lock")
COMPACT = Path("/proc/sys/vm/compact_memory")
PAGE_1G_KIB = 1024 * 1024


def hugetlbfs_mounted(mounts: str, point: Path) -> bool:
    """Whether a /proc/mounts text has a 1 GiB hugetlbfs at `point`."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] == str(point) and fields[2] == "hugetlbfs":
            return "pagesize=1024M" in fields[3].split(",")
    return False


def ensure_hugetlbfs(point: Path = HUGETLBFS_1G) -> bool:
    """A 1 GiB hugetlbfs at `point` that QEMU (group kvm) can create its RAM file in;
    True when this call mounted it."""
    if hugetlbfs_mounted(Path("/proc/mounts").read_text(), point):
        return False
    point.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "hugetlbfs", "-o", "pagesize=1G,mode=01770,gid=kvm", "hugetlbfs",
         point], error=HostError)
    return True


def unmount_unless_busy(point: Path = HUGETLBFS_1G) -> None:
    """Undo ensure_hugetlbfs; a mount whose files a kept VM or another lab still maps
    stays (umount refuses it as busy)."""
    subprocess.run(["umount", str(point)], capture_output=True, check=False)


def _mem_available_kib() -> int:
    return parse_meminfo(Path("/proc/meminfo").read_text()).get("MemAvailable", 0)


def _read_pool() -> int:
    return int(NR_1G.read_text())


def _write_pool(pages: int) -> None:
    try:
        NR_1G.write_text(str(pages))
    except OSError as exc:
        raise HostError(f"cannot resize the host's 1 GiB page pool via {NR_1G}: "
                        f"{exc.strerror} (the lab must run as root)") from None


def _compact() -> None:
    COMPACT.write_text("1")


def _resize_pool(delta: int) -> tuple[int, int]:
    """Add `delta` pages to the host's 1 GiB pool under a host-wide lock: (before, after).
    A growth the kernel cannot fully grant is undone."""
    with locked(POOL_LOCK):
        before = _read_pool()
        _write_pool(max(before + delta, 0))
        after = _read_pool()
        if delta > 0 and after - before < delta:
            _write_pool(before)
        return before, after


def reserve_host_pages(count: int) -> None:
    """Add `count` 1 GiB pages to the host pool, or refuse with the reason."""
    if not NR_1G.exists():
        raise HostError(f"this host kernel has no 1 GiB huge pages ({NR_1G} is missing); "
                        "'backing: hugepages-1G' cannot work here")
    available_gib = _mem_available_kib() // PAGE_1G_KIB
    if available_gib < count:
        raise HostError(f"host huge-page backing needs {count} x 1 GiB but the host has only "
                        f"{available_gib} GiB available")
    before, after = _resize_pool(count)
    if after - before < count:  # compaction usually frees aligned 1 GiB ranges
        _compact()
        before, after = _resize_pool(count)
    if after - before < count:
        raise HostError(f"asked the host for {count} more 1 GiB pages ({NR_1G}: {before} -> "
                        f"{before + count}), got {after - before} even after compacting memory: "
                        "host memory is too fragmented or in use")


def release_host_pages(count: int) -> None:
    """Give back pages reserved by reserve_host_pages (pages still mapped by a running
    QEMU turn surplus and return to the host when it exits)."""
    _resize_pool(-count)


@contextmanager
def hugepage_pool(count: int) -> Iterator[None]:
    """Reserve `count` host 1 GiB pages for guest backing and give them back afterwards."""
    if count <= 0:
        yield
        return
    mounted = ensure_hugetlbfs()
    try:
        reserve_host_pages(count)
        try:
            yield
        finally:
            release_host_pages(count)
    finally:
        if mounted:
            unmount_unless_busy()


@dataclass(frozen=True)
class Mapping:
    """One mapping of a process, from /proc/PID/smaps."""

    start: int
    end: int
    path: str
    kernel_page_kib: int
    rss_kib: int
    hugetlb_kib: int  # hugetlbfs pages mapped (smaps counts them outside Rss)

    @property
    def size_kib(self) -> int:
        return (self.end - self.start) // 1024


def parse_smaps(text: str) -> list[Mapping]:
    mappings: list[Mapping] = []
    header: list[str] = []
    fields: dict[str, int] = {}

    def flush() -> None:
        if header:
            start, end = (int(x, 16) for x in header[0].split("-"))
            path = " ".join(header[5:]) if len(header) > 5 else ""
            mappings.append(Mapping(start, end, path, fields.get("KernelPageSize", 0),
                                    fields.get("Rss", 0),
                                    fields.get("Private_Hugetlb", 0)
                                    + fields.get("Shared_Hugetlb", 0)))

    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if "-" in words[0] and not words[0].endswith(":"):
            flush()
            header, fields = words, {}
        elif words[0].endswith(":") and len(words) >= 2 and words[1].isdigit():
            fields[words[0][:-1]] = int(words[1])
    flush()
    return mappings


def qemu_pid(domain: str) -> int:
    """The QEMU process of a running qemu:///system domain."""
    pidfile = Path("/run/libvirt/qemu") / f"{domain}.pid"
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise LabError(f"no QEMU pid for domain {domain} in {pidfile}: {exc}") from None


def guest_ram_mappings(domain: str, memory_mib: int) -> list[Mapping]:
    """The mappings of the domain's QEMU that are as large as the guest's RAM."""
    pid = qemu_pid(domain)
    smaps = Path(f"/proc/{pid}/smaps").read_text()
    return [m for m in parse_smaps(smaps) if m.size_kib == memory_mib * 1024]


def ram_backend(conn, domain: str) -> str:  # type: ignore[no-untyped-def]
    """The id of the memory backend QEMU really uses as the machine's RAM (via QMP)."""
    import libvirt_qemu

    dom = conn.lookupByName(domain)
    query = {"execute": "qom-get", "arguments": {"path": "/machine",
                                                 "property": "memory-backend"}}
    answer = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(query), 0))
    return str(answer["return"]).rsplit("/", 1)[-1]  # "/objects/ID" -> "ID"


def qemu_processes() -> list[str]:
    if not shutil.which("pgrep"):
        return []
    out = subprocess.run(["pgrep", "-af", "qemu-system.*guest=hplab-"], capture_output=True,
                         text=True, check=False).stdout
    return [line for line in out.splitlines() if line.strip()]
