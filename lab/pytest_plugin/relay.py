"""How an xdist worker's progress lines reach the controller's terminal as they happen.

xdist carries a worker's test reports to the controller, but only at the end of each test
phase, and its WorkerController.process_from_remote refuses event names it does not know,
so the lab cannot send an event of its own over the worker's channel. Phase-end lines in
serialized reports would not do either: a boot or a fragmentation takes minutes inside one
phase, and the lab's teardown speaks after the worker's last report. So each worker
appends its lines, one JSON object a line, to a file of its own in the exchange directory
of the controller's run (`workers/<worker>.jsonl`), and a controller thread prints every
new line through the terminal reporter, prefixed with the worker id, a fraction of a
second later. The same file announces the worker's run directory, and
`workers/<worker>-groups.json` hands the controller the worker's test groups before it
schedules (lab.pytest_plugin.distribution), and `workers/session.json` hands the workers
the host's session lock the controller took for them (lab.host.sessionlock). The exchange
directory is made by the first worker that uses the lab, so a run that does not use it
leaves nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXCHANGE = "workers"  # the exchange directory, in the controller's run directory
EXCHANGE_KEY = "hplab_exchange"  # its path in each worker's workerinput
POLL_S = 0.2  # host seconds between two looks at the workers' files (not a bound)


@dataclass(frozen=True)
class Exchange:
    """The files through which the workers talk to the controller."""

    root: Path

    def progress(self, worker: str) -> Path:
        return self.root / f"{worker}.jsonl"

    def groups(self, worker: str) -> Path:
        return self.root / f"{worker}-groups.json"

    def write_groups(self, worker: str, groups: dict[str, str]) -> None:
        """The worker's test groups (node id -> group); written also when there is no
        group, as the word that the lab is used in this run."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.groups(worker)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(groups, indent=1))
        tmp.replace(path)

    def session(self) -> Path:
        return self.root / "session.json"

    def hand_session(self, claim: str | None, error: str | None = None) -> None:
        """The host's session lock as the controller took it for its workers: the
        HPLAB_SESSION value they join it with, or why the controller could not take it."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.session()
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"claim": claim, "error": error}))
        tmp.replace(path)

    def handed_session(self) -> tuple[str | None, str | None] | None:
        """(claim, error) as the controller handed them; None before it did."""
        path = self.session()
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object with claim and error")
        claim, error = data.get("claim"), data.get("error")
        return (str(claim) if claim else None, str(error) if error else None)

    def read_groups(self) -> dict[str, str] | None:
        """Every worker's groups together; None when no worker used the lab."""
        paths = sorted(self.root.glob("*-groups.json")) if self.root.is_dir() else []
        if not paths:
            return None
        groups: dict[str, str] = {}
        for path in paths:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError(f"{path}: expected an object of node id -> group")
            groups.update({str(k): str(v) for k, v in data.items()})
        return groups


class RelayWriter:
    """A worker's side: its lines and its run directory, appended to its file."""

    def __init__(self, exchange: Exchange, worker: str) -> None:
        self.path = exchange.progress(worker)

    def line(self, text: str) -> None:
        self._append({"line": text})

    def run(self, run_dir: Path, started: float) -> None:
        """The worker's run directory and the monotonic time its lab started."""
        self._append({"run_dir": str(run_dir), "started": started})

    def _append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:  # whole lines: the reader waits for the newline
            handle.write(json.dumps(record) + "\n")


@dataclass(frozen=True)
class WorkerRun:
    worker: str
    run_dir: Path
    started: float  # monotonic, as the controller's clock


class RelayReader:
    """The controller's side: a thread printing each worker's new lines, prefixed with
    the worker id, and collecting the workers' run directories."""

    def __init__(self, exchange: Exchange, say: Callable[[str], None]) -> None:
        self.exchange = exchange
        self.say = say
        self.runs: dict[str, WorkerRun] = {}
        self._offsets: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="hplab-relay",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop following; what the workers wrote until now is printed first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.drain()

    def _follow(self) -> None:
        while not self._stop.wait(POLL_S):
            self.drain()

    def drain(self) -> None:
        """Print every complete line written since the last look."""
        with self._lock:
            root = self.exchange.root
            for path in sorted(root.glob("*.jsonl")) if root.is_dir() else []:
                offset = self._offsets.get(path, 0)
                with path.open("rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
                complete = data[:data.rfind(b"\n") + 1]  # a line being written waits
                self._offsets[path] = offset + len(complete)
                for raw in complete.decode(errors="replace").splitlines():
                    self._take(path.stem, raw)

    def _take(self, worker: str, raw: str) -> None:
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            record = {"line": raw}
        if isinstance(record, dict) and "run_dir" in record:
            self.runs[worker] = WorkerRun(worker, Path(str(record["run_dir"])),
                                          float(record.get("started", 0.0)))
        elif isinstance(record, dict) and "line" in record:
            self.say(f"[{worker}] {record['line']}")
        else:
            self.say(f"[{worker}] {raw}")
