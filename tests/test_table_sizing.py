"""Unit tests for lab.dut.sizing: the module's size arithmetic and validation of its
table parameters, and the btable refusal that fragmentation causes (no VMs)."""

from __future__ import annotations

import pytest

from lab.dut import abi, sizing


def test_default_sizes_match_upstream() -> None:
    f = sizing.flow_sizes()
    b = sizing.bridge_sizes()
    assert (f.entries, f.oentries, f.table_bytes) == (524_288, 105_472, 161_218_560)
    assert (b.entries, b.oentries, b.table_bytes) == (262_144, 53_248, 20_185_088)
    assert f.file_bytes == 161_222_656
    assert b.file_bytes == 20_189_184
    assert f.btable_chunks + b.btable_chunks == 44
    assert f.hugepage_file_bytes(abi.PAGE_1G) == abi.PAGE_1G
    assert f.huge_pages(abi.PAGE_2M) == 77


def test_four_million_flows_span_two_gig_pages() -> None:
    f = sizing.flow_sizes(4_194_304)
    assert f.oentries == 839_680
    assert f.table_bytes == 1_288_699_904
    assert f.huge_pages(abi.PAGE_1G) == 2


@pytest.mark.parametrize(
    ("main", "expected"),
    [(4, 1024), (5120, 1024), (5124, 2048), (524_288, 105_472), (262_144, 53_248)],
)
def test_default_overflow_is_twenty_percent_rounded_to_1024(main: int, expected: int) -> None:
    assert sizing.default_oentries(main) == expected


def test_explicit_overflow() -> None:
    assert sizing.flow_sizes(1024, 8).oentries == 8
    assert sizing.flow_sizes(1024, -1).oentries == 1024


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"flow_entries": 5}, "flow_entries=5"),
        ({"flow_entries": 0}, "flow_entries=0"),
        ({"flow_entries": 1024, "oflow_entries": 6}, "oflow_entries=6"),
        ({"flow_entries": 1024, "oflow_entries": 0}, "oflow_entries=0"),
        ({"flow_entries": 1 << 62}, "overflows 64 bits"),
        ({"flow_entries": 1 << 33}, "more than"),
    ],
)
def test_invalid_parameters_name_the_parameter(kwargs: dict[str, int], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        sizing.flow_sizes(**kwargs)


def test_bridge_parameter_names() -> None:
    with pytest.raises(ValueError, match="bridge_entries=3"):
        sizing.bridge_sizes(3)
    with pytest.raises(ValueError, match="bridge_oentries=2"):
        sizing.bridge_sizes(8, 2)


def test_bad_page_size() -> None:
    with pytest.raises(ValueError, match="page_size"):
        sizing.flow_sizes().hugepage_file_bytes(4096)


LINE = "vrhp: flow table: btable allocation failed: got 3 of 39 4 MiB chunks"


@pytest.mark.parametrize(("stderr", "dmesg", "found"), [
    ("insmod: ERROR: could not insert module: Cannot allocate memory", f"[ 1.0] {LINE}",
     sizing.BtableFailure("flow", 3, 39)),
    ("insmod: ERROR: could not insert module: Invalid argument", f"[ 1.0] {LINE}", None),
    ("insmod: ERROR: could not insert module: Cannot allocate memory", "vrhp: loaded", None),
    ("insmod: ERROR: Cannot allocate memory",
     "vrhp: flow table: btable allocation failed: got 39 of 39 4 MiB chunks", None),
], ids=["fragmented", "other-errno", "no-dmesg-line", "every-chunk-got"])
def test_only_enomem_short_of_chunks_is_a_fragmentation_refusal(
        stderr: str, dmesg: str, found: sizing.BtableFailure | None) -> None:
    assert sizing.btable_failure(stderr, dmesg) == found
