"""The host-wide session lock between real processes on a lock directory of the test's
own: a second session waits saying for whom and gets the lock when the first ends, or
refuses at once; a process started with the holder's variable goes on at once, one with a
forged or stale variable waits like any other; a killed holder's lock is free. The lab
session of a pytest run and `hplab up` take it before anything boots."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from fakelab import run_inner

from lab.cli import main as cli
from lab.cli import matrix, mutants, repeat
from lab.engine import Lab
from lab.errors import LabError
from lab.host import sessionlock
from lab.lockfile import Holder, acquire, is_held, read_holder
from lab.timeouts import SESSION_WAIT_S

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
CLOCK = r"\d\d:\d\d:\d\d"
ANSWER_S = 30.0  # a line the session process prints promptly; only a broken lock is slower

# Holds (or joins) the session lock as run id argv[1], waiting up to argv[2] seconds; then
# obeys stdin: "release" frees the lock, end of input ends the process.
SESSION = """
import sys
from lab.errors import LabError
from lab.host import sessionlock
try:
    lock = sessionlock.hold(run_id=sys.argv[1], wait_s=float(sys.argv[2]))
except LabError as exc:
    print(f"refused: {exc}", flush=True)
    sys.exit(3)
print(f"held inherited={lock.inherited} env={sessionlock.os.environ[sessionlock.ENV]}",
      flush=True)
for line in sys.stdin:
    if line.strip() == "release":
        lock.release()
        print("released", flush=True)
