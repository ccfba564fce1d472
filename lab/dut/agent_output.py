"""Typed views of what `vrhp-agent` (and the guest tools beside it) print, read strictly.

`vrhp-agent` prints one JSON object per command (``dump`` prints JSON lines; ``run``
rewrites a status file; ``vrhp_deepfuzz`` prints one JSON line). The ``parse_*`` functions
turn that text into frozen dataclasses and raise ``ValueError`` naming the command and the
field when the text is malformed. The agent's commands are described in ``kmod/README.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lab.dut.abi import BUCKET_SIZE, Outcome

# The agent's names of the module's tables and backends (enum vrhp_table_id, vrhp_backend)
TABLES = ("flow", "bridge")
BACKENDS = ("none", "btable", "hugepage")


# ---------------------------------------------------------------- field access


def _load(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: agent output is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: agent output is not a JSON object")
    return data


def _obj(d: dict[str, Any], key: str, ctx: str) -> dict[str, Any]:
    v = d.get(key)
    if not isinstance(v, dict):
        raise ValueError(f"{ctx}: field '{key}' missing or not an object")
    return v


def _int(d: dict[str, Any], key: str, ctx: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{ctx}: field '{key}' missing or not an integer (got {v!r})")
    if v < 0:
        raise ValueError(f"{ctx}: field '{key}' is negative ({v})")
    return v


def _opt_int(d: dict[str, Any], key: str, ctx: str) -> int | None:
    if key in d and d[key] is None:
        return None
    return _int(d, key, ctx)


def _opt_obj(d: dict[str, Any], key: str, ctx: str) -> dict[str, Any] | None:
    if key in d and d[key] is None:
        return None
    return _obj(d, key, ctx)


def _float(d: dict[str, Any], key: str, ctx: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{ctx}: field '{key}' missing or not a number (got {v!r})")
    return float(v)


def _str(d: dict[str, Any], key: str, ctx: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise ValueError(f"{ctx}: field '{key}' missing or not a string (got {v!r})")
    return v


def _opt_str(d: dict[str, Any], key: str, ctx: str) -> str | None:
    if key in d and d[key] is None:
        return None
    return _str(d, key, ctx)


def _bool(d: dict[str, Any], key: str, ctx: str) -> bool:
    v = d.get(key)
    if not isinstance(v, bool):
        raise ValueError(f"{ctx}: field '{key}' missing or not a boolean (got {v!r})")
    return v


def _opt_bool(d: dict[str, Any], key: str, ctx: str) -> bool | None:
    if key in d and d[key] is None:
        return None
    return _bool(d, key, ctx)


def _choice(d: dict[str, Any], key: str, ctx: str, choices: tuple[str, ...]) -> str:
    v = _str(d, key, ctx)
    if v not in choices:
        raise ValueError(f"{ctx}: field '{key}' is {v!r}, expected one of {choices}")
    return v


def _outcome(d: dict[str, Any], key: str, ctx: str) -> Outcome:
    v = _str(d, key, ctx)
    try:
        return Outcome[v]
    except KeyError:
        raise ValueError(f"{ctx}: field '{key}' is unknown outcome {v!r}") from None


def _tables(d: dict[str, Any], ctx: str) -> dict[str, dict[str, Any]]:
    tabs = _obj(d, "tables", ctx)
    for name, v in tabs.items():
        if name not in TABLES:
            raise ValueError(f"{ctx}: field 'tables' has unknown table {name!r}")
        if not isinstance(v, dict):
            raise ValueError(f"{ctx}: field 'tables.{name}' is not an object")
    return tabs


# ---------------------------------------------------------------- info


@dataclass(frozen=True)
class TableInfo:
    entries: int
    oentries: int
    entry_size: int
    table_bytes: int
    file_bytes: int
    backend: str
    generation: int
    instance: int
    hash_seed: int
    nr_chunks: int


@dataclass(frozen=True)
class SegmentInfo:
    table: str
    path: str
    offset: int
    uaddr: int
    len: int
    page_size: int
    nr_hpages: int
    contiguous: bool
    vmapped: bool
    detached: bool

    @property
    def end(self) -> int:
        """File offset just past the segment."""
        return self.offset + self.len

    def pages_spanned(self) -> int:
        """Huge pages the segment's file range touches."""
        first = self.offset // self.page_size
        return (self.end + self.page_size - 1) // self.page_size - first


