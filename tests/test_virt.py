from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab import engine
from lab.build.image import nodefiles
from lab.build.image.guestimage import Image
from lab.build.kernel import Kernel
from lab.engine import host_pages_needed
from lab.errors import BootError, HostError, LabError
from lab.host import hugepages, inspect
from lab.plan import NodePlan, kernel_cmdline
from lab.reap import leaked_host_pages
from lab.rundir import STATE_FILE, RunState, hold_owner_lock
from lab.timeouts import Speed, Timeouts, parse_speed
from lab.topology import parse
from lab.vm import accel, domain, libvirt_calls, readiness

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def spec(**changes: object) -> domain.DomainSpec:
    base = dict(name="hplab-abcd1234-cn1", run_id="abcd1234", node="cn1", memory_mib=3072,
                vcpus=1, accel="tcg", kernel=Path("/k/vmlinuz"), initrd=Path("/k/initrd"),
                cmdline="console=ttyS0 panic=-1", console=Path("/r/cn1/console.log"),
                ssh_port=40022)
    base.update(changes)
    return domain.DomainSpec(**base)  # type: ignore[arg-type]


def element(root: ET.Element, path: str) -> ET.Element:
    found = root.find(path)
    assert found is not None, f"no <{path}> in the domain XML"
    return found


