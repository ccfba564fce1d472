"""Faults injected into real lab runs: each ends with a classified outcome, in bounded time,
leaving no domain behind. Every case runs an inner pytest session on topologies/small.yaml."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from vrhp_support import HUGETLB_1G, RecordProperty, mount_1g

from lab import reap
from lab.build import guesttools
from lab.dut.kmod import hugepage_pool
from lab.engine import Lab
from lab.guest.ssh import Guest
from lab.paths import lab_dir
from lab.pytest_plugin.session import LabSession
from lab.timeouts import Bound, Timeouts
from lab.vm import domain

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "topologies" / "small.yaml"
INNER_LIMIT_S = 300  # reference seconds; the inner session's own waits are far shorter

INNER_HEAD = '''
import os, signal, time
from pathlib import Path
from lab.vm import libvirt_calls

def _mark(lab):
    Path(os.environ["HPLAB_INNER_RUN"]).write_text(lab.run_id)
'''

FAULTS = {
    "qemu-killed": '''
def test_fault(lab, guest, node):
    _mark(lab)
    os.kill(libvirt_calls.qemu_pid(node.domain), signal.SIGKILL)
    guest.check("sleep 1; true")
''',
    "guest-panic": '''
def test_fault(lab, guest, node):
    _mark(lab)
    guest.run("echo c > /proc/sysrq-trigger", check=False)
    guest.check("true")
''',
    "sshd-killed": '''
def test_fault(lab, guest, node):
    _mark(lab)
    guest.run("killall -9 dropbear sshd", check=False)
    guest.check("true")
''',
    "guest-frozen": '''
def test_fault(lab, guest, node):
    _mark(lab)
    libvirt_calls.connect(node.node.uri).lookupByName(node.domain).suspend()
    guest.check("true", timeout=15)
''',
    "libvirtd-restarted": '''
def test_fault(lab, guest, node):
    _mark(lab)
    from lab.host import prepare as host
    print(f"libvirtd answered again after {host.restart_libvirtd():.1f}s")
    guest.check("true")
''',
    "pytest-killed": '''
def test_fault(lab, guest, node):
    _mark(lab)
    time.sleep(600)
''',
}


@dataclass
class InnerRun:
    run_id: str
    run_dir: Path
    returncode: int
    seconds: float
    junit: Path
    output: str

    def outcome_classes(self) -> list[str]:
        results = json.loads((self.run_dir / "results.json").read_text())
        return [r["properties"].get("outcome", "") for r in results]

    def junit_classes(self) -> list[str]:
        root = ET.parse(self.junit).getroot()
        return [p.get("value", "") for p in root.iter("property") if p.get("name") == "outcome"]


def _domains() -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def inner_kernel(lab_session: LabSession) -> str:
    """The inner sessions boot the kernel the outer session's topology runs."""
    return lab_session.topology.nodes[0].kernel


