"""Errors the lab raises. Each names the input it is about."""

from __future__ import annotations


class LabError(Exception):
    """Base class: a failure the lab can explain in one line."""

    outcome = "infrastructure"


class TopologyError(LabError):
    """A topology file is invalid: the message names file, node and field."""

    outcome = "configuration"


class HostError(LabError):
    """The host lacks something the lab needs; the message says how to fix it."""


class BuildError(LabError):
    """Building a kernel, image or module failed."""


class BootError(LabError):
    """A guest did not come up: the message names the phase, time and console tail."""

    def __init__(self, message: str, *, node: str, phase: str, console_tail: str = "") -> None:
        super().__init__(message)
        self.node = node
        self.phase = phase
        self.console_tail = console_tail

    def __str__(self) -> str:
        text = super().__str__()
        if self.console_tail:
            text += f"\n--- last console lines of {self.node} ---\n{self.console_tail}"
        return text


class GuestError(LabError):
    """A command or transfer in a guest failed."""


class HostKeyMismatch(GuestError):
    """The guest presented a host key other than the one pinned at image build."""
