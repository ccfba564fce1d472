"""Typed events the engine emits; the progress display and logs listen to them."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO


@dataclass(frozen=True)
class Event:
    """One step of the engine: `phase` starts, ends or reports progress for `subject`."""

    phase: str
    subject: str
    state: str  # "start" | "end" | "info" | "fail"
    detail: str = ""
    elapsed: float | None = None
    at: float = field(default_factory=time.monotonic)


Listener = Callable[[Event], None]


class EventBus:
    """Fans events out to listeners; the engine never prints directly."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self.history: list[Event] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: Event) -> None:
        self.history.append(event)
        for listener in self._listeners:
            listener(event)

    def phase(self, phase: str, subject: str, detail: str = "") -> PhaseTimer:
        return PhaseTimer(self, phase, subject, detail)

    def timings(self) -> list[tuple[str, str, float]]:
        """(phase, subject, seconds) of every phase that ended."""
        return [(e.phase, e.subject, e.elapsed) for e in self.history
                if e.state == "end" and e.elapsed is not None]


class PhaseTimer:
    """Context manager emitting start/end (or fail) events with the elapsed time."""

    def __init__(self, bus: EventBus, phase: str, subject: str, detail: str) -> None:
        self.bus, self.phase, self.subject, self.detail = bus, phase, subject, detail
        self.started = 0.0

    def __enter__(self) -> PhaseTimer:
        self.started = time.monotonic()
        self.bus.emit(Event(self.phase, self.subject, "start", self.detail))
        return self

    def info(self, detail: str) -> None:
        self.bus.emit(Event(self.phase, self.subject, "info", detail))

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        state = "fail" if exc is not None else "end"
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0] if exc is not None else ""
        self.bus.emit(Event(self.phase, self.subject, state, detail,
                            time.monotonic() - self.started))


def progress_line(event: Event) -> str:
    """The line a person watching the run sees for `event`."""
    if event.state == "start":
        line = f"[hplab] {event.phase} {event.subject} ..."
        if event.detail:
            line += f" ({event.detail})"
    elif event.state == "end":
        line = f"[hplab] {event.phase} {event.subject} done in {event.elapsed:.1f}s"
    elif event.state == "fail":
        line = f"[hplab] {event.phase} {event.subject} FAILED after {event.elapsed:.1f}s"
        if event.detail:
            line += f": {event.detail}"
    else:
        line = f"[hplab] {event.phase} {event.subject}: {event.detail}"
    return line


class ProgressPrinter:
    """A line per phase start and end, for people watching a terminal or a CI log."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def __call__(self, event: Event) -> None:
        print(progress_line(event), file=self.stream, flush=True)
