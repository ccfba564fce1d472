"""Which tests use the lab, and which share a guest: what keeps the plugin inert in runs
that do not use it, and what keeps a class or module of tests on one xdist worker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

# The plugin's fixtures (and the node parameter it adds): a test that requests one of
# them, directly or through its own fixtures, uses the lab.
LAB_FIXTURES = frozenset({"lab_session", "lab", "node_name", "node", "guest", "host", "reboot",
                          "vrhp_builds", "vrhp_variant", "vrhp", "fragmenter", "fragmented"})
# Those that stand for a booted guest; lab_session and node_name are only configuration.
GUEST_FIXTURES = LAB_FIXTURES - {"lab_session", "node_name"}
# Fixture scope -> the collector whose tests share one instance, widest first.
SHARED_SCOPES: tuple[tuple[str, type[pytest.Collector]], ...] = (
    ("package", pytest.Package), ("module", pytest.Module), ("class", pytest.Class))


def uses_lab(item: pytest.Item) -> bool:
    """Whether `item` requests a lab fixture (its closure, known at collection) or is
    marked `lab`."""
    return (item.get_closest_marker("lab") is not None
            or not LAB_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())))


def _fixturedefs(item: pytest.Item) -> Mapping[str, Sequence[Any]]:
    info = getattr(item, "_fixtureinfo", None)
    return getattr(info, "name2fixturedefs", {}) if info is not None else {}


def _holds_guest(name: str, defs: Mapping[str, Sequence[Any]], seen: set[str]) -> bool:
    """Whether fixture `name` is, or depends on, a fixture standing for a booted guest."""
    if name in GUEST_FIXTURES:
        return True
    if name in seen or not defs.get(name):
        return False
    seen.add(name)
    return any(_holds_guest(arg, defs, seen) for arg in defs[name][-1].argnames)


def _shared_params(item: pytest.Item, defs: Mapping[str, Sequence[Any]]) -> str:
    """The parameters of `item` that fixtures wider than a test take ("" for none): each
    of their values has instances of its own, which the tests with other values do not
    share."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return ""
    shared = [f"{name}={_param(callspec, name)}" for name in sorted(callspec.params)
              if defs.get(name) and defs[name][-1].scope != "function"]
    return f"[{','.join(shared)}]" if shared else ""


def _param(callspec: Any, name: str) -> str:
    """A plain value as it is (a node name); another by its index in its parameters."""
    value = callspec.params[name]
    plain = isinstance(value, str | int | float | bool) or value is None
    return str(value) if plain else f"#{callspec.indices[name]}"


def guest_sharing_scope(item: pytest.Item) -> str | None:
    """The group of tests that share, with `item`, a class-, module- or package-scoped
    fixture holding a guest (the suites' class_module, the upgrade suite's upgrade_times):
    the node id of the widest such scope, with the parameters of wider fixtures
    (`suites/test_sizing.py::TestSizing[node_name=0,sized=2]`); None when it shares none."""
    defs = _fixturedefs(item)
    scopes = {defs[name][-1].scope for name in getattr(item, "fixturenames", ())
              if name not in GUEST_FIXTURES and defs.get(name)
              and _holds_guest(name, defs, set())}
    for scope, collector in SHARED_SCOPES:
        if scope in scopes:
            # a class-scoped fixture of a test outside any class lives as long as its module
            parent = item.getparent(collector) or item.getparent(pytest.Module)
            if parent is not None:
                return parent.nodeid + _shared_params(item, defs)
    return None
