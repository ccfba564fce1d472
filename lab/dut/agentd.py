"""The living agent in a guest: `vrhp-agent run` started in the background, its status
file read and waited on, and the daemon killed as an operator would."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable

from lab.dut.agent_output import DaemonStatus, parse_daemon_status
from lab.dut.kmod import GuestModule
from lab.errors import GuestError

STATUS = "/tmp/vrhp-agent.json"
CUTOFF = "/tmp/vrhp-agent.cutoff"
# Reference seconds for the daemon to reach a state: a few cycles, a setup or an adoption.
SETTLE_S = 60.0


class AgentDaemon:
    """One `vrhp-agent run` process of a module build, by pid."""

    def __init__(self, module: GuestModule, *options: str) -> None:
        self.module, self.guest = module, module.guest
        self.options = options
        self.pid = 0

    def start(self) -> AgentDaemon:
        self.guest.check(f"rm -f {STATUS} {CUTOFF}")
        args = " ".join(shlex.quote(a) for a in (
            self.module.agent_path, "run", "--status", STATUS, "--cutoff-file", CUTOFF,
            *self.options))
        out = self.guest.check(f"setsid {args} > /tmp/vrhp-agent.log 2>&1 < /dev/null & echo $!")
        self.pid = int(out.strip())
        return self

    def status(self) -> DaemonStatus | None:
        """The last status the daemon wrote; None before its first cycle."""
        result = self.guest.run(f"cat {STATUS}")
        return parse_daemon_status(result.stdout) if result.ok else None

    def wait_for(self, what: str, done: Callable[[DaemonStatus], bool],
                 reference_s: float = SETTLE_S) -> DaemonStatus:
        """Poll the status file until `done`; past the guest's scaled bound, fail naming
        `what` and the last status and log."""
        bound = self.guest.bound(reference_s)
        deadline = time.monotonic() + bound.seconds
        status = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise GuestError(f"{self.guest.node}: vrhp-agent run (pid {self.pid}) exited "
                                 f"while waiting for {what}: {self.log()}")
            status = self.status()
            if status is not None and done(status):
                return status
            time.sleep(0.2)
        raise GuestError(f"{self.guest.node}: vrhp-agent run did not reach {what} within "
                         f"{bound}; last status {status}; log: {self.log()}")

    def after_next_cycle(self) -> DaemonStatus:
        """The status of a cycle that started after this call."""
        current = self.status()
        seen = current.cycles if current else 0
        return self.wait_for(f"a cycle after cycle {seen}",
                             lambda s: s.cycles >= seen + 2 and s.state == "aging")

    def age_not_used_since(self, realtime_ns: int) -> None:
        """Entries whose last use is before `realtime_ns` are aged from the next cycle on."""
        self.guest.check(f"echo {realtime_ns} > {CUTOFF}.new && mv {CUTOFF}.new {CUTOFF}")

    def alive(self) -> bool:
        return self.guest.run(f"kill -0 {self.pid} && ! grep -q '^State:.*Z' "
                              f"/proc/{self.pid}/status").ok

    def kill(self, signal: str = "KILL") -> None:
        """Send `signal` and wait until the process is gone (its mappings with it)."""
        self.guest.run(f"kill -{signal} {self.pid}")
        bound = self.guest.bound(SETTLE_S)
        deadline = time.monotonic() + bound.seconds
        while self.alive():
            if time.monotonic() > deadline:
                raise GuestError(f"{self.guest.node}: vrhp-agent run (pid {self.pid}) still "
                                 f"alive {bound} after SIG{signal}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.guest.run("tail -c 600 /tmp/vrhp-agent.log").stdout.strip()


def realtime_ns(module: GuestModule) -> int:
    """The guest's CLOCK_REALTIME in ns (what the module stamps `last_used` with)."""
    return int(module.agent_stdout("clock", "--realtime").strip())