"""


class Session:
    """A process in the role of a lab session."""

    def __init__(self, run_id: str, wait_s: float, claim: str | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop(sessionlock.ENV, None)
        if claim is not None:
            env[sessionlock.ENV] = claim
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SESSION, run_id, str(wait_s)], env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _line(self, stream: IO[str] | None, within: float) -> str:
        assert stream is not None
        ready, _, _ = select.select([stream], [], [], within)
        if not ready:
            return ""
        return stream.readline().rstrip("\n")

    def out(self, within: float = ANSWER_S) -> str:
        """Its next line on stdout ("" if none within `within` seconds)."""
        return self._line(self.proc.stdout, within)

    def err(self, within: float = ANSWER_S) -> str:
        return self._line(self.proc.stderr, within)

    def held(self) -> str:
        """Once it holds the lock: the HPLAB_SESSION it exports."""
        line = self.out()
        assert line.startswith("held inherited=False env="), line
        return line.rsplit("env=", 1)[1]

    def say(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def end(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=ANSWER_S)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=ANSWER_S)


Start = Callable[..., Session]


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Start]:
    """Starts a Session(run_id, wait_s, claim=None); each is ended after the test."""
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(tmp_path / "locks"))
    started: list[Session] = []

    def session(run_id: str, wait_s: float, claim: str | None = None) -> Session:
        started.append(Session(run_id, wait_s, claim))
        return started[-1]

    yield session
    for one in started:
        if one.proc.poll() is None:
            one.proc.kill()
        one.proc.wait()
        for stream in (one.proc.stdin, one.proc.stdout, one.proc.stderr):
            if stream is not None:
                stream.close()


def holds_message(first: Session, tmp_path: Path) -> str:
    return (rf"another hplab session \(pid {first.pid}, run id aaaa0001\) holds "
            rf"{tmp_path}/locks/session.lock since {CLOCK}")


def test_a_second_session_waits_naming_the_first_and_goes_on_when_it_ends(
        tmp_path: Path, start: Start) -> None:
    first = start("aaaa0001", 0)
    first.held()
    second = start("bbbb0002", 60)
    assert re.fullmatch(rf"hplab: {holds_message(first, tmp_path)}; waiting up to 60 s",
                        second.err()), "the second session does not say whom it waits for"
    assert second.out(within=1.0) == "", "the second session did not wait"
    first.end()
    second.held()
    assert second.err().startswith(f"hplab: got {tmp_path}/locks/session.lock after ")


def test_a_session_told_not_to_wait_refuses_naming_the_holder(
        tmp_path: Path, start: Start) -> None:
    first = start("aaaa0001", 0)
    first.held()
    second = start("bbbb0002", 0)
    assert re.fullmatch(rf"refused: {holds_message(first, tmp_path)}; not waiting for it "
                        r"\(--session-wait SECONDS or \$HPLAB_SESSION_WAIT sets how long a "
                        r"session waits\)", second.out())
    assert second.proc.wait(timeout=ANSWER_S) == 3


def test_a_process_with_the_holders_variable_goes_on_at_once(
        tmp_path: Path, start: Start) -> None:
    first = start("aaaa0001", 0)
    claim = first.held()
    child = start("cccc0003", 0, claim=claim)
    assert child.out() == f"held inherited=True env={claim}"
    assert child.err(within=0.5) == ""


@pytest.mark.parametrize("forge", ["token", "pid", "shape"])
def test_a_forged_variable_is_ignored_and_its_process_waits(
        tmp_path: Path, start: Start, forge: str) -> None:
    first = start("aaaa0001", 0)
    pid, token = first.held().split(":")
    claim = {"token": f"{pid}:{'0' * len(token)}", "pid": f"{os.getpid()}:{token}",
             "shape": token}[forge]
    forger = start("ffff0004", 0, claim=claim)
    said = forger.err()
    assert said.startswith(f"hplab: ignoring HPLAB_SESSION={claim}: "), said
    answer = forger.out()
    assert re.match(rf"refused: {holds_message(first, tmp_path)}", answer), answer


def test_the_variable_of_a_session_that_released_the_lock_is_ignored(
        tmp_path: Path, start: Start) -> None:
    first = start("aaaa0001", 0)
    claim = first.held()
    first.say("release")
    assert first.out() == "released"
    late = start("dddd0005", 0, claim=claim)
    assert late.err() == (f"hplab: ignoring HPLAB_SESSION={claim}: pid {first.pid} does not "
                          f"hold {tmp_path}/locks/session.lock; taking the session lock like "
                          "any session")
    late.held()


def test_a_killed_holders_lock_is_free_and_its_variable_stale(
        tmp_path: Path, start: Start) -> None:
    first = start("aaaa0001", 0)
    claim = first.held()
    first.kill()
    second = start("bbbb0002", 0, claim=claim)
    assert second.err() == (f"hplab: ignoring HPLAB_SESSION={claim}: pid {first.pid} is not "
                            "running; taking the session lock like any session")
    second.held()


@pytest.mark.parametrize(("value", "seconds"), [(None, SESSION_WAIT_S), ("0", 0.0),
                                                ("90.5", 90.5)])
def test_the_wait_comes_from_the_option_else_the_environment(
        monkeypatch: pytest.MonkeyPatch, value: str | None, seconds: float) -> None:
    if value is None:
        monkeypatch.delenv(sessionlock.WAIT_ENV, raising=False)
    else:
        monkeypatch.setenv(sessionlock.WAIT_ENV, value)
    assert sessionlock.wait_seconds(None) == seconds
    assert sessionlock.wait_seconds(12.0) == 12.0


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", ""])
def test_a_bad_wait_is_refused_naming_where_it_came_from(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str) -> None:
    monkeypatch.setenv(sessionlock.WAIT_ENV, value)
    with pytest.raises(LabError, match=re.escape(
            f"$HPLAB_SESSION_WAIT must be a number of seconds >= 0, got {value!r}")):
        sessionlock.wait_seconds(None)
    with pytest.raises(SystemExit):
        cli.main(["matrix", "--kernels", "debian:6.1", "--session-wait", value])
    assert (f"argument --session-wait: must be a number of seconds >= 0, got {value!r}"
            in capsys.readouterr().err)


def _held_elsewhere(run_id: str) -> Holder:
    """A holder record of another process (this one holds the flock: a different open
    file, so the lab's own take of the lock conflicts with it all the same)."""
    return Holder(os.getpid(), 0.0, ("hplab", "matrix"), run_id=run_id, token="x" * 32)


INNER = """
def test_boots(lab):
    assert lab.nodes
"""


def test_a_pytest_session_takes_the_lock_before_its_lab_boots(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(pytester.path / "locks"))
    other = acquire(sessionlock.lock_path(), _held_elsewhere("aaaa0001"), wait_s=0)
    try:
        refused = run_inner(pytester, monkeypatch, INNER, "--session-wait", "0")
    finally:
        other.release()
    refused.result.assert_outcomes(errors=1)
    refused.result.stdout.fnmatch_lines([
        f"*another hplab session (pid {os.getpid()}, run id aaaa0001) holds "
        f"{pytester.path}/locks/session.lock since *; not waiting for it*"])
    assert not (pytester.path / "labdir" / "runs").exists() or not any(
        (pytester.path / "labdir" / "runs").iterdir()), "a lab started without the lock"

    with sessionlock.hold(run_id="bbbb0002") as lock:  # the inner session is started by it
        assert not lock.inherited
        joined = run_inner(pytester, monkeypatch, INNER, "--session-wait", "0")
    joined.result.assert_outcomes(passed=1)
    assert sessionlock.ENV not in os.environ


def test_hplab_up_takes_the_lock_before_it_boots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(tmp_path / "locks"))
    booted: list[bool | None] = []

    def start(lab: Lab) -> Lab:
        record = read_holder(sessionlock.lock_path())
        booted.append(record.run_id == lab.run_id if record else None)
        return lab

    monkeypatch.setattr(Lab, "start", start)
    argv = ["--lab-dir", str(tmp_path / "lab"), "up", str(ROOT / "topologies" / "single.yaml"),
            "--session-wait", "0"]
    other = acquire(sessionlock.lock_path(), _held_elsewhere("aaaa0001"), wait_s=0)
    try:
        assert cli.main(argv) == 2 and not booted
    finally:
        other.release()
    err = capsys.readouterr().err
    assert (f"hplab: another hplab session (pid {os.getpid()}, run id aaaa0001) holds "
            f"{tmp_path}/locks/session.lock since ") in err
    assert "not waiting for it" in err
    assert cli.main(argv) == 0 and booted == [True]  # its own run id in the record
    assert not is_held(sessionlock.lock_path())


