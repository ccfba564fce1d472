"""hugetlbfs mounts inside a guest: one shell command to mount a page size's pool at a
directory (idempotent), and one to undo it."""

from __future__ import annotations

import shlex


def mount_command(directory: str, page_size: str) -> str:
    """Mount hugetlbfs with `page_size` (``1G``, ``2M``) at `directory` unless something
    is mounted there already; the directory is made first."""
    d = shlex.quote(directory)
    return (f"mkdir -p {d} && (mountpoint -q {d} || "
            f"mount -t hugetlbfs -o pagesize={shlex.quote(page_size)} none {d})")


def unmount_command(directory: str) -> str:
    """Unmount and remove `directory`; never fails (nothing may be mounted there)."""
    d = shlex.quote(directory)
    return f"umount {d} 2>/dev/null; rmdir {d} 2>/dev/null; true"