@dataclass(frozen=True)
class Info:
    abi_version: int
    module_version: int
    layout_version: int
    agent_layout_version: int
    version_tag: str
    mem: str
    state: str
    fallback: bool
    last_outcome: Outcome
    tables: dict[str, TableInfo]
    segments: list[SegmentInfo]


def _table_info(d: dict[str, Any], ctx: str) -> TableInfo:
    return TableInfo(
        entries=_int(d, "entries", ctx),
        oentries=_int(d, "oentries", ctx),
        entry_size=_int(d, "entry_size", ctx),
        table_bytes=_int(d, "table_bytes", ctx),
        file_bytes=_int(d, "file_bytes", ctx),
        backend=_choice(d, "backend", ctx, BACKENDS),
        generation=_int(d, "generation", ctx),
        instance=_int(d, "instance", ctx),
        hash_seed=_int(d, "hash_seed", ctx),
        nr_chunks=_int(d, "nr_chunks", ctx),
    )


def parse_info(text: str) -> Info:
    ctx = "info"
    d = _load(text, ctx)
    tabs = _tables(d, ctx)
    tables = {}
    for name in TABLES:
        if name not in tabs:
            raise ValueError(f"{ctx}: field 'tables.{name}' missing")
        tables[name] = _table_info(tabs[name], f"{ctx}.tables.{name}")
    segs_raw = d.get("segments")
    if not isinstance(segs_raw, list):
        raise ValueError(f"{ctx}: field 'segments' missing or not a list")
    segments = []
    for i, s in enumerate(segs_raw):
        sctx = f"{ctx}.segments[{i}]"
        if not isinstance(s, dict):
            raise ValueError(f"{sctx}: not an object")
        segments.append(
            SegmentInfo(
                table=_choice(s, "table", sctx, TABLES),
                path=_str(s, "path", sctx),
                offset=_int(s, "offset", sctx),
                uaddr=_int(s, "uaddr", sctx),
                len=_int(s, "len", sctx),
                page_size=_int(s, "page_size", sctx),
                nr_hpages=_int(s, "nr_hpages", sctx),
                contiguous=_bool(s, "contiguous", sctx),
                vmapped=_bool(s, "vmapped", sctx),
                detached=_bool(s, "detached", sctx),
            )
        )
    return Info(
        abi_version=_int(d, "abi_version", ctx),
        module_version=_int(d, "module_version", ctx),
        layout_version=_int(d, "layout_version", ctx),
        agent_layout_version=_int(d, "agent_layout_version", ctx),
        version_tag=_str(d, "version_tag", ctx),
        mem=_choice(d, "mem", ctx, ("btable", "hugepage")),
        state=_choice(d, "state", ctx, ("uninit", "ready")),
        fallback=_bool(d, "fallback", ctx),
        last_outcome=_outcome(d, "last_outcome", ctx),
        tables=tables,
        segments=segments,
    )


# ---------------------------------------------------------------- setup

ACTIONS = ("none", "fresh", "adopted", "fallback", "mismatch", "failed")


@dataclass(frozen=True)
class SetupTable:
    path: str
    offset: int
    mapped: bool
    map_error: str
    backend: str
    action: str
    error: str
    generation: int
    table_bytes: int
    file_bytes: int
    mapped_bytes: int
    header_matches_module: bool | None


@dataclass(frozen=True)
class SetupOutcome:
    outcome: Outcome
    outcome_code: int
    reset: bool
    one_file: bool
    mount: str
    page_size: int
    tables: dict[str, SetupTable]

    @property
    def ok(self) -> bool:
        """Tables exist, and every table the agent mapped is the one the module holds."""
        return self.outcome in (Outcome.SUCCESS, Outcome.ALREADY_INITIALISED) and all(
            t.header_matches_module is not False for t in self.tables.values())


