"""lab.fragment.driver: what a fragmenter leaves in a guest is given back at release,
against a guest that records its commands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_kmod_guest import RecordingGuest

from lab.build import guesttools
from lab.errors import CommandTimedOut
from lab.fragment import driver
from lab.fragment.spec import FragmentSpec
from lab.guest.memory import SNAPSHOT_COMMAND
from lab.guest.ssh import Result
from lab.timeouts import Timeouts

DATA = Path(__file__).parent / "data" / "memory"
SNAPSHOT = (DATA / "guest-6.1-clean.txt").read_text()
SUMMARY = (DATA / "fragment-summary-6.1-mixed.json").read_text()
UMOUNT = f"umount {driver.FILES_DIR}"


class _FragmentingGuest(RecordingGuest):
    """Answers the memory snapshot and a fragment run that reached its target; a
    command containing one of `hangs` times out."""

    def __init__(self, *hangs: str) -> None:
        super().__init__()
        self.hangs = hangs

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts()

    def scaled(self, reference: float) -> float:
        return reference

    def run(self, command: str, timeout: float | None = None,
            on_stderr_line: Callable[[str], None] | None = None) -> Result:
        self.commands.append(command)
        if any(hang in command for hang in self.hangs):
            raise CommandTimedOut(f"{self.node}: {command} did not finish within {timeout}s")
        if command == SNAPSHOT_COMMAND:
            return Result(0, SNAPSHOT, "")
        return Result(0, SUMMARY if "--hold" in command else "", "")


def fragmenter(guest: _FragmentingGuest, monkeypatch: pytest.MonkeyPatch
               ) -> driver.GuestFragmenter:
    monkeypatch.setattr(guesttools, "install", lambda *a, **k: "/usr/local/bin/fragment")
    monkeypatch.setattr(driver, "build_kbuild", lambda *a, **k: Path("/b/allocprobe.ko"))
    return driver.GuestFragmenter(guest, None, Path("/cache"))  # type: ignore[arg-type]


def test_a_fragment_run_that_timed_out_has_its_holder_killed_at_release(
        monkeypatch: pytest.MonkeyPatch) -> None:
    guest = _FragmentingGuest("--hold", "--release")
    tools = fragmenter(guest, monkeypatch)
    with pytest.raises(CommandTimedOut):
        tools.fragment(FragmentSpec("mixed"))
    outcome = tools.release()
    assert outcome is not None and outcome.how == "killed", \
        f"release() after a timed-out fragment run gave {outcome}: the holder is left running"
    assert any(c.startswith(f"p=$(cat {tools.pidfile}") and "kill -9" in c
               for c in guest.commands), guest.commands
    assert tools.held is None


@pytest.mark.parametrize("hangs", [(), ("--release",)], ids=["released", "killed"])
def test_release_unmounts_the_fragmenters_tmpfs(
        monkeypatch: pytest.MonkeyPatch, hangs: tuple[str, ...]) -> None:
    guest = _FragmentingGuest(*hangs)
    tools = fragmenter(guest, monkeypatch)
    tools.fragment(FragmentSpec("mixed"))
    tools.release()
    assert UMOUNT in guest.commands[-1], f"release did not unmount: {guest.commands[-1]}"
