"""Waiting for the SSH banner against real loopback servers that behave like QEMU's
user network: connections accepted early that never answer, servers slow to greet."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.errors import BootError
from lab.vm import domain, readiness

Handler = Callable[[socket.socket, int], None]


@pytest.fixture
def server() -> Iterator[Callable[[Handler], int]]:
    """server(handler) -> port; handler(conn, n) runs for the n-th accepted connection."""
    listeners: list[socket.socket] = []
    held: list[socket.socket] = []

    def start(handler: Handler) -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        listeners.append(sock)

        def serve() -> None:
            n = 0
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                held.append(conn)
                threading.Thread(target=guarded, args=(conn, n), daemon=True).start()
                n += 1

        def guarded(conn: socket.socket, n: int) -> None:
            with contextlib.suppress(OSError):  # the test ended and closed the connection
                handler(conn, n)

        threading.Thread(target=serve, daemon=True).start()
        return int(sock.getsockname()[1])

    yield start
    for sock in listeners + held:
        sock.close()


def wait(port: int, limit: float = 10.0, alive: Callable[[], bool] = lambda: True) -> float:
    """Seconds until the banner; BootError at `limit`. No test bounds these seconds from
    above: a loaded machine is slow, and the deadline is the bound being tested."""
    start = time.monotonic()
    readiness.wait_ssh_banner(port, start + limit, alive, "cn1", Path("/nonexistent"), start)
    return time.monotonic() - start


def test_a_silent_early_connection_does_not_hold_up_the_banner(server) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, n: int) -> None:
        if n > 0:  # the first connection is one the guest never answers
            conn.sendall(b"SSH-2.0-dropbear\r\n")

    wait(server(handler))  # a wait stuck on the silent connection ends in BootError


def test_a_server_slow_to_greet_is_still_seen(server) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, n: int) -> None:
        time.sleep(1.2)  # longer than the pause between attempts, inside the window
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    assert wait(server(handler)) >= 1.2


def test_closed_connections_are_retried(server) -> None:  # type: ignore[no-untyped-def]
    def handler(conn: socket.socket, n: int) -> None:
        if n < 3:
            conn.close()
        else:
            conn.sendall(b"SSH-2.0-x\r\n")

    wait(server(handler))


def test_no_banner_until_the_deadline_names_port_and_phase(server) -> None:  # type: ignore[no-untyped-def]
    port = server(lambda conn, n: None)
    with pytest.raises(BootError, match=f"no SSH banner on 127.0.0.1:{port}") as err:
        wait(port, limit=1.0)
    assert err.value.phase == "ssh-banner"


def test_a_guest_that_dies_stops_the_wait() -> None:
    port = domain.free_port()
    with pytest.raises(BootError, match="guest stopped during boot") as err:
        wait(port, alive=lambda: False)
    assert err.value.phase == "boot"


def test_nothing_connects_before_the_console_mark(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    connected: list[float] = []

    def handler(conn: socket.socket, n: int) -> None:
        connected.append(time.monotonic())
        conn.sendall(b"SSH-2.0-x\r\n")

    port = server(handler)
    console = tmp_path / "console.log"
    console.write_text("[    0.1] booting\n")
    marked: list[float] = []

    def print_mark() -> None:
        time.sleep(0.8)
        with console.open("a") as handle:
            handle.write("noise hplab-init: rea")
            handle.flush()
            time.sleep(0.3)  # the mark arrives in two writes
            marked.append(time.monotonic())
            handle.write("dy\n")

    threading.Thread(target=print_mark, daemon=True).start()
    start = time.monotonic()
    readiness.wait_ssh_banner(port, start + 5, lambda: True, "cn1", console, start,
                              ready_mark="hplab-init: ready")
    assert marked and connected
    assert connected[0] >= marked[0]


def test_a_missing_console_mark_times_out_naming_it(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(BootError, match="no ready mark 'hplab-init: ready' on the console"):
        readiness.wait_ssh_banner(domain.free_port(), start + 0.5, lambda: True, "cn1",
                                  tmp_path / "console.log", start, ready_mark="hplab-init: ready")


def test_a_rebooted_node_waits_for_its_own_ready_mark(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("boot 1\nhplab-init: ready\n")
    mark = readiness.ConsoleMark(console, "hplab-init: ready", console.stat().st_size)
    assert not mark.seen()
    with console.open("a") as handle:
        handle.write("boot 2\nhplab-init: ready\n")
    assert mark.seen()


def _print_lines(console: Path, lines: list[str], every: float) -> threading.Thread:
    """Append one line to `console` every `every` seconds, in a thread."""
    def write() -> None:
        for line in lines:
            time.sleep(every)
            with console.open("a") as handle:
                handle.write(line + "\n")

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_boot_that_keeps_printing_outlasts_the_stall_window(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = server(lambda conn, n: conn.sendall(b"SSH-2.0-x\r\n"))
    console = tmp_path / "console.log"
    console.write_text("")
    _print_lines(console, [f"[ {i}] still booting" for i in range(8)] + ["hplab-init: ready"],
                 every=0.2)
    start = time.monotonic()
    readiness.wait_ssh_banner(port, start + 10, lambda: True, "cn1", console, start,
                              ready_mark="hplab-init: ready", stall=0.6)
    assert time.monotonic() - start > 1.5  # far past the stall window, never past it quiet


def test_a_boot_gone_quiet_fails_after_the_stall_naming_the_progress(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("x" * 1000 + "\n")  # an earlier boot's output
    _print_lines(console, ["[ 0.1] Linux version", "hplab-init: booted"], every=0.1)
    start = time.monotonic()
    with pytest.raises(BootError) as err:
        readiness.wait_ssh_banner(domain.free_port(), start + 10, lambda: True, "cn1", console,
                                  start, ready_mark="hplab-init: ready", console_from=1001,
                                  stall=0.5)
    waited = time.monotonic() - start
    assert waited >= 0.5  # the stall, not the deadline, ended it: the message says so
    message = str(err.value)
    assert re.match(r"cn1: no ready mark 'hplab-init: ready' on the console after \d\.\ds: "
                    r"nothing new for 0\.5s \(40 bytes of console output since the domain "
                    r"was created, the last 0\.\ds ago\)", message), message
    assert err.value.phase == "ssh-banner"
    assert err.value.console_tail.endswith("hplab-init: booted")


def test_a_boot_that_never_stops_printing_ends_at_the_cap(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("")
    _print_lines(console, ["printk storm"] * 40, every=0.05)
    start = time.monotonic()
    with pytest.raises(BootError, match=r"after 1\.\ds: hard cap of 1\.0s reached \(\d+ bytes "
                                        r"of console output since the domain was created"):
        readiness.wait_ssh_banner(domain.free_port(), start + 1.0, lambda: True, "cn1", console,
                                  start, ready_mark="hplab-init: ready", stall=0.5)
