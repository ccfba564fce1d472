from __future__ import annotations

from pathlib import Path

import pytest

from lab import topology
from lab.errors import TopologyError

ROOT = Path(__file__).resolve().parent.parent
GOOD = """
name: t
nodes:
  - name: cn1
    memory: 3G
    hugepages: {size: 1G, count: 1}
"""


def parse(text: str) -> topology.Topology:
    return topology.parse(text, Path("t.yaml"))


@pytest.mark.parametrize("path", sorted((ROOT / "topologies").glob("*.yaml")),
                         ids=lambda path: path.stem)
def test_shipped_topologies_load(path: Path) -> None:
    topo = topology.load(path)
    assert topo.nodes


def test_defaults_and_sizes() -> None:
    node = parse(GOOD).nodes[0]
    assert node.memory == 3 * topology.GIB
    assert node.kernel == "debian:6.1"
    assert node.uri == "qemu:///system"
    assert node.accel == "auto"
    assert node.hugepages == topology.HugePages("1G", 1)
    assert node.hugepages.size_kib == 1048576


def test_defaults_section_and_override() -> None:
    text = "nodes: [{name: a}, {name: b, kernel: 'debian:6.12'}]\ndefaults: {memory: 4G}\n"
    topo = topology.parse(text, Path("p.yaml"), {"kernel": "debian:6.12"})
    assert [n.memory for n in topo.nodes] == [4 * topology.GIB] * 2
    assert {n.kernel for n in topo.nodes} == {"debian:6.12"}


def test_kernel_override_wins_over_a_node_s_own_kernel() -> None:
    text = "nodes: [{name: a, kernel: 'debian:6.1'}, {name: b}]\n"
    topo = topology.parse(text, Path("p.yaml"), {"kernel": "debian:6.12"})
    assert [n.kernel for n in topo.nodes] == ["debian:6.12", "debian:6.12"]
    with pytest.raises(TopologyError, match=r"kernel override \(--kernel\) must be"):
        topology.parse(text, Path("p.yaml"), {"kernel": "debian:latest"})


@pytest.mark.parametrize("spec", ["debian:6.1", "debian:6.12-rt", "debian:6.1-cloud",
                                  "debian:6.1.0-57-cloud-amd64", "debian:6.12.117+deb12-rt-amd64",
                                  "debian:5.10"])
def test_kernel_specs_in_form_are_left_to_resolution(spec: str) -> None:
    assert parse(f"nodes: [{{name: cn1, kernel: '{spec}'}}]").nodes[0].kernel == spec


def test_local_kernels_are_made_absolute_against_the_topology_file(tmp_path: Path) -> None:
    text = ("defaults: {kernel: {path: ../kernels/build}}\n"
            "nodes: [{name: a}, {name: b, kernel: 'local:/srv/linux'},\n"
            "        {name: c, kernel: 'local:x'}]")
    topo = topology.parse(text, tmp_path / "topologies" / "t.yaml")
    assert [n.kernel for n in topo.nodes] == [f"local:{tmp_path / 'kernels' / 'build'}",
                                              "local:/srv/linux",
                                              f"local:{tmp_path / 'topologies' / 'x'}"]


def test_local_kernel_override_is_made_absolute_against_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    topo = topology.parse("nodes: [{name: a, kernel: 'debian:6.1'}]", Path("/t/p.yaml"),
                          {"kernel": "local:linux"})
    assert topo.nodes[0].kernel == f"local:{tmp_path / 'linux'}"


def test_anchors_and_merge_keys_still_load() -> None:
    text = ("base: &base {vcpus: 1, memory: 5G, hugepages: {size: 1G, count: 2}}\n"
            "nodes:\n- {<<: *base, name: a}\n- {<<: *base, name: b, vcpus: 2}\n")
    topo = topology.parse(text.replace("base: &base", "defaults: &base"), Path("p.yaml"))
    assert [(n.name, n.vcpus, n.hugepages.count if n.hugepages else 0) for n in topo.nodes] == [
        ("a", 1, 2), ("b", 2, 2)]


def test_unhashable_key_is_one_clear_line() -> None:
    with pytest.raises(TopologyError, match="line 1 is not valid YAML: a mapping key must be"):
        topology.parse("{[a]: 1}\n", Path("p.yaml"))


