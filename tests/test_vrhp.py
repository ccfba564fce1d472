"""Unit tests for lab.vrhp: size arithmetic and agent JSON parsing (no VMs)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lab.dut import vrhp

# Outputs captured from vrhp-agent in a 6.12 guest (4M-entry flow table on two 1 GiB pages,
# bridge on btable fallback; and a default-size fill run).

INFO: dict[str, Any] = {
    "abi_version": 1,
    "module_version": 1,
    "layout_version": 1,
    "agent_layout_version": 1,
    "version_tag": "",
    "mem": "hugepage",
    "state": "ready",
    "fallback": True,
    "last_outcome": "PARTIAL",
    "tables": {
        "flow": {
            "entries": 4194304,
            "oentries": 839680,
            "entry_size": 256,
            "table_bytes": 1288699904,
            "file_bytes": 1288704000,
            "backend": "hugepage",
            "generation": 1,
            "instance": 11454449177635321978,
            "hash_seed": 3708649847,
            "nr_chunks": 2,
        },
        "bridge": {
            "entries": 262144,
            "oentries": 53248,
            "entry_size": 64,
            "table_bytes": 20185088,
            "file_bytes": 20189184,
            "backend": "btable",
            "generation": 1,
            "instance": 3317863984814706193,
            "hash_seed": 1164725785,
            "nr_chunks": 5,
        },
    },
    "segments": [
        {
            "table": "flow",
            "path": "/dev/hugepages1G/flow",
            "offset": 0,
            "uaddr": 140112570613760,
            "len": 2147483648,
            "page_size": 1073741824,
            "nr_hpages": 2,
            "contiguous": False,
            "vmapped": True,
            "detached": False,
        }
    ],
}

SCAN: dict[str, Any] = {
    "tables": {
        "flow": {
            "backend": "hugepage",
            "source": "/dev/hugepages1G/flow",
            "generation": 1,
            "entries": 4194304,
            "oentries": 839680,
            "used": 200000,
            "main_used": 199998,
            "oflow_used": 2,
            "oldest_last_used_ns": 1795333015489332105,
            "newest_last_used_ns": 1795336614489332105,
            "bucket_histogram": [866378, 165474, 15696, 980, 48],
            "chained_buckets": 2,
            "bytes_scanned": 1288699904,
            "elapsed_ns": 97971377,
            "mib_per_s": 12544.5,
        },
        "bridge": {
            "backend": "btable",
            "source": "/dev/vrhp_bridge",
            "generation": 1,
            "entries": 262144,
            "oentries": 53248,
            "used": 0,
            "main_used": 0,
            "oflow_used": 0,
            "oldest_last_used_ns": 0,
            "newest_last_used_ns": 0,
            "bucket_histogram": [65536, 0, 0, 0, 0],
            "chained_buckets": 0,
            "bytes_scanned": 20185088,
            "elapsed_ns": 2144230,
            "mib_per_s": 8977.6,
        },
    }
}

STATS: dict[str, Any] = {
    "tables": {
        "flow": {
            "entries": 524288,
            "oentries": 105472,
            "used": 583396,
            "main_used": 477924,
            "oflow_used": 105472,
            "inserts": 583396,
            "deletes": 0,
            "insert_failures": 116606,
            "nospc_failures": 116605,
            "longest_chain": 13,
        },
        "bridge": {
            "entries": 262144,
            "oentries": 53248,
            "used": 301199,
            "main_used": 247951,
            "oflow_used": 53248,
            "inserts": 301199,
            "deletes": 0,
            "insert_failures": 98802,
            "nospc_failures": 98802,
            "longest_chain": 10,
        },
    }
}

FILL: dict[str, Any] = {
    "table": "flow",
    "requested": 700000,
    "inserted": 583395,
    "failed": 116605,
    "first_fail_index": 529338,
    "first_fail_error": "ENOSPC",
    "first_fail_key": {"vrf": 3, "family": 4, "src": "203.0.113.9", "dst": "198.51.100.7",
                       "proto": 6, "sport": 40000, "dport": 443},
    "elapsed_ns": 915675722,
    "entries_per_s": 764463,
}

BENCH: dict[str, Any] = {
    "fill_requested": 100000,
    "fill_inserted": 90056,
    "fill_entries_per_s": 829446,
    "backend": "hugepage",
    "scan_bytes": 161218560,
    "scan_mib_per_s": 7969.2,
    "map_read_mib_per_s": 7427.6,
    "anon_read_mib_per_s": 6930.9,
    "scan_vs_anon": 1.15,
    "map_vs_anon": 1.072,
    "checksum": 122,
}

SETUP: dict[str, Any] = {
    "outcome": "PARTIAL",
    "outcome_code": 5,
    "reset": False,
    "one_file": False,
    "mount": "/dev/hugepages1G",
    "page_size": 1073741824,
    "tables": {
        "flow": {
            "path": "/dev/hugepages1G/flow",
            "offset": 0,
            "mapped": True,
            "map_error": "OK",
            "backend": "hugepage",
            "action": "fresh",
            "error": "OK",
            "generation": 1,
            "table_bytes": 1288699904,
            "file_bytes": 1288704000,
            "mapped_bytes": 2147483648,
            "header_matches_module": True,
        },
        "bridge": {
            "path": "/dev/hugepages1G/bridge",
            "offset": 0,
            "mapped": False,
            "map_error": "ENOMEM",
            "backend": "btable",
            "action": "fallback",
            "error": "OK",
            "generation": 1,
            "table_bytes": 20185088,
            "file_bytes": 20189184,
            "mapped_bytes": 0,
            "header_matches_module": None,
        },
    },
}


def _mutate(doc: dict[str, Any], path: list[str], value: Any) -> str:
    d = json.loads(json.dumps(doc))
    cur = d
    for p in path[:-1]:
        cur = cur[p]
    if value is _DELETE:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return json.dumps(d)


_DELETE = object()


# ---------------------------------------------------------------- sizes


def test_default_sizes_match_upstream() -> None:
    f = vrhp.flow_sizes()
    b = vrhp.bridge_sizes()
    assert (f.entries, f.oentries, f.table_bytes) == (524_288, 105_472, 161_218_560)
    assert (b.entries, b.oentries, b.table_bytes) == (262_144, 53_248, 20_185_088)
    assert f.file_bytes == 161_222_656
    assert b.file_bytes == 20_189_184
    assert f.btable_chunks + b.btable_chunks == 44
    assert f.hugepage_file_bytes(vrhp.PAGE_1G) == vrhp.PAGE_1G
    assert f.huge_pages(vrhp.PAGE_2M) == 77


def test_four_million_flows_span_two_gig_pages() -> None:
    f = vrhp.flow_sizes(4_194_304)
    assert f.oentries == 839_680
    assert f.table_bytes == 1_288_699_904
    assert f.huge_pages(vrhp.PAGE_1G) == 2


@pytest.mark.parametrize(
    ("main", "expected"),
    [(4, 1024), (5120, 1024), (5124, 2048), (524_288, 105_472), (262_144, 53_248)],
)
def test_default_overflow_is_twenty_percent_rounded_to_1024(main: int, expected: int) -> None:
    assert vrhp.default_oentries(main) == expected


def test_explicit_overflow() -> None:
    assert vrhp.flow_sizes(1024, 8).oentries == 8
    assert vrhp.flow_sizes(1024, -1).oentries == 1024


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
        vrhp.flow_sizes(**kwargs)


def test_bridge_parameter_names() -> None:
    with pytest.raises(ValueError, match="bridge_entries=3"):
        vrhp.bridge_sizes(3)
    with pytest.raises(ValueError, match="bridge_oentries=2"):
        vrhp.bridge_sizes(8, 2)


def test_bad_page_size() -> None:
    with pytest.raises(ValueError, match="page_size"):
        vrhp.flow_sizes().hugepage_file_bytes(4096)


# ---------------------------------------------------------------- parsers


def test_parse_info() -> None:
    info = vrhp.parse_info(json.dumps(INFO))
    assert info.mem == "hugepage"
    assert info.last_outcome is vrhp.Outcome.PARTIAL
    flow = info.tables["flow"]
    assert flow.table_bytes == vrhp.flow_sizes(flow.entries).table_bytes
    assert flow.backend == "hugepage"
    assert info.tables["bridge"].backend == "btable"
    (seg,) = info.segments
    assert seg.table == "flow"
    assert seg.nr_hpages == 2
    assert seg.vmapped
    assert not seg.detached
    assert seg.pages_spanned() == 2


def test_segment_in_the_tail_of_a_shared_page() -> None:
    seg = dict(INFO["segments"][0], table="bridge", offset=1_289_748_480, len=20_189_184,
               nr_hpages=1, vmapped=False)
    info = vrhp.parse_info(_mutate(INFO, ["segments"], [seg]))
    assert info.segments[0].pages_spanned() == 1
    assert info.segments[0].end == 1_309_937_664


def test_parse_setup() -> None:
    s = vrhp.parse_setup(json.dumps(SETUP))
    assert s.outcome is vrhp.Outcome.PARTIAL
    assert not s.ok
    assert s.outcome.agent_exit_code == 3
    assert s.tables["flow"].action == "fresh"
    assert s.tables["bridge"].action == "fallback"
    assert s.tables["bridge"].map_error == "ENOMEM"
    assert s.tables["bridge"].header_matches_module is None


@pytest.mark.parametrize("matches, ok", [(True, True), (None, True), (False, False)])
def test_existing_tables_are_ok_only_when_they_are_the_agents_files(
        matches: bool | None, ok: bool) -> None:
    doc = json.loads(_mutate(SETUP, ["tables", "flow", "header_matches_module"], matches))
    doc.update(outcome="ALREADY_INITIALISED", outcome_code=4)
    assert vrhp.parse_setup(json.dumps(doc)).ok is ok


def test_parse_scan() -> None:
    scan = vrhp.parse_scan(json.dumps(SCAN))
    assert scan["flow"].backend == "hugepage"
    assert scan["flow"].used == 200_000
    assert scan["bridge"].source == "/dev/vrhp_bridge"


def test_parse_stats() -> None:
    st = vrhp.parse_stats(json.dumps(STATS))
    assert st["flow"].oflow_used == st["flow"].oentries
    assert st["flow"].nospc_failures > 0


def test_parse_fill() -> None:
    f = vrhp.parse_fill(json.dumps(FILL))
    assert f.full
    assert f.inserted + f.failed == f.requested
    assert f.first_fail_index is not None
    assert f.first_fail_key is not None
    assert vrhp.key_args("flow", f.first_fail_key) == ["3", "203.0.113.9", "198.51.100.7", "6",
                                                       "40000", "443"]
    with pytest.raises(ValueError, match="first_fail_key"):
        vrhp.parse_fill(_mutate(FILL, ["first_fail_key"], None))


def test_bridge_key_args() -> None:
    assert vrhp.key_args("bridge", {"vrf": 7, "mac": "02:00:00:00:00:01"}) == [
        "7", "02:00:00:00:00:01"]


def test_flow_entry_bytes_follow_the_uapi_layout() -> None:
    key = vrhp.flow_key_bytes(5, "203.0.113.1", "198.51.100.2", 17, 1000, 53)
    assert len(key) == 44
    assert key[:4] == bytes([203, 0, 113, 1]) and key[4:16] == bytes(12)
    assert key[32:44] == bytes([5, 0, 0, 0, 0xE8, 0x03, 53, 0, 17, 4, 0, 0])
    entry = vrhp.expected_flow_entry(1, key, 9, 2, 3, 4)
    assert len(entry) == vrhp.FLOW_ENTRY_SIZE
    assert entry[52:80] == bytes([9, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0,
                                  4, 0, 0, 0, 0, 0, 0, 0])
    v6 = vrhp.flow_key_bytes(1, "2001:db8::1", "2001:db8::2", 6, 1, 2)
    assert v6[41] == 6
    with pytest.raises(ValueError, match="family"):
        vrhp.flow_key_bytes(1, "2001:db8::1", "203.0.113.1", 6, 1, 2)


def test_bridge_entry_bytes_follow_the_uapi_layout() -> None:
    entry = vrhp.expected_bridge_entry(1, 7, "02:aa:bb:cc:dd:ee", 12, 34, 56)
    assert len(entry) == vrhp.BRIDGE_ENTRY_SIZE
    assert entry[8:20] == bytes([7, 0, 0, 0, 2, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0, 0])
    assert entry[20:24] == bytes([12, 0, 0, 0]) and entry[32:40] == bytes([56] + [0] * 7)


def test_parse_pattern_lookup_remap() -> None:
    pat = vrhp.parse_pattern(json.dumps({
        "table": "flow", "seed": 7, "backend": "hugepage", "source": "/dev/hugepages1G/tables",
        "bytes_written": 1288699904, "bytes_checked": 1288699904, "mismatched_words": 0,
        "mismatched_bytes": 0, "first_mismatch_offset": None, "kernel_write_ns": 1,
        "agent_read_ns": 2}))
    assert pat.first_mismatch_offset is None and pat.bytes_checked == 1288699904
    look = vrhp.parse_lookup(json.dumps({"table": "bridge", "lines": 3, "found": 2,
                                         "missing": 1, "mismatched": 0, "first_bad_line": 2}))
    assert look.missing == 1
    with pytest.raises(ValueError, match="lines"):
        vrhp.parse_lookup(json.dumps({"table": "bridge", "lines": 4, "found": 2, "missing": 1,
                                      "mismatched": 0, "first_bad_line": 2}))
    remap = vrhp.parse_remap(json.dumps({"table": "flow", "backend": "btable", "iterations": 5,
                                         "bad_headers": 0, "bytes_per_map": 4096,
                                         "elapsed_ns": 9}))
    assert remap.iterations == 5


def test_parse_bench() -> None:
    b = vrhp.parse_bench(json.dumps(BENCH))
    assert b.scan_bytes == vrhp.flow_sizes().table_bytes
    assert b.anon_read_mib_per_s > 0


def test_parse_dump() -> None:
    rows = vrhp.parse_dump('{"vrf":1,"mac":"02:00:00:00:00:01"}\n\n{"vrf":2,"mac":"x"}\n')
    assert [r["vrf"] for r in rows] == [1, 2]
    with pytest.raises(ValueError, match="line 2"):
        vrhp.parse_dump('{"a":1}\n{bad\n')


@pytest.mark.parametrize(
    ("parser", "doc", "path", "value", "field"),
    [
        (vrhp.parse_info, INFO, ["tables", "flow", "table_bytes"], "x", "table_bytes"),
        (vrhp.parse_info, INFO, ["tables", "bridge"], _DELETE, "tables.bridge"),
        (vrhp.parse_info, INFO, ["last_outcome"], "WHATEVER", "last_outcome"),
        (vrhp.parse_info, INFO, ["segments"], None, "segments"),
        (vrhp.parse_setup, SETUP, ["outcome_code"], 0, "outcome_code"),
        (vrhp.parse_setup, SETUP, ["tables", "flow", "action"], "eaten", "action"),
        (vrhp.parse_scan, SCAN, ["tables", "flow", "used"], 1, "used"),
        (vrhp.parse_scan, SCAN, ["tables", "flow", "bucket_histogram"], [1, 2], "bucket_histogram"),
        (vrhp.parse_stats, STATS, ["tables", "flow", "inserts"], -1, "inserts"),
        (vrhp.parse_stats, STATS, ["tables", "nexthop"], {}, "unknown table"),
        (vrhp.parse_fill, FILL, ["failed"], 0, "first_fail_index"),
        (vrhp.parse_fill, FILL, ["table"], "route", "table"),
        (vrhp.parse_bench, BENCH, ["scan_mib_per_s"], True, "scan_mib_per_s"),
    ],
)
def test_malformed_output_names_the_field(
    parser: Any, doc: dict[str, Any], path: list[str], value: Any, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        parser(_mutate(doc, path, value))


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]"])
def test_not_an_object(text: str) -> None:
    with pytest.raises(ValueError, match="info"):
        vrhp.parse_info(text)


def test_outcome_exit_codes() -> None:
    assert vrhp.Outcome.SUCCESS.agent_exit_code == 0
    assert vrhp.Outcome.ALREADY_INITIALISED.agent_exit_code == 0
    assert vrhp.Outcome.HUGEPAGE_FAILURE_FALLBACK_IN_USE.agent_exit_code == 3
    assert vrhp.Outcome.LAYOUT_MISMATCH.agent_exit_code == 2
    assert vrhp.Outcome.REFUSED.agent_exit_code == 2


LINE = "vrhp: flow table: btable allocation failed: got 3 of 39 4 MiB chunks"


@pytest.mark.parametrize(("stderr", "dmesg", "found"), [
    ("insmod: ERROR: could not insert module: Cannot allocate memory", f"[ 1.0] {LINE}",
     vrhp.BtableFailure("flow", 3, 39)),
    ("insmod: ERROR: could not insert module: Invalid argument", f"[ 1.0] {LINE}", None),
    ("insmod: ERROR: could not insert module: Cannot allocate memory", "vrhp: loaded", None),
    ("insmod: ERROR: Cannot allocate memory",
     "vrhp: flow table: btable allocation failed: got 39 of 39 4 MiB chunks", None),
], ids=["fragmented", "other-errno", "no-dmesg-line", "every-chunk-got"])
def test_only_enomem_short_of_chunks_is_a_fragmentation_refusal(
        stderr: str, dmesg: str, found: vrhp.BtableFailure | None) -> None:
    assert vrhp.btable_failure(stderr, dmesg) == found


def _daemon_status(**changes: object) -> dict[str, object]:
    table = {"mapped": True, "generation": 2, "instance": 77, "examined": 10, "aged_total": 3}
    doc: dict[str, object] = {
        "pid": 300, "state": "aging", "cycles": 12, "module_version": 2, "setups": 2,
        "last_setup_exit": 0, "remaps": 2, "module_gone": 1, "cutoff_ns": 5,
        "last_cycle_ns": 1000, "error": "", "tables": {"flow": table, "bridge": table}}
    doc.update(changes)
    return doc


def test_daemon_status_is_read_strictly() -> None:
    status = vrhp.parse_daemon_status(json.dumps(_daemon_status()))
    assert (status.state, status.remaps, status.tables["bridge"].generation) == ("aging", 2, 2)
    with pytest.raises(ValueError, match="run status: field 'state' is 'sleeping'"):
        vrhp.parse_daemon_status(json.dumps(_daemon_status(state="sleeping")))
    with pytest.raises(ValueError, match="run status flow: field 'examined'"):
        vrhp.parse_daemon_status(json.dumps(_daemon_status(tables={"flow": {
            "mapped": True, "generation": 1, "instance": 1, "aged_total": 0}})))


# vrhp_deepfuzz's line, shortened: a 200-call run on a 2 MiB and a 1 GiB mount
DEEPFUZZ: dict[str, Any] = {
    "seed": 7, "calls": 200, "threads": 3, "backend": "hugepage",
    "mount_1g": "/dev/hugepages1G", "mount_2m": "/mnt/hplab-deepfuzz-2M",
    "adopt": None, "setup": {"errno": "OK", "outcome": 0},
    "final": {"errno": "OK", "outcome": 0, "inserted": [4096, 2048]},
    "elapsed_s": 0.41, "calls_per_s": 488, "ioctls": 231, "ok": 120,
    "errno": {"INFO": {"OK": 20}, "HP_CONFIG": {"OK": 8, "EINVAL": 2},
              "FLOW_ADD": {"OK": 30, "EEXIST": 4, "EUCLEAN": 1}, "OTHER": {"ENOTTY": 3}},
    "outcomes": {"SUCCESS": 6, "PARTIAL": 2},
    "ops": {"flow_add": 35, "config": 10}, "op_ms": {"flow_add": 3, "config": 40},
    "sigbus": 0, "signals": 1, "forks": 2, "killed": 1, "skipped_ops": 3, "violations": 0,
    "reach_before": {"info": [1, 1]},
    "reach_calls": {"info": 20, "flow_add": 35, "pattern": 2, "hp_adopt": 0},
    "reached": {"info": 20, "flow_add": 34, "pattern": 0, "hp_adopt": 0},
    "skipped": [], "violation_notes": [],
}


def test_parse_deepfuzz_and_what_it_never_reached() -> None:
    text = "vrhp_deepfuzz: starting\n" + json.dumps(DEEPFUZZ) + "\n"
    run = vrhp.parse_deepfuzz(text)
    assert (run.calls, run.threads, run.backend, run.violations) == (200, 3, "hugepage", 0)
    assert run.errno["FLOW_ADD"] == {"OK": 30, "EEXIST": 4, "EUCLEAN": 1}
    assert run.outcomes == {"SUCCESS": 6, "PARTIAL": 2}
    assert run.final is not None and run.final["outcome"] == 0
    assert run.adopt is None
    assert run.unreached(("info", "flow_add", "pattern", "mmap")) == ["pattern", "mmap"]
    assert run.calls_per_s == 488.0
    assert run.op_ms == {"flow_add": 3, "config": 40}
    assert run.events == {"sigbus": 0, "signals": 1, "forks": 2, "killed": 1, "skipped_ops": 3}


@pytest.mark.parametrize(("change", "message"), [
    ({"backend": "other"}, "field 'backend'"),
    ({"reached": {"info": -1}}, "field 'info' is negative"),
    ({"violation_notes": "x"}, "not a list of strings"),
    ({"errno": {"INFO": {"OK": "1"}}}, "field 'OK'"),
])
def test_parse_deepfuzz_names_the_bad_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vrhp.parse_deepfuzz(json.dumps({**DEEPFUZZ, **change}))


def test_parse_deepfuzz_wants_one_line_and_reports_a_failed_start() -> None:
    with pytest.raises(ValueError, match="expected one JSON line, got 2"):
        vrhp.parse_deepfuzz(json.dumps(DEEPFUZZ) + "\n" + json.dumps(DEEPFUZZ))
    with pytest.raises(ValueError, match="could not start: /dev/vrhp: No such file"):
        vrhp.parse_deepfuzz('{"error": "/dev/vrhp: No such file or directory"}')
