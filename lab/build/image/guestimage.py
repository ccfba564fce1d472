"""What every guest image kind builds: the `Image` record the lab boots VMs from, and the
marks each kind's init prints on the console as the guest comes up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

READY_MARK = "hplab-init: ready"  # on the console once sshd/dropbear listens
BOOTED_MARK = "hplab-init: booted"  # on the console as soon as the first init runs


@dataclass(frozen=True)
class Image:
    """A built guest image: the boot files and the SSH host key to pin."""

    kind: str
    key: str
    path: Path  # initramfs: the whole guest (minimal) or the root-mounting stage (debian)
    host_key: str  # "ssh-ed25519 AAAA..."
    disk: Path | None = None  # qcow2 base of the root filesystem (debian)

    def host_key_parts(self) -> tuple[str, str]:
        kind, blob = self.host_key.split()[:2]
        return kind, blob
