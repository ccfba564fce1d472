"""Errors the lab raises. Each names the input it is about."""

from __future__ import annotations


class LabError(Exception):
    """Base class: a failure the lab can explain in one line. `outcome` is the class
    triage records for it (lab/guest/triage.py)."""

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

    outcome = "infrastructure-boot"

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

    outcome = "infrastructure-ssh"


class CommandFailed(GuestError):
    """A guest command ran and exited non-zero: the guest answered, the command said no.
    In a test's call phase that is the test's own check failing."""

    outcome = "test-failure"


class CommandTimedOut(GuestError):
    """A guest command outlived its bound: the message says the bound, the time waited
    and the output seen."""

    outcome = "hang"


class CanaryLost(GuestError):
    """The kernel log no longer holds a canary: the ring buffer wrapped past it."""


class HostKeyMismatch(GuestError):
    """The guest presented a host key other than the one pinned at image build."""


class NodeDied(LabError):
    """A node's QEMU exited under a test: names the node, how QEMU ended, the test, and
    ends with the console tail."""

    def __init__(self, node: str, cause: str, moment: str, *, console_tail: str = "",
                 after: str = "") -> None:
        super().__init__(f"node {node}: QEMU exited ({cause}) {moment}")  # "during <test>"
        self.node = node
        self.cause = cause
        self.moment = moment
        self.console_tail = console_tail
        self.after = after  # what happens to the node next

    def __str__(self) -> str:
        text = super().__str__()
        if self.after:
            text += f"; {self.after}"
        if self.console_tail:
            text += f"\n--- last console lines of {self.node} ---\n{self.console_tail}"
        return text