def _start_inner(tmp_path: Path, fault: str,
                 kernel: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    test_file = tmp_path / f"test_inner_{fault.replace('-', '_')}.py"
    test_file.write_text(INNER_HEAD + FAULTS[fault])
    marker = tmp_path / "run_id"
    junit = tmp_path / "junit.xml"
    env = {**os.environ, "HPLAB_INNER_RUN": str(marker), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         "--rootdir", str(tmp_path),
         "--topology", str(SMALL), "--kernel", kernel,
         f"--junitxml={junit}",
         str(test_file)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    return proc, marker, junit


def _inner_limit(pid: int) -> Bound:
    """INNER_LIMIT_S for the inner session of process `pid`: scaled by the slowdown its
    slowest guest measured, the largest accepted until then."""
    timeouts = Timeouts()
    with contextlib.suppress(OSError, ValueError):  # a run directory in the making
        for record in reap.runs(lab_dir(None)):
            if record.state.pid != pid:
                continue
            for node in record.state.nodes.values():
                if node.slowdown is not None and (
                        timeouts.slowdown is None or node.slowdown > timeouts.slowdown):
                    timeouts = Timeouts(accel=node.accel, slowdown=node.slowdown)
    return timeouts.bound(INNER_LIMIT_S)


def _run_inner(tmp_path: Path, fault: str, kernel: str) -> InnerRun:
    started = time.monotonic()
    proc, marker, junit = _start_inner(tmp_path, fault, kernel)
    while True:
        limit = _inner_limit(proc.pid)
        left = started + limit.seconds - time.monotonic()
        try:
            output, _ = proc.communicate(timeout=max(min(left, 5.0), 0.0))
            break
        except subprocess.TimeoutExpired:
            if left > 5.0:
                continue
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"inner session for {fault} did not finish within {limit}:\n"
                    f"{output.decode(errors='replace')[-3000:]}")
    seconds = time.monotonic() - started
    assert marker.exists(), f"the inner test never ran:\n{output.decode(errors='replace')[-3000:]}"
    run_id = marker.read_text()
    return InnerRun(run_id, lab_dir(None) / "runs" / run_id, proc.returncode, seconds, junit,
                    output.decode(errors="replace"))


@pytest.mark.lab
@pytest.mark.parametrize(("fault", "classes", "returncode"), [
    ("qemu-killed", {"infrastructure-ssh", "infrastructure"}, 1),
    ("guest-panic", {"kernel-crash"}, 1),
    ("sshd-killed", {"infrastructure-ssh"}, 1),
    # vCPUs paused: no console, no SSH answer; the command's bound ends it
    ("guest-frozen", {"hang"}, 1),
    # the guest never notices; the lab reconnects and still tears its domain down. Every
    # lab on the host loses its libvirt connection: under xdist it runs alone, last
    pytest.param("libvirtd-restarted", {"passed"}, 0, marks=pytest.mark.serial),
])
def test_fault_ends_classified_and_leaves_nothing(
        tmp_path: Path, fault: str, classes: set[str], returncode: int, inner_kernel: str,
        record_property: RecordProperty) -> None:
    inner = _run_inner(tmp_path, fault, inner_kernel)
    outcomes = inner.outcome_classes()
    record_property("fault", fault)
    record_property("inner_outcome", ",".join(outcomes))
    record_property("inner_seconds", round(inner.seconds, 1))
    assert inner.returncode == returncode, inner.output[-3000:]
    assert len(outcomes) == 1 and outcomes[0] in classes, outcomes
    assert inner.junit_classes() == outcomes
    assert domain.domain_name(inner.run_id, "cn1") not in _domains()
    assert (inner.run_dir / "report.html").exists()
    if fault == "libvirtd-restarted":
        events = json.loads((inner.run_dir / "events.json").read_text())
        assert any(e["phase"] == "libvirt" and e["detail"] == "reconnected" for e in events), \
            "the lab never noticed the restart: the fault was not injected"


@pytest.mark.lab
def test_killed_pytest_is_reaped(tmp_path: Path, inner_kernel: str,
                                 record_property: RecordProperty) -> None:
    proc, marker, _ = _start_inner(tmp_path, "pytest-killed", inner_kernel)
    try:
        started = time.monotonic()
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            limit = _inner_limit(proc.pid)
            assert time.monotonic() - started < limit.seconds, \
                f"the inner test never started within {limit}"
            time.sleep(0.5)
        leftover = domain.domain_name(marker.read_text(), "cn1")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert leftover in _domains(), "the domain should outlive a SIGKILLed pytest"
        started = time.monotonic()
        removed = reap.reap(lab_dir(None)).removed
        record_property("reap_seconds", round(time.monotonic() - started, 1))
        assert leftover in removed
        assert leftover not in _domains()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.lab
def test_unprivileged_caller_gets_eperm_and_no_writable_mapping(
        vrhp: Any, guest: Guest, lab: Lab, uapi: tuple[Path, ...],
        record_property: RecordProperty) -> None:
    """Devices opened as root, then uid 65534: every control ioctl is EPERM, no open, and
    the read-only table device refuses writable mappings."""
    helper = guesttools.install(guest, "vrhp_unpriv", lab.cache, include_dirs=uapi)
    vrhp.load(mem="btable")
    answer = json.loads(guest.check(helper))
    record_property("unprivileged", json.dumps(answer, sort_keys=True))
    assert answer["uid"] == 65534
    assert answer["root_info_errno"] == 0, "root itself was refused: the check proves nothing"
    assert answer["ioctls"] and set(answer["ioctls"].values()) == {"EPERM"}, answer["ioctls"]
    assert answer["open_ctl"] in ("EACCES", "EPERM")
    assert answer["open_flow"] in ("EACCES", "EPERM")
    assert answer["mmap_private_write"] != "OK"
    assert answer["mmap_shared_write"] != "OK"
    # the fd carries its opener's rights: what root opened, its holder may map read-only
    assert answer["mmap_shared_read"] == "OK", ("a flow fd opened by root and handed to uid "
                                                "65534 could not be mapped read-only: "
                                                f"{answer['mmap_shared_read']}")


FUZZ_SEED = 20261122
FUZZ_CALLS = 3000
FUZZ_PROCS = 2
FUZZ_FILE = f"{HUGETLB_1G}/fuzz"


@pytest.mark.lab
@pytest.mark.hugepages(size="1G", count=1)
def test_ioctl_fuzzer_leaves_the_module_answering_and_the_pool_whole(
        vrhp: Any, guest: Guest, lab: Lab, uapi: tuple[Path, ...],
        record_property: RecordProperty) -> None:
    """Seeded random ioctls from two processes at once, a third of the configs of a real
    1 GiB hugetlbfs file; the console canary fails the test on any Oops/BUG/WARNING.
    Some calls succeed and some configs pin the file's huge page; afterwards the module
    answers, unloads, and once the file is gone the pool is whole."""
    fuzzer = guesttools.install(guest, "vrhp_fuzz", lab.cache, include_dirs=uapi)
    total_before, free_before = hugepage_pool(guest)
    vrhp.load(mem="hugepage")
    mount_1g(guest)
    started = time.monotonic()
    out = guest.check(f"{fuzzer} {FUZZ_SEED} {FUZZ_CALLS} {FUZZ_PROCS} {FUZZ_FILE}",
                      timeout=600)
    procs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    calls = sum(p["calls"] for p in procs)
    ok, configured = sum(p["ok"] for p in procs), sum(p["configured"] for p in procs)
    record_property("fuzz_seed", FUZZ_SEED)
    record_property("fuzz_calls", calls)
    record_property("fuzz_ok", ok)
    record_property("fuzz_configured", configured)
    record_property("fuzz_errno", json.dumps([p["errno"] for p in procs]))
    record_property("fuzz_seconds", round(time.monotonic() - started, 1))
    assert len(procs) == FUZZ_PROCS and calls == FUZZ_CALLS * FUZZ_PROCS
    assert ok > 0, f"no call of {calls} succeeded: the fuzzer never got past the checks"
    assert configured > 0, f"no config of {FUZZ_FILE} succeeded: no huge page was pinned"
    info = vrhp.info()
    assert info.mem == "hugepage"
    vrhp.rmmod()
    assert not vrhp.loaded()
    guest.check(f"rm -f {FUZZ_FILE}")
    assert hugepage_pool(guest) == (total_before, free_before), "a huge page stayed pinned"


@pytest.mark.lab
def test_rmmod_refused_while_a_table_is_mapped(vrhp: Any, guest: Guest, lab: Lab,
                                               uapi: tuple[Path, ...]) -> None:
    """A btable mapping outlives its fd: rmmod is refused while it exists, the module still
    answers, and once the mapping is gone the module unloads."""
    fuzzer = guesttools.install(guest, "vrhp_fuzz", lab.cache, include_dirs=uapi)
    vrhp.load(mem="btable")
    guest.check(f"{fuzzer} hold flow 60 > /tmp/hold.out 2>&1 & echo $! > /tmp/hold.pid; "
                "for i in $(seq 50); do grep -q held /tmp/hold.out && break; sleep 0.1; done; "
                "cat /tmp/hold.out")
    try:
        refused = guest.run("rmmod vrhp")
        assert not refused.ok, "rmmod succeeded under a live mapping of the flow table"
        assert vrhp.loaded()
        info = vrhp.info()
        assert info.mem == "btable"
    finally:
        guest.run("kill $(cat /tmp/hold.pid); sleep 0.5")
    vrhp.rmmod()
    assert not vrhp.loaded()
