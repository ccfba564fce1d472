"""Installing and resetting vrhp in a guest, against a guest that records its commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.dut import kmod
from lab.errors import GuestError
from lab.guest.ssh import Guest, Result
from lab.timeouts import Bound


class RecordingGuest:
    node = "cn1"

    def __init__(self, statuses: dict[str, int] | None = None,
                 refcounts: list[str] | None = None) -> None:
        self.statuses = statuses or {}
        self.refcounts = refcounts or []
        self.commands: list[str] = []
        self.puts: list[str] = []
        self.installed: dict[str, str] = {}

    def run(self, command: str, timeout: float | None = None) -> Result:
        self.commands.append(command)
        if command.startswith("cat /sys/module/vrhp/refcnt"):
            return Result(0, self.refcounts.pop(0) if self.refcounts else "0", "")
        status = next((s for key, s in self.statuses.items() if key in command), 0)
        return Result(status, "", "rmmod: ERROR: Module vrhp is in use" if status else "")

    def check(self, command: str, timeout: float | None = None) -> str:
        result = self.run(command, timeout)
        if not result.ok:
            raise GuestError(f"{self.node}: `{command}` exited {result.exit_status}")
        return result.stdout

    def put(self, local: Path, remote: str, mode: int | None = None) -> None:
        self.puts.append(remote)

    def bound(self, reference: float | None = None) -> Bound:
        return Bound(reference or 1.0)

    @property
    def timeouts(self) -> object:
        return type("T", (), {"module_unload": 1.0})()


def build(key: str) -> kmod.ModuleBuild:
    return kmod.ModuleBuild("6.1.0-x", 1, 1, key, Path("/b/vrhp.ko"), Path("/b/vrhp-agent"))


def test_a_build_is_copied_once_per_boot_and_again_when_it_changes() -> None:
    guest = RecordingGuest()
    kmod.GuestModule(guest, build("k1")).install()  # type: ignore[arg-type]
    kmod.GuestModule(guest, build("k1")).install()  # type: ignore[arg-type]
    assert guest.puts == ["/opt/vrhp/v1-layout1/vrhp.ko", "/opt/vrhp/v1-layout1/vrhp-agent"]
    kmod.GuestModule(guest, build("k2")).install()  # type: ignore[arg-type]
    assert len(guest.puts) == 4
    assert RecordingGuest().installed == {}  # a new boot is a new guest: nothing installed


def test_reset_is_one_command_when_nothing_holds_the_module() -> None:
    guest = RecordingGuest()
    kmod.reset_guest(guest)  # type: ignore[arg-type]
    assert guest.commands == [kmod.RESET_AT_ONCE]


def test_reset_waits_for_the_holders_then_unloads_and_removes_the_files() -> None:
    guest = RecordingGuest(statuses={"pkill": kmod.BUSY}, refcounts=["1", "0"])
    kmod.reset_guest(guest)  # type: ignore[arg-type]
    assert guest.commands[1:] == ["cat /sys/module/vrhp/refcnt 2>/dev/null",
                                  "cat /sys/module/vrhp/refcnt 2>/dev/null",
                                  "rmmod vrhp", kmod.REMOVE_HUGETLBFS_FILES]


def test_a_failed_rmmod_names_the_module() -> None:
    guest = RecordingGuest(statuses={"pkill": 3})
    with pytest.raises(GuestError, match="cn1: rmmod vrhp failed: rmmod: ERROR"):
        kmod.reset_guest(guest)  # type: ignore[arg-type]


class _BoundedGuest(Guest):
    def __init__(self) -> None:
        super().__init__("cn1", 40022, Path("/k"), "ssh-ed25519 AAAA")
        self.seen: list[str] = []

    def run(self, command: str, *, timeout: float | None = None, check: bool = False,
            **options: object) -> Result:
        self.seen.append(command)
        return Result(3, "out\n", "err\n")


def test_testinfra_commands_go_through_the_bounded_guest_run() -> None:
    guest = _BoundedGuest()
    host = guest.testinfra_host()
    done = host.run("printf %s", "a b")
    assert guest.seen == ["printf 'a b'"]
    assert (done.rc, done.stdout, done.stderr) == (3, "out\n", "err\n")


class _PoolGuest(RecordingGuest):
    def __init__(self, pool: str) -> None:
        super().__init__()
        self.pool = pool

    def run(self, command: str, timeout: float | None = None) -> Result:
        return Result(0, self.pool, "") if "free_hugepages" in command else super().run(command)


@pytest.mark.parametrize(("pool", "reboots"), [("2\n2\n", []), ("2\n1\n", ["cn1"]),
                                               ("1\n1\n", ["cn1"])])
def test_a_pool_not_whole_after_the_reset_reboots_the_node_and_says_why(
        pool: str, reboots: list[str]) -> None:
    from types import SimpleNamespace

    from lab.events import EventBus
    from lab.pytest_plugin import plugin
    from lab.topology import parse

    text = "nodes: [{name: cn1, memory: 5G, hugepages: {size: 1G, count: 2}}]"
    node = SimpleNamespace(node=parse(text, Path("t.yaml")).nodes[0])
    rebooted: list[str] = []
    item = SimpleNamespace(user_properties=[])
    session = SimpleNamespace(reboot=lambda name, it: rebooted.append(name))
    plugin._reboot_unless_pool_whole(SimpleNamespace(node=item), _PoolGuest(pool),  # type: ignore[arg-type]
                                     node, SimpleNamespace(bus=EventBus()), session)  # type: ignore[arg-type]
    assert rebooted == reboots
    if reboots:
        (name, why), = item.user_properties
        assert name == "pool_after_reset" and why.endswith("huge pages free after the module "
                                                           "was unloaded and its files removed "
                                                           f"(pool {pool.split()[0]})")
