from __future__ import annotations

import gzip
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab import shell
from lab.build import guesttools
from lab.build.image import initramfs
from lab.errors import BuildError, GuestError, HostError
from lab.events import EventBus
from lab.guest.ssh import Guest
from lab.host import prepare as host
from lab.pytest_plugin import needs, outcomes
from lab.pytest_plugin.session import CANARIES, LabSession
from lab.topology import parse


def test_phase_timer_records_end_and_fail() -> None:
    bus = EventBus()
    with bus.phase("boot", "cn1"):
        pass
    with pytest.raises(ValueError), bus.phase("ssh", "cn1"):
        raise ValueError("refused")
    states = [(e.phase, e.state) for e in bus.history]
    assert states == [("boot", "start"), ("boot", "end"), ("ssh", "start"), ("ssh", "fail")]
    assert bus.history[-1].detail == "ValueError: refused"
    assert [t[:2] for t in bus.timings()] == [("boot", "cn1")]


def test_digest_separates_parts() -> None:
    assert shell.digest("ab", "c") != shell.digest("a", "bc")


def test_run_names_failed_command() -> None:
    with pytest.raises(BuildError, match=r"false failed with exit status 1"):
        shell.run(["false"])
    with pytest.raises(BuildError, match="command not found: no-such-tool"):
        shell.run(["no-such-tool"])


def test_install_command_lists_packages() -> None:
    assert host.install_command(["cpio", "kmod"]).endswith(
        "apt-get install -y --no-install-recommends cpio kmod")