COMMANDS = {"matrix": ["matrix", "--kernels", "debian:6.1", "-o"],
            "repeat": ["repeat", "1", "--out"],
            "mutants": ["mutants", "--only", "SHORT_TABLE", "--out"]}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_command_that_starts_pytest_holds_the_lock_its_sessions_join(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(tmp_path / "locks"))
    joined: list[str] = []

    def started() -> None:
        """What a pytest the command starts now finds in its environment."""
        found = sessionlock.check_claim(os.environ.get(sessionlock.ENV, ""),
                                        sessionlock.lock_path())
        joined.append(found.describe() if isinstance(found, Holder) else found)

    def run_pytest(argv: list[str]) -> int:
        started()
        return 0

    def run_repeat(times: int, args: list[str], out: Path) -> tuple[list[object], list[int]]:
        started()
        return [], [0]

    def run_mutants(chosen: list[object], out: Path, extra: list[str]) -> list[object]:
        started()
        return []

    monkeypatch.setattr(matrix, "run_pytest", run_pytest)
    monkeypatch.setattr(repeat, "run", run_repeat)
    monkeypatch.setattr(mutants, "run", run_mutants)
    (tmp_path / "out").mkdir()
    cli.main(["--lab-dir", str(tmp_path / "lab"), *COMMANDS[command], str(tmp_path / "out")])
    assert len(joined) == 1 and joined[0].startswith(f"pid {os.getpid()}, "), joined
    assert sessionlock.ENV not in os.environ and not is_held(sessionlock.lock_path())
