"""All waits of the lab in one place, in reference seconds, and how they scale.

A bound is given in reference seconds: what the wait may take on the reference machine
under TCG. Each guest times a short fixed workload (SPEED_WORKLOAD) right after it first
answers SSH; its slowdown is that time over the reference machine's, clamped to
SLOWDOWN_RANGE. Every later guest-side bound is reference seconds x the accelerator's
factor x the slowdown. Until the slowdown is measured a guest gets the largest one
accepted. The boot itself comes before any measurement: it is waited for while the
console grows, up to a hard cap (`boot_stall`, `boot_cap`, scaled by the accelerator).

The reference machine is the 2-core Debian 12 host (Intel Xeon, QEMU 7.2 TCG, Debian
6.1 guest kernel) the lab's bounds were set on. SPEED_REFERENCE was measured there: the
workload run 40 times, a second apart, in a freshly booted minimal guest (one vCPU,
topologies/single.yaml) while one other lab VM ran on the same host. The shell loop
took 0.16-0.46 s (median 0.23 s), the memory part 0.16-0.26 s (median 0.17 s); the
reference is the 10th percentile of each part (close to a guest that has the host to
itself), so a guest slowed by a busy host measures a slowdown above 1. The debian
image's /bin/sh is dash, not busybox ash: its loop reference is ash's times dash's share
of ash's time for the same loop run natively on that host (0.80); its dd (coreutils)
takes what busybox dd takes there. TCG guests run without ERMS (lab.vm.domain): the memory
reference is the one above scaled by what the same dd took there without and with ERMS,
10th percentiles of 12 runs each (0.04 s and 0.22 s for 1000 blocks), for 5000 blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

ACCEL_FACTORS = {"tcg": 1.0, "kvm": 0.25}
SLOWDOWN_RANGE = (0.25, 8.0)

SPEED_LOOP = 8000  # shell arithmetic iterations
SPEED_BLOCKS = 5000  # 64 KiB blocks from /dev/zero
SPEED_MARK = "hplab-speed"
# Run by /bin/sh whatever root's login shell is; /proc/uptime because busybox date has no %N.
SPEED_WORKLOAD = (
    "sh -c 'read a _ < /proc/uptime; i=0; "
    f"while [ $i -lt {SPEED_LOOP} ]; do i=$((i + 1)); done; read b _ < /proc/uptime; "
    f"dd if=/dev/zero of=/dev/null bs=64k count={SPEED_BLOCKS} 2>/dev/null; "
    f"read c _ < /proc/uptime; echo {SPEED_MARK} $a $b $c'")


# Host seconds between two looks of a poll (not bounds, not scaled; each poll is bounded
# by one of the Timeouts): for a dead node's domain (lab.pytest_plugin.session), for the
# module's refcount to drop (lab.dut.kmod).
DEATH_POLL_S = 0.1
UNLOAD_POLL_S = 0.2

# Cross-process locks (lab.lockfile): host seconds, not scaled, for no guest's speed decides
# how long another process holds a lock. A waiter looks every LOCK_POLL_S and says whom it
# waits for at once and then every LOCK_REPORT_EVERY_S.
LOCK_POLL_S = 0.2
LOCK_REPORT_EVERY_S = 30.0
CACHE_LOCK_WAIT_S = 1800.0  # longer than any build or download a cache entry's lock guards
POOL_LOCK_WAIT_S = 600.0  # the host's 1 GiB pool: held for a resize or a domain's re-creation
# Another lab session on the host: its whole run (--session-wait, $HPLAB_SESSION_WAIT; 0
# refuses at once).
SESSION_WAIT_S = 3600.0


@dataclass(frozen=True)
class SpeedReference:
    """Seconds each part of SPEED_WORKLOAD takes on the reference machine."""

    loop_s: float
    memory_s: float

    @property
    def total_s(self) -> float:
        return self.loop_s + self.memory_s


SPEED_REFERENCE = {"minimal": SpeedReference(loop_s=0.17, memory_s=0.15),
                   "debian": SpeedReference(loop_s=0.14, memory_s=0.15)}


@dataclass(frozen=True)
class Speed:
    """SPEED_WORKLOAD timed in one guest, against the reference machine."""

    loop_s: float
    memory_s: float
    reference: SpeedReference

    @property
    def unclamped(self) -> float:
        return (self.loop_s + self.memory_s) / self.reference.total_s

    @property
    def slowdown(self) -> float:
        low, high = SLOWDOWN_RANGE
        return min(max(self.unclamped, low), high)

    def describe(self) -> str:
        clamped = f", clamped from {self.unclamped:.2f}" if self.slowdown != self.unclamped else ""
        return (f"slowdown {self.slowdown:.2f}{clamped}: shell loop {self.loop_s:.2f}s, "
                f"memory {self.memory_s:.2f}s (reference {self.reference.loop_s:.2f}s + "
                f"{self.reference.memory_s:.2f}s)")


def parse_speed(output: str, image: str) -> Speed:
    """The Speed of a guest from SPEED_WORKLOAD's output; ValueError names what is wrong."""
    reference = SPEED_REFERENCE.get(image)
    if reference is None:
        raise ValueError(f"no speed reference for image {image!r} "
                         f"(known: {', '.join(SPEED_REFERENCE)})")
    for line in output.splitlines():
        words = line.split()
        if words[:1] != [SPEED_MARK]:
            continue
        try:
            start, looped, touched = (float(w) for w in words[1:])
        except ValueError:
            break
        if not start <= looped <= touched:
            raise ValueError(f"speed workload: uptimes out of order: {line!r}")
        return Speed(looped - start, touched - looped, reference)
    raise ValueError(f"speed workload printed no '{SPEED_MARK} START LOOPED TOUCHED' line: "
                     f"{output[-300:]!r}")


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