def parse_setup(text: str) -> SetupOutcome:
    ctx = "setup"
    d = _load(text, ctx)
    outcome = _outcome(d, "outcome", ctx)
    code = _int(d, "outcome_code", ctx)
    if code != outcome.value:
        raise ValueError(
            f"{ctx}: field 'outcome_code' {code} disagrees with outcome {outcome.name}"
        )
    tabs = _tables(d, ctx)
    tables = {}
    for name, t in tabs.items():
        tctx = f"{ctx}.tables.{name}"
        tables[name] = SetupTable(
            path=_str(t, "path", tctx),
            offset=_int(t, "offset", tctx),
            mapped=_bool(t, "mapped", tctx),
            map_error=_str(t, "map_error", tctx),
            backend=_choice(t, "backend", tctx, BACKENDS),
            action=_choice(t, "action", tctx, ACTIONS),
            error=_str(t, "error", tctx),
            generation=_int(t, "generation", tctx),
            table_bytes=_int(t, "table_bytes", tctx),
            file_bytes=_int(t, "file_bytes", tctx),
            mapped_bytes=_int(t, "mapped_bytes", tctx),
            header_matches_module=_opt_bool(t, "header_matches_module", tctx),
        )
    return SetupOutcome(
        outcome=outcome,
        outcome_code=code,
        reset=_bool(d, "reset", ctx),
        one_file=_bool(d, "one_file", ctx),
        mount=_str(d, "mount", ctx),
        page_size=_int(d, "page_size", ctx),
        tables=tables,
    )


# ---------------------------------------------------------------- scan


@dataclass(frozen=True)
class ScanTable:
    backend: str
    source: str
    generation: int
    entries: int
    oentries: int
    used: int
    main_used: int
    oflow_used: int
    oldest_last_used_ns: int
    newest_last_used_ns: int
    bucket_histogram: tuple[int, int, int, int, int]
    chained_buckets: int
    bytes_scanned: int
    elapsed_ns: int
    mib_per_s: float


def _histogram(d: dict[str, Any], ctx: str) -> tuple[int, int, int, int, int]:
    v = d.get("bucket_histogram")
    if (
        not isinstance(v, list)
        or len(v) != BUCKET_SIZE + 1
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)
    ):
        raise ValueError(f"{ctx}: field 'bucket_histogram' must be 5 non-negative integers")
    return (v[0], v[1], v[2], v[3], v[4])


def parse_scan(text: str) -> dict[str, ScanTable]:
    ctx = "scan"
    d = _load(text, ctx)
    out = {}
    for name, t in _tables(d, ctx).items():
        tctx = f"{ctx}.tables.{name}"
        st = ScanTable(
            backend=_choice(t, "backend", tctx, BACKENDS),
            source=_str(t, "source", tctx),
            generation=_int(t, "generation", tctx),
            entries=_int(t, "entries", tctx),
            oentries=_int(t, "oentries", tctx),
            used=_int(t, "used", tctx),
            main_used=_int(t, "main_used", tctx),
            oflow_used=_int(t, "oflow_used", tctx),
            oldest_last_used_ns=_int(t, "oldest_last_used_ns", tctx),
            newest_last_used_ns=_int(t, "newest_last_used_ns", tctx),
            bucket_histogram=_histogram(t, tctx),
            chained_buckets=_int(t, "chained_buckets", tctx),
            bytes_scanned=_int(t, "bytes_scanned", tctx),
            elapsed_ns=_int(t, "elapsed_ns", tctx),
            mib_per_s=_float(t, "mib_per_s", tctx),
        )
        if st.used != st.main_used + st.oflow_used:
            raise ValueError(f"{tctx}: field 'used' != main_used + oflow_used")
        if sum(st.bucket_histogram) != st.entries // BUCKET_SIZE:
            raise ValueError(f"{tctx}: field 'bucket_histogram' does not sum to the bucket count")
        out[name] = st
    return out


# ---------------------------------------------------------------- stats