@pytest.mark.parametrize(("text", "message"), [
    ("nodes: [{name: cn1, hugepages: {size: 1G, count: 0}}]",
     "t.yaml: node 'cn1': hugepages.count must be >= 1, got 0"),
    ("nodes: [{name: cn1, hugepages: {size: 4K}}]",
     "t.yaml: node 'cn1': hugepages.size must be one of 1G, 2M, got '4K'"),
    ("nodes: [{name: cn1, memory: 3G, hugepages: {size: 1G, count: 2}}]",
     "hugepages.count asks for 2 x 1G but a 3072M guest can reserve at most 1"),
    ("nodes: [{name: cn1, memory: 1G, hugepages: {size: 2M, count: 400}}]",
     "pool of 800M leaves less than 512M"),
    ("nodes: [{name: cn1, colour: red}]", "t.yaml: node 'cn1': colour is not a known field"),
    ("nodes: [{name: cn1, hugepages: {size: 1G, cnt: 1}}]", "hugepages.cnt is not a known"),
    ("nodes: [{name: ../etc}]", "node '../etc': name must match"),
    ("nodes: [{name: 'a b; rm -rf /'}]", "name must match"),
    ("nodes: [{name: cn1, vcpus: many}]", "vcpus must be an integer, got 'many'"),
    ("nodes: [{name: cn1, vcpus: 1000}]", "vcpus must be between 1 and 16, got 1000"),
    ("nodes: [{name: cn1, memory: 99999999G}]", "memory must be between 256M and 64G"),
    ("nodes: [{name: cn1, memory: lots}]", "memory must be a size like '3G'"),
    ("nodes: [{name: cn1, uri: 'qemu+ssh://evil/system'}]", "uri must be one of"),
    ("nodes: [{name: cn1, accel: hvf}]", "accel must be one of auto, tcg, kvm"),
    ("nodes: [{name: cn1, kernel: 'debian:latest'}]", "kernel must be 'debian:SERIES'"),
    ("nodes: [{name: cn1, kernel: 'debian:6.12-rt;reboot'}]", "kernel must be 'debian:SERIES'"),
    ("nodes: [{name: cn1, kernel: 6.1}]", "kernel must be 'debian:SERIES'"),
    ("nodes: [{name: cn1, cmdline: \"a'b\"}]", "cmdline must be one line"),
    ("nodes: [{name: cn1, module: {flow_entries: 1}}]", "module is not a known field"),
    ("nodes: [{name: cn1}, {name: cn1}]", "node 'cn1': name is used twice"),
    ("nodes: []", "nodes must be a non-empty list"),
    ("- just a list", "t.yaml: must be a mapping, got list"),
    ("nodes: [{name: cn1}]\nextra: 1", "t.yaml: extra is not a known field"),
    ("nodes: [{name: cn1\n", "t.yaml: line"),
    ("nodes: [5]", "nodes[0]: must be a mapping, got int"),
])
def test_invalid_topology_gets_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"nope\.yaml: cannot read topology file"):
        topology.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("gib", "pages"), [(2, 0), (3, 1), (4, 1), (5, 2), (8, 5)])
def test_gigantic_page_capacity(gib: int, pages: int) -> None:
    assert topology.max_gigantic_pages(gib * topology.GIB) == pages


def test_unknown_node_lookup_lists_nodes() -> None:
    with pytest.raises(TopologyError, match=r"no node named 'x' \(nodes: cn1\)"):
        parse(GOOD).node("x")


@pytest.mark.parametrize(("name", "size", "page", "kib", "count", "mount", "flow_pages"), [
    ("single", "1G", topology.GIB, 1048576, 2, "/dev/hugepages1G", 1),
    ("single-2m", "2M", 2 * topology.MIB, 2048, 128, "/dev/hugepages2M", 77),
])
def test_pool_of_a_shipped_node(name: str, size: str, page: int, kib: int, count: int,
                                mount: str, flow_pages: int) -> None:
    """What the suites' hugepool fixture hands a test: the node's pool, its page bytes,
    the agent's mount for it, and the pages a file takes (the default flow table here)."""
    from lab.dut import sizing
    pool = topology.load(ROOT / "topologies" / f"{name}.yaml").nodes[0].hugepages
    assert pool is not None
    assert (pool.size, pool.size_bytes, pool.size_kib, pool.count, pool.mount) == (
        size, page, kib, count, mount)
    assert pool.pages_for(sizing.flow_sizes().file_bytes) == flow_pages
    assert (pool.pages_for(page), pool.pages_for(page + 1), pool.pages_for(1)) == (1, 2, 1)


def test_plain_node_has_no_pool() -> None:
    assert topology.load(ROOT / "topologies" / "single-plain.yaml").nodes[0].hugepages is None
