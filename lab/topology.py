"""Topology files: the schema, loading and validation.

Every error names the file, the node and the field, and says what was expected.
Impossible combinations are refused here, before anything boots.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

from lab import fields
from lab.build import kernelspec
from lab.errors import TopologyError

GIB = 1024**3
MIB = 1024**2

NODE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
TOPOLOGY_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
SIZE = re.compile(r"^(\d+)\s*([KMG]i?B?|)$", re.IGNORECASE)
ALLOWED_URIS = ("qemu:///system", "qemu:///session")
KERNEL_FORMS = ("'debian:SERIES' or 'debian:SERIES-FLAVOUR' (e.g. 'debian:6.1', "
                "'debian:6.12-rt'), an exact Debian release (e.g. "
                "'debian:6.12.117+deb12-rt-amd64'), 'local:DIR' or {path: DIR}")
ACCELS = ("auto", "tcg", "kvm")
IMAGES = ("minimal", "debian")
BACKINGS = ("none", "hugepages-1G")
PAGE_SIZES = {"1G": GIB, "2M": 2 * MIB}
MAX_VCPUS = 16
MIN_MEMORY = 256 * MIB
MAX_MEMORY = 64 * GIB
MAX_NODES = 8

NODE_KEYS = {"name", "vcpus", "memory", "hugepages", "image", "kernel", "cmdline", "accel",
             "uri", "backing"}
TOP_KEYS = {"name", "description", "defaults", "nodes"}
DEFAULT_KEYS = NODE_KEYS - {"name"}

T = TypeVar("T")


@dataclass(frozen=True)
class HugePages:
    size: str  # "1G" or "2M"
    count: int

    @property
    def size_bytes(self) -> int:
        return PAGE_SIZES[self.size]

    @property
    def size_kib(self) -> int:
        return self.size_bytes // 1024

    @property
    def mount(self) -> str:
        """Where `vrhp-agent setup` mounts this pool's hugetlbfs (it picks 1G, else 2M)."""
        return f"/dev/hugepages{self.size}"

    def pages_for(self, nbytes: int) -> int:
        """Pages of this size a file of `nbytes` takes."""
        return -(-nbytes // self.size_bytes)


@dataclass(frozen=True)
class Node:
    name: str
    vcpus: int
    memory: int  # bytes
    hugepages: HugePages | None
    image: str
    kernel: str
    cmdline: str
    accel: str
    uri: str
    backing: str

    @property
    def memory_mib(self) -> int:
        return self.memory // MIB


@dataclass(frozen=True)
class Topology:
    name: str
    path: Path
    nodes: tuple[Node, ...]
    description: str = ""

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise TopologyError(f"{self.path}: no node named {name!r} (nodes: {known})")


def parse_size(value: object, where: str) -> int:
    """'3G', '3072M', '512MiB' or an integer number of MiB -> bytes."""
    if isinstance(value, bool):
        raise TopologyError(f"{where} must be a size like '3G' or '512M', got {value!r}")
    if isinstance(value, int):
        return value * MIB
    if not isinstance(value, str):
        raise TopologyError(f"{where} must be a size like '3G' or '512M', got {value!r}")
    match = SIZE.match(value.strip())
    if not match:
        raise TopologyError(f"{where} must be a size like '3G' or '512M', got {value!r}")
    number, unit = int(match.group(1)), match.group(2).upper()[:1]
    return number * {"": MIB, "K": 1024, "M": MIB, "G": GIB}[unit]


def max_gigantic_pages(memory: int) -> int:
    """1 GiB pages a guest of this size can reserve at boot on machine type pc.

    A page needs a free 1 GiB-aligned range: the kernel sits in the first GiB and
    the PCI hole takes the last below 4 GiB (measured: 3-4 GiB -> 1 page, 5 GiB -> 2).
    """
    gib = memory // GIB
    if gib >= 5:
        return gib - 3
    return 1 if gib >= 3 else 0


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, flattened later
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                raise yaml.constructor.ConstructorError(
                    None, None, f"a mapping key must be a plain value, got {key!r}",
                    key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Checker:
    """Reads one mapping of a topology file and reports errors with their location."""

    def __init__(self, path: Path, where: str, data: object, allowed: set[str],
                 prefix: str = "") -> None:
        self.path, self.where, self.prefix = path, where, prefix
        if not isinstance(data, dict):
            self.fail("", f"must be a mapping, got {type(data).__name__}")
        self.data: dict[str, Any] = data
        unknown = sorted(str(k) for k in self.data if k not in allowed)
        if unknown:
            self.fail(unknown[0], f"is not a known field (known: {', '.join(sorted(allowed))})")

    def fail(self, key: str, message: str) -> NoReturn:
        location = f"{self.path}: {self.where}" if self.where else f"{self.path}:"
        field_name = f"{self.prefix}{key}" if key else self.prefix.rstrip(".")
        subject = f" {field_name}" if field_name else ""
        raise TopologyError(f"{location}{subject} {message}")

    def read(self, reader: Callable[..., T], key: str, *args: Any, **kwargs: Any) -> T:
        """``reader(self.data, key, ...)`` of lab.fields, its error reworded for this file."""
        try:
            return reader(self.data, key, self.where, *args, **kwargs)
        except fields.FieldError as exc:
            self.fail(key, exc.problem)


def _hugepages(check: _Checker, value: object) -> HugePages | None:
    if value is None:
        return None
    sub = _Checker(check.path, check.where, value, {"size", "count"}, prefix="hugepages.")
    size = sub.read(fields.choice, "size", tuple(PAGE_SIZES), default="1G")
    count = sub.read(fields.integer, "count", low=1, default=1)
    return HugePages(size=size, count=count)


def kernel_spec(value: object, base: Path) -> str | None:
    """The spec a kernel field or option gives, a local DIR made absolute against `base`;
    None if it is not one in form."""
    if isinstance(value, dict) and set(value) == {"path"}:
        value = f"{kernelspec.LOCAL}{value['path']}" if isinstance(value["path"], str) else None
    if not isinstance(value, str) or not kernelspec.spec_is_valid(value):
        return None
    if value.startswith(kernelspec.LOCAL):
        return kernelspec.local_spec(value.removeprefix(kernelspec.LOCAL), base)
    return value


def _kernel(check: _Checker, value: object) -> str:
    spec = kernel_spec(value, check.path.parent)
    if spec is None:
        check.fail("kernel", f"must be {KERNEL_FORMS}, got {value!r}")
    return spec


def _node(path: Path, index: int, raw: object, defaults: dict[str, Any],
          overrides: dict[str, Any]) -> Node:
    name_hint = raw.get("name") if isinstance(raw, dict) else None
    where = f"node {name_hint!r}:" if isinstance(name_hint, str) else f"nodes[{index}]:"
    merged = {**defaults, **raw, **overrides} if isinstance(raw, dict) else raw
    check = _Checker(path, where, merged, NODE_KEYS)
    data = check.data
    name = data.get("name")
    if not isinstance(name, str) or not NODE_NAME.match(name):
        check.fail("name", "must match [a-z][a-z0-9-]{0,15} (it names a libvirt domain and "
                   f"files), got {name!r}")
    memory = parse_size(data.get("memory", "3G"), f"{path}: {where} memory")
    if not MIN_MEMORY <= memory <= MAX_MEMORY:
        check.fail("memory", f"must be between 256M and 64G, got {memory // MIB}M")
    hugepages = _hugepages(check, data.get("hugepages"))
    if hugepages is not None:
        pool = hugepages.count * hugepages.size_bytes
        if hugepages.size == "1G" and hugepages.count > max_gigantic_pages(memory):
            check.fail("hugepages.count", f"asks for {hugepages.count} x 1G but a "
                       f"{memory // MIB}M guest can reserve at most "
                       f"{max_gigantic_pages(memory)} (each needs a free 1 GiB-aligned "
                       "range outside the first GiB and the PCI hole)")
        if pool > memory - 512 * MIB:
            check.fail("hugepages.count", f"pool of {pool // MIB}M leaves less than 512M "
                       f"of the node's {memory // MIB}M for the kernel")
    cmdline = data.get("cmdline", "")
    if not isinstance(cmdline, str) or any(c in cmdline for c in "\n\r\0'\"<>&"):
        check.fail("cmdline", f"must be one line of kernel arguments without quotes, got "
                   f"{cmdline!r}")
    backing = check.read(fields.choice, "backing", BACKINGS, default="none")
    if backing == "hugepages-1G" and memory % GIB:
        check.fail("backing", f"hugepages-1G needs memory in whole GiB, got {memory // MIB}M")
    return Node(
        name=name,
        vcpus=check.read(fields.integer, "vcpus", low=1, high=MAX_VCPUS, default=1),
        memory=memory,
        hugepages=hugepages,
        image=check.read(fields.choice, "image", IMAGES, default="minimal"),
        kernel=_kernel(check, data.get("kernel", "debian:6.1")),
        cmdline=cmdline.strip(),
        accel=check.read(fields.choice, "accel", ACCELS, default="auto"),
        uri=check.read(fields.choice, "uri", ALLOWED_URIS, default="qemu:///system"),
        backing=backing,
    )


def parse(text: str, path: Path, overrides: dict[str, Any] | None = None) -> Topology:
    """Validate a topology document. `overrides` (e.g. the kernel) win over every node's
    own value and the defaults."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise TopologyError(f"{path}:{line} is not valid YAML: "
                            f"{getattr(exc, 'problem', exc)}") from None
    overrides = dict(overrides or {})
    if "kernel" in overrides:
        spec = kernel_spec(overrides["kernel"], Path.cwd())
        if spec is None:
            raise TopologyError(f"kernel override (--kernel) must be {KERNEL_FORMS}, got "
                                f"{overrides['kernel']!r}")
        overrides["kernel"] = spec
    top = _Checker(path, "", raw, TOP_KEYS)
    name = top.data.get("name", path.stem)
    if not isinstance(name, str) or not TOPOLOGY_NAME.match(name):
        top.fail("name", f"must match [a-z][a-z0-9_-]{{0,31}}, got {name!r}")
    defaults_raw = top.data.get("defaults") or {}
    _Checker(path, "defaults:", defaults_raw, DEFAULT_KEYS)
    defaults = dict(defaults_raw)
    nodes_raw = top.data.get("nodes")
    if not isinstance(nodes_raw, list) or not nodes_raw:
        top.fail("nodes", "must be a non-empty list of nodes")
    if len(nodes_raw) > MAX_NODES:
        top.fail("nodes", f"has {len(nodes_raw)} entries; at most {MAX_NODES} are supported")
    nodes = tuple(_node(path, i, raw_node, defaults, overrides)
                  for i, raw_node in enumerate(nodes_raw))
    seen: set[str] = set()
    for node in nodes:
        if node.name in seen:
            raise TopologyError(f"{path}: node {node.name!r}: name is used twice")
        seen.add(node.name)
    description = top.data.get("description", "")
    return Topology(name=name, path=path, nodes=nodes, description=str(description))


def load(path: Path | str, overrides: dict[str, Any] | None = None) -> Topology:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read topology file: {exc.strerror}") from None
    return parse(text, path, overrides)