@dataclass(frozen=True)
class TableStats:
    entries: int
    oentries: int
    used: int
    main_used: int
    oflow_used: int
    inserts: int
    deletes: int
    insert_failures: int
    nospc_failures: int
    longest_chain: int


def parse_stats(text: str) -> dict[str, TableStats]:
    ctx = "stats"
    d = _load(text, ctx)
    out = {}
    for name, t in _tables(d, ctx).items():
        tctx = f"{ctx}.tables.{name}"
        out[name] = TableStats(
            **{
                f: _int(t, f, tctx)
                for f in (
                    "entries",
                    "oentries",
                    "used",
                    "main_used",
                    "oflow_used",
                    "inserts",
                    "deletes",
                    "insert_failures",
                    "nospc_failures",
                    "longest_chain",
                )
            }
        )
    return out


# ---------------------------------------------------------------- fill


@dataclass(frozen=True)
class FillResult:
    table: str
    requested: int
    inserted: int
    failed: int
    first_fail_index: int | None
    first_fail_error: str | None
    first_fail_key: dict[str, Any] | None
    elapsed_ns: int
    entries_per_s: float

    @property
    def full(self) -> bool:
        """True when the fill ran into a full bucket with a full overflow area."""
        return self.first_fail_error == "ENOSPC"


def parse_fill(text: str) -> FillResult:
    ctx = "fill"
    d = _load(text, ctx)
    r = FillResult(
        table=_choice(d, "table", ctx, TABLES),
        requested=_int(d, "requested", ctx),
        inserted=_int(d, "inserted", ctx),
        failed=_int(d, "failed", ctx),
        first_fail_index=_opt_int(d, "first_fail_index", ctx),
        first_fail_error=_opt_str(d, "first_fail_error", ctx),
        first_fail_key=_opt_obj(d, "first_fail_key", ctx),
        elapsed_ns=_int(d, "elapsed_ns", ctx),
        entries_per_s=_float(d, "entries_per_s", ctx),
    )
    if r.inserted + r.failed > r.requested:
        raise ValueError(f"{ctx}: field 'inserted' + 'failed' exceeds 'requested'")
    if (r.failed == 0) != (r.first_fail_index is None):
        raise ValueError(f"{ctx}: field 'first_fail_index' inconsistent with 'failed'")
    if (r.first_fail_index is None) != (r.first_fail_key is None):
        raise ValueError(f"{ctx}: field 'first_fail_key' inconsistent with 'first_fail_index'")
    return r


def key_args(table: str, key: dict[str, Any]) -> list[str]:
    """The `vrhp-agent add/get/del` key arguments of a key object the agent printed."""
    ctx = f"{table} key"
    if table == "flow":
        return [str(_int(key, "vrf", ctx)), _str(key, "src", ctx), _str(key, "dst", ctx),
                str(_int(key, "proto", ctx)), str(_int(key, "sport", ctx)),
                str(_int(key, "dport", ctx))]
    if table == "bridge":
        return [str(_int(key, "vrf", ctx)), _str(key, "mac", ctx)]
    raise ValueError(f"{ctx}: unknown table")


# ---------------------------------------------------------------- bench


@dataclass(frozen=True)
class BenchResult:
    fill_requested: int
    fill_inserted: int
    fill_entries_per_s: float
    backend: str
    scan_bytes: int
    scan_mib_per_s: float
    map_read_mib_per_s: float
    anon_read_mib_per_s: float
    scan_vs_anon: float
    map_vs_anon: float


def parse_bench(text: str) -> BenchResult:
    ctx = "bench"
    d = _load(text, ctx)
    return BenchResult(
        fill_requested=_int(d, "fill_requested", ctx),
        fill_inserted=_int(d, "fill_inserted", ctx),
        fill_entries_per_s=_float(d, "fill_entries_per_s", ctx),
        backend=_choice(d, "backend", ctx, BACKENDS),
        scan_bytes=_int(d, "scan_bytes", ctx),
        scan_mib_per_s=_float(d, "scan_mib_per_s", ctx),
        map_read_mib_per_s=_float(d, "map_read_mib_per_s", ctx),
        anon_read_mib_per_s=_float(d, "anon_read_mib_per_s", ctx),
        scan_vs_anon=_float(d, "scan_vs_anon", ctx),
        map_vs_anon=_float(d, "map_vs_anon", ctx),
    )


