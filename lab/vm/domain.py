"""What one transient libvirt domain is made of: its name, its spec, its domain XML and the
host port its SSH is forwarded from."""

from __future__ import annotations

import socket
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from lab.host.hugepages import HUGETLBFS_1G

DOMAIN_PREFIX = "hplab-"
METADATA_NS = "urn:hplab:domain:1"
QEMU = Path("/usr/bin/qemu-system-x86_64")
RAM_BACKEND = "hplab.ram"


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