def test_a_daemon_command_is_bounded_and_a_hung_one_names_itself(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bounds: list[object] = []

    def hangs(argv: list[str], **kwargs: object) -> None:
        bounds.append(kwargs.get("timeout"))
        raise subprocess.TimeoutExpired(argv, host.READY_TIMEOUT)

    monkeypatch.setattr(subprocess, "run", hangs)
    with pytest.raises(HostError, match=r"systemctl start libvirtd\.service did not finish"):
        host._daemon_command(["systemctl", "start", "libvirtd.service"], check=False)
    assert bounds == [host.READY_TIMEOUT], f"daemon command bound: {bounds}"


def test_module_order_puts_dependencies_first(tmp_path: Path) -> None:
    from lab.build.kernel import Kernel

    mods = tmp_path / "lib" / "modules" / "6.1.0-1-amd64"
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text(
        "kernel/net/virtio_net.ko: kernel/net/net_failover.ko kernel/core/failover.ko "
        "kernel/virtio/virtio.ko\n"
        "kernel/net/net_failover.ko: kernel/core/failover.ko\n"
        "kernel/core/failover.ko:\nkernel/virtio/virtio.ko:\n")
    (mods / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    kernel = Kernel("debian:6.1", "6.1.0-1-amd64", "1", tmp_path)
    order = initramfs.module_order(kernel, ("virtio_pci", "virtio_net"))
    assert order.index("kernel/core/failover.ko") < order.index("kernel/net/net_failover.ko")
    assert order[-1] == "kernel/net/virtio_net.ko"
    with pytest.raises(BuildError, match="module nosuch is neither built in"):
        initramfs.module_order(kernel, ("nosuch",))


def test_module_order_of_a_kernel_with_virtio_built_in(tmp_path: Path) -> None:
    """A local kernel may have virtio built in and no modules.builtin beside modules.dep."""
    from lab.build.kernel import Kernel

    mods = tmp_path / "lib" / "modules" / "6.13.0"
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text("kernel/fs/ext4/ext4.ko:\n")
    kernel = Kernel("local:/k", "6.13.0", "local-1", tmp_path)
    with pytest.raises(BuildError, match="module virtio_pci is neither built in"):
        initramfs.module_order(kernel, ("virtio_pci", "virtio_net"))
    (mods / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n"
                                          "kernel/drivers/net/virtio_net.ko\n")
    assert initramfs.module_order(kernel, ("virtio_pci", "virtio_net")) == []
    install = tmp_path / "initramfs"
    (install / "lib" / "modules").mkdir(parents=True)
    initramfs.install_modules(kernel, ("virtio_pci", "virtio_net"), install)
    assert (install / "lib" / "modules" / "hplab.order").read_text() == "\n"


def test_cpio_archive_is_owned_by_root(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("cn1\n")
    out = tmp_path / "a.cpio.gz"
    initramfs.pack_cpio(tree, out)
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=gzip.decompress(out.read_bytes()),
                             capture_output=True, check=True).stdout.decode()
    assert "etc/hostname" in listing
    assert all(" root " in line for line in listing.splitlines() if line)


def test_guest_tool_builds_static(tmp_path: Path) -> None:
    binary = guesttools.build("hugemap", tmp_path)
    assert guesttools.build("hugemap", tmp_path) == binary
    out = subprocess.run(["file", str(binary)], capture_output=True, text=True, check=False)
    if out.returncode == 0:
        assert "statically linked" in out.stdout
    with pytest.raises(FileNotFoundError, match="no guest tool 'nope'"):
        guesttools.source("nope")


def test_guest_tool_cache_follows_the_headers_it_includes(tmp_path: Path) -> None:
    uapi = Path(__file__).parents[1] / "kmod" / "include"
    include = tmp_path / "include"
    include.mkdir()
    header = include / "vrhp_uapi.h"
    header.write_bytes((uapi / "vrhp_uapi.h").read_bytes())
    first = guesttools.build("vrhp_unpriv", tmp_path / "cache", [include])
    assert guesttools.build("vrhp_unpriv", tmp_path / "cache", [include]) == first
    header.write_text(header.read_text() + "\n/* changed */\n")
    assert guesttools.build("vrhp_unpriv", tmp_path / "cache", [include]) != first
    with pytest.raises(FileNotFoundError, match=r"include directory .*missing"):
        guesttools.build("vrhp_unpriv", tmp_path / "cache", [tmp_path / "missing"])


def test_guest_tool_extra_flags_reach_gcc_and_the_cache_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []

    def fake_run(argv: list[str | Path], **_: object) -> str:
        args = [str(a) for a in argv]
        commands.append(args)
        Path(args[args.index("-o") + 1]).write_bytes(b"")
        return ""

    monkeypatch.setattr(guesttools, "run", fake_run)
    plain = guesttools.build("hugemap", tmp_path)
    monkeypatch.setitem(guesttools.EXTRA_FLAGS, "hugemap", ("-pthread",))
    threaded = guesttools.build("hugemap", tmp_path)
    assert threaded != plain, "the extra flags are not part of the cache key"
    assert "-pthread" not in commands[0]
    assert commands[1][:len(guesttools.CFLAGS) + 2] == ["gcc", *guesttools.CFLAGS, "-pthread"]
    assert guesttools.build("hugemap", tmp_path) == threaded
    assert len(commands) == 2
    assert guesttools.flags("vrhp_deepfuzz") == (*guesttools.CFLAGS, "-pthread")
    assert guesttools.flags("vrhp_fuzz") == guesttools.CFLAGS


def test_deep_fuzzer_builds_and_refuses_bad_arguments(tmp_path: Path) -> None:
    uapi = Path(__file__).parents[1] / "kmod" / "include"
    binary = guesttools.build("vrhp_deepfuzz", tmp_path, [uapi])
    usage = subprocess.run([str(binary)], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "usage: " in usage.stderr
    bad = subprocess.run([str(binary), "1", "10", "2", "/tmp", "--backend", "nope"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "--backend hugepage|btable" in bad.stderr


def test_hugepage_marker_shortfall() -> None:
    node = parse("nodes: [{name: cn1, hugepages: {size: 1G, count: 1}}]", Path("t")).nodes[0]
    mark = pytest.mark.hugepages(size="1G", count=2).mark
    assert needs.hugepage_shortfall(node, mark) == (
        "node 'cn1' has 1 x 1G huge pages; the test needs 2 x 1G")
    assert needs.hugepage_shortfall(node, pytest.mark.hugepages(size="1G", count=1).mark) is None
    assert needs.hugepage_shortfall(node, None) is None
    bare = parse("nodes: [{name: cn2}]", Path("t")).nodes[0]
    assert "has no huge pages" in (needs.hugepage_shortfall(bare, mark) or "")


DEFAULT_TABLES = pytest.mark.hugepages(count={"1G": 2, "2M": 87}).mark


@pytest.mark.parametrize(("pool", "reason"), [
    ("{size: 1G, count: 2}", None),
    ("{size: 2M, count: 128}", None),
    ("{size: 2M, count: 87}", None),
    ("{size: 1G, count: 1}",
     "node 'cn1' has 1 x 1G huge pages; the test needs 2 x 1G or 87 x 2M"),
    ("{size: 2M, count: 86}",
     "node 'cn1' has 86 x 2M huge pages; the test needs 2 x 1G or 87 x 2M"),
    (None, "node 'cn1' has no huge pages; the test needs 2 x 1G or 87 x 2M"),
], ids=["1G", "2M", "2M-exact", "1G-short", "2M-short", "none"])
def test_hugepage_marker_with_a_count_per_size(pool: str | None, reason: str | None) -> None:
    """Any one listed size will do; a node without a pool has none."""
    pages = f", hugepages: {pool}" if pool else ""
    node = parse(f"nodes: [{{name: cn1, memory: 5G{pages}}}]", Path("t")).nodes[0]
    assert needs.hugepage_shortfall(node, DEFAULT_TABLES) == reason


def test_hugepage_marker_for_one_size_skips_the_other() -> None:
    node = parse("nodes: [{name: cn1, memory: 3G, hugepages: {size: 2M, count: 128}}]",
                 Path("t")).nodes[0]
    assert needs.hugepage_shortfall(node, pytest.mark.hugepages(size="1G", count=2).mark) == (
        "node 'cn1' has 128 x 2M huge pages; the test needs 2 x 1G")
    assert needs.hugepage_shortfall(node, pytest.mark.hugepages("2M", 128).mark) is None
    assert needs.hugepage_needs(pytest.mark.hugepages().mark) == {"1G": 1}


@pytest.mark.parametrize("mark", [pytest.mark.hugepages(count={"4K": 1}),
                                  pytest.mark.hugepages(size="3M", count=1),
                                  pytest.mark.hugepages(size="1G", count={"1G": 2}),
                                  pytest.mark.hugepages(count={})],
                         ids=["unknown-size", "unknown-size-kw", "size-and-dict", "empty"])
def test_hugepage_marker_misuse_is_a_usage_error(mark: pytest.MarkDecorator) -> None:
    with pytest.raises(pytest.UsageError):
        needs.hugepage_needs(mark.mark)


def test_default_tables_need_two_1g_or_87_2m_pages() -> None:
    """The marker of the suites that set up the default tables, from the table sizes."""
    from lab.dut import sizing
    assert sizing.default_table_pages() == {"1G": 2, "2M": 87}


class _Config:
    rootpath = Path("/src")

    def __init__(self, lab_dir: Path) -> None:
        self.options = {"lab_dir": str(lab_dir), "keep_vms": False, "kmod_source": "kmod",
                        "kmod_defect": None, "baseline": None}

    def getoption(self, name: str) -> object:
        return self.options[name]


class _RebootingLab:
    def __init__(self) -> None:
        self.rebooted: list[str] = []

    def reboot(self, name: str) -> float:
        self.rebooted.append(name)
        return 3.5

    def guest(self, name: str) -> str:
        return f"guest of {name}"


class _Item:
    def __init__(self, *marks: pytest.MarkDecorator) -> None:
        self.marks = {m.name: m.mark for m in marks}
        self.user_properties: list[tuple[str, object]] = []
        self.stash = pytest.Stash()

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return self.marks.get(name)


def test_fresh_guest_reboots_only_a_node_a_test_has_used(tmp_path: Path) -> None:
    session = LabSession(_Config(tmp_path))  # type: ignore[arg-type]
    lab = _RebootingLab()
    session._lab = lab  # type: ignore[assignment]
    session.untouched = {"cn1", "cn2"}  # just booted
    item = _Item(pytest.mark.fresh_guest)
    assert not session.fresh("cn1", item) and lab.rebooted == []  # type: ignore[arg-type]
    session.untouched.clear()  # a test ended
    assert not session.fresh("cn1", _Item())  # type: ignore[arg-type]  # not asked for
    assert lab.rebooted == []
    marks: dict[str, str | None] = {"cn1": "hplab-canary t 1", "cn2": "hplab-canary t 2"}
    item.stash[CANARIES] = marks
    assert session.fresh("cn1", item) and lab.rebooted == ["cn1"]  # type: ignore[arg-type]
    assert not session.fresh("cn1", item)  # type: ignore[arg-type]  # a second fixture
    assert lab.rebooted == ["cn1"]
    assert item.user_properties == [("reboot_seconds", 3.5)]
    # the test's log of cn1 is the new boot's whole log
    assert item.stash[CANARIES] == {"cn1": None, "cn2": "hplab-canary t 2"}


class _LoggingGuest:
    silent = False

    def check(self, command: str) -> str:
        assert command == "dmesg"
        return "[0.0] Linux version\n[9.0] vrhp: loaded\n"

    def dmesg_since(self, mark: str) -> str:
        return f"after {mark}\n"


def test_a_node_without_a_canary_gives_its_log_since_boot(tmp_path: Path) -> None:
    session = LabSession(_Config(tmp_path))  # type: ignore[arg-type]
    guest = _LoggingGuest()
    node = SimpleNamespace(guest=guest)
    session._lab = SimpleNamespace(nodes={"cn1": node, "cn2": node})  # type: ignore[assignment]
    sections = outcomes.dmesg_sections(session, {"cn1": "hplab-canary t 1", "cn2": None})
    assert sections == [("cn1", "after hplab-canary t 1\n"),
                        ("cn2", "[0.0] Linux version\n[9.0] vrhp: loaded\n")]


def test_a_guest_that_stopped_answering_is_not_asked_for_its_log_or_taint(
        tmp_path: Path) -> None:
    session = LabSession(_Config(tmp_path))  # type: ignore[arg-type]
    guest = _LoggingGuest()
    guest.silent = True
    node = SimpleNamespace(guest=guest, console=tmp_path / "console.log")
    session._lab = SimpleNamespace(nodes={"cn1": node})  # type: ignore[assignment]
    [(name, text)] = outcomes.dmesg_sections(session, {"cn1": "hplab-canary t 1"})
    assert name == "cn1" and "did not answer its last command" in text
    assert "console.log" in text
    assert session.taints() == {}


def test_a_retired_guest_never_reconnects(tmp_path: Path) -> None:
    guest = Guest("cn1", 1, tmp_path / "key", "ssh-ed25519 AAAA")
    guest.retire("rebooted into boot 2")
    with pytest.raises(GuestError, match="cn1: rebooted into boot 2: this connection is not"):
        guest.run("true")


def test_reap_counts_only_qemu_no_live_run_owns() -> None:
    from lab.reap import stray_qemu
    lines = ["101 qemu-system-x86_64 -name guest=hplab-aaaa-cn1,debug-threads=on -S",
             "102 qemu-system-x86_64 -name guest=hplab-bbbb-cn1,debug-threads=on -S"]
    assert stray_qemu(lines, {"aaaa"}) == [lines[1]]
    assert stray_qemu(lines, {"aaaa", "bbbb"}) == []
    assert stray_qemu(lines, {"aaa"}) == lines  # a run id, not a prefix of one
