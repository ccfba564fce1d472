"""A node whose QEMU dies costs the test it died in: the lab says so once, boots the node
again for the next test, and gives up after MAX_REVIVALS."""

from __future__ import annotations

import re
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from fakelab import run_inner

from lab import engine
from lab.build.image import nodefiles
from lab.build.image.guestimage import Image
from lab.build.kernel import Kernel
from lab.plan import NodePlan
from lab.pytest_plugin import session as lab_session
from lab.topology import parse
from lab.vm import domain, libvirt_calls

pytest_plugins = ["pytester"]

CLASS_ON_NODE = '''
import pytest

@pytest.fixture(scope="class")
def held(lab, node_name):
    """A class-scoped fixture holding the node's Guest, as the suites' class_module."""
    guest = lab.guest(node_name)
    guest.check("install")
    yield guest
    guest.check("reset")


class TestOnNode:
    def test_a_dies(self, held, lab, node):
        lab.kill("cn1", signal.SIGKILL)
        held.check("true")

    def test_b_after(self, held, node):
        assert held.check("true") == "true on boot 2\\n"

    def test_c_after(self, held, node):
        assert held.check("true") == "true on boot 2\\n"
'''


def test_the_test_a_node_died_in_is_infrastructure_and_the_next_gets_it_back(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = run_inner(pytester, monkeypatch, "import signal\n" + CLASS_ON_NODE, "-v")
    out = inner.result.stdout.str()
    results = inner.results()
    died, after = results["TestOnNode::test_a_dies[cn1]"], results["TestOnNode::test_b_after[cn1]"]
    assert died["outcome"] == "failed" and died["properties"]["outcome"] == "infrastructure"
    assert "NodeDied: node cn1: QEMU exited (signal 9) during " \
           "test_inner.py::TestOnNode::test_a_dies[cn1]" in out
    assert re.search(r"--- last console lines of cn1 ---\nE +boot 1 of cn1\nE +hplab-init", out)
    assert "the next test on cn1 boots it again (revival 1 of 3)" in out
    # the class fixture was set up again on the new boot; its old teardown was not an error
    assert after["outcome"] == "passed" and after["properties"]["revive_seconds"] == "0.5"
    assert results["TestOnNode::test_c_after[cn1]"]["outcome"] == "passed"
    assert "revive_seconds" not in results["TestOnNode::test_c_after[cn1]"]["properties"]
    inner.result.assert_outcomes(passed=2, failed=1)
    assert inner.classes() == inner.junit_classes() == {
        "TestOnNode::test_a_dies[cn1]": "infrastructure",
        "TestOnNode::test_b_after[cn1]": "passed", "TestOnNode::test_c_after[cn1]": "passed"}
    assert "[hplab] revive cn1 ... (boot 2)" in out
    assert out.count("[hplab] qemu cn1: exited (signal 9)") == 1


def test_a_node_is_revived_three_times_then_its_tests_error_naming_the_cause(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    source = '''
import pytest

@pytest.mark.parametrize("n", range(6))
def test_kill(lab, guest, node, n):
    if n < 4:
        lab.kill("cn1", 15)
    guest.check("true")
'''
    inner = run_inner(pytester, monkeypatch, source)
    inner.result.assert_outcomes(failed=4, errors=2)
    results = inner.results()
    classes = [results[f"test_kill[cn1-{n}]"]["properties"]["outcome"] for n in range(6)]
    assert classes == ["infrastructure"] * 6
    out = inner.result.stdout.str()
    assert "no revival left (3 this session)" in out
    cause = ("LabError: node cn1 died 4 times this session (last: node cn1: QEMU "
             "exited (signal 15) during test_inner.py::test_kill[cn1-3]); not reviving")
    # count the errors' own lines: the short summary repeats them only where CI is set
    raised = [line for line in out.splitlines() if line.startswith("E ") and cause in line]
    assert len(raised) == 2


def test_ssh_failing_in_a_fixture_of_a_dead_node_names_the_death(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    source = '''
import pytest

@pytest.fixture
def installed(lab, guest):
    lab.kill("cn1", 9, unseen=3)  # libvirt reports the death a moment after SSH fails
    guest.check("mkdir -p /opt/vrhp")

def test_uses_module(installed):
    pass

def test_next(guest):
    guest.check("true")
'''
    inner = run_inner(pytester, monkeypatch, source)
    inner.result.assert_outcomes(passed=1, errors=1)
    out = inner.result.stdout.str()
    assert "Unable to connect" in out  # the SSH error stays in the chain ...
    assert "NodeDied: node cn1: QEMU exited (signal 9) during setup of " \
           "test_inner.py::test_uses_module[cn1]" in out  # ... and the death is its cause
    assert inner.classes()["test_uses_module[cn1]"] == "infrastructure"


def test_a_death_between_tests_fails_no_test(pytester: pytest.Pytester,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    source = '''
import pytest

@pytest.fixture
def kill_after(lab):
    yield
    lab.kill("cn1", 9, unseen=1)  # seen only at the next look

def test_first(guest, kill_after):
    guest.check("true")

def test_second(guest):
    assert guest.check("true") == "true on boot 2\\n"
'''
    inner = run_inner(pytester, monkeypatch, source)
    inner.result.assert_outcomes(passed=2)
    assert "[hplab] qemu cn1: exited (signal 9) between tests, before " \
           "test_inner.py::test_second[cn1]" in inner.result.stdout.str()


def test_a_node_a_test_does_not_use_does_not_fail_it(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pair = tmp_path / "pair.yaml"
    pair.write_text("nodes: [{name: cn1, memory: 3G}, {name: cn2, memory: 3G}]\n")
    source = '''
def test_on_node(lab, guest, node):
    if node.node.name == "cn1":
        lab.kill("cn2", 9)
    guest.check("true")
'''
    inner = run_inner(pytester, monkeypatch, source, f"--topology={pair}")
    classes = inner.classes()
    assert classes["test_on_node[cn1]"] == "passed"
    assert classes["test_on_node[cn2]"] == "passed"  # revived before it
    assert inner.results()["test_on_node[cn2]"]["properties"]["revive_seconds"] == "0.5"


# -- the engine side: how QEMU ended, and booting a dead node again -------------------

def _exit_datagram(pid: int, tgid: int, status: int, what: int = engine.PROC_EVENT_EXIT
                   ) -> bytes:
    event = engine.EVENT_HEADER.pack(what, 0, 123) + engine.EXIT_EVENT.pack(pid, tgid, status,
                                                                            17)
    message = engine.CN_HEADER.pack(1, 1, 0, 0, len(event), 0) + event
    return engine.NLMSG_HEADER.pack(engine.NLMSG_HEADER.size + len(message), 3, 0, 0,
                                    0) + message


def test_proc_connector_exits_of_processes_only() -> None:
    assert engine.parse_proc_exits(_exit_datagram(4242, 4242, 9)) == [(4242, 9)]
    assert engine.parse_proc_exits(_exit_datagram(4243, 4242, 9)) == []  # a thread
    assert engine.parse_proc_exits(_exit_datagram(4242, 4242, 9, what=0x2)) == []  # exec
    two = _exit_datagram(1, 1, 0) + _exit_datagram(2, 2, 256)
    assert engine.parse_proc_exits(two) == [(1, 0), (2, 256)]
    assert engine.parse_proc_exits(b"\x00" * 8) == []
    assert engine.parse_proc_exits(struct.pack("=IHHII", 0, 3, 0, 0, 0)) == []


OLD_BOOT_THEN_KILLED = """\
2026-12-02 00:50:59.222+0000: starting up libvirt version: 9.0.0
2026-12-02T00:53:37.084263Z qemu-system-x86_64: terminating on signal 15 from pid 4287 \
(/usr/sbin/libvirtd)
2026-12-02 00:53:38.286+0000: shutting down, reason=destroyed
2026-12-02 00:53:38.304+0000: starting up libvirt version: 9.0.0
2026-12-02 00:56:06.506+0000: shutting down, reason=crashed
"""


@pytest.mark.parametrize(("status", "log", "cause"), [
    (9, OLD_BOOT_THEN_KILLED, "signal 9"),
    (None, OLD_BOOT_THEN_KILLED, "libvirt: crashed"),  # not the earlier boot's SIGTERM
    (15, OLD_BOOT_THEN_KILLED.rsplit("2026-12-02 00:53:38.304", 1)[0],
     "signal 15 from pid 4287 (/usr/sbin/libvirtd)"),
    (None, "qemu-system-x86_64: terminating on signal 2\n", "signal 2"),
    (1 << 8, "", "exit status 1"),
    (None, "", "no exit status known"),
])
def test_describe_exit(status: int | None, log: str, cause: str) -> None:
    assert engine.describe_exit(status, log) == cause


def test_qemu_exits_hears_a_sigkill() -> None:
    exits = engine.QemuExits()
    if not exits.start():
        pytest.skip("the kernel's process events connector needs root and CONFIG_PROC_EVENTS")
    proc = subprocess.Popen(["sleep", "60"])
    try:
        exits.watch("hplab-test-cn1", proc.pid)
        assert exits.status("hplab-test-cn1") is None
        proc.send_signal(signal.SIGKILL)
        assert exits.status("hplab-test-cn1", wait=5.0) == signal.SIGKILL
        started = time.monotonic()
        assert exits.status("hplab-other", wait=0.2) is None
        assert time.monotonic() - started >= 0.2
    finally:
        proc.kill()
        proc.wait()
        exits.close()


class _Conn:
    def close(self) -> None:
        pass


def test_revive_boots_a_vanished_domain_again(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    running: set[str] = set()

    def create(conn: object, spec: domain.DomainSpec) -> None:
        calls.append(f"create {spec.name}")
        running.add(spec.name)

    monkeypatch.setattr(libvirt_calls, "connect", lambda uri, wait_s=0.0: _Conn())
    monkeypatch.setattr(libvirt_calls, "alive", lambda conn: True)
    monkeypatch.setattr(libvirt_calls, "destroy",
                        lambda conn, name: calls.append(f"destroy {name}"))
    monkeypatch.setattr(libvirt_calls, "create", create)
    monkeypatch.setattr(libvirt_calls, "is_active", lambda conn, name: name in running)
    def overlay(img: Image, out: Path) -> Path:
        calls.append("overlay")
        return out

    monkeypatch.setattr(nodefiles, "node_disk", overlay)

    def ready(lab: engine.Lab, rt: engine.NodeRuntime, created: float) -> None:
        calls.append(f"ready from {rt.console_from}")
        rt.guest = object()  # type: ignore[assignment]
        rt.boots += 1

    monkeypatch.setattr(engine.Lab, "_wait_ready", ready)
    lab = engine.Lab(parse("nodes: [{name: cn1}]", Path("t.yaml")), tmp_path)
    lab.run_id = "x"  # the domain the node runtime below names
    lab.run_dir.mkdir(parents=True)
    console = lab.run_dir / "console.log"
    console.write_text("boot 1\nhplab-init: ready\n[ 9.0] last words\n")
    rt = engine.NodeRuntime(
        plan=NodePlan(lab.topology.nodes[0], Kernel("debian:6.1", "6.1.0-x", "1", tmp_path),
                      Image("minimal", "k", tmp_path / "img", "ssh-ed25519 AAAA")), accel="tcg",
        domain="hplab-x-cn1", console=console, initrd=tmp_path / "initrd",
        disk=tmp_path / "disk.qcow2", boots=1)
    lab.nodes["cn1"] = rt
    events: list[str] = []
    lab.bus.subscribe(lambda e: events.append(f"{e.phase} {e.state}"))

    assert lab.exit_cause("cn1") == "no exit status known"  # never created: not running
    calls.append("killed")
    assert lab.exit_cause("cn1") == "no exit status known"  # no log for this domain
    assert lab.console_tail("cn1", lines=2) == "hplab-init: ready\n[ 9.0] last words"
    lab.retire("cn1", "QEMU exited (signal 9) during t")
    assert lab.revive("cn1") == rt.boot_seconds
    assert calls[1:] == ["destroy hplab-x-cn1", "overlay", "create hplab-x-cn1",
                         f"ready from {console.stat().st_size}"]
    assert events == ["revive start", "create start", "create end", "revive end"]
    assert rt.boots == 2
    assert lab.exit_cause("cn1") is None


def test_a_session_without_a_lab_notices_nothing(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfig()
    session = lab_session.LabSession(config)
    item = pytester.getitem("def test_func(): pass")
    assert session.notice_deaths(item, "during x", settle=True) == []
    assert session.prepare_nodes(item) == []
