"""Kernel taint gained in a test's call or teardown fails that phase; a node that did
not answer is said to be unchecked, never compared with itself."""

from __future__ import annotations

import pytest
from fakelab import run_inner

pytest_plugins = ["pytester"]

TESTS = '''
import pytest

@pytest.fixture
def warns_in_teardown(lab, node):
    yield
    lab.taint["cn1"] = 512  # W: rmmod hit a WARN_ON

def test_clean(lab, node):
    pass

def test_warns_in_call(lab, node):
    lab.taint["cn1"] = 512

def test_warns_in_teardown(warns_in_teardown, lab):
    lab.taint.clear()

def test_out_of_tree_module_loaded(lab, node):
    lab.taint["cn1"] = 4096 | 8192  # O and E: loading vrhp, expected

def test_dies_in_call(lab, node):
    lab.taint.clear()
    lab.kill("cn1", 9)
'''


def test_taint_gained_in_call_or_teardown_fails_and_names_the_phase(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = run_inner(pytester, monkeypatch, TESTS, "-v")
    out = inner.result.stdout.str()
    results = inner.results()
    assert results["test_clean[cn1]"]["outcome"] == "passed"
    assert results["test_warns_in_call[cn1]"]["outcome"] == "failed"
    assert "node cn1: kernel taint gained W during call (0 -> 512)" in out
    teardown = results["test_warns_in_teardown[cn1]"]
    assert teardown["outcome"] == "error", teardown
    assert teardown["properties"]["outcome"] == "kernel-crash"
    assert results["test_warns_in_call[cn1]"]["properties"]["outcome"] == "kernel-crash"
    assert "node cn1: kernel taint gained W during teardown (0 -> 512)" in out
    assert results["test_out_of_tree_module_loaded[cn1]"]["outcome"] == "passed"
    died = results["test_dies_in_call[cn1]"]["properties"]
    assert died["taint_unchecked_call_cn1"] == "the node did not answer after"


FINDING = '''
def test_warns_on_the_console(lab, node):
    with lab.nodes["cn1"].console.open("a") as console:
        console.write("[   20.1] WARNING: CPU: 0 PID: 140 at mm/hugetlb.c:10 f+0x1/0x20\\n")

def test_after_the_warning(lab, node):
    pass
'''


def test_a_kernel_warning_on_the_console_fails_the_test_it_happened_in(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = run_inner(pytester, monkeypatch, FINDING, "-v")
    results = inner.results()
    warned = results["test_warns_on_the_console[cn1]"]
    assert (warned["outcome"], warned["properties"]["outcome"]) == ("failed", "kernel-crash")
    assert "kernel warning on node cn1:" in inner.result.stdout.str()
    assert results["test_after_the_warning[cn1]"]["outcome"] == "passed"
