"""Locks between processes (lab.lockfile): the holder's record, a wait that names the
holder and ends at its bound, a killed holder's lock free again; the host's 1 GiB pool
lock waits the same way."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from lab import lockfile
from lab.errors import LabError
from lab.host import hugepages
from lab.lockfile import Holder

CLOCK = r"\d\d:\d\d:\d\d"


def test_the_holder_records_itself_and_a_waiter_names_it(tmp_path: Path) -> None:
    path = tmp_path / "a" / "x.lock"
    held = lockfile.acquire(path, Holder.this_process(run_id="1a2b3c4d", lab_dir=tmp_path),
                            wait_s=0)
    try:
        record = lockfile.read_holder(path)
        assert record == held.holder and record.lab_dir == str(tmp_path)
        assert lockfile.holding_pids(path) == {os.getpid()}
        assert lockfile.is_held(path)
        lines: list[str] = []
        with pytest.raises(LabError, match=rf"^another hplab process \(pid {os.getpid()}, run id "
                           rf"1a2b3c4d\) holds {path} since {CLOCK}; gave up after 1 s$"):
            lockfile.acquire(path, Holder.this_process(), wait_s=1.0, report=lines.append)
        assert len(lines) == 1 and lines[0].endswith("; waiting up to 1 s"), lines
        assert (path.parent.stat().st_mode & 0o777) == 0o755
    finally:
        held.release()
    assert not lockfile.is_held(path) and lockfile.holding_pids(path) == set()


def test_a_holder_without_a_record_is_named_by_its_pid(tmp_path: Path) -> None:
    path = tmp_path / ".entry.lock"
    with path.open("a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(LabError, match=rf"^another hplab process \(pid {os.getpid()}, no "
                           rf"record of itself\) holds {path}; not waiting for it$"), \
                lockfile.locked(path, wait_s=0):
            pass
    with lockfile.locked(path, wait_s=0):  # free again
        pass


def test_a_waiter_reports_again_while_it_waits_and_when_it_gets_the_lock(
        tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    held = lockfile.acquire(path, Holder.this_process(run_id="beef0001"), wait_s=0)
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        if len(lines) == 2:
            held.release()  # the holder ends while the waiter waits

    lockfile.acquire(path, Holder.this_process(run_id="beef0002"), wait_s=5.0, report=report,
                     report_every_s=0.3).release()
    assert lines[0].endswith("waiting up to 5 s")
    assert "run id beef0001" in lines[1] and lines[1].endswith("waiting up to 5 s (waited 0 s)")
    assert lines[2].startswith(f"got {path} after")


def test_a_stale_record_is_not_taken_for_a_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    lockfile.acquire(path, Holder.this_process(run_id="dead0001"), wait_s=0).release()
    assert lockfile.read_holder(path) is not None  # the record stays behind
    started = time.monotonic()
    lockfile.acquire(path, Holder.this_process(run_id="beef0001"), wait_s=0).release()
    assert time.monotonic() - started < 1.0


def test_a_free_lock_file_is_removed_a_held_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    held = lockfile.acquire(path, Holder.this_process(), wait_s=0)
    assert not lockfile.remove_if_free(path) and path.exists()
    held.release()
    assert lockfile.remove_if_free(path) and not path.exists()
    assert lockfile.remove_if_free(path)


def test_a_lock_file_removed_under_a_taker_is_taken_anew(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """remove_if_free between a taker's open and its flock: the taker must lock the file
    that is there, not the removed one no one else sees."""
    path = tmp_path / "x.lock"
    opened = lockfile._open
    removed: list[bool] = []

    def open_then_removed(target: Path) -> object:
        handle = opened(target)
        if not removed:
            removed.append(lockfile.remove_if_free(target))
        return handle

    monkeypatch.setattr(lockfile, "_open", open_then_removed)
    held = lockfile.acquire(path, Holder.this_process(), wait_s=0)
    try:
        assert removed == [True] and lockfile.is_held(path)
    finally:
        held.release()


@pytest.mark.parametrize(("holder", "shown"), [
    (Holder(42, 0.0, ("/usr/bin/hplab", "matrix", "--kernels", "debian:6.1")),
     "pid 42, hplab matrix --kernels debian:6.1"),
    (Holder(42, 0.0, ("/usr/lib/python3/dist-packages/pytest/__main__.py", "suites")),
     "pid 42, pytest suites"),
    (Holder(42, 0.0, ("hplab", "x" * 200)), "pid 42, hplab " + "x" * 91 + "..."),
    (Holder(42, 0.0, ("hplab",), run_id="1a2b3c4d"), "pid 42, run id 1a2b3c4d"),
    (Holder(42, 0.0), "pid 42"),
])
def test_a_holder_is_described_by_pid_and_run_id_or_command(holder: Holder, shown: str) -> None:
    assert holder.describe() == shown


def test_the_pool_lock_waits_reported_and_bounded(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(hugepages, "POOL_LOCK_WAIT_S", 1.0)
    other = lockfile.acquire(hugepages.pool_lock(), Holder.this_process(run_id="beef0001"),
                             wait_s=0)
    lines: list[str] = []
    try:
        with pytest.raises(LabError, match=rf"^another hplab process \(pid {os.getpid()}, run "
                           rf"id beef0001\) holds {tmp_path}/hugepages-1G.lock since {CLOCK}; "
                           "gave up after 1 s$"), \
                hugepages.pool_locked(run_id="cafe0001", report=lines.append):
            pass
    finally:
        other.release()
    assert lines and lines[0].endswith("waiting up to 1 s")
    with hugepages.pool_locked(run_id="cafe0001", report=lines.append):
        record = lockfile.read_holder(hugepages.pool_lock())
        assert record is not None and record.run_id == "cafe0001"
