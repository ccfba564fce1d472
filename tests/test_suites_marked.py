"""Every test of the qualification suites carries the `lab` marker: the lab's safety net
(pytest-timeout, scaled) is given to marked tests only, and `-m "not lab"` must leave out
every test that boots a guest."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SUITES = Path(__file__).resolve().parent.parent / "suites"


def _marks_lab(node: ast.expr) -> bool:
    return "mark.lab" in ast.unparse(node)


def unmarked_tests(source: str) -> list[str]:
    """The test functions and methods of a module that no `lab` marker reaches: not the
    module's `pytestmark`, not their class's decorators, not their own."""
    tree = ast.parse(source)
    if any(isinstance(stmt, ast.Assign)
           and any(isinstance(target, ast.Name) and target.id == "pytestmark"
                   for target in stmt.targets)
           and _marks_lab(stmt.value) for stmt in tree.body):
        return []
    found = []
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name.startswith("test"):
            if not any(_marks_lab(d) for d in stmt.decorator_list):
                found.append(stmt.name)
        elif isinstance(stmt, ast.ClassDef) and stmt.name.startswith("Test"):
            if any(_marks_lab(d) for d in stmt.decorator_list):
                continue
            found += [f"{stmt.name}.{m.name}" for m in stmt.body
                      if isinstance(m, ast.FunctionDef) and m.name.startswith("test")
                      and not any(_marks_lab(d) for d in m.decorator_list)]
    return found


@pytest.mark.parametrize("suite", sorted(p.name for p in SUITES.glob("test_*.py")))
def test_every_suite_test_carries_the_lab_marker(suite: str) -> None:
    missing = unmarked_tests((SUITES / suite).read_text())
    assert not missing, f"suites/{suite}: tests without the lab marker: {', '.join(missing)}"


def test_an_unmarked_test_is_found() -> None:
    source = ("import pytest\n\n@pytest.mark.lab\ndef test_a():\n    pass\n\n"
              "def test_b():\n    pass\n\nclass TestC:\n    def test_d(self):\n        pass\n")
    assert unmarked_tests(source) == ["test_b", "TestC.test_d"]
