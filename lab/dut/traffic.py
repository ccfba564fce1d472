"""Flow churn inside a guest while the module may be swapped: the `vrhp_traffic` tool
started in the background, stopped, and its acknowledged flows read back."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from lab.build import guesttools
from lab.guest.ssh import Guest

ACKED = "/tmp/vrhp-traffic.acked"
OUT = "/tmp/vrhp-traffic.json"
STOP_S = 60.0  # reference seconds for the generator to finish its batch and write out


@dataclass(frozen=True)
class TrafficResult:
    adds: int
    dels: int
    gets: int
    get_misses: int  # a flow it added and did not delete: GET did not find it
    del_misses: int  # ... DEL did not find it
    errors: int  # other failed calls (first_error: their first errno)
    first_error: int
    live: int  # acknowledged adds not deleted: what the table must hold
    still_unavailable: bool
    unavailable_ms: tuple[float, ...]  # one per window without a working table
    adds_before_window: tuple[int, ...]  # adds acknowledged when each window opened
    acked: frozenset[str]  # the live flows' keys, as `vrhp-agent dump` prints them

    @property
    def median_unavailable_ms(self) -> float:
        return statistics.median(self.unavailable_ms) if self.unavailable_ms else 0.0


def parse_result(text: str, acked: str) -> TrafficResult:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"vrhp_traffic: output is not JSON ({exc}): {text[:200]!r}") from None
    fields = ("adds", "dels", "gets", "get_misses", "del_misses", "errors", "first_error",
              "live")
    if not isinstance(d, dict) or any(not isinstance(d.get(f), int) for f in fields):
        raise ValueError(f"vrhp_traffic: output lacks one of {fields}: {text[:200]!r}")
    keys = frozenset(line for line in acked.splitlines() if line)
    if len(keys) != d["live"]:
        raise ValueError(f"vrhp_traffic: {len(keys)} acknowledged keys in {ACKED}, "
                         f"summary says {d['live']}")
    return TrafficResult(**{f: d[f] for f in fields},
                         still_unavailable=bool(d.get("still_unavailable")),
                         unavailable_ms=tuple(float(v) for v in d.get("unavailable_ms", [])),
                         adds_before_window=tuple(int(v) for v in
                                                  d.get("adds_before_window", [])),
                         acked=keys)


def dumped_keys(dump: str) -> frozenset[str]:
    """The flow keys of `vrhp-agent dump flow` lines, in the generator's spelling."""
    return frozenset(line[1:line.index(',"action"')] for line in dump.splitlines() if line)


class Traffic:
    """One background `vrhp_traffic` process in a guest."""

    def __init__(self, guest: Guest, cache: Path, include_dirs: tuple[Path, ...]) -> None:
        self.guest = guest
        self.tool = guesttools.install(guest, "vrhp_traffic", cache, include_dirs=include_dirs)
        self.pid = 0

    def start(self, seed: int) -> Traffic:
        self.guest.check(f"rm -f {ACKED} {OUT}")
        self.pid = int(self.guest.check(
            f"setsid {self.tool} {ACKED} {seed} > {OUT} 2>&1 < /dev/null & echo $!").strip())
        return self

    def stop(self) -> TrafficResult:
        """SIGTERM, wait for the summary, read it with the acknowledged flows."""
        # bounded by the guest's scaled command bound: past it, a GuestError names the wait
        self.guest.check(f"kill -TERM {self.pid}; "
                         f"while kill -0 {self.pid} 2>/dev/null; do sleep 0.1; done",
                         timeout=STOP_S)
        return parse_result(self.guest.read(OUT), self.guest.read(ACKED))