@dataclass(frozen=True)
class Bound:
    """A wait's bound: `reference` seconds times each named factor."""

    reference: float
    factors: tuple[tuple[str, float], ...] = ()

    @property
    def seconds(self) -> float:
        return self.reference * math.prod(value for _, value in self.factors)

    def __str__(self) -> str:
        factors = "".join(f" x {name} {value:.2f}" for name, value in self.factors)
        return f"{_seconds(self.seconds)} (reference {_seconds(self.reference)}{factors})"


@dataclass(frozen=True)
class Timeouts:
    """Reference seconds of each bounded wait, and the factors a node scales them by."""

    boot_stall: float = 120.0  # no new console output for this long: the boot is stuck
    boot_cap: float = 600.0  # a boot still printing ends here all the same
    ssh_connect: float = 20.0
    speed: float = 5.0  # SPEED_WORKLOAD, at the largest slowdown accepted
    command: float = 120.0  # a guest command without a bound of its own
    module_unload: float = 30.0  # until the module's refcount drops to 0
    agent_fill: float = 600.0  # vrhp-agent fill of a whole table
    agent_bench: float = 600.0  # vrhp-agent bench
    taint_read: float = 20.0  # /proc/sys/kernel/tainted, read around each phase of a test
    # The fragmenter (lab.fragment.driver): its release of the memory it holds takes well
    # under a second on the reference; a holder that does not release is killed, and its
    # files removed, within fragment_kill. A command bounds the tool's own cap (its spec's
    # timeout_s, or the release bound) plus a slack for starting and printing.
    fragment_release: float = 10.0
    fragment_kill: float = 30.0
    fragment_slack: float = 60.0  # a fragment run: its spec's timeout_s plus this
    release_slack: float = 10.0  # a release: its bound plus this
    # A whole lab test, setup to teardown: the last-resort safety net (pytest-timeout),
    # far above every bound of its own. The first test's also covers the lab's boot.
    test_safety_net: float = 1200.0
    # Host seconds, not scaled: a KVM boot the verdict is cached from, a build on the host.
    accel_probe: float = 20.0
    module_build: float = 600.0
    # Host seconds, not scaled: libvirt's word that a domain is gone can trail SSH's by a
    # moment; a test whose connection broke waits this long for a death of its nodes.
    death_settle: float = 2.0
    accel: str = "tcg"
    slowdown: float | None = None  # None: not measured yet

    def __post_init__(self) -> None:
        if self.accel not in ACCEL_FACTORS:
            raise ValueError(f"accel must be one of {', '.join(ACCEL_FACTORS)}, "
                             f"got {self.accel!r}")

    def for_accel(self, accel: str) -> Timeouts:
        return replace(self, accel=accel, slowdown=None)

    def measured(self, slowdown: float) -> Timeouts:
        return replace(self, slowdown=slowdown)

    def _accel_factors(self) -> tuple[tuple[str, float], ...]:
        factor = ACCEL_FACTORS[self.accel]
        return () if factor == 1.0 else ((self.accel, factor),)

    def bound(self, reference: float) -> Bound:
        """A guest-side wait of `reference` seconds for this node."""
        if self.slowdown is None:
            slowdown = ("slowdown (not measured yet, the largest accepted)", SLOWDOWN_RANGE[1])
        else:
            slowdown = ("slowdown", self.slowdown)
        return Bound(reference, (*self._accel_factors(), slowdown))

    def boot_bound(self, reference: float) -> Bound:
        """A wait during boot, before the speed is known: the accelerator alone."""
        return Bound(reference, self._accel_factors())


class Patience:
    """A wait that goes on while something visibly grows, up to a hard cap: it is over
    `stall` seconds after the last growth, or `cap` seconds after `started`."""

    def __init__(self, started: float, cap: float, stall: float | None = None,
                 level: int = 0) -> None:
        self.started, self.cap, self.stall = started, cap, stall
        self.level = level
        self.grown = 0
        self.last_growth: float | None = None

    def observe(self, level: int, now: float) -> None:
        """A reading of what grows (a file's size); a drop means it started over."""
        growth = level - self.level if level >= self.level else level
        if growth:
            self.grown += growth
            self.last_growth = now
        self.level = level

    def exhausted(self, now: float, unit: str = "bytes") -> str | None:
        """Why the wait is over, naming the growth seen; None while it goes on."""
        quiet = now - (self.started if self.last_growth is None else self.last_growth)
        if self.last_growth is None:
            seen = f"no {unit} at all"
        else:
            seen = f"{self.grown} {unit}, the last {_seconds(quiet)} ago"
        if now - self.started > self.cap:
            return f"hard cap of {_seconds(self.cap)} reached ({seen})"
        if self.stall is not None and quiet > self.stall:
            return f"nothing new for {_seconds(self.stall)} ({seen})"
        return None
