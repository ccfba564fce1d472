"""How the tests of a run spread over xdist workers (`pytest -n N`), worker side.

A test goes to any worker on its own, unless it shares a guest with others: the tests of a
class or module with a class- or module-scoped fixture that holds a guest (the suites'
class_module) stay on one worker, which boots its guests once for them. Tests marked
`serial` (one that restarts libvirtd takes down what every other worker's lab talks to)
form one group the controller gives out last, once every other test has ended
(lab.pytest_plugin.scheduling); under xdist they also come last in collection order, and
each takes the host's serial lock exclusively while every other lab test takes it shared
(lab.host.serial_lock), whatever distribution the user chose. Without xdist none of this
happens.

xdist's own `loadgroup` cannot be used for the groups: it appends `@group` to the node
ids, which then reach JUnit, results.json and the terminal (and pytest 9.2 ignores the
change, so it groups nothing). The workers hand their groups to the controller in a file
instead (lab.pytest_plugin.relay.Exchange).
"""

from __future__ import annotations

import pytest

from lab.pytest_plugin.usage import guest_sharing_scope

SERIAL = "serial"
SERIAL_MARKER = (f"{SERIAL}: the test takes down something every lab on the host uses "
                 "(libvirtd); under xdist it runs alone, after every other test")
SERIAL_GROUP = "hplab:serial"
XDIST_GROUP = "xdist_group"  # the user's own groups, as xdist's loadgroup takes them


def worker_id(config: pytest.Config) -> str | None:
    """The xdist worker this process is (gw0, gw1, ...); None in a serial run or on the
    controller. Not $PYTEST_XDIST_WORKER: an inner pytest session a worker's test starts
    inherits that."""
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if isinstance(workerinput, dict) else None


def group_of(item: pytest.Item) -> str | None:
    """The group `item` runs in, or None to run on any worker on its own."""
    if item.get_closest_marker(SERIAL) is not None:
        return SERIAL_GROUP
    marker = item.get_closest_marker(XDIST_GROUP)
    if marker is not None:
        name = marker.args[0] if marker.args else marker.kwargs.get("name", "default")
        return f"{XDIST_GROUP}:{name}"
    return guest_sharing_scope(item)


def groups_of(items: list[pytest.Item]) -> dict[str, str]:
    """Node id -> group of every item that has one."""
    groups = {}
    for item in items:
        group = group_of(item)
        if group is not None:
            groups[item.nodeid] = group
    return groups


def serial_last(items: list[pytest.Item]) -> None:
    """Move the serial tests after all others, keeping each side's order."""
    items[:] = sorted(items, key=lambda item: item.get_closest_marker(SERIAL) is not None)
