"""The lab plugin as pytest finds it: from the package's pytest11 entry point, once, its
markers known, and idle in a run that does not use the lab."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from fakelab import ROOT

from lab.pytest_plugin import plugin
from lab.pytest_plugin.usage import guest_sharing_scope, uses_lab

pytest_plugins = ["pytester"]

PLAIN = '''
import signal

import pytest


@pytest.mark.fresh_guest
@pytest.mark.hugepages(size="1G", count=1)
@pytest.mark.fuzz_deep
@pytest.mark.serial
def test_marked():
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.parametrize("n", range(4))
def test_plain(n, record_property):
    record_property("mine", n)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
'''


def test_the_entry_point_names_the_plugin() -> None:
    points = [p for p in entry_points(group="pytest11") if p.name == "hplab"]
    assert [p.value for p in points] == ["lab.pytest_plugin.plugin"]
    assert points[0].load() is plugin


def test_pytest_registers_it_once(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfig()
    names = [name for name, p in config.pluginmanager.list_name_plugin() if p is plugin]
    assert names == ["hplab"]


def test_nothing_registers_it_a_second_time() -> None:
    """pluggy refuses a second registration: no conftest or inner session asks for it."""
    module = re.escape(plugin.__name__)
    second = re.compile(rf"pytest_plugins\s*=.*{module}|[\"']-p[\"'],\s*[\"']{module}|"
                        rf"-p\s+{module}")
    files = [ROOT / "conftest.py", ROOT / "tox.ini", ROOT / "pyproject.toml",
             *sorted((ROOT / "lab").rglob("*.py")), *sorted((ROOT / "suites").rglob("*.py")),
             *sorted((ROOT / "tests").rglob("*.py"))]
    found = [f"{path.relative_to(ROOT)}:{n}" for path in files
             for n, line in enumerate(path.read_text().splitlines(), 1) if second.search(line)]
    assert found == []


@pytest.mark.parametrize("parallel", [[], ["-n", "2", "-v"]], ids=["serial", "xdist"])
def test_a_run_without_the_lab_is_left_alone(pytester: pytest.Pytester, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             parallel: list[str]) -> None:
    """No SIGTERM handler, no file in the lab directory, no property on any test, no line
    on the terminal; the lab's markers known all the same."""
    lab_dir = tmp_path / "labdir"
    monkeypatch.setenv("HPLAB_DIR", str(lab_dir))
    pytester.makepyfile(test_plain=PLAIN)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess("--strict-markers", "-p", "no:cacheprovider",
                                           f"--junitxml={junit}", *parallel)
    result.assert_outcomes(passed=5)
    assert not lab_dir.exists()
    assert re.findall(r'<property name="(\w+)"', junit.read_text()) == ["mine"] * 4
    said = [line for line in result.outlines if "hplab" in line]
    assert len(said) == 1 and said[0].startswith("plugins: "), said


def test_the_markers_are_the_plugins(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    for marker in ("lab", "fresh_guest", "hugepages", "fuzz_deep", "serial"):
        result.stdout.fnmatch_lines([f"@pytest.mark.{marker}*"])


SHARING = '''
import pytest


@pytest.fixture(scope="module")
def kernel_name(lab_session):
    return lab_session.topology.nodes[0].kernel


@pytest.fixture(scope="class")
def installed(lab, node_name):
    return node_name


def test_configuration_only(kernel_name):
    pass


class TestInstalled:
    def test_a(self, installed):
        pass


def test_unrelated():
    pass


@pytest.fixture(scope="class", params=[{"entries": 1}, {"entries": 2}])
def sized(request, installed):
    return request.param


class TestSized:
    def test_s(self, sized):
        pass
'''


def test_only_fixtures_holding_a_guest_keep_tests_together(pytester: pytest.Pytester) -> None:
    """A module-scoped fixture that reads the topology (the robustness suite's) does not
    tie its module to one worker; a class-scoped one on the lab does."""
    pytester.makepyfile(test_sharing=SHARING)
    items, _ = pytester.inline_genitems(f"--topology={ROOT / 'topologies' / 'single.yaml'}")
    by_name = {item.name: item for item in items}
    assert guest_sharing_scope(by_name["test_configuration_only"]) is None
    assert guest_sharing_scope(by_name["test_a[cn1]"]) == \
        "test_sharing.py::TestInstalled[node_name=cn1]"  # one group per node
    assert guest_sharing_scope(by_name["test_unrelated"]) is None
    # each value of a class-wide parameter has a class fixture of its own: a group each
    assert [guest_sharing_scope(by_name[f"test_s[sized{n}-cn1]"]) for n in (0, 1)] == [
        f"test_sharing.py::TestSized[node_name=cn1,sized=#{n}]" for n in (0, 1)]
    assert {name for name, item in by_name.items() if not uses_lab(item)} == {"test_unrelated"}
