"""Typed views of what `vrhp-agent` (and the guest tools beside it) print, read strictly.

`vrhp-agent` prints one JSON object per command (``dump`` prints JSON lines; ``run``
rewrites a status file; ``vrhp_deepfuzz`` prints one JSON line). The ``parse_*`` functions
turn that text into frozen dataclasses and raise ``ValueError`` naming the command and the
field when the text is malformed. The agent's commands are described in ``kmod/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lab.dut.abi import BUCKET_SIZE, Outcome
from lab.fields import (
    boolean,
    choice,
    counts,
    integer,
    integers,
    load_object,
    number,
    obj,
    objects,
    opt_boolean,
    opt_integer,
    opt_obj,
    opt_string,
    string,
    strings,
)

# The agent's names of the module's tables and backends (enum vrhp_table_id, vrhp_backend)
TABLES = ("flow", "bridge")
BACKENDS = ("none", "btable", "hugepage")


# ---------------------------------------------------------------- field access


def _outcome(d: dict[str, Any], key: str, ctx: str) -> Outcome:
    return Outcome[choice(d, key, ctx, tuple(Outcome.__members__))]


def _tables(d: dict[str, Any], ctx: str) -> dict[str, dict[str, Any]]:
    tabs = obj(d, "tables", ctx)
    for name in tabs:
        if name not in TABLES:
            raise ValueError(f"{ctx}: field 'tables' has unknown table {name!r}")
        obj(tabs, name, f"{ctx}.tables")
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
        entries=integer(d, "entries", ctx, low=0),
        oentries=integer(d, "oentries", ctx, low=0),
        entry_size=integer(d, "entry_size", ctx, low=0),
        table_bytes=integer(d, "table_bytes", ctx, low=0),
        file_bytes=integer(d, "file_bytes", ctx, low=0),
        backend=choice(d, "backend", ctx, BACKENDS),
        generation=integer(d, "generation", ctx, low=0),
        instance=integer(d, "instance", ctx, low=0),
        hash_seed=integer(d, "hash_seed", ctx, low=0),
        nr_chunks=integer(d, "nr_chunks", ctx, low=0),
    )


def parse_info(text: str) -> Info:
    ctx = "info"
    d = load_object(text, ctx, "agent output")
    tabs = _tables(d, ctx)
    tables = {}
    for name in TABLES:
        if name not in tabs:
            raise ValueError(f"{ctx}: field 'tables.{name}' missing")
        tables[name] = _table_info(tabs[name], f"{ctx}.tables.{name}")
    segments = []
    for i, s in enumerate(objects(d, "segments", ctx)):
        sctx = f"{ctx}.segments[{i}]"
        segments.append(
            SegmentInfo(
                table=choice(s, "table", sctx, TABLES),
                path=string(s, "path", sctx),
                offset=integer(s, "offset", sctx, low=0),
                uaddr=integer(s, "uaddr", sctx, low=0),
                len=integer(s, "len", sctx, low=0),
                page_size=integer(s, "page_size", sctx, low=0),
                nr_hpages=integer(s, "nr_hpages", sctx, low=0),
                contiguous=boolean(s, "contiguous", sctx),
                vmapped=boolean(s, "vmapped", sctx),
                detached=boolean(s, "detached", sctx),
            )
        )
    return Info(
        abi_version=integer(d, "abi_version", ctx, low=0),
        module_version=integer(d, "module_version", ctx, low=0),
        layout_version=integer(d, "layout_version", ctx, low=0),
        agent_layout_version=integer(d, "agent_layout_version", ctx, low=0),
        version_tag=string(d, "version_tag", ctx),
        mem=choice(d, "mem", ctx, ("btable", "hugepage")),
        state=choice(d, "state", ctx, ("uninit", "ready")),
        fallback=boolean(d, "fallback", ctx),
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
    d = load_object(text, ctx, "agent output")
    outcome = _outcome(d, "outcome", ctx)
    code = integer(d, "outcome_code", ctx, low=0)
    if code != outcome.value:
        raise ValueError(
            f"{ctx}: field 'outcome_code' {code} disagrees with outcome {outcome.name}"
        )
    tabs = _tables(d, ctx)
    tables = {}
    for name, t in tabs.items():
        tctx = f"{ctx}.tables.{name}"
        tables[name] = SetupTable(
            path=string(t, "path", tctx),
            offset=integer(t, "offset", tctx, low=0),
            mapped=boolean(t, "mapped", tctx),
            map_error=string(t, "map_error", tctx),
            backend=choice(t, "backend", tctx, BACKENDS),
            action=choice(t, "action", tctx, ACTIONS),
            error=string(t, "error", tctx),
            generation=integer(t, "generation", tctx, low=0),
            table_bytes=integer(t, "table_bytes", tctx, low=0),
            file_bytes=integer(t, "file_bytes", tctx, low=0),
            mapped_bytes=integer(t, "mapped_bytes", tctx, low=0),
            header_matches_module=opt_boolean(t, "header_matches_module", tctx),
        )
    return SetupOutcome(
        outcome=outcome,
        outcome_code=code,
        reset=boolean(d, "reset", ctx),
        one_file=boolean(d, "one_file", ctx),
        mount=string(d, "mount", ctx),
        page_size=integer(d, "page_size", ctx, low=0),
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
    v = integers(d, "bucket_histogram", ctx, low=0, length=BUCKET_SIZE + 1)
    return (v[0], v[1], v[2], v[3], v[4])


def parse_scan(text: str) -> dict[str, ScanTable]:
    ctx = "scan"
    d = load_object(text, ctx, "agent output")
    out = {}
    for name, t in _tables(d, ctx).items():
        tctx = f"{ctx}.tables.{name}"
        st = ScanTable(
            backend=choice(t, "backend", tctx, BACKENDS),
            source=string(t, "source", tctx),
            generation=integer(t, "generation", tctx, low=0),
            entries=integer(t, "entries", tctx, low=0),
            oentries=integer(t, "oentries", tctx, low=0),
            used=integer(t, "used", tctx, low=0),
            main_used=integer(t, "main_used", tctx, low=0),
            oflow_used=integer(t, "oflow_used", tctx, low=0),
            oldest_last_used_ns=integer(t, "oldest_last_used_ns", tctx, low=0),
            newest_last_used_ns=integer(t, "newest_last_used_ns", tctx, low=0),
            bucket_histogram=_histogram(t, tctx),
            chained_buckets=integer(t, "chained_buckets", tctx, low=0),
            bytes_scanned=integer(t, "bytes_scanned", tctx, low=0),
            elapsed_ns=integer(t, "elapsed_ns", tctx, low=0),
            mib_per_s=number(t, "mib_per_s", tctx),
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
    d = load_object(text, ctx, "agent output")
    out = {}
    for name, t in _tables(d, ctx).items():
        tctx = f"{ctx}.tables.{name}"
        out[name] = TableStats(
            **{
                f: integer(t, f, tctx, low=0)
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
    d = load_object(text, ctx, "agent output")
    r = FillResult(
        table=choice(d, "table", ctx, TABLES),
        requested=integer(d, "requested", ctx, low=0),
        inserted=integer(d, "inserted", ctx, low=0),
        failed=integer(d, "failed", ctx, low=0),
        first_fail_index=opt_integer(d, "first_fail_index", ctx, low=0),
        first_fail_error=opt_string(d, "first_fail_error", ctx),
        first_fail_key=opt_obj(d, "first_fail_key", ctx),
        elapsed_ns=integer(d, "elapsed_ns", ctx, low=0),
        entries_per_s=number(d, "entries_per_s", ctx),
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
        return [str(integer(key, "vrf", ctx, low=0)), string(key, "src", ctx),
                string(key, "dst", ctx), str(integer(key, "proto", ctx, low=0)),
                str(integer(key, "sport", ctx, low=0)), str(integer(key, "dport", ctx, low=0))]
    if table == "bridge":
        return [str(integer(key, "vrf", ctx, low=0)), string(key, "mac", ctx)]
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
    d = load_object(text, ctx, "agent output")
    return BenchResult(
        fill_requested=integer(d, "fill_requested", ctx, low=0),
        fill_inserted=integer(d, "fill_inserted", ctx, low=0),
        fill_entries_per_s=number(d, "fill_entries_per_s", ctx),
        backend=choice(d, "backend", ctx, BACKENDS),
        scan_bytes=integer(d, "scan_bytes", ctx, low=0),
        scan_mib_per_s=number(d, "scan_mib_per_s", ctx),
        map_read_mib_per_s=number(d, "map_read_mib_per_s", ctx),
        anon_read_mib_per_s=number(d, "anon_read_mib_per_s", ctx),
        scan_vs_anon=number(d, "scan_vs_anon", ctx),
        map_vs_anon=number(d, "map_vs_anon", ctx),
    )


def parse_dump(text: str) -> list[dict[str, Any]]:
    """`dump` output: one JSON object per line, sorted by key."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        out.append(load_object(line, "dump", f"line {n}"))
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
    d = load_object(text, ctx, "agent output")
    return PatternResult(
        table=choice(d, "table", ctx, TABLES),
        seed=integer(d, "seed", ctx, low=0),
        backend=choice(d, "backend", ctx, BACKENDS),
        source=string(d, "source", ctx),
        bytes_written=integer(d, "bytes_written", ctx, low=0),
        bytes_checked=integer(d, "bytes_checked", ctx, low=0),
        mismatched_words=integer(d, "mismatched_words", ctx, low=0),
        mismatched_bytes=integer(d, "mismatched_bytes", ctx, low=0),
        first_mismatch_offset=opt_integer(d, "first_mismatch_offset", ctx, low=0),
        kernel_write_ns=integer(d, "kernel_write_ns", ctx, low=0),
        agent_read_ns=integer(d, "agent_read_ns", ctx, low=0),
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
    d = load_object(text, ctx, "agent output")
    r = LookupResult(
        table=choice(d, "table", ctx, TABLES),
        **{f: integer(d, f, ctx, low=0) for f in ("lines", "found", "missing", "mismatched",
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
    d = load_object(text, ctx, "agent output")
    return RemapResult(
        table=choice(d, "table", ctx, TABLES),
        backend=choice(d, "backend", ctx, BACKENDS),
        **{f: integer(d, f, ctx, low=0) for f in ("iterations", "bad_headers", "bytes_per_map",
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
    d = load_object(text, ctx, "agent output")
    tables = obj(d, "tables", ctx)
    return DaemonStatus(
        state=choice(d, "state", ctx, DAEMON_STATES),
        error=string(d, "error", ctx),
        tables={t: DaemonTable(mapped=boolean(obj(tables, t, ctx), "mapped", f"{ctx} {t}"),
                               **{f: integer(obj(tables, t, ctx), f, f"{ctx} {t}", low=0)
                                  for f in ("generation", "instance", "examined",
                                            "aged_total")})
                for t in TABLES},
        **{f: integer(d, f, ctx, low=0) for f in ("pid", "cycles", "module_version", "setups",
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


def parse_deepfuzz(text: str) -> DeepFuzzRun:
    ctx = "vrhp_deepfuzz"
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if len(lines) != 1:
        raise ValueError(f"{ctx}: expected one JSON line, got {len(lines)}: {text[:300]!r}")
    d = load_object(lines[0], ctx, "agent output")
    if "error" in d:
        raise ValueError(f"{ctx}: could not start: {d['error']}")
    errno_obj = obj(d, "errno", ctx)
    return DeepFuzzRun(
        backend=choice(d, "backend", ctx, FUZZ_BACKENDS),
        elapsed_s=number(d, "elapsed_s", ctx),
        calls_per_s=number(d, "calls_per_s", ctx),
        errno={ioc: counts(errno_obj, ioc, f"{ctx}.errno") for ioc in errno_obj},
        outcomes=counts(d, "outcomes", ctx),
        ops=counts(d, "ops", ctx),
        op_ms=counts(d, "op_ms", ctx),
        events={f: integer(d, f, ctx, low=0) for f in ("sigbus", "signals", "forks", "killed",
                                              "skipped_ops")},
        reached=counts(d, "reached", ctx),
        reach_calls=counts(d, "reach_calls", ctx),
        violation_notes=strings(d, "violation_notes", ctx),
        skipped=strings(d, "skipped", ctx),
        adopt=opt_obj(d, "adopt", ctx),
        setup=opt_obj(d, "setup", ctx),
        final=opt_obj(d, "final", ctx),
        **{f: integer(d, f, ctx, low=0) for f in ("seed", "calls", "threads", "ioctls", "ok",
                                         "violations")},
    )
