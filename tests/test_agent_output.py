"""Unit tests for lab.dut.agent_output: strict parsing of vrhp-agent's JSON output,
the daemon's status file and vrhp_deepfuzz's line (no VMs)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lab.dut import abi, agent_output, sizing

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


def test_parse_info() -> None:
    info = agent_output.parse_info(json.dumps(INFO))
    assert info.mem == "hugepage"
    assert info.last_outcome is abi.Outcome.PARTIAL
    flow = info.tables["flow"]
    assert flow.table_bytes == sizing.flow_sizes(flow.entries).table_bytes
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
    info = agent_output.parse_info(_mutate(INFO, ["segments"], [seg]))
    assert info.segments[0].pages_spanned() == 1
    assert info.segments[0].end == 1_309_937_664


def test_parse_setup() -> None:
    s = agent_output.parse_setup(json.dumps(SETUP))
    assert s.outcome is abi.Outcome.PARTIAL
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
    assert agent_output.parse_setup(json.dumps(doc)).ok is ok


def test_parse_scan() -> None:
    scan = agent_output.parse_scan(json.dumps(SCAN))
    assert scan["flow"].backend == "hugepage"
    assert scan["flow"].used == 200_000
    assert scan["bridge"].source == "/dev/vrhp_bridge"


def test_parse_stats() -> None:
    st = agent_output.parse_stats(json.dumps(STATS))
    assert st["flow"].oflow_used == st["flow"].oentries
    assert st["flow"].nospc_failures > 0


def test_parse_fill() -> None:
    f = agent_output.parse_fill(json.dumps(FILL))
    assert f.full
    assert f.inserted + f.failed == f.requested
    assert f.first_fail_index is not None
    assert f.first_fail_key is not None
    assert agent_output.key_args("flow", f.first_fail_key) == [
        "3", "203.0.113.9", "198.51.100.7", "6", "40000", "443"]
    with pytest.raises(ValueError, match="first_fail_key"):
        agent_output.parse_fill(_mutate(FILL, ["first_fail_key"], None))


def test_bridge_key_args() -> None:
    assert agent_output.key_args("bridge", {"vrf": 7, "mac": "02:00:00:00:00:01"}) == [
        "7", "02:00:00:00:00:01"]


def test_parse_pattern_lookup_remap() -> None:
    pat = agent_output.parse_pattern(json.dumps({
        "table": "flow", "seed": 7, "backend": "hugepage", "source": "/dev/hugepages1G/tables",
        "bytes_written": 1288699904, "bytes_checked": 1288699904, "mismatched_words": 0,
        "mismatched_bytes": 0, "first_mismatch_offset": None, "kernel_write_ns": 1,
        "agent_read_ns": 2}))
    assert pat.first_mismatch_offset is None and pat.bytes_checked == 1288699904
    look = agent_output.parse_lookup(json.dumps({"table": "bridge", "lines": 3, "found": 2,
                                                 "missing": 1, "mismatched": 0,
                                                 "first_bad_line": 2}))
    assert look.missing == 1
    with pytest.raises(ValueError, match="lines"):
        agent_output.parse_lookup(json.dumps({"table": "bridge", "lines": 4, "found": 2,
                                              "missing": 1, "mismatched": 0,
                                              "first_bad_line": 2}))
    remap = agent_output.parse_remap(json.dumps({"table": "flow", "backend": "btable",
                                                 "iterations": 5, "bad_headers": 0,
                                                 "bytes_per_map": 4096, "elapsed_ns": 9}))
    assert remap.iterations == 5


def test_parse_bench() -> None:
    b = agent_output.parse_bench(json.dumps(BENCH))
    assert b.scan_bytes == sizing.flow_sizes().table_bytes
    assert b.anon_read_mib_per_s > 0


def test_parse_dump() -> None:
    rows = agent_output.parse_dump('{"vrf":1,"mac":"02:00:00:00:00:01"}\n\n{"vrf":2,"mac":"x"}\n')
    assert [r["vrf"] for r in rows] == [1, 2]
    with pytest.raises(ValueError, match="line 2"):
        agent_output.parse_dump('{"a":1}\n{bad\n')


@pytest.mark.parametrize(
    ("parser", "doc", "path", "value", "field"),
    [
        (agent_output.parse_info, INFO, ["tables", "flow", "table_bytes"], "x", "table_bytes"),
        (agent_output.parse_info, INFO, ["tables", "bridge"], _DELETE, "tables.bridge"),
        (agent_output.parse_info, INFO, ["last_outcome"], "WHATEVER", "last_outcome"),
        (agent_output.parse_info, INFO, ["segments"], None, "segments"),
        (agent_output.parse_setup, SETUP, ["outcome_code"], 0, "outcome_code"),
        (agent_output.parse_setup, SETUP, ["tables", "flow", "action"], "eaten", "action"),
        (agent_output.parse_scan, SCAN, ["tables", "flow", "used"], 1, "used"),
        (agent_output.parse_scan, SCAN, ["tables", "flow", "bucket_histogram"], [1, 2],
         "bucket_histogram"),
        (agent_output.parse_stats, STATS, ["tables", "flow", "inserts"], -1, "inserts"),
        (agent_output.parse_stats, STATS, ["tables", "nexthop"], {}, "unknown table"),
        (agent_output.parse_fill, FILL, ["failed"], 0, "first_fail_index"),
        (agent_output.parse_fill, FILL, ["table"], "route", "table"),
        (agent_output.parse_bench, BENCH, ["scan_mib_per_s"], True, "scan_mib_per_s"),
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
        agent_output.parse_info(text)


def _daemon_status(**changes: object) -> dict[str, object]:
    table = {"mapped": True, "generation": 2, "instance": 77, "examined": 10, "aged_total": 3}
    doc: dict[str, object] = {
        "pid": 300, "state": "aging", "cycles": 12, "module_version": 2, "setups": 2,
        "last_setup_exit": 0, "remaps": 2, "module_gone": 1, "cutoff_ns": 5,
        "last_cycle_ns": 1000, "error": "", "tables": {"flow": table, "bridge": table}}
    doc.update(changes)
    return doc


def test_daemon_status_is_read_strictly() -> None:
    status = agent_output.parse_daemon_status(json.dumps(_daemon_status()))
    assert (status.state, status.remaps, status.tables["bridge"].generation) == ("aging", 2, 2)
    with pytest.raises(ValueError,
                       match=r"run status: field 'state' must be one of .*, got 'sleeping'"):
        agent_output.parse_daemon_status(json.dumps(_daemon_status(state="sleeping")))
    with pytest.raises(ValueError, match="run status flow: field 'examined'"):
        agent_output.parse_daemon_status(json.dumps(_daemon_status(tables={"flow": {
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
    run = agent_output.parse_deepfuzz(text)
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
    ({"reached": {"info": -1}}, "reached: field 'info' must be >= 0, got -1"),
    ({"violation_notes": "x"}, "field 'violation_notes' must be a list of strings"),
    ({"errno": {"INFO": {"OK": "1"}}}, "field 'OK'"),
])
def test_parse_deepfuzz_names_the_bad_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        agent_output.parse_deepfuzz(json.dumps({**DEEPFUZZ, **change}))


def test_parse_deepfuzz_wants_one_line_and_reports_a_failed_start() -> None:
    with pytest.raises(ValueError, match="expected one JSON line, got 2"):
        agent_output.parse_deepfuzz(json.dumps(DEEPFUZZ) + "\n" + json.dumps(DEEPFUZZ))
    with pytest.raises(ValueError, match="could not start: /dev/vrhp: No such file"):
        agent_output.parse_deepfuzz('{"error": "/dev/vrhp: No such file or directory"}')
