"""A lab run's JUnit testsuite is named after its topology and kernel and records where
and what ran as properties; its test ids stay what they are."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fakelab import ROOT, InnerRun, run_inner

from lab.rundir import SuiteRecord, read_suite

pytest_plugins = ["pytester"]

ON_THE_LAB = '''
import pytest

def test_a(guest):
    guest.check("a")

class TestOnNode:
    def test_b(self, node):
        pass

def test_skipped(node):
    pytest.skip("by design")

def test_c(guest):
    guest.check("c")
'''

MIXED_KERNELS = """\
name: mixed
nodes:
  - {name: cn1, memory: 3G, hugepages: {size: 1G, count: 1}, kernel: debian:6.1}
  - {name: cn2, memory: 3G, hugepages: {size: 1G, count: 1}, kernel: debian:6.12}
"""


def _suite(inner: InnerRun) -> tuple[ET.Element, dict[str, str]]:
    root = ET.parse(inner.run_dir / "junit.xml").getroot()
    suites = root.findall("testsuite")
    assert len(suites) == 1
    properties = {p.get("name", ""): p.get("value", "")
                  for p in suites[0].findall("properties/property")}
    return suites[0], properties


def _case_names(suite: ET.Element) -> set[str]:
    return {f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")}


def test_the_testsuite_names_topology_and_kernel_and_records_the_run(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = run_inner(pytester, monkeypatch, ON_THE_LAB)
    inner.result.assert_outcomes(passed=3, skipped=1)
    suite, properties = _suite(inner)
    assert suite.get("name") == "hplab single.yaml debian:6.1"
    assert properties == {
        "topology": str(ROOT / "topologies" / "single.yaml"), "kernel": "debian:6.1",
        "host": socket.gethostname(), "kernel_release": "6.1.0-fake-amd64",
        "run_id": inner.run_dir.name, "run_dir": str(inner.run_dir)}
    # the ids are the tests' own: no topology or kernel in them
    assert _case_names(suite) == {"test_inner::test_a[cn1]", "test_inner.TestOnNode::test_b[cn1]",
                                  "test_inner::test_skipped[cn1]", "test_inner::test_c[cn1]"}
    kept = read_suite(inner.run_dir)
    assert kept.properties() == list(properties.items())
    assert kept.name == suite.get("name")
    assert 0 < kept.seconds <= float(suite.get("time", "0")) + 1


def test_a_shard_records_its_group_of_the_splits(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = run_inner(pytester, monkeypatch, ON_THE_LAB, "--splits", "2", "--group", "2",
                      "--kernel", "debian:6.12")
    suite, properties = _suite(inner)
    assert suite.get("name") == "hplab single.yaml debian:6.12"
    assert properties["shard"] == "2/2"
    assert read_suite(inner.run_dir).shard == "2/2"
    assert len(_case_names(suite)) == 2  # the other half is the first group's


def test_nodes_of_different_kernels_name_each(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    topology = tmp_path / "mixed.yaml"
    topology.write_text(MIXED_KERNELS)
    inner = run_inner(pytester, monkeypatch, ON_THE_LAB, f"--topology={topology}")
    suite, properties = _suite(inner)
    assert suite.get("name") == "hplab mixed.yaml debian:6.1, debian:6.12"
    assert properties["kernel"] == "debian:6.1, debian:6.12"
    assert len(_case_names(suite)) == 8


def test_a_session_without_the_lab_keeps_pytests_testsuite(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = run_inner(pytester, monkeypatch, "def test_plain():\n    pass\n")
    suite, properties = _suite(inner)
    assert suite.get("name") == "pytest"
    assert properties == {}


def test_a_testsuite_without_the_labs_properties_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"x.xml: testsuite 'pytest': field 'topology' is "
                                         r"missing: not a testsuite of an hplab run"):
        SuiteRecord.from_properties({"other": "1"}, 1.0, "x.xml: testsuite 'pytest'")
    assert json.loads(json.dumps(SuiteRecord("t.yaml", "debian:6.1", "", "h", "", "", "",
                                             2.5).to_json()))["seconds"] == 2.5
