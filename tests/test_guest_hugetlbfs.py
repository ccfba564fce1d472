"""The guest's hugetlbfs mount commands, run in a local shell with stand-in tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lab.guest import hugetlbfs


def _run(command: str, bin_dir: Path, log: Path) -> None:
    for tool, status in (("mountpoint", 1), ("mount", 0), ("umount", 0)):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexit {status}\n')
        (bin_dir / tool).chmod(0o755)
    subprocess.run(["sh", "-c", command], check=True,
                   env={"PATH": f"{bin_dir}:/usr/bin:/bin"})


def test_mount_makes_the_directory_and_names_the_page_size(tmp_path: Path) -> None:
    target = tmp_path / "huge 1g"
    log = tmp_path / "log"
    _run(hugetlbfs.mount_command(str(target), "1G"), tmp_path, log)
    assert target.is_dir()
    assert log.read_text().splitlines() == [
        f"mountpoint -q {target}", f"mount -t hugetlbfs -o pagesize=1G none {target}"]


def test_unmount_never_fails(tmp_path: Path) -> None:
    log = tmp_path / "log"
    _run(hugetlbfs.unmount_command(str(tmp_path / "absent")), tmp_path, log)
    assert log.read_text().splitlines() == [f"umount {tmp_path / 'absent'}"]
