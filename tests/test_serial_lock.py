"""The serial lock: an exclusive taker waits for the shared holders and is not starved by
shared takers that come after it; a wait past its bound names who holds the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakelab import ROOT

from lab.host.serial_lock import SerialLock, SerialLockTimeout

HOLD = '''
import json, sys, time
from pathlib import Path
from lab.host.serial_lock import SerialLock

lock, name, exclusive, seconds, log = sys.argv[1:6]
with SerialLock(Path(lock)).held(exclusive == "1", name, 30.0):
    start = time.monotonic()
    with open(log, "a") as out:
        out.write(json.dumps([name, "in", start]) + "\\n")
    time.sleep(float(seconds))
    with open(log, "a") as out:
        out.write(json.dumps([name, "out", time.monotonic()]) + "\\n")
'''


def hold(lock: Path, name: str, exclusive: bool, seconds: float,
         log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(lock), name,
                             "1" if exclusive else "0", str(seconds), str(log)],
                            env={"PYTHONPATH": str(ROOT)})


def wait_for(log: Path, entry: str) -> None:
    deadline = time.monotonic() + 10
    while not (log.exists() and entry in log.read_text()):
        assert time.monotonic() < deadline, f"{entry} never came"
        time.sleep(0.05)


def test_an_exclusive_taker_is_not_starved_by_later_shared_ones(tmp_path: Path) -> None:
    lock, log = tmp_path / "serial.lock", tmp_path / "log"
    first = hold(lock, "reader-1", False, 1.0, log)
    wait_for(log, '"reader-1", "in"')
    writer = hold(lock, "writer", True, 0.5, log)
    time.sleep(0.5)  # the writer now waits for reader-1
    second = hold(lock, "reader-2", False, 0.2, log)
    for proc in (first, writer, second):
        assert proc.wait(timeout=30) == 0
    order = [(name, what) for name, what, _ in map(json.loads, log.read_text().splitlines())]
    assert order == [("reader-1", "in"), ("reader-1", "out"), ("writer", "in"),
                     ("writer", "out"), ("reader-2", "in"), ("reader-2", "out")]


def test_shared_holders_hold_it_together(tmp_path: Path) -> None:
    lock, log = tmp_path / "serial.lock", tmp_path / "log"
    procs = [hold(lock, f"reader-{n}", False, 0.5, log) for n in range(2)]
    for proc in procs:
        assert proc.wait(timeout=30) == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [what for _, what, _ in events] == ["in", "in", "out", "out"]


def test_a_wait_past_its_bound_names_the_holder(tmp_path: Path) -> None:
    lock, log = tmp_path / "serial.lock", tmp_path / "log"
    holder = hold(lock, "gw1 suites/test_robustness.py::test_x", True, 3.0, log)
    try:
        wait_for(log, "in")
        heard: list[list[str]] = []
        started = time.monotonic()
        with pytest.raises(SerialLockTimeout) as caught, \
                SerialLock(lock).held(False, "gw0 t", 0.5, heard.append):
            pass
        assert 0.5 <= time.monotonic() - started < 2.0
        expected = f"gw1 suites/test_robustness.py::test_x (pid {holder.pid}, exclusive)"
        assert heard == [[expected]]
        assert str(caught.value) == f"{lock}: not free after 0.5s; held by {expected}"
    finally:
        holder.wait(timeout=30)
    with SerialLock(lock).held(True, "gw0 t", 1.0) as waited:  # free again, no note left
        assert waited < 0.5
        assert SerialLock(lock).holders() == [f"gw0 t (pid {os.getpid()}, exclusive)"]
    assert SerialLock(lock).holders() == []