def parse_dump(text: str) -> list[dict[str, Any]]:
    """`dump` output: one JSON object per line, sorted by key."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            v = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"dump: line {n} is not JSON: {e}") from None
        if not isinstance(v, dict):
            raise ValueError(f"dump: line {n} is not a JSON object")
        out.append(v)
    return out


# ---------------------------------------------------------------- pattern, lookup, remap


@dataclass(frozen=True)
class PatternResult:
    """`pattern`: the module wrote, the agent read back every byte through its mapping."""

    table: str
    seed: int
    backend: str
    source: str
    bytes_written: int
    bytes_checked: int
    mismatched_words: int
    mismatched_bytes: int
    first_mismatch_offset: int | None
    kernel_write_ns: int
    agent_read_ns: int


def parse_pattern(text: str) -> PatternResult:
    ctx = "pattern"
    d = _load(text, ctx)
    return PatternResult(
        table=_choice(d, "table", ctx, TABLES),
        seed=_int(d, "seed", ctx),
        backend=_choice(d, "backend", ctx, BACKENDS),
        source=_str(d, "source", ctx),
        bytes_written=_int(d, "bytes_written", ctx),
        bytes_checked=_int(d, "bytes_checked", ctx),
        mismatched_words=_int(d, "mismatched_words", ctx),
        mismatched_bytes=_int(d, "mismatched_bytes", ctx),
        first_mismatch_offset=_opt_int(d, "first_mismatch_offset", ctx),
        kernel_write_ns=_int(d, "kernel_write_ns", ctx),
        agent_read_ns=_int(d, "agent_read_ns", ctx),
    )


@dataclass(frozen=True)
class LookupResult:
    """`lookup`: every line of a dump looked up through the module."""

    table: str
    lines: int
    found: int
    missing: int
    mismatched: int
    first_bad_line: int


def parse_lookup(text: str) -> LookupResult:
    ctx = "lookup"
    d = _load(text, ctx)
    r = LookupResult(
        table=_choice(d, "table", ctx, TABLES),
        **{f: _int(d, f, ctx) for f in ("lines", "found", "missing", "mismatched",
                                          "first_bad_line")},
    )
    if r.found + r.missing + r.mismatched != r.lines:
        raise ValueError(f"{ctx}: found + missing + mismatched != lines")
    return r


@dataclass(frozen=True)
class RemapResult:
    table: str
    backend: str
    iterations: int
    bad_headers: int
    bytes_per_map: int
    elapsed_ns: int


def parse_remap(text: str) -> RemapResult:
    ctx = "remap"
    d = _load(text, ctx)
    return RemapResult(
        table=_choice(d, "table", ctx, TABLES),
        backend=_choice(d, "backend", ctx, BACKENDS),
        **{f: _int(d, f, ctx) for f in ("iterations", "bad_headers", "bytes_per_map",
                                          "elapsed_ns")},
    )


DAEMON_STATES = ("starting", "no-module", "not-hugepage", "setup", "error", "aging", "stopped")


@dataclass(frozen=True)
class DaemonTable:
    mapped: bool
    generation: int
    instance: int
    examined: int  # live entries the last aging pass visited
    aged_total: int


@dataclass(frozen=True)
class DaemonStatus:
    """The status file of `vrhp-agent run`, rewritten after every cycle."""

    pid: int
    state: str
    cycles: int
    module_version: int
    setups: int
    last_setup_exit: int
    remaps: int
    module_gone: int
    cutoff_ns: int
    last_cycle_ns: int
    error: str
    tables: dict[str, DaemonTable]


def parse_daemon_status(text: str) -> DaemonStatus:
    ctx = "run status"
    d = _load(text, ctx)
    tables = _obj(d, "tables", ctx)
    return DaemonStatus(
        state=_choice(d, "state", ctx, DAEMON_STATES),
        error=_str(d, "error", ctx),
        tables={t: DaemonTable(mapped=_bool(_obj(tables, t, ctx), "mapped", f"{ctx} {t}"),
                               **{f: _int(_obj(tables, t, ctx), f, f"{ctx} {t}")
                                  for f in ("generation", "instance", "examined",
                                            "aged_total")})
                for t in TABLES},
        **{f: _int(d, f, ctx) for f in ("pid", "cycles", "module_version", "setups",
                                         "last_setup_exit", "remaps", "module_gone",
                                         "cutoff_ns", "last_cycle_ns")},
    )


# ---------------------------------------------------------------- deep fuzzer

FUZZ_BACKENDS = ("hugepage", "btable")


@dataclass(frozen=True)
class DeepFuzzRun:
    """The JSON object of `vrhp_deepfuzz` (lab/guestsrc/vrhp_deepfuzz.c).

    `reached` and `reach_calls` are the module's reach counters (its `reach` parameter)
    after the run less before it: per ioctl, the calls that got past input validation
    into the body, and all calls; the hp_* and mmap rows count stages (kmod/README.md).
    """

    seed: int
    calls: int
    threads: int
    backend: str
    ioctls: int
    ok: int
    elapsed_s: float
    calls_per_s: float
    errno: dict[str, dict[str, int]]
    outcomes: dict[str, int]
    ops: dict[str, int]
    op_ms: dict[str, int]  # milliseconds spent in each kind of operation, all threads
    events: dict[str, int]  # sigbus, signals, forks, killed, skipped_ops
    reached: dict[str, int]
    reach_calls: dict[str, int]
    violations: int
    violation_notes: tuple[str, ...]
    skipped: tuple[str, ...]
    adopt: dict[str, Any] | None
    setup: dict[str, Any] | None
    final: dict[str, Any] | None

    def unreached(self, names: tuple[str, ...] | list[str]) -> list[str]:
        """Those of `names` whose body no call reached (a row the module lacks counts 0)."""
        return [n for n in names if self.reached.get(n, 0) <= 0]


def _counts(d: dict[str, Any], key: str, ctx: str) -> dict[str, int]:
    obj = _obj(d, key, ctx)
    return {name: _int(obj, name, f"{ctx} {key}") for name in obj}


def _strings(d: dict[str, Any], key: str, ctx: str) -> tuple[str, ...]:
    v = d.get(key)
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError(f"{ctx}: field '{key}' missing or not a list of strings (got {v!r})")
    return tuple(v)


def parse_deepfuzz(text: str) -> DeepFuzzRun:
    ctx = "vrhp_deepfuzz"
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if len(lines) != 1:
        raise ValueError(f"{ctx}: expected one JSON line, got {len(lines)}: {text[:300]!r}")
    d = _load(lines[0], ctx)
    if "error" in d:
        raise ValueError(f"{ctx}: could not start: {d['error']}")
    errno_obj = _obj(d, "errno", ctx)
    return DeepFuzzRun(
        backend=_choice(d, "backend", ctx, FUZZ_BACKENDS),
        elapsed_s=_float(d, "elapsed_s", ctx),
        calls_per_s=_float(d, "calls_per_s", ctx),
        errno={ioc: _counts(errno_obj, ioc, f"{ctx} errno") for ioc in errno_obj},
        outcomes=_counts(d, "outcomes", ctx),
        ops=_counts(d, "ops", ctx),
        op_ms=_counts(d, "op_ms", ctx),
        events={f: _int(d, f, ctx) for f in ("sigbus", "signals", "forks", "killed",
                                              "skipped_ops")},
        reached=_counts(d, "reached", ctx),
        reach_calls=_counts(d, "reach_calls", ctx),
        violation_notes=_strings(d, "violation_notes", ctx),
        skipped=_strings(d, "skipped", ctx),
        adopt=_opt_obj(d, "adopt", ctx),
        setup=_opt_obj(d, "setup", ctx),
        final=_opt_obj(d, "final", ctx),
        **{f: _int(d, f, ctx) for f in ("seed", "calls", "threads", "ioctls", "ok",
                                         "violations")},
    )
