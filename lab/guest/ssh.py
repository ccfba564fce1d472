"""One running guest: SSH and SFTP with a pinned host key, commands, testinfra."""

from __future__ import annotations

import base64
import logging
import shlex
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paramiko

from lab.errors import CanaryLost, CommandFailed, CommandTimedOut, GuestError, HostKeyMismatch
from lab.timeouts import SPEED_WORKLOAD, Bound, Speed, Timeouts, parse_speed

log = logging.getLogger(__name__)
TRANSIENT_ATTEMPTS = 3
WATCHDOG_GRACE = 2.0  # seconds past a command's bound before the connection is dropped
T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclass
class Progress:
    """What one command showed of itself: whether the guest accepted it, its output."""

    started: float
    accepted: bool = False
    output_bytes: int = 0
    last_output: float | None = None

    def saw(self, nbytes: int, now: float) -> None:
        if nbytes:
            self.output_bytes += nbytes
            self.last_output = now

    def describe(self, now: float) -> str:
        if not self.accepted:
            return "no answer from the guest"
        if self.last_output is None:
            return f"no output for {now - self.started:.0f}s"
        return f"{self.output_bytes} bytes of output, none for {now - self.last_output:.0f}s"


def did_not_finish(node: str, command: str, bound: Bound, progress: Progress,
                   now: float) -> str:
    """The message of a command that outlived its bound: the command, the bound and how it
    was reached, the time waited, the output seen."""
    return (f"{node}: '{command[:200]}' did not finish within {bound}, gave up after "
            f"{now - progress.started:.1f}s; {progress.describe(now)}")


def _emit_lines(data: bytearray, start: int, on_line: Callable[[str], None]) -> int:
    """Give each complete line of `data` from `start` to `on_line`; where the rest starts."""
    end = data.rfind(b"\n") + 1
    if end > start:
        for line in bytes(data[start:end]).decode(errors="replace").splitlines():
            on_line(line)
        return end
    return start


class _PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):
    def __init__(self, node: str, expected: str) -> None:
        self.node, self.expected = node, expected

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        got = f"{key.get_name()} {key.get_base64()}"
        raise HostKeyMismatch(f"{self.node}: host key {got[:60]}... does not match the key "
                              f"pinned at image build ({self.expected[:60]}...): refusing")


