"""docs/import_graph.py: the committed import graph is current; lab/ modules say what they are."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(DOCS))

import import_graph  # noqa: E402
from import_graph import Kind, find_cycles  # noqa: E402

LAB = import_graph.LAB
REGENERATE = "python3 docs/import_graph.py"


# -- the committed graph ---------------------------------------------------------------


def test_the_graph_is_current() -> None:
    expected = import_graph.render_dot(import_graph.build_graph(LAB))
    committed = import_graph.DOT_PATH.read_text(encoding="utf-8")
    assert committed == expected, (
        f"docs/lab-imports.dot does not match lab/: run `{REGENERATE}` and commit the result"
    )


def test_the_dot_carries_its_own_digest() -> None:
    text = import_graph.DOT_PATH.read_text(encoding="utf-8")
    assert import_graph.declared_digest(text) == import_graph.text_digest(text)


def test_the_svg_is_drawn_from_the_committed_dot() -> None:
    dot_digest = import_graph.declared_digest(import_graph.DOT_PATH.read_text(encoding="utf-8"))
    svg = import_graph.SVG_PATH.read_text(encoding="utf-8")
    assert dot_digest is not None
    assert f"sha256:{dot_digest}" in svg, (
        f"docs/lab-imports.svg was not rendered from docs/lab-imports.dot: run `{REGENERATE}`"
    )


def test_the_digest_changes_with_the_graph() -> None:
    text = import_graph.DOT_PATH.read_text(encoding="utf-8")
    changed = text.replace("}\n", '  "lab.x" -> "lab.y";\n}\n')
    assert import_graph.text_digest(changed) != import_graph.declared_digest(text)


def test_lab_has_no_import_cycles() -> None:
    graph = import_graph.build_graph(LAB)
    cycles = [import_graph.describe_cycle(c, graph.edges) for c in find_cycles(graph.runtime())]
    assert cycles == []


# -- reading imports -------------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    lab = tmp_path / "lab"
    for name, text in files.items():
        path = lab / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return lab


def test_imports_of_every_form_are_found(tmp_path: Path) -> None:
    lab = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "topology.py": "",
            "shell.py": "",
            "room/__init__.py": "from . import a\n",
            "room/a.py": (
                "import os\n"
                "import lab.errors\n"
                "from lab import topology as topologies\n"
                "from lab.shell import run\n"
                "from .b import thing\n"
                "from lab.room import b, missing\n"
                "from lab import __version__\n"
            ),
            "room/b.py": "from .. import shell\n",
        },
    )
    graph = import_graph.build_graph(lab)
    assert set(graph.modules) == {
        "lab", "lab.errors", "lab.topology", "lab.shell", "lab.room", "lab.room.a", "lab.room.b",
    }  # fmt: skip
    assert graph.edges == {
        ("lab.room", "lab.room.a"): Kind.EAGER,
        ("lab.room.a", "lab"): Kind.EAGER,
        ("lab.room.a", "lab.errors"): Kind.EAGER,
        ("lab.room.a", "lab.room"): Kind.EAGER,  # `missing` is no module: the package
        ("lab.room.a", "lab.room.b"): Kind.EAGER,
        ("lab.room.a", "lab.shell"): Kind.EAGER,
        ("lab.room.a", "lab.topology"): Kind.EAGER,
        ("lab.room.b", "lab.shell"): Kind.EAGER,
    }


def test_lazy_and_type_only_imports_are_told_apart(tmp_path: Path) -> None:
    lab = _tree(
        tmp_path,
        {
            "a.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    from lab import t\n"
                "else:\n"
                "    from lab import e\n"
                "def f() -> None:\n"
                "    from lab import lz\n"
                "class C:\n"
                "    from lab import c\n"
                "    async def m(self) -> None:\n"
                "        import lab.both\n"
                "from lab import both\n"
            ),
            **{f"{m}.py": "" for m in ("t", "e", "lz", "c", "both")},
        },
    )
    edges = import_graph.build_graph(lab).edges
    assert edges == {
        ("lab.a", "lab.both"): Kind.EAGER,  # lazy once, eager once: eager
        ("lab.a", "lab.c"): Kind.EAGER,  # a class body runs at import
        ("lab.a", "lab.e"): Kind.EAGER,
        ("lab.a", "lab.lz"): Kind.LAZY,
        ("lab.a", "lab.t"): Kind.TYPE_ONLY,
    }
    assert import_graph.build_graph(lab).runtime()["lab.a"] == {
        "lab.both", "lab.c", "lab.e", "lab.lz",
    }  # fmt: skip


def test_the_dot_is_deterministic_and_styled(tmp_path: Path) -> None:
    lab = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "top.py": "def f() -> None:\n    from lab.room import a\n",
            "room/__init__.py": '"""A room."""\n',
            "room/a.py": "from lab import top\n",
            "room/inner/__init__.py": "",
            "room/inner/deep.py": "from lab.room import a\n",
        },
    )
    first = import_graph.render_dot(import_graph.build_graph(lab))
    assert first == import_graph.render_dot(import_graph.build_graph(lab))
    assert '"lab.top" -> "lab.room.a" [style=dashed];' in first
    assert '"lab.room.a" -> "lab.top";' in first
    assert "subgraph cluster_toplevel {" in first
    # the nested package is drawn inside its room
    room = first.index("subgraph cluster_room {")
    inner = first.index("subgraph cluster_room_inner {")
    assert room < inner < first.index('"lab.room.inner.deep"')
    assert import_graph.declared_digest(first) == import_graph.text_digest(first)


def test_check_names_a_stale_graph_and_the_cycle(tmp_path: Path) -> None:
    lab = _tree(tmp_path, {"a.py": "from lab import b\n", "b.py": "def f() -> None:\n"
                           "    from lab import a\n"})  # fmt: skip
    graph = import_graph.build_graph(lab)
    dot, svg = tmp_path / "g.dot", tmp_path / "g.svg"
    problems = import_graph.check(graph, dot, svg)
    assert problems == [
        f"g.dot is not current: run `{REGENERATE}`",
        f"g.svg is not drawn from the current DOT: run `{REGENERATE}`",
        "import cycle: lab.a -> lab.b ~> lab.a",
    ]
    text = import_graph.render_dot(graph)
    dot.write_text(text, encoding="utf-8")
    svg.write_text(f"<svg><!-- sha256:{import_graph.declared_digest(text)} --></svg>")
    assert import_graph.check(graph, dot, svg) == ["import cycle: lab.a -> lab.b ~> lab.a"]


# -- cycles on synthetic graphs --------------------------------------------------------


def test_an_acyclic_graph_has_no_cycles() -> None:
    assert find_cycles({"a": ["b", "c"], "b": ["c"], "c": [], "d": ["a"]}) == []
    assert find_cycles({}) == []


def test_a_self_import_is_a_cycle() -> None:
    assert find_cycles({"a": ["a"], "b": ["a"]}) == [["a", "a"]]


def test_a_two_module_cycle_starts_at_its_smallest_module() -> None:
    assert find_cycles({"z": ["m"], "m": ["z"], "x": ["m"]}) == [["m", "z", "m"]]


def test_a_longer_cycle_is_named_in_order() -> None:
    graph = {"c": ["a"], "a": ["b"], "b": ["c"], "d": ["a"], "a2": []}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]


def test_every_module_in_a_tangle_is_on_a_named_cycle() -> None:
    # the shape of lab.build: kernel lazily imports two modules that import it back
    graph = {
        "kernel": ["debugkernel", "kconfig", "localkernel"],
        "debugkernel": ["kernel"],
        "localkernel": ["kconfig", "kernel"],
        "kconfig": [],
    }
    assert find_cycles(graph) == [
        ["debugkernel", "kernel", "debugkernel"],
        ["kernel", "localkernel", "kernel"],
    ]


def test_separate_cycles_are_all_named() -> None:
    graph = {"a": ["b"], "b": ["a", "c"], "c": ["d"], "d": ["c"], "e": ["e2"], "e2": []}
    assert find_cycles(graph) == [["a", "b", "a"], ["c", "d", "c"]]


def test_targets_that_are_not_keys_are_nodes_too() -> None:
    assert find_cycles({"a": ["outside"]}) == []
    assert import_graph.strongly_connected({"a": ["b"], "b": ["a"]}) == [["a", "b"]]


def test_a_long_chain_needs_no_recursion() -> None:
    n = 5000
    graph = {f"m{i:05}": [f"m{i + 1:05}"] for i in range(n)}
    assert find_cycles(graph) == []
    graph[f"m{n:05}"] = ["m00000"]
    (cycle,) = find_cycles(graph)
    assert len(cycle) == n + 2 and cycle[0] == cycle[-1] == "m00000"


def test_a_cycle_names_its_lazy_imports() -> None:
    edges = {("a", "b"): Kind.EAGER, ("b", "a"): Kind.LAZY}
    assert import_graph.describe_cycle(["a", "b", "a"], edges) == "a -> b ~> a"


# -- docstrings --------------------------------------------------------------------------


def _lab_files() -> list[Path]:
    return sorted(LAB.rglob("*.py"))


@pytest.mark.parametrize("path", _lab_files(), ids=lambda p: str(p.relative_to(LAB.parent)))
def test_every_module_opens_with_a_docstring(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree)
    assert docstring, f"{path.relative_to(LAB.parent)} does not open with a docstring"


def test_every_directory_of_modules_is_a_package() -> None:
    directories = {path.parent for path in _lab_files()}
    missing = sorted(str(d.relative_to(LAB.parent)) for d in directories
                     if not (d / "__init__.py").exists())  # fmt: skip
    assert missing == [], f"no __init__.py (a room says its job there): {missing}"


@pytest.mark.parametrize(
    "path",
    [p for p in _lab_files() if p.name == "__init__.py" and p.parent != LAB],
    ids=lambda p: str(p.parent.relative_to(LAB.parent)),
)
def test_every_room_states_its_one_job(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    room = path.parent.relative_to(LAB.parent)
    # one short paragraph, a sentence or two: the room's job, not an inventory
    assert docstring.endswith("."), f"{room}: the docstring should say the room's job"
    assert "\n\n" not in docstring, f"{room}: the room's job in one paragraph"
    assert docstring.count(". ") <= 1, f"{room}: the room's job in a sentence or two"
    assert 40 <= len(docstring) <= 300, f"{room}: the room's job in a sentence or two"
