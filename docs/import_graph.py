"""The import graph of the `lab` package, drawn with graphviz and checked for cycles.

Reads every module under lab/ with `ast` (nothing is imported or run) and collects the
imports between lab modules: module-level ones (solid edges), lazy ones inside a function
(dashed) and type-only ones under `if TYPE_CHECKING:` (dotted; never executed, so they
take no part in cycles). Writes docs/lab-imports.dot, one cluster per room, and renders
docs/lab-imports.svg with graphviz `dot`. Standard library only.

    python3 docs/import_graph.py            # write the DOT, render the SVG, report cycles
    python3 docs/import_graph.py --no-svg   # write the DOT only
    python3 docs/import_graph.py --check    # write nothing: fail if the DOT or SVG is stale
                                            # or the modules import each other in a cycle

The DOT carries the sha256 of its own text (with the digest itself blanked to zeros) in a
comment and in the graph's `comment` attribute, which graphviz copies into the SVG as an
XML comment: the SVG names the DOT it was drawn from.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import itertools
import re
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "lab"
DOT_PATH = ROOT / "docs" / "lab-imports.dot"
SVG_PATH = ROOT / "docs" / "lab-imports.svg"
REGENERATE = "python3 docs/import_graph.py"

PLACEHOLDER = "0" * 64
DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")


class Kind(IntEnum):
    """How a module imports another; a pair imported several ways keeps the strongest."""

    TYPE_ONLY = 0  # under `if TYPE_CHECKING:`: read by type checkers, never executed
    LAZY = 1  # inside a function: executed when the function first runs
    EAGER = 2  # at module level: executed when the module is imported


STYLE = {Kind.EAGER: "", Kind.LAZY: " [style=dashed]", Kind.TYPE_ONLY: " [style=dotted]"}


@dataclass(frozen=True)
class Graph:
    """Modules by dotted name (packages by their own name) and the imports between them."""

    modules: dict[str, Path]
    edges: dict[tuple[str, str], Kind]

    def runtime(self) -> dict[str, set[str]]:
        """Who imports whom when the code runs: eager and lazy edges, not type-only ones."""
        graph: dict[str, set[str]] = {name: set() for name in self.modules}
        for (src, dst), kind in self.edges.items():
            if kind is not Kind.TYPE_ONLY:
                graph[src].add(dst)
        return graph


def module_name(path: Path, lab: Path) -> str:
    """lab/build/kernel.py -> lab.build.kernel; lab/build/__init__.py -> lab.build."""
    parts = [lab.name, *path.relative_to(lab).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def discover(lab: Path) -> dict[str, Path]:
    """Every module under lab/, by dotted name, sorted."""
    found = {module_name(path, lab): path for path in lab.rglob("*.py")}
    return dict(sorted(found.items()))


class _Collector(ast.NodeVisitor):
    """The lab modules one module imports, each with the strongest way it does."""

    def __init__(self, name: str, package: str, modules: Mapping[str, Path]) -> None:
        self.name = name
        self.package = package
        self.modules = modules
        self.found: dict[str, Kind] = {}
        self._in_function = 0
        self._type_checking = 0

    def _kind(self) -> Kind:
        if self._type_checking:
            return Kind.TYPE_ONLY
        return Kind.LAZY if self._in_function else Kind.EAGER

    def _add(self, target: str | None) -> None:
        if target is None or target == self.name:
            return
        kind = self._kind()
        self.found[target] = max(kind, self.found.get(target, kind))

    def _known(self, dotted: str) -> str | None:
        """The longest prefix of `dotted` that is a lab module."""
        parts = dotted.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in self.modules:
                return candidate
            parts.pop()
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(self._known(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base_parts = self.package.split(".")
            if node.level > 1:
                base_parts = base_parts[: -(node.level - 1)]
            base = ".".join([*base_parts, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            self._add(submodule if submodule in self.modules else self._known(base))

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        # decorators and defaults run at definition time, the body when called
        for expr in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
            if expr is not None:
                self.visit(expr)
        self._in_function += 1
        for stmt in node.body:
            self.visit(stmt)
        self._in_function -= 1

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._type_checking += 1
            for stmt in node.body:
                self.visit(stmt)
            self._type_checking -= 1
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def imports_of(name: str, path: Path, modules: Mapping[str, Path]) -> dict[str, Kind]:
    """The lab modules the module `name` (read from `path`) imports, and how."""
    package = name if is_package(path) else name.rpartition(".")[0]
    collector = _Collector(name, package, modules)
    collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return collector.found


def build_graph(lab: Path = LAB) -> Graph:
    modules = discover(lab)
    edges: dict[tuple[str, str], Kind] = {}
    for name, path in modules.items():
        for target, kind in imports_of(name, path, modules).items():
            edges[(name, target)] = kind
    return Graph(modules, dict(sorted(edges.items())))


# -- cycles --------------------------------------------------------------------------


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components (Tarjan, iterative), each sorted, in sorted order."""
    succ: dict[str, list[str]] = {n: sorted(set(d)) for n, d in graph.items()}
    for targets in list(succ.values()):
        for t in targets:
            succ.setdefault(t, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(succ):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(succ[node]):
                work.append((node, i + 1))
                nxt = succ[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(components)


def _shortest_cycle(start: str, succ: Mapping[str, Iterable[str]], within: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside one component (breadth first)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(succ.get(node, ())):
            if nxt not in within:
                continue
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    raise ValueError(f"{start} is on no cycle")


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Import cycles that between them pass through every module on a cycle.

    In each tangle (strongly connected component), the shortest cycle through its first
    module not yet on a named cycle, until all are. Each cycle is a path that ends where
    it starts, rotated to start at its smallest module; the list is sorted. Empty when the
    graph is acyclic.
    """
    cycles: set[tuple[str, ...]] = set()
    for component in strongly_connected(graph):
        members = set(component)
        if len(component) == 1 and component[0] not in set(graph.get(component[0], ())):
            continue
        covered: set[str] = set()
        for start in component:
            if start in covered:
                continue
            ring = _shortest_cycle(start, graph, members)[:-1]
            covered.update(ring)
            first = ring.index(min(ring))
            ring = ring[first:] + ring[:first]
            cycles.add((*ring, ring[0]))
    return [list(cycle) for cycle in sorted(cycles)]


def describe_cycle(cycle: list[str], edges: Mapping[tuple[str, str], Kind]) -> str:
    """lab.a -> lab.b ~> lab.a, with `~>` for a lazy import."""
    text = cycle[0]
    for src, dst in itertools.pairwise(cycle):
        arrow = "~>" if edges.get((src, dst)) is Kind.LAZY else "->"
        text += f" {arrow} {dst}"
    return text


# -- DOT and SVG ---------------------------------------------------------------------


def _room(name: str, path: Path) -> tuple[str, ...]:
    """The nested packages a module sits in, below lab: lab.build.image.debian -> (build, image).

    Top-level modules (and lab itself) are in the room ().
    """
    package = name if is_package(path) else name.rpartition(".")[0]
    return tuple(package.split(".")[1:])


def _label(name: str, path: Path) -> str:
    return "__init__" if is_package(path) else name.rpartition(".")[2]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cluster_lines(
    room: tuple[str, ...],
    rooms: Mapping[tuple[str, ...], list[str]],
    modules: Mapping[str, Path],
    depth: int,
) -> list[str]:
    pad = "  " * depth
    cluster_id = "cluster_" + ("_".join(room) if room else "toplevel")
    label = "lab/" + "/".join(room) if room else "lab (top-level modules)"
    lines = [
        f"{pad}subgraph {cluster_id} {{",
        f"{pad}  label={_quote(label)};",
    ]
    for name in rooms.get(room, []):
        lines.append(f"{pad}  {_quote(name)} [label={_quote(_label(name, modules[name]))}];")
    if room:  # nested packages sit inside their room; the top level holds only modules
        for child in sorted(r for r in rooms if len(r) == len(room) + 1 and r[:-1] == room):
            lines.extend(_cluster_lines(child, rooms, modules, depth + 1))
    lines.append(f"{pad}}}")
    return lines


def render_dot(graph: Graph) -> str:
    """The DOT text: deterministic, with its own digest in it."""
    rooms: dict[tuple[str, ...], list[str]] = {}
    for name, path in graph.modules.items():
        room = _room(name, path)
        rooms.setdefault(room, []).append(name)
        for depth in range(1, len(room)):  # a package with only subpackages still nests
            rooms.setdefault(room[:depth], [])
    lazy = sum(kind is Kind.LAZY for kind in graph.edges.values())
    typed = sum(kind is Kind.TYPE_ONLY for kind in graph.edges.values())
    lines = [
        f"// The imports between the modules of lab/. Generated by `{REGENERATE}`: do not edit.",
        f"// sha256:{PLACEHOLDER} (of this text with the digest blanked to zeros)",
        f"// {len(graph.modules)} modules, {len(graph.edges)} edges: solid at module level,"
        f" dashed lazy ({lazy}), dotted under TYPE_CHECKING ({typed})",
        "digraph lab_imports {",
        f'  comment="lab-imports.dot sha256:{PLACEHOLDER}";',
        '  label="lab/ imports: solid at module level, dashed inside a function (lazy),'
        ' dotted under TYPE_CHECKING";',
        "  labelloc=t;",
        "  rankdir=TB;",
        '  fontname="Helvetica";',
        '  node [shape=box, style=rounded, fontname="Helvetica", fontsize=11];',
        '  edge [color="#555555", arrowsize=0.7];',
    ]
    lines.extend(_cluster_lines((), rooms, graph.modules, 1))
    for room in sorted(r for r in rooms if len(r) == 1):
        lines.extend(_cluster_lines(room, rooms, graph.modules, 1))
    for (src, dst), kind in sorted(graph.edges.items()):
        lines.append(f"  {_quote(src)} -> {_quote(dst)}{STYLE[kind]};")
    lines.append("}")
    blank = "\n".join(lines) + "\n"
    return blank.replace(PLACEHOLDER, text_digest(blank))


def text_digest(text: str) -> str:
    """The sha256 of a DOT text with any digest in it blanked to zeros."""
    blanked = DIGEST_RE.sub("sha256:" + PLACEHOLDER, text)
    return hashlib.sha256(blanked.encode("utf-8")).hexdigest()


def declared_digest(text: str) -> str | None:
    """The digest a DOT or SVG text names (the first `sha256:<hex>` in it)."""
    match = DIGEST_RE.search(text)
    return match.group(1) if match else None


def render_svg(dot_text: str, dot: str) -> str:
    done = subprocess.run(
        [dot, "-Tsvg"], input=dot_text, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{dot} -Tsvg failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


# -- the command ---------------------------------------------------------------------


def _summary(graph: Graph) -> str:
    lazy = sum(kind is Kind.LAZY for kind in graph.edges.values())
    typed = sum(kind is Kind.TYPE_ONLY for kind in graph.edges.values())
    return (
        f"{len(graph.modules)} modules, {len(graph.edges)} edges"
        f" ({lazy} lazy, {typed} type-only)"
    )


def _cycle_report(graph: Graph) -> list[str]:
    return [describe_cycle(c, graph.edges) for c in find_cycles(graph.runtime())]


def check(graph: Graph, dot_path: Path = DOT_PATH, svg_path: Path = SVG_PATH) -> list[str]:
    """What is wrong: a stale DOT, an SVG not drawn from it, import cycles. Empty if nothing."""
    problems: list[str] = []
    expected = render_dot(graph)
    if not dot_path.exists() or dot_path.read_text(encoding="utf-8") != expected:
        problems.append(f"{dot_path.name} is not current: run `{REGENERATE}`")
    digest = declared_digest(expected)
    if not svg_path.exists() or declared_digest(svg_path.read_text(encoding="utf-8")) != digest:
        problems.append(f"{svg_path.name} is not drawn from the current DOT: run `{REGENERATE}`")
    for cycle in _cycle_report(graph):
        problems.append(f"import cycle: {cycle}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Draw the imports between lab/ modules (docs/lab-imports.dot and .svg)"
        " and report import cycles (`~>` marks a lazy import).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the DOT or SVG is stale or there is an import cycle",
    )
    mode.add_argument(
        "--no-svg", action="store_true", help="write the DOT only; do not run graphviz"
    )
    args = parser.parse_args(argv)

    graph = build_graph()
    print(f"lab/: {_summary(graph)}")
    if args.check:
        problems = check(graph)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0

    dot_text = render_dot(graph)
    if not DOT_PATH.exists() or DOT_PATH.read_text(encoding="utf-8") != dot_text:
        DOT_PATH.write_text(dot_text, encoding="utf-8")
        print(f"wrote {DOT_PATH.relative_to(ROOT)}")
    status = 0
    if not args.no_svg:
        svg_current = SVG_PATH.exists() and declared_digest(
            SVG_PATH.read_text(encoding="utf-8")
        ) == declared_digest(dot_text)
        dot = shutil.which("dot")
        if svg_current:
            pass
        elif dot is None:
            print(
                f"graphviz `dot` is not on PATH: {SVG_PATH.relative_to(ROOT)} not rendered"
                " (install graphviz, or pass --no-svg to write the DOT only)",
                file=sys.stderr,
            )
            status = 2
        else:
            SVG_PATH.write_text(render_svg(dot_text, dot), encoding="utf-8")
            print(f"wrote {SVG_PATH.relative_to(ROOT)}")
    for cycle in _cycle_report(graph):
        print(f"warning: import cycle: {cycle}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
