"""Waiting for a booting guest to be ready: its SSH banner on the forwarded port, a mark on
its console, and the boot errors (with the console's tail) when it never gets there."""

from __future__ import annotations

import math
import select
import socket
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from lab import timeouts
from lab.errors import BootError
from lab.guest import triage

BANNER_PAUSE = 0.4  # seconds between connection attempts to the SSH port (BannerProbe)
BANNER_WINDOW = 5  # attempts watched at once
BANNER_PATIENCE = 10.0  # seconds one connection waits for the banner once the guest is up


def console_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no console file at {path})"
    return "\n".join(text.splitlines()[-lines:])


class BannerProbe:
    """Overlapping connection attempts to a forwarded SSH port.

    QEMU's user network accepts a forwarded connection at once, then retries the SYN
    towards a guest that has no address yet only after seconds. Instead of waiting on
    one such connection, a new one is opened every BANNER_PAUSE seconds and the last
    BANNER_WINDOW are watched together, so a banner is seen within a fraction of a
    second of the server starting, and a server slow to send it still has
    BANNER_PAUSE x BANNER_WINDOW seconds (at most BANNER_WINDOW sessions at once).
    When the guest has its address already, one connection at a time is enough (and
    spares a busy guest the extra sessions): `pause` long, `window` 1. A refused or
    closed connection is replaced at once.
    """

    def __init__(self, port: int, pause: float = 0.0, window: int = 0) -> None:
        self.port = port
        self.pause = pause or BANNER_PAUSE
        self.window = window or BANNER_WINDOW
        self.socks: list[socket.socket] = []
        self.next_open = 0.0

    def _open(self) -> None:
        now = time.monotonic()
        if self.socks and now < self.next_open:
            return
        self.next_open = now + self.pause
        if len(self.socks) >= self.window:
            self.socks.pop(0).close()
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=BANNER_PAUSE)
        except OSError:
            return
        sock.setblocking(False)
        self.socks.append(sock)

    def poll(self, wait: float) -> bool:
        """True once some connection has received an SSH banner."""
        self._open()
        if not self.socks:
            time.sleep(wait)
            return False
        readable, _, _ = select.select(self.socks, [], [], wait)
        for sock in readable:
            try:
                data = sock.recv(64)
            except OSError:
                data = b""
            if data.startswith(b"SSH-"):
                return True
            self.socks.remove(sock)  # refused, closed or not SSH: drop it
            sock.close()
        return False

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.socks.clear()


def _check_boot(node: str, port: int, console: Path, started: float, deadline: float,
                alive: Callable[[], bool], waiting_for: str) -> None:
    """Raise BootError if the guest died or the deadline passed."""
    elapsed = time.monotonic() - started
    if not alive():
        raise BootError(f"{node}: guest stopped during boot after {elapsed:.1f}s "
                        "(panic or crash)", node=node, phase="boot",
                        console_tail=console_tail(console))
    if time.monotonic() > deadline:
        raise BootError(f"{node}: no {waiting_for} after {elapsed:.1f}s", node=node,
                        phase="ssh-banner", console_tail=console_tail(console))


class ConsoleMark:
    """Whether a line has appeared on a console file after `offset`, reading only what
    is new (a rebooted node appends its boot to the same file)."""

    def __init__(self, console: Path, mark: str, offset: int = 0) -> None:
        self.console, self.mark = console, mark.encode()
        self.offset, self.tail = offset, b""

    def seen(self) -> bool:
        try:
            start, chunk = triage.read_from(self.console, self.offset)
        except OSError:
            return False
        self.offset = start + len(chunk)
        text = self.tail + chunk
        self.tail = text[-len(self.mark):]
        return self.mark in text


def wait_ssh_banner(port: int, deadline: float, alive: Callable[[], bool], node: str,
                    console: Path, started: float, ready_mark: str | None = None,
                    console_from: int = 0, stall: float | None = None) -> None:
    """Wait for the SSH banner on 127.0.0.1:port (user networking accepts TCP early).

    The boot comes before anything can say how fast the guest is, so it is waited for
    while it shows progress: with `stall`, the wait ends once the console has not grown
    for `stall` seconds; `deadline` is the hard cap. The console counts from byte
    `console_from`, where this boot's output starts (a rebooted node appends its boot to
    the same file).

    With `ready_mark`, nothing connects before the guest printed it on its console:
    every connection QEMU's user network accepts before the guest has an address is
    delivered to the guest's sshd later, and a storm of them slows its first minutes.
    """
    patience = timeouts.Patience(started, deadline - started, stall, console_from)

    def check(waiting_for: str) -> None:
        _check_boot(node, port, console, started, math.inf, alive, waiting_for)
        now = time.monotonic()
        with suppress(OSError):
            patience.observe(console.stat().st_size, now)
        reason = patience.exhausted(now, "bytes of console output since the domain was "
                                         "created")
        if reason is not None:
            raise BootError(f"{node}: no {waiting_for} after {now - started:.1f}s: {reason}",
                            node=node, phase="ssh-banner", console_tail=console_tail(console))

    if ready_mark is not None:
        mark = ConsoleMark(console, ready_mark, console_from)
        while not mark.seen():
            check(f"ready mark {ready_mark!r} on the console")
            time.sleep(BANNER_PAUSE / 4)
    probe = BannerProbe(port) if ready_mark is None else BannerProbe(port, BANNER_PATIENCE, 1)
    try:
        while not probe.poll(BANNER_PAUSE / 2):
            check(f"SSH banner on 127.0.0.1:{port}")
    finally:
        probe.close()
