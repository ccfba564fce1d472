"""`hplab reap` leaves the domains of a run that is live anywhere on the host alone (its
host-wide registration, held by its owner in another process, under another lab
directory) and says so; it removes those of a run whose owner is gone. libvirt is faked,
the owners are real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import reap
from lab.cli import main as cli
from lab.engine import Lab
from lab.host import inspect, liveruns
from lab.topology import parse
from lab.vm import libvirt_calls

ROOT = Path(__file__).resolve().parent.parent
OWNER_S = 30.0  # for an owner process to register; only a broken registration is slower

# Registers run argv[1] (run directory argv[2], lab directory argv[3]) until stdin ends.
OWNER = """
import sys
from pathlib import Path
from lab.host import liveruns
held = liveruns.register(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
print("registered", flush=True)
sys.stdin.read()
"""


class FakeLibvirt:
    """The lab domains libvirt lists, and the ones destroyed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, domains: list[str]) -> None:
        self.domains = list(domains)
        self.destroyed: list[str] = []
        conn = type("Conn", (), {"close": lambda self: None})()
        monkeypatch.setattr(libvirt_calls, "connect", lambda uri, wait_s=0.0: conn)
        monkeypatch.setattr(libvirt_calls, "lab_domains", lambda c: list(self.domains))
        monkeypatch.setattr(libvirt_calls, "destroy", self.destroy)

    def destroy(self, conn: object, name: str) -> None:
        self.destroyed.append(name)
        self.domains.remove(name)


@pytest.fixture
def owners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Run id -> pid of a process that registered it under another lab directory; the
    run "dead0001" was registered by a process that is killed since."""
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(tmp_path / "locks"))
    elsewhere = tmp_path / "elsewhere"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {}
    for run_id in ("live0001", "dead0001"):
        proc = subprocess.Popen([sys.executable, "-c", OWNER, run_id,
                                 str(elsewhere / "runs" / run_id), str(elsewhere)],
                                env=env, text=True, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "registered\n"
        procs[run_id] = proc
    procs["dead0001"].send_signal(signal.SIGKILL)
    procs["dead0001"].wait(timeout=OWNER_S)
    yield {run_id: proc.pid for run_id, proc in procs.items()}
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


DOMAINS = ["hplab-dead0001-cn1", "hplab-live0001-cn1", "hplab-live0001-cn2"]


def test_reap_leaves_a_run_live_elsewhere_and_removes_one_whose_owner_died(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owners: dict[str, int]) -> None:
    libvirt = FakeLibvirt(monkeypatch, DOMAINS)
    reaped = reap.reap(tmp_path / "here")
    why = (f"run live0001 is live (pid {owners['live0001']}, run directory "
           f"{tmp_path}/elsewhere/runs/live0001)")
    assert reaped.removed == libvirt.destroyed == ["hplab-dead0001-cn1"]
    assert reaped.left == {"hplab-live0001-cn1": why, "hplab-live0001-cn2": why}
    assert set(liveruns.live_runs()) == {"live0001"}
    assert not liveruns.registration("dead0001").exists(), "a dead run's registration stays"


def test_reap_check_passes_and_says_what_it_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owners: dict[str, int],
        capsys: pytest.CaptureFixture[str]) -> None:
    FakeLibvirt(monkeypatch, DOMAINS[1:])
    qemu = [f"{owners['live0001']} qemu-system-x86_64 -name guest={name},debug-threads=on"
            for name in DOMAINS[1:]]
    monkeypatch.setattr(inspect, "qemu_processes", lambda: qemu)
    assert cli.main(["--lab-dir", str(tmp_path / "here"), "reap", "--check"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        f"left {name} alone: run live0001 is live (pid {owners['live0001']}, run directory "
        f"{tmp_path}/elsewhere/runs/live0001)" for name in DOMAINS[1:]] + ["nothing to reap"]
    assert out.err == ""


def test_status_names_the_run_a_domain_from_elsewhere_belongs_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owners: dict[str, int],
        capsys: pytest.CaptureFixture[str]) -> None:
    FakeLibvirt(monkeypatch, DOMAINS)
    assert cli.main(["--lab-dir", str(tmp_path / "here"), "status"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "stray domain hplab-dead0001-cn1 (no run directory; 'hplab reap' removes it)",
        f"domain hplab-live0001-cn1: run live0001 is live (pid {owners['live0001']}, run "
        f"directory {tmp_path}/elsewhere/runs/live0001)",
        f"domain hplab-live0001-cn2: run live0001 is live (pid {owners['live0001']}, run "
        f"directory {tmp_path}/elsewhere/runs/live0001)",
        f"no lab session holds {tmp_path}/locks/session.lock"]


def test_a_run_is_registered_from_claiming_its_directory_until_its_teardown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(tmp_path / "locks"))
    FakeLibvirt(monkeypatch, [])
    lab = Lab(parse("nodes: [{name: cn1}]", Path("t.yaml")), tmp_path / "lab")
    lab._claim_run_dir()
    live = liveruns.live_runs()
    assert list(live) == [lab.run_id] and live[lab.run_id].run_dir == str(lab.run_dir)
    assert live[lab.run_id].lab_dir == str(tmp_path / "lab")
    lab.stop()
    assert not liveruns.registration(lab.run_id).exists()
    assert liveruns.live_runs() == {}
