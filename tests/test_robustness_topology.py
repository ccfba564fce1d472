"""Hostile lab input: each bad topology gets one clear line naming it and starts nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import topology
from lab.cli import main as cli
from lab.errors import TopologyError

NINE_NODES = "nodes: [" + ", ".join(f"{{name: cn{i}}}" for i in range(9)) + "]"


@pytest.mark.parametrize(("text", "message"), [
    ("name: ../../etc\nnodes: [{name: cn1}]", "t.yaml: name must match"),
    ("name: 'a/b'\nnodes: [{name: cn1}]", "name must match"),
    ("nodes: [{name: /etc/passwd}]", "node '/etc/passwd': name must match"),
    ("nodes: [{name: cn1, kernel: '../../vmlinuz'}]", "kernel must be 'debian:SERIES'"),
    ("nodes: [{name: cn1, kernel: 'local:'}]", "kernel must be 'debian:SERIES'"),
    ("nodes: [{name: cn1, kernel: {path: /k, flavour: rt}}]", "kernel must be 'debian:SERIES'"),
    ("nodes: [{name: cn1, image: '../../../root/.ssh'}]", "image must be one of"),
    ("nodes: [{name: cn1, hugepages: {size: 1G, count: 100000000000000000000}}]",
     "hugepages.count asks for"),
    ("nodes: [{name: cn1, hugepages: {size: 1G, count: true}}]", "hugepages.count"),
    ("nodes: [{name: cn1, hugepages: {size: 1G, count: '1'}}]", "hugepages.count"),
    ("nodes: [{name: cn1, hugepages: [1G, 1]}]", "node 'cn1': hugepages must be a mapping"),
    ("nodes: [{name: cn1, vcpus: true}]", "vcpus must be an integer"),
    ("nodes: [{name: cn1, vcpus: 1.5}]", "vcpus must be an integer"),
    ("nodes: [{name: cn1, vcpus: -1}]", "vcpus must be between 1 and 16"),
    ("nodes: [{name: cn1, memory: 1000000000000000000000000G}]", "memory must be between"),
    ("nodes: [{name: cn1, memory: -3G}]", "memory must be a size"),
    ("nodes: [{name: cn1, uri: 'qemu:///system?socket=/tmp/evil'}]", "uri must be one of"),
    ("nodes: [{name: cn1, uri: 'qemu+tcp://10.0.0.1/system'}]", "uri must be one of"),
    ("nodes: [{name: cn1, uri: 'test:///default'}]", "uri must be one of"),
    ("nodes: [{name: cn1, cmdline: \"init=/bin/sh\\nx\"}]", "cmdline must be one line"),
    ("nodes: [{name: cn1, cmdline: '<devices/>'}]", "cmdline must be one line"),
    ("nodes: [{name: cn1, module: [a, b]}]", "module"),
    ("defaults: {colour: red}\nnodes: [{name: cn1}]", "t.yaml: defaults: colour is not a known"),
    ("defaults: {uri: 'qemu+ssh://evil/system'}\nnodes: [{name: cn1}]", "uri must be one of"),
    (NINE_NODES, "nodes has 9 entries; at most 8 are supported"),
    ("nodes: {name: cn1}", "nodes must be a non-empty list"),
    ("", "t.yaml: must be a mapping"),
    ("nodes: [{name: cn1, name: cn2}]", "line 1 is not valid YAML: key 'name' appears twice"),
    ("nodes:\n- name: cn1\n  hugepages: {size: 1G, size: 2M}", "line 3"),
])
def test_hostile_topology_gets_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        topology.parse(text, Path("t.yaml"))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", [
    "nodes: [{name: cn1, uri: 'qemu+ssh://evil/system'}]",
    "nodes: [{name: ../x}]",
    "nodes: [{name: cn1, hugepages: {size: 1G, count: 99}}]",
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_hplab_up_refuses_before_starting_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, dry_run: bool) -> None:
    bad = tmp_path / "hostile.yaml"
    bad.write_text(text)
    lab = tmp_path / "lab"
    argv = ["--lab-dir", str(lab), "up", str(bad), *(["--dry-run"] if dry_run else [])]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hplab: {bad}") and err.count("\n") == 1
    # Nothing was created: no run directory, no cache, so no domain either.
    assert not lab.exists()
