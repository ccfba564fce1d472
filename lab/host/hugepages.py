"""The host's pool of 1 GiB huge pages that backs guest RAM: growing and shrinking it under a
host-wide lock (`pool_locked`: a bounded wait that names the holder), and the 1 GiB
hugetlbfs mount QEMU puts guest RAM files in."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lab import lockfile
from lab.errors import HostError
from lab.guest.memory import parse_meminfo
from lab.paths import host_lock_dir
from lab.shell import run
from lab.timeouts import POOL_LOCK_WAIT_S

HUGETLBFS_1G = Path("/dev/hugepages1G")
NR_1G = Path("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
POOL_LOCK_NAME = "hugepages-1G.lock"
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


def pool_lock() -> Path:
    return host_lock_dir() / POOL_LOCK_NAME


@contextmanager
def pool_locked(*, run_id: str | None = None,
                report: lockfile.Report = lockfile.to_stderr) -> Iterator[None]:
    """Hold the host-wide lock of the 1 GiB pool; a wait for another holder is reported
    through `report` and ends after POOL_LOCK_WAIT_S naming the holder."""
    with lockfile.locked(pool_lock(), wait_s=POOL_LOCK_WAIT_S,
                         holder=lockfile.Holder.this_process(run_id=run_id), report=report):
        yield


def _resize_pool(delta: int, run_id: str | None,
                 report: lockfile.Report) -> tuple[int, int]:
    """Add `delta` pages to the host's 1 GiB pool under a host-wide lock: (before, after).
    A growth the kernel cannot fully grant is undone."""
    with pool_locked(run_id=run_id, report=report):
        before = _read_pool()
        _write_pool(max(before + delta, 0))
        after = _read_pool()
        if delta > 0 and after - before < delta:
            _write_pool(before)
        return before, after


def reserve_host_pages(count: int, *, run_id: str | None = None,
                       report: lockfile.Report = lockfile.to_stderr) -> None:
    """Add `count` 1 GiB pages to the host pool for run `run_id`, or refuse with the reason;
    a wait for the pool's lock is reported through `report`."""
    if not NR_1G.exists():
        raise HostError(f"this host kernel has no 1 GiB huge pages ({NR_1G} is missing); "
                        "'backing: hugepages-1G' cannot work here")
    available_gib = _mem_available_kib() // PAGE_1G_KIB
    if available_gib < count:
        raise HostError(f"host huge-page backing needs {count} x 1 GiB but the host has only "
                        f"{available_gib} GiB available")
    before, after = _resize_pool(count, run_id, report)
    if after - before < count:  # compaction usually frees aligned 1 GiB ranges
        _compact()
        before, after = _resize_pool(count, run_id, report)
    if after - before < count:
        raise HostError(f"asked the host for {count} more 1 GiB pages ({NR_1G}: {before} -> "
                        f"{before + count}), got {after - before} even after compacting memory: "
                        "host memory is too fragmented or in use")


def release_host_pages(count: int, *, run_id: str | None = None,
                       report: lockfile.Report = lockfile.to_stderr) -> None:
    """Give back pages reserved by reserve_host_pages (pages still mapped by a running
    QEMU turn surplus and return to the host when it exits)."""
    _resize_pool(-count, run_id, report)


@contextmanager
def hugepage_pool(count: int, *, run_id: str | None = None,
                  report: lockfile.Report = lockfile.to_stderr) -> Iterator[None]:
    """Reserve `count` host 1 GiB pages for guest backing for run `run_id` and give them
    back afterwards; waits for the pool's lock are reported through `report`."""
    if count <= 0:
        yield
        return
    mounted = ensure_hugetlbfs()
    try:
        reserve_host_pages(count, run_id=run_id, report=report)
        try:
            yield
        finally:
            release_host_pages(count, run_id=run_id, report=report)
    finally:
        if mounted:
            unmount_unless_busy()
