"""The serial phase under xdist: a test marked `serial` holds the host's serial lock
(lab.host.serial_lock) exclusively for its whole protocol, every other lab test holds it
shared, so the serial one runs while no other lab test runs on any worker, whatever
distribution the user chose. Without xdist no lock is taken."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lab.errors import LabError
from lab.events import Event
from lab.host.serial_lock import SerialLock, SerialLockTimeout
from lab.pytest_plugin.distribution import SERIAL
from lab.pytest_plugin.session import LabSession
from lab.timeouts import Bound, Timeouts

LOCK_FILE = "serial.lock"  # in the lab directory, which every worker of a run shares
LOCK_FAILURE = pytest.StashKey[str]()  # why a test could not take the lock


def lock_bound(config: pytest.Config) -> Bound:
    """How long a test waits for the lock: what a holder's test may last (its safety
    net, --lab-test-timeout) at the largest slowdown accepted, the holder's guests being
    another worker's."""
    reference = float(config.getoption("lab_test_timeout")) or Timeouts.test_safety_net
    return Timeouts().bound(reference)


@contextmanager
def phase(item: pytest.Item, session: LabSession) -> Iterator[None]:
    """Hold the serial lock for `item`'s protocol on an xdist worker. A wait past the
    bound is not raised here (outside every phase) but by `check` in the setup."""
    if session.worker is None:
        yield
        return
    exclusive = item.get_closest_marker(SERIAL) is not None
    how = "exclusively" if exclusive else "shared"
    bound = lock_bound(item.config)

    told: list[bool] = []  # whether it had to wait

    def waiting(holders: list[str]) -> None:
        told.append(True)
        session.bus.emit(Event("serial", "lock", "info",
                               f"{item.nodeid} waits to hold it {how}, up to {bound}, "
                               f"for: {'; '.join(holders) or 'a holder between two tests'}"))

    lock = SerialLock(session.base_dir / LOCK_FILE)
    try:
        with lock.held(exclusive, f"{session.worker} {item.nodeid}", bound.seconds,
                       waiting) as waited:
            if told:
                session.bus.emit(Event("serial", "lock", "info",
                                       f"{item.nodeid} holds it {how} after {waited:.1f}s"))
            yield
    except SerialLockTimeout as exc:
        item.stash[LOCK_FAILURE] = f"serial lock not taken {how}: {exc}"
        yield


def check(item: pytest.Item) -> None:
    """Fail `item`'s setup when it could not take the serial lock."""
    failure = item.stash.get(LOCK_FAILURE, None)
    if failure is not None:
        raise LabError(failure)