class Guest:
    """SSH access to one node, reached through its forwarded port on 127.0.0.1."""

    def __init__(self, node: str, port: int, key_file: Path, host_key: str,
                 *, timeouts: Timeouts | None = None) -> None:
        self.node, self.port, self.key_file, self.host_key = node, port, key_file, host_key
        self.timeouts = timeouts or Timeouts()
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self.transient_retries = 0
        self.silent = False  # the last command got no answer within its bound
        self.retired = ""  # why this connection may not be used again
        self.installed: dict[str, str] = {}  # remote directory -> key of what was put there

    def bound(self, reference: float | None = None) -> Bound:
        """This guest's bound for a wait of `reference` seconds (default: a command's)."""
        return self.timeouts.bound(self.timeouts.command if reference is None else reference)

    def scaled(self, reference: float) -> float:
        """Seconds this guest gets for a wait of `reference` reference seconds."""
        return self.bound(reference).seconds

    @property
    def connect_timeout(self) -> float:
        return self.bound(self.timeouts.ssh_connect).seconds

    @property
    def command_timeout(self) -> float:
        return self.bound().seconds

    def measure_speed(self, image: str) -> Speed:
        """Time SPEED_WORKLOAD in the guest; from then on every bound scales with it."""
        output = self.check(SPEED_WORKLOAD, timeout=self.timeouts.speed)
        try:
            speed = parse_speed(output, image)
        except ValueError as exc:
            raise GuestError(f"{self.node}: {exc}") from None
        self.timeouts = self.timeouts.measured(speed.slowdown)
        return speed

    @property
    def client(self) -> paramiko.SSHClient:
        if self.retired:
            raise GuestError(f"{self.node}: {self.retired}: this connection is not usable")
        if self._client is None or not self._transport_alive():
            self._client = self._connect()
        return self._client

    def _transport_alive(self) -> bool:
        client = self._client
        transport = client.get_transport() if client else None
        return bool(transport and transport.is_active())

    def _connect(self) -> paramiko.SSHClient:
        kind, blob = self.host_key.split()[:2]
        client = paramiko.SSHClient()
        pinned = paramiko.PKey.from_type_string(kind, base64.b64decode(blob))
        client.get_host_keys().add(f"[127.0.0.1]:{self.port}", kind, pinned)
        client.set_missing_host_key_policy(_PinnedKeyPolicy(self.node, self.host_key))
        try:
            client.connect("127.0.0.1", port=self.port, username="root",
                           key_filename=str(self.key_file), allow_agent=False,
                           look_for_keys=False, timeout=self.connect_timeout,
                           banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyMismatch(f"{self.node}: host key changed: {exc}; refusing") from None
        except (paramiko.SSHException, OSError) as exc:
            client.close()
            raise GuestError(f"{self.node}: SSH to 127.0.0.1:{self.port} failed: {exc}") from None
        return client

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def retire(self, why: str) -> None:
        """Close for good: the VM behind this port is gone, and a later VM may get the
        same port, so nothing may reconnect through this object."""
        self.close()
        self.retired = why

    def run(self, command: str, *, timeout: float | None = None, check: bool = False,
            on_stderr_line: Callable[[str], None] | None = None) -> Result:
        """Run a shell command; raise GuestError if it outlives its bound (or fails, with
        check). `timeout` is in reference seconds (lab.timeouts), default a command's.
        `on_stderr_line` gets each line of stderr as soon as it is complete.

        The bound holds even when the guest stops answering altogether (a frozen guest
        never confirms the channel): a watchdog then closes this command's connection,
        which wakes every blocked SSH call; the next command connects afresh.
        """
        bound = self.bound(timeout)
        if self.silent:  # it stopped answering before: connect-sized patience until it does
            bound = min(bound, self.bound(self.timeouts.ssh_connect), key=lambda b: b.seconds)
        limit = bound.seconds
        client = self.client  # connecting is bounded by connect_timeout, not by `limit`
        progress = Progress(time.monotonic())
        deadline = progress.started + limit
        expired = threading.Event()

        def give_up() -> None:
            expired.set()
            with suppress(Exception):
                client.close()

        watchdog = threading.Timer(limit + WATCHDOG_GRACE, give_up)
        watchdog.daemon = True
        watchdog.start()
        try:
            result = self._run(client, command, bound, deadline, progress, on_stderr_line)
        except (GuestError, paramiko.SSHException, EOFError, OSError) as exc:
            now = time.monotonic()
            if expired.is_set() or (not progress.accepted and now >= deadline):
                self.silent = True
                raise CommandTimedOut(did_not_finish(self.node, command, bound, progress,
                                                now)) from None
            if isinstance(exc, GuestError):
                raise
            raise GuestError(f"{self.node}: SSH failed while running {command[:200]}: "
                             f"{exc or type(exc).__name__}") from None
        finally:
            watchdog.cancel()
            watchdog.join()
        self.silent = False
        log.debug("%s: %.2fs, exit %d: %s", self.node, time.monotonic() - progress.started,
                  result.exit_status, command[:160])
        if check and not result.ok:
            raise CommandFailed(f"{self.node}: `{command[:200]}` exited {result.exit_status}: "
                             f"{result.stderr.strip()[-800:] or result.stdout.strip()[-800:]}")
        return result

    def _run(self, client: paramiko.SSHClient, command: str, bound: Bound,
             deadline: float, progress: Progress,
             on_stderr_line: Callable[[str], None] | None = None) -> Result:
        def transport() -> paramiko.Transport:
            current = client.get_transport()
            if current is None:
                raise GuestError(f"{self.node}: no SSH transport")
            return current

        channel = self._retry("open a session", lambda: transport().open_session(
            timeout=max(deadline - time.monotonic(), 0.1)))
        channel.settimeout(1.0)
        channel.exec_command(command)
        progress.accepted = True
        out, err = bytearray(), bytearray()
        lines_from = 0  # where the stderr line not yet given to on_stderr_line starts
        while True:
            received = len(out) + len(err)
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            now = time.monotonic()
            progress.saw(len(out) + len(err) - received, now)
            if on_stderr_line is not None:
                lines_from = _emit_lines(err, lines_from, on_stderr_line)
            if channel.exit_status_ready() and not channel.recv_ready() \
                    and not channel.recv_stderr_ready():
                break
            if now > deadline:
                channel.close()
                raise CommandTimedOut(did_not_finish(self.node, command, bound, progress, now))
            if transport().is_active() is False:
                raise GuestError(f"{self.node}: SSH connection lost while running: "
                                 f"{command[:200]}")
            time.sleep(0.01)
        status = channel.recv_exit_status()
        channel.close()
        if on_stderr_line is not None and lines_from < len(err):
            on_stderr_line(err[lines_from:].decode(errors="replace"))
        return Result(status, out.decode(errors="replace"), err.decode(errors="replace"))

    def check(self, command: str, *, timeout: float | None = None) -> str:
        return self.run(command, timeout=timeout, check=True).stdout

    def _retry(self, what: str, action: Callable[[], T]) -> T:
        """Retry an idempotent SSH step that the server refused in passing (dropbear
        sometimes closes a fresh channel while the previous one is torn down)."""
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                return action()
            except TimeoutError:
                raise GuestError(f"{self.node}: could not {what}: no answer from the guest "
                                 f"within {self.bound()}") from None
            except (paramiko.SSHException, EOFError) as exc:
                if attempt == TRANSIENT_ATTEMPTS or not self._transport_alive():
                    raise GuestError(f"{self.node}: could not {what} after {attempt} "
                                     f"attempts: {exc or type(exc).__name__}") from None
                self.transient_retries += 1
                log.warning("%s: transient SSH error (%s), retry %d/%d to %s", self.node,
                            exc or type(exc).__name__, attempt, TRANSIENT_ATTEMPTS - 1, what)
                self._sftp = None
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None or self._sftp.get_channel() is None \
                or self._sftp.get_channel().closed:  # type: ignore[union-attr]
            self._sftp = self.client.open_sftp()
            # a guest that stops answering fails a transfer instead of blocking it forever
            self._sftp.get_channel().settimeout(self.command_timeout)  # type: ignore[union-attr]
        return self._sftp

    def put(self, local: Path, remote: str, mode: int | None = None) -> None:
        def transfer() -> None:
            self.sftp().put(str(local), remote)
            if mode is not None:
                self.sftp().chmod(remote, mode)
        self._retry(f"copy {local} to {remote}", transfer)

    def get(self, remote: str, local: Path) -> Path:
        self._retry(f"copy {remote} from the guest", lambda: self.sftp().get(remote, str(local)))
        return local

    def read(self, remote: str) -> str:
        def fetch() -> bytes:
            with self.sftp().open(remote) as handle:
                return bytes(handle.read())
        return self._retry(f"read {remote}", fetch).decode(errors="replace")

    def canary(self, label: str) -> str:
        """Write a unique line to the kernel log; dmesg_since() returns what follows it."""
        mark = f"hplab-canary {label} {uuid.uuid4().hex[:12]}"
        self.check(f"echo {shlex.quote(mark)} > /dev/kmsg")
        return mark

    def dmesg_since(self, mark: str) -> str:
        text = self.check("dmesg")
        _, found, after = text.partition(mark)
        if not found:
            raise CanaryLost(f"{self.node}: dmesg canary {mark!r} not found (log wrapped?)")
        return after.split("\n", 1)[1] if "\n" in after else ""

    def testinfra_host(self) -> Any:
        """A testinfra Host that uses this guest's pinned connection; its commands are
        bounded as every command of the lab is (Guest.run)."""
        import testinfra.host
        from testinfra.backend.paramiko import ParamikoBackend

        guest = self

        class PinnedBackend(ParamikoBackend):  # type: ignore[misc]
            def run(self, command: str, *args: str, **kwargs: Any) -> Any:
                line = self.get_command(command, *args)
                done = guest.run(line)
                return self.result(done.exit_status, self.encode(line),
                                   done.stdout.encode(), done.stderr.encode())

            @property
            def client(self) -> paramiko.SSHClient:
                return guest.client

            @client.deleter
            def client(self) -> None:
                guest.close()

        backend = PinnedBackend(f"root@127.0.0.1:{self.port}")
        return testinfra.host.Host(backend)
