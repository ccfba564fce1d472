"""Bounds in reference seconds: the guest's measured slowdown, how a bound scales, what a
bound that fires says. SSH is faked at the channel."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab.dut.kmod import GuestModule
from lab.errors import CommandTimedOut, GuestError
from lab.guest.ssh import Guest, Progress, Result, did_not_finish
from lab.timeouts import (
    SLOWDOWN_RANGE,
    SPEED_REFERENCE,
    SPEED_WORKLOAD,
    Bound,
    Patience,
    Timeouts,
    parse_speed,
)

MINIMAL = SPEED_REFERENCE["minimal"]


def workload_output(loop_s: float, memory_s: float, start: float = 12.34) -> str:
    """What SPEED_WORKLOAD prints: uptimes before, between and after its two parts."""
    return (f"hplab-speed {start:.2f} {start + loop_s:.2f} "
            f"{start + loop_s + memory_s:.2f}\n")


def test_a_guest_as_fast_as_the_reference_has_slowdown_one() -> None:
    speed = parse_speed(workload_output(MINIMAL.loop_s, MINIMAL.memory_s), "minimal")
    assert speed.slowdown == pytest.approx(1.0)
    assert speed.loop_s == pytest.approx(MINIMAL.loop_s)
    assert speed.memory_s == pytest.approx(MINIMAL.memory_s)


def test_slowdown_is_the_workload_time_over_the_reference() -> None:
    speed = parse_speed(workload_output(3 * MINIMAL.loop_s, 3 * MINIMAL.memory_s), "minimal")
    assert speed.slowdown == pytest.approx(3.0)
    assert speed.describe().startswith("slowdown 3.00: shell loop")


def test_each_image_has_its_own_reference() -> None:
    output = workload_output(0.30, 0.30)
    minimal, debian = parse_speed(output, "minimal"), parse_speed(output, "debian")
    assert minimal.reference == MINIMAL and debian.reference == SPEED_REFERENCE["debian"]
    assert debian.slowdown > minimal.slowdown  # dash runs the same loop faster than ash


@pytest.mark.parametrize(("loop_s", "memory_s", "clamped_to"), [
    (0.0, 0.0, SLOWDOWN_RANGE[0]),  # KVM: both parts within /proc/uptime's 10 ms
    (0.01, 0.01, SLOWDOWN_RANGE[0]),
    (20.0, 20.0, SLOWDOWN_RANGE[1]),
])
def test_slowdown_is_clamped_and_says_from_what(loop_s: float, memory_s: float,
                                                clamped_to: float) -> None:
    speed = parse_speed(workload_output(loop_s, memory_s), "minimal")
    assert speed.slowdown == clamped_to
    assert speed.unclamped != clamped_to
    assert f"clamped from {speed.unclamped:.2f}" in speed.describe()


def test_lines_around_the_mark_are_ignored() -> None:
    output = "motd line\n" + workload_output(MINIMAL.loop_s, MINIMAL.memory_s) + "trailing\n"
    assert parse_speed(output, "minimal").slowdown == pytest.approx(1.0)


@pytest.mark.parametrize(("output", "image", "message"), [
    ("", "minimal", "printed no 'hplab-speed START LOOPED TOUCHED' line"),
    ("hplab-speed 1.00 x 2.00\n", "minimal", "printed no 'hplab-speed"),
    ("hplab-speed 1.00 2.00\n", "minimal", "printed no 'hplab-speed"),
    ("hplab-speed 5.00 4.00 6.00\n", "minimal", "uptimes out of order"),
    (workload_output(0.1, 0.1), "gentoo", "no speed reference for image 'gentoo'"),
])
def test_unusable_workload_output_is_named(output: str, image: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_speed(output, image)


def test_a_bound_is_reference_times_accelerator_times_slowdown() -> None:
    tcg = Timeouts().for_accel("tcg").measured(2.0)
    assert tcg.bound(120).seconds == 240
    assert str(tcg.bound(120)) == "240s (reference 120s x slowdown 2.00)"
    kvm = Timeouts().for_accel("kvm").measured(2.0)
    assert kvm.bound(120).seconds == 60
    assert str(kvm.bound(120)) == "60s (reference 120s x kvm 0.25 x slowdown 2.00)"


def test_an_unmeasured_guest_gets_the_largest_slowdown_accepted() -> None:
    bound = Timeouts().bound(10)
    assert bound.seconds == 10 * SLOWDOWN_RANGE[1]
    assert "not measured yet" in str(bound)
    assert Timeouts().measured(1.5).for_accel("tcg").slowdown is None  # a new boot


def test_boot_waits_scale_by_the_accelerator_alone() -> None:
    timeouts = Timeouts().for_accel("kvm").measured(4.0)
    assert timeouts.boot_bound(600).seconds == 150
    assert str(timeouts.boot_bound(600)) == "150s (reference 600s x kvm 0.25)"


def test_an_unknown_accelerator_is_refused() -> None:
    with pytest.raises(ValueError, match="accel must be one of tcg, kvm, got 'hvf'"):
        Timeouts(accel="hvf")


def test_short_bounds_keep_a_decimal() -> None:
    assert str(Bound(0.5, (("slowdown", 1.5),))) == "0.8s (reference 0.5s x slowdown 1.50)"


def test_patience_waits_while_the_level_grows_then_for_the_stall() -> None:
    patience = Patience(started=100.0, cap=50.0, stall=10.0, level=400)
    patience.observe(400, 105.0)  # what an earlier boot left: no growth
    assert patience.exhausted(109.0) is None
    patience.observe(500, 109.0)
    assert patience.exhausted(118.0) is None  # 9 s since it grew
    assert patience.exhausted(119.5, "bytes of console") == (
        "nothing new for 10s (100 bytes of console, the last 10s ago)")


def test_patience_ends_at_the_cap_even_while_growing() -> None:
    patience = Patience(started=0.0, cap=30.0, stall=10.0)
    for now in range(0, 31, 5):
        patience.observe(now * 10, float(now))
        assert patience.exhausted(float(now)) is None
    patience.observe(400, 30.5)
    assert patience.exhausted(31.0) == "hard cap of 30s reached (400 bytes, the last 0.5s ago)"


def test_patience_counts_a_file_that_started_over_as_growth() -> None:
    patience = Patience(started=0.0, cap=100.0, stall=5.0, level=1000)
    patience.observe(1200, 1.0)
    patience.observe(50, 2.0)  # rotated: 50 new bytes
    assert patience.grown == 250 and patience.last_growth == 2.0


def test_patience_without_any_growth_says_so() -> None:
    patience = Patience(started=0.0, cap=100.0, stall=5.0)
    assert patience.exhausted(6.0) == "nothing new for 5.0s (no bytes at all)"
    assert Patience(started=0.0, cap=3.0).exhausted(4.0) == (
        "hard cap of 3.0s reached (no bytes at all)")


def test_the_message_of_a_bound_that_fired() -> None:
    bound = Timeouts().measured(2.0).bound(120)
    progress = Progress(started=1000.0, accepted=True, output_bytes=312, last_output=1040.0)
    message = did_not_finish("cn1", "vrhp-agent fill flow 629760 7", bound, progress, 1240.4)
    assert message == ("cn1: 'vrhp-agent fill flow 629760 7' did not finish within 240s "
                       "(reference 120s x slowdown 2.00), gave up after 240.4s; "
                       "312 bytes of output, none for 200s")
    silent = Progress(started=1000.0, accepted=True)
    assert did_not_finish("cn1", "x", bound, silent, 1240.0).endswith("; no output for 240s")
    unanswered = Progress(started=1000.0)
    assert did_not_finish("cn1", "x", bound, unanswered, 1240.0).endswith(
        "; no answer from the guest")


class _Channel:
    """A session channel: `chunks` are (seconds after exec, stream, bytes); the command
    exits `exit_after` seconds after exec (never with None)."""

    def __init__(self, chunks: list[tuple[float, str, bytes]], exit_after: float | None) -> None:
        self.chunks, self.exit_after = chunks, exit_after
        self.started = 0.0
        self.closed = False

    def settimeout(self, value: float) -> None:
        pass

    def exec_command(self, command: str) -> None:
        self.started = time.monotonic()

    def _due(self, stream: str) -> list[tuple[float, str, bytes]]:
        now = time.monotonic() - self.started
        return [c for c in self.chunks if c[1] == stream and c[0] <= now]

    def recv_ready(self) -> bool:
        return bool(self._due("out"))

    def recv_stderr_ready(self) -> bool:
        return bool(self._due("err"))

    def _recv(self, stream: str) -> bytes:
        chunk = self._due(stream)[0]
        self.chunks.remove(chunk)
        return chunk[2]

    def recv(self, size: int) -> bytes:
        return self._recv("out")

    def recv_stderr(self, size: int) -> bytes:
        return self._recv("err")

    def exit_status_ready(self) -> bool:
        return self.exit_after is not None and \
            time.monotonic() - self.started >= self.exit_after

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


class _Transport:
    def __init__(self, channel: _Channel,
                 open_session: Callable[[float], _Channel] | None = None) -> None:
        self.channel, self.opener = channel, open_session

    def is_active(self) -> bool:
        return True

    def open_session(self, timeout: float) -> _Channel:
        return self.opener(timeout) if self.opener else self.channel


class _Client:
    def __init__(self, transport: _Transport) -> None:
        self.transport = transport

    def get_transport(self) -> _Transport:
        return self.transport

    def close(self) -> None:
        pass


def fake_guest(tmp_path: Path, transport: _Transport, slowdown: float) -> Guest:
    guest = Guest("cn1", 1, tmp_path / "key", "ssh-ed25519 AAAA",
                  timeouts=Timeouts().measured(slowdown))
    guest._client = _Client(transport)  # type: ignore[assignment]
    return guest


def raised(action: Callable[[], Any]) -> tuple[float, str]:
    """(seconds until `action` raised CommandTimedOut, its message)."""
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as err:
        action()
    return time.monotonic() - started, str(err.value)


def test_a_command_bound_is_the_reference_times_the_slowdown(tmp_path: Path) -> None:
    channel = _Channel([(0.05, "out", b"filling\n")], exit_after=None)
    guest = fake_guest(tmp_path, _Transport(channel), slowdown=3.0)
    waited, message = raised(lambda: guest.run("vrhp-agent fill flow 10", timeout=0.2))
    assert 0.6 <= waited < 0.6 + 0.5  # 0.2 reference seconds x slowdown 3
    assert message.startswith("cn1: 'vrhp-agent fill flow 10' did not finish within 0.6s "
                              "(reference 0.2s x slowdown 3.00), gave up after 0.6")
    assert re.search(r"; 8 bytes of output, none for [01]s$", message), message
    assert channel.closed


def test_the_default_bound_is_the_command_reference(tmp_path: Path) -> None:
    guest = fake_guest(tmp_path, _Transport(_Channel([], exit_after=0.0)), slowdown=0.5)
    assert guest.command_timeout == Timeouts().command * 0.5
    assert guest.scaled(30) == 15
    assert guest.run("true") == Result(0, "", "")


def test_a_command_that_ends_inside_its_scaled_bound_passes(tmp_path: Path) -> None:
    channel = _Channel([(0.0, "out", b"ok\n")], exit_after=0.4)
    guest = fake_guest(tmp_path, _Transport(channel), slowdown=4.0)
    assert guest.run("slow", timeout=0.2).stdout == "ok\n"  # 0.4 s < 0.2 x 4


def test_a_guest_that_never_accepts_the_command_is_named(tmp_path: Path) -> None:
    def never(timeout: float) -> _Channel:
        time.sleep(timeout)
        raise TimeoutError

    guest = fake_guest(tmp_path, _Transport(_Channel([], None), never), slowdown=2.0)
    waited, message = raised(lambda: guest.run("true", timeout=0.1))
    assert 0.2 <= waited < 0.7
    assert message.endswith("; no answer from the guest"), message
    assert "within 0.2s (reference 0.1s x slowdown 2.00)" in message
    assert guest.silent


def test_stderr_lines_reach_the_callback_as_they_complete(tmp_path: Path) -> None:
    channel = _Channel([(0.0, "err", b"fill: 10\nfill: "), (0.1, "err", b"20\n"),
                        (0.2, "err", b"tail")], exit_after=0.3)
    lines: list[tuple[float, str]] = []
    started = time.monotonic()
    guest = fake_guest(tmp_path, _Transport(channel), slowdown=1.0)
    result = guest.run("x", on_stderr_line=lambda line: lines.append(
        (time.monotonic() - started, line)))
    assert [line for _, line in lines] == ["fill: 10", "fill: 20", "tail"]
    assert lines[0][0] < 0.1  # before the command ended
    assert result.stderr == "fill: 10\nfill: 20\ntail"


class _FixedOutputGuest(Guest):
    def __init__(self, tmp_path: Path, outputs: dict[str, str], timeouts: Timeouts) -> None:
        super().__init__("cn1", 1, tmp_path / "key", "ssh-ed25519 AAAA", timeouts=timeouts)
        self.outputs = outputs
        self.bounds: list[float | None] = []

    def run(self, command: str, *, timeout: float | None = None, check: bool = False,
            on_stderr_line: Callable[[str], None] | None = None) -> Result:
        self.bounds.append(timeout)
        return Result(0, self.outputs[command], "")


def test_measuring_the_speed_scales_every_later_bound(tmp_path: Path) -> None:
    output = workload_output(2 * MINIMAL.loop_s, 2 * MINIMAL.memory_s)
    guest = _FixedOutputGuest(tmp_path, {SPEED_WORKLOAD: output}, Timeouts())
    speed = guest.measure_speed("minimal")
    assert speed.slowdown == pytest.approx(2.0)
    assert guest.bounds == [Timeouts().speed]
    assert guest.timeouts.slowdown == speed.slowdown
    assert guest.command_timeout == pytest.approx(240)


def test_garbled_speed_output_is_a_guest_error(tmp_path: Path) -> None:
    guest = _FixedOutputGuest(tmp_path, {SPEED_WORKLOAD: "sh: syntax error\n"}, Timeouts())
    with pytest.raises(GuestError, match="cn1: speed workload printed no"):
        guest.measure_speed("minimal")
    assert guest.timeouts.slowdown is None


def test_unload_waits_for_the_refcount_within_the_scaled_bound(tmp_path: Path) -> None:
    refcount = "/sys/module/vrhp/refcnt"
    guest = _FixedOutputGuest(tmp_path, {f"cat {refcount} 2>/dev/null": "1\n"},
                              Timeouts(module_unload=0.1).measured(3.0))
    started = time.monotonic()
    with pytest.raises(GuestError) as err:
        GuestModule.unload(guest)
    assert 0.3 <= time.monotonic() - started < 0.9
    assert "cn1: vrhp refcount still 1 after 0." in str(err.value)
    assert "past the unload bound of 0.3s (reference 0.1s x slowdown 3.00)" in str(err.value)
