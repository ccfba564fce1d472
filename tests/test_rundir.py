"""The run directory's files: state.json reads back what the engine wrote, strictly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.fields import FieldError
from lab.rundir import STATE_FILE, NodeState, RunState, SpeedState, read_state


def test_state_json_reads_back_as_written_and_atomically(tmp_path: Path) -> None:
    node = NodeState(domain="hplab-ab-cn1", port=40001, uri="qemu:///system", accel="kvm",
                     kernel="6.1.0", image="debian", host_key="ssh-ed25519 AAAA",
                     console=str(tmp_path / "cn1" / "console.log"), boots=1, up=True,
                     slowdown=1.5, speed=SpeedState(0.3, 0.2, 1.5))
    state = RunState(run_id="ab", status="running", pid=7, keep=False, topology="t.yaml",
                     host_pages=2, nodes={"cn1": node})
    state.write(tmp_path)
    assert read_state(tmp_path) == state
    assert json.loads((tmp_path / STATE_FILE).read_text())["nodes"]["cn1"]["port"] == 40001
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temporary file left


def test_a_bad_state_json_names_the_file_and_the_field(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text(json.dumps(
        {"run_id": "ab", "status": "running", "pid": 7, "keep": False, "topology": "t.yaml",
         "nodes": {"cn1": {"domain": "d", "port": "x"}}}))
    with pytest.raises(FieldError, match=r"state\.json\.nodes\.cn1: field 'port' must be an "
                                         r"integer, got 'x'"):
        read_state(tmp_path)