def test_tcg_domain_xml() -> None:
    root = ET.fromstring(domain.domain_xml(spec()))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "hplab-abcd1234-cn1"
    assert element(root, "cpu").attrib == {"mode": "maximum", "check": "none"}
    assert element(root, "cpu/feature").attrib == {"policy": "disable", "name": "erms"}
    assert root.findtext("os/kernel") == "/k/vmlinuz"
    assert root.findtext("os/cmdline") == "console=ttyS0 panic=-1"
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        assert root.findtext(event) == "destroy"
    assert root.find("devices/graphics") is None
    assert element(root, "devices/serial/source").get("path") == "/r/cn1/console.log"
    assert element(root, "devices/serial/source").get("append") == "on"  # a reboot appends
    args = [a.get("value") for a in root.iter(f"{QEMU_NS}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert netdev == "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"
    assert root.find("memoryBacking") is None


def test_kvm_and_hugepage_backing() -> None:
    root = ET.fromstring(domain.domain_xml(spec(accel="kvm", hugepage_backing=True)))
    assert root.get("type") == "kvm"
    assert element(root, "cpu").get("mode") == "host-passthrough"
    args = [a.get("value") for a in root.iter(f"{QEMU_NS}arg")]
    backend = args[args.index("-object") + 1]
    assert backend == ("memory-backend-file,id=hplab.ram,size=3221225472,"
                       "mem-path=/dev/hugepages1G,share=off,prealloc=on")
    assert args[args.index("-machine") + 1] == "memory-backend=hplab.ram"


def test_unbacked_domain_leaves_ram_to_libvirt() -> None:
    args = [a.get("value") for a in ET.fromstring(domain.domain_xml(spec())).iter(f"{QEMU_NS}arg")]
    assert "-object" not in args and "-machine" not in args


def test_disk_is_a_qcow2_virtio_disk_on_a_fixed_slot() -> None:
    root = ET.fromstring(domain.domain_xml(spec(disk=Path("/r/cn1/disk.qcow2"))))
    disk = element(root, "devices/disk")
    assert element(disk, "driver").get("type") == "qcow2"
    assert element(disk, "source").get("file") == "/r/cn1/disk.qcow2"
    assert element(disk, "target").attrib == {"dev": "vda", "bus": "virtio"}
    assert element(disk, "address").get("slot") == "0x05"
    assert ET.fromstring(domain.domain_xml(spec())).find("devices/disk") is None


def test_metadata_is_quoted() -> None:
    root = ET.fromstring(domain.domain_xml(spec(console=Path("/r/a'b&c/console.log"))))
    assert element(root, "devices/serial/source").get("path") == "/r/a'b&c/console.log"


def test_domain_names_carry_run_and_node() -> None:
    assert domain.domain_name("abcd1234", "cn1") == "hplab-abcd1234-cn1"


def test_free_port_is_loopback_bindable() -> None:
    port = domain.free_port()
    assert 1024 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_transient_errors_are_recognised() -> None:
    assert libvirt_calls.is_transient_error(Exception("Could not set up host forwarding rule 'x'"))
    assert not libvirt_calls.is_transient_error(Exception("unsupported configuration"))


@pytest.mark.parametrize(("text", "expected"), [
    ("nodes: [{name: a, hugepages: {size: 1G, count: 1}}]",
     "console=ttyS0 panic=-1 loglevel=5 rdinit=/init cryptomgr.notests "
     "default_hugepagesz=1G hugepagesz=1G hugepages=1"),
    ("nodes: [{name: a, memory: 2G, hugepages: {size: 2M, count: 64}, cmdline: 'mitigations=off'}]",
     "console=ttyS0 panic=-1 loglevel=5 rdinit=/init cryptomgr.notests "
     "default_hugepagesz=2M hugepagesz=2M hugepages=64 mitigations=off"),
    ("nodes: [{name: a}]", "console=ttyS0 panic=-1 loglevel=5 rdinit=/init cryptomgr.notests"),
])
def test_kernel_cmdline(text: str, expected: str) -> None:
    assert kernel_cmdline(parse(text, Path("t.yaml")).nodes[0]) == expected


def test_a_kernels_own_arguments_come_before_the_topologys() -> None:
    node = parse("nodes: [{name: a, cmdline: quiet}]", Path("t.yaml")).nodes[0]
    assert kernel_cmdline(node, "watchdog_thresh=60").endswith("watchdog_thresh=60 quiet")


def test_console_tail_of_missing_file(tmp_path: Path) -> None:
    assert "no console file" in readiness.console_tail(tmp_path / "nothing")


def test_console_tail_keeps_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    tail = readiness.console_tail(log, 3)
    assert tail.splitlines() == ["line 97", "line 98", "line 99"]


def test_resolve_accel_honours_explicit_choice() -> None:
    def must_not_probe() -> bool:
        raise AssertionError("probed")

    assert accel.resolve_accel("tcg", must_not_probe) == "tcg"
    assert accel.resolve_accel("auto", lambda: False) == "tcg"
    assert accel.resolve_accel("auto", lambda: True) == "kvm"


SMAPS = """\
55d0c0a00000-55d0c0b00000 r-xp 00000000 fe:01 1234      /usr/bin/qemu-system-x86_64
Size:               1024 kB
KernelPageSize:        4 kB
Rss:                 800 kB
Private_Hugetlb:       0 kB
VmFlags: rd ex mr mw me
7f0e40000000-7f0ec0000000 rw-p 00000000 00:28 24056 /dev/hugepages1G/qemu_back_mem.x (deleted)
Size:            2097152 kB
KernelPageSize:  1048576 kB
Rss:                   0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:  2097152 kB
VmFlags: rd wr mr mw me de ht
7f0f00000000-7f0f80000000 rw-p 00000000 00:00 0
Size:            2097152 kB
KernelPageSize:        4 kB
Rss:                   4 kB
"""


def test_smaps_mappings_with_page_size_and_hugetlb_use() -> None:
    maps = inspect.parse_smaps(SMAPS)
    assert [m.size_kib for m in maps] == [1024, 2097152, 2097152]
    ram = maps[1]
    assert ram.path == "/dev/hugepages1G/qemu_back_mem.x (deleted)"
    assert (ram.kernel_page_kib, ram.rss_kib, ram.hugetlb_kib) == (1048576, 0, 2097152)
    assert maps[2].path == "" and maps[2].kernel_page_kib == 4


def test_hugetlbfs_mount_must_have_gigantic_pages() -> None:
    mounts = ("hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"
              "hugetlbfs /dev/hugepages1G hugetlbfs rw,relatime,mode=1770,pagesize=1024M 0 0\n")
    assert hugepages.hugetlbfs_mounted(mounts, Path("/dev/hugepages1G"))
    assert not hugepages.hugetlbfs_mounted(mounts, Path("/dev/hugepages"))
    assert not hugepages.hugetlbfs_mounted("tmpfs /dev/hugepages1G tmpfs rw 0 0\n",
                                           Path("/dev/hugepages1G"))


class FakePool:
    """A host 1 GiB pool that grants at most `capacity` pages; compaction adds some."""

    def __init__(self, capacity: int, after_compaction: int = 0) -> None:
        self.nr, self.capacity, self.after_compaction = 0, capacity, after_compaction
        self.compactions = 0

    def write(self, pages: int) -> None:
        self.nr = min(pages, self.capacity)

    def compact(self) -> None:
        self.compactions += 1
        self.capacity += self.after_compaction

    def install(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakePool:
        nr = tmp_path / "nr_hugepages"
        nr.write_text("0\n")
        monkeypatch.setattr(hugepages, "NR_1G", nr)
        monkeypatch.setenv("HPLAB_LOCK_DIR", str(tmp_path / "locks"))
        monkeypatch.setattr(hugepages, "_read_pool", lambda: self.nr)
        monkeypatch.setattr(hugepages, "_write_pool", self.write)
        monkeypatch.setattr(hugepages, "_compact", self.compact)
        monkeypatch.setattr(hugepages, "_mem_available_kib", lambda: 16 * 1024 * 1024)
        return self


def test_host_pages_reserved_and_given_back(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pool = FakePool(capacity=8).install(monkeypatch, tmp_path)
    pool.nr = 1  # another lab's page
    hugepages.reserve_host_pages(3)
    assert pool.nr == 4
    hugepages.release_host_pages(3)
    assert (pool.nr, pool.compactions) == (1, 0)


def test_shortfall_compacts_once_then_succeeds(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pool = FakePool(capacity=2, after_compaction=2).install(monkeypatch, tmp_path)
    hugepages.reserve_host_pages(3)
    assert (pool.nr, pool.compactions) == (3, 1)


def test_shortfall_refuses_and_restores_the_pool(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pool = FakePool(capacity=2).install(monkeypatch, tmp_path)
    with pytest.raises(HostError, match=r"3 more 1 GiB pages .*got 2 even after compacting"):
        hugepages.reserve_host_pages(3)
    assert (pool.nr, pool.compactions) == (0, 1)


def test_not_enough_host_memory_is_refused_before_touching_the_pool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = FakePool(capacity=8).install(monkeypatch, tmp_path)
    monkeypatch.setattr(hugepages, "_mem_available_kib", lambda: 2 * 1024 * 1024)
    with pytest.raises(HostError, match="needs 3 x 1 GiB but the host has only 2 GiB"):
        hugepages.reserve_host_pages(3)
    assert pool.nr == 0


def test_host_without_gigantic_pages_is_refused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hugepages, "NR_1G", tmp_path / "missing" / "nr_hugepages")
    with pytest.raises(HostError, match="no 1 GiB huge pages"):
        hugepages.reserve_host_pages(1)


@pytest.mark.parametrize(("text", "pages"), [
    ("nodes: [{name: a, memory: 2G, backing: hugepages-1G}]", 2),
    ("nodes: [{name: a, memory: 5G, backing: hugepages-1G}]", 5),
    ("nodes: [{name: a, memory: 5G}]", 0),
])
def test_host_pages_needed_cover_all_guest_ram(text: str, pages: int) -> None:
    assert host_pages_needed(parse(text, Path("t.yaml")).nodes[0]) == pages


@pytest.mark.parametrize(("state", "pages"), [
    ({"status": "running", "host_pages": 2}, 2),
    ({"status": "starting", "host_pages": 5}, 5),
    ({"status": "stopped", "host_pages": 2}, 0),  # stop() gave them back
    ({"status": "kept", "host_pages": 0}, 0),
    ({"status": "running"}, 0),  # a run from before host pages were recorded
])
def test_reap_gives_back_only_pages_a_dead_run_still_holds(state: dict[str, object],
                                                           pages: int) -> None:
    run = {"run_id": "abcd1234", "pid": 1, "keep": False, "topology": "t.yaml"}
    assert leaked_host_pages(RunState.from_json(run | state, "state.json")) == pages


class _FakeConn:
    def __init__(self, name: str) -> None:
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


def test_lab_reconnects_when_the_daemon_restarted(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[_FakeConn] = []
    waits: list[float] = []

    def connect(uri: str, wait_s: float = 0.0) -> _FakeConn:
        waits.append(wait_s)
        opened.append(_FakeConn(f"{uri}#{len(opened)}"))
        return opened[-1]

    monkeypatch.setattr(libvirt_calls, "connect", connect)
    monkeypatch.setattr(libvirt_calls, "alive", lambda conn: conn is not opened[0])
    lab = engine.Lab(parse("nodes: [{name: cn1}]", Path("t.yaml")), tmp_path)
    events: list[str] = []
    lab.bus.subscribe(lambda event: events.append(f"{event.phase} {event.detail}"))

    first = lab._conn("qemu:///system")
    assert first is opened[0]
    again = lab._conn("qemu:///system")  # opened[0] is no longer alive
    assert again is opened[1] and first.closed
    assert lab._conn("qemu:///system") is opened[1]
    assert waits == [0.0, engine.LIBVIRT_RECONNECT_S]
    assert any("reconnected" in e for e in events), events


class _FakeGuest:
    def __init__(self, node: str, port: int, *args: object,
                 timeouts: Timeouts | None = None) -> None:
        self.node, self.port, self.retired = node, port, ""
        self.timeouts = timeouts or Timeouts()

    def check(self, command: str) -> str:
        return ""

    def measure_speed(self, image: str) -> Speed:
        speed = parse_speed("hplab-speed 10.00 10.34 10.64", image)  # twice the reference
        self.timeouts = self.timeouts.measured(speed.slowdown)
        return speed

    def retire(self, why: str) -> None:
        self.retired = why

    def close(self) -> None:
        pass


@pytest.fixture
def rebootable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> tuple[engine.Lab, engine.NodeRuntime, list[str]]:
    """A lab with one running node and its libvirt calls, images and Guest faked; the calls made."""
    calls: list[str] = []
    monkeypatch.setattr(libvirt_calls, "connect", lambda uri, wait_s=0.0: _FakeConn(uri))
    monkeypatch.setattr(libvirt_calls, "alive", lambda conn: True)
    monkeypatch.setattr(libvirt_calls, "destroy",
                        lambda conn, name: calls.append(f"destroy {name}"))
    monkeypatch.setattr(libvirt_calls, "create",
                        lambda conn, spec: calls.append(f"create {spec.name}"))

    def overlay(image: Image, out: Path) -> Path:
        calls.append(f"overlay {out.name}")
        return out

    monkeypatch.setattr(nodefiles, "node_disk", overlay)
    monkeypatch.setattr(readiness, "wait_ssh_banner",
                        lambda *a, console_from=0, **k: calls.append(f"wait from {console_from}"))
    monkeypatch.setattr(engine, "Guest", _FakeGuest)
    lab = engine.Lab(parse("nodes: [{name: cn1}]", Path("t.yaml")), tmp_path)
    lab.run_id = "x"  # the domain the node runtime below names
    lab.run_dir.mkdir(parents=True)
    console = lab.run_dir / "console.log"
    console.write_text("first boot\nhplab-init: ready\n")
    rt = engine.NodeRuntime(
        plan=NodePlan(lab.topology.nodes[0], Kernel("debian:6.1", "6.1.0-x", "1", tmp_path),
                      Image("minimal", "k", tmp_path / "img", "ssh-ed25519 AAAA")), accel="tcg",
        domain="hplab-x-cn1", console=console, initrd=tmp_path / "initrd",
        disk=tmp_path / "disk.qcow2", guest=_FakeGuest("cn1", 40000), boots=1)  # type: ignore[arg-type]
    lab.nodes["cn1"] = rt
    return lab, rt, calls


def test_reboot_boots_a_new_domain_after_the_old_one_is_gone(
        rebootable: tuple[engine.Lab, engine.NodeRuntime, list[str]]) -> None:
    lab, rt, calls = rebootable
    old = rt.guest
    assert isinstance(old, _FakeGuest)

    lab.reboot("cn1")

    assert old.retired == "rebooted into boot 2"
    assert calls == ["destroy hplab-x-cn1", "overlay disk.qcow2", "create hplab-x-cn1",
                     f"wait from {rt.console.stat().st_size}"]  # not the old ready mark
    assert isinstance(rt.guest, _FakeGuest) and rt.guest is not old
    assert rt.guest.port == rt.port and rt.boots == 2
    state = json.loads((lab.run_dir / STATE_FILE).read_text())
    assert state["nodes"]["cn1"]["boots"] == 2 and state["nodes"]["cn1"]["up"]
    # the new boot's speed, measured once it answered, scales every later bound
    assert state["nodes"]["cn1"]["slowdown"] == 2.0
    assert state["nodes"]["cn1"]["speed"] == {"loop_s": 0.34, "memory_s": 0.3,
                                              "unclamped": 2.0}
    assert rt.timeouts.slowdown == rt.guest.timeouts.slowdown == pytest.approx(2.0)
    assert rt.timeouts.bound(120).seconds == pytest.approx(240)
    speed = [e.detail for e in lab.bus.history if e.phase == "speed" and e.state == "info"]
    assert speed == ["slowdown 2.00: shell loop 0.34s, memory 0.30s "
                     "(reference 0.17s + 0.15s)"]
    with pytest.raises(LabError, match="node 'cn9' is not in lab"):
        lab.reboot("cn9")


def test_a_reboot_that_never_answers_leaves_no_domain_and_says_the_node_is_down(
        rebootable: tuple[engine.Lab, engine.NodeRuntime, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    lab, rt, calls = rebootable

    def no_banner(*args: object, **kwargs: object) -> None:
        raise BootError("cn1: no SSH banner after 90.0s", node="cn1", phase="ssh-banner")

    monkeypatch.setattr(readiness, "wait_ssh_banner", no_banner)
    with pytest.raises(BootError, match="no SSH banner"):
        lab.reboot("cn1")
    assert calls[-2:] == ["create hplab-x-cn1", "destroy hplab-x-cn1"]
    assert rt.guest is None
    state = json.loads((lab.run_dir / STATE_FILE).read_text())
    assert state["status"] == "running" and not state["nodes"]["cn1"]["up"]
    with pytest.raises(LabError, match="node 'cn1' is not running"):
        lab.guest("cn1")


def test_a_half_booted_domain_that_will_not_go_is_named_on_the_boot_error(
        rebootable: tuple[engine.Lab, engine.NodeRuntime, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    lab, _, calls = rebootable

    def no_banner(*args: object, **kwargs: object) -> None:
        raise BootError("cn1: no SSH banner after 90.0s", node="cn1", phase="ssh-banner")

    def refuse_once_created(conn: object, name: str) -> None:
        if calls and calls[-1] == f"create {name}":
            raise LabError(f"libvirt: cannot destroy {name}")
        calls.append(f"destroy {name}")

    monkeypatch.setattr(readiness, "wait_ssh_banner", no_banner)
    monkeypatch.setattr(libvirt_calls, "destroy", refuse_once_created)
    with pytest.raises(BootError, match="no SSH banner") as raised:
        lab.reboot("cn1")
    notes = getattr(raised.value, "__notes__", [])
    assert any("destroying the half-booted hplab-x-cn1 failed too: libvirt: cannot destroy"
               in note for note in notes), f"the destroy failure is not on the error: {notes}"


@pytest.mark.parametrize(("mounted_here", "unmounts"), [(True, 1), (False, 0)])
def test_the_host_pool_is_given_back_and_a_mount_made_for_it_undone(
        monkeypatch: pytest.MonkeyPatch, mounted_here: bool, unmounts: int) -> None:
    calls: list[str] = []
    monkeypatch.setattr(hugepages, "ensure_hugetlbfs", lambda: mounted_here)
    monkeypatch.setattr(hugepages, "reserve_host_pages",
                        lambda n, **_: calls.append(f"reserve {n}"))
    monkeypatch.setattr(hugepages, "release_host_pages",
                        lambda n, **_: calls.append(f"release {n}"))
    monkeypatch.setattr(hugepages, "unmount_unless_busy", lambda: calls.append("umount"))
    with pytest.raises(RuntimeError), hugepages.hugepage_pool(3):
        raise RuntimeError("boot failed")
    assert calls == ["reserve 3", "release 3", *["umount"] * unmounts]


def test_a_refused_reservation_still_undoes_the_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def refuse(count: int, **_: object) -> None:
        raise HostError("no pages")

    monkeypatch.setattr(hugepages, "ensure_hugetlbfs", lambda: True)
    monkeypatch.setattr(hugepages, "reserve_host_pages", refuse)
    monkeypatch.setattr(hugepages, "unmount_unless_busy", lambda: calls.append("umount"))
    with pytest.raises(HostError), hugepages.hugepage_pool(1):
        pass
    assert calls == ["umount"]


def test_stop_runs_every_step_when_some_fail_and_names_them(
        rebootable: tuple[engine.Lab, engine.NodeRuntime, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    lab, rt, _ = rebootable
    lab._conn(rt.node.uri)

    def refuse(conn: object, name: str) -> None:
        raise LabError(f"libvirt: cannot destroy {name}")

    def disk_busy(run_dir: Path) -> None:
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(libvirt_calls, "destroy", refuse)
    monkeypatch.setattr(engine, "remove_work_files", disk_busy)
    released: list[str] = []
    lab._host_resources.callback(lambda: released.append("pool"))
    lab._owner_lock = hold_owner_lock(lab.run_dir, lab.run_id)
    with pytest.raises(LabError) as raised:
        lab.stop()
    message = str(raised.value)
    assert "destroy hplab-x-cn1: libvirt: cannot destroy hplab-x-cn1" in message
    assert "remove work files: [Errno 16] Device or resource busy" in message
    assert released == ["pool"] and lab._owner_lock is None and not lab._conns
    assert json.loads((lab.run_dir / STATE_FILE).read_text())["status"] == "stopped"


def test_a_connection_gets_keepalive_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    calls: list[str] = []

    class Conn:
        def setKeepAlive(self, interval: int, count: int) -> None:
            calls.append(f"keepalive {interval} {count}")

    fake = types.ModuleType("libvirt")
    fake.registerErrorHandler = lambda *a: None  # type: ignore[attr-defined]
    fake.virEventRegisterDefaultImpl = lambda: calls.append("event impl")  # type: ignore[attr-defined]
    fake.virEventRunDefaultImpl = lambda: __import__("time").sleep(3600)  # type: ignore[attr-defined]
    def open_(uri: str) -> Conn:
        calls.append(f"open {uri}")
        return Conn()

    fake.open = open_  # type: ignore[attr-defined]
    fake.libvirtError = RuntimeError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "libvirt", fake)
    libvirt_calls._event_loop.cache_clear()
    try:
        libvirt_calls.connect("qemu:///system")
        libvirt_calls.connect("qemu:///system")
    finally:
        libvirt_calls._event_loop.cache_clear()
    assert calls == ["event impl", "open qemu:///system", "keepalive 5 3",
                     "open qemu:///system", "keepalive 5 3"]
