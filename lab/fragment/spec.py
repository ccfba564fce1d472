"""Fragmentation profiles, the guest fragmenter's command line and the typed view of its results.

Two guest-side programs live in ``lab/guestsrc/``:

``fragment`` (``fragment.c``, built static on the host)
    Fills the guest's memory until no free block of the target order is left outside
    ZONE_DMA, then frees every other page / file / entry so what is free stays in
    small pieces, and holds that state until released. See :class:`FragmentSpec` for
    the options and :class:`FragmentSummary` for the JSON it prints.

``hplab_allocprobe.ko`` (``allocprobe/``)
    A module whose init attempts ``count`` allocations of ``order`` pages with the
    chosen GFP flags, logs ONE line ``hplab_allocprobe: {json}``, frees everything
    and returns -ECANCELED so it never stays loaded (insmod "fails" with "Operation
    canceled"; that is the normal outcome). See :class:`ProbeSpec`, :class:`ProbeResult`.

Every profile first takes all the free memory it does not need with pinned anonymous
memory (mlock, transparent huge pages where the kernel has them): whole blocks, fast.
It leaves ``area_mib`` free, and only that area gets the profile's own mechanism; the
pages the profile keeps there are what stops the free memory around them from merging.
The summary's ``blockers`` say what those pages are (``/proc/kpageflags``) and which
migratetypes the free pages sit in (``/proc/pagetypeinfo``).

``anon-pinned``
    Anonymous memory with MADV_NOHUGEPAGE touched until order-10 blocks are gone, one
    page in 8 kept and the rest MADV_DONTNEED, survivors mlock2(MLOCK_ONFAULT), with
    vm.compact_unevictable_allowed=0: defeats GFP_ATOMIC, __GFP_NORETRY and plain
    GFP_KERNEL (compaction cannot move the locked pages).
``pagecache``
    1 GiB files in ``dir`` filled (fallocate, else 1 MiB writes) until order-10 blocks
    are gone, then holes punched (tmpfs) or ranges dropped with POSIX_FADV_DONTNEED
    (disk file systems) so one page in 8 stays: the blockers are file pages.
``slab``
    System V messages of two kmalloc-4k objects each (unmovable slab pages), one in 64
    sent to a queue that is kept, the others to one that is removed in one call.
``mixed``
    Seeded random mix of the three, chunk by chunk.

The fill stops when free memory outside ZONE_DMA would drop below ``floor_mib``
(ZONE_DMA's pages count in MemFree but serve no ordinary allocation, so a floor on
MemFree alone let the OOM killer in). If a few blocks of the target order are left
under that floor, a finisher faults in mlocked transparent huge pages (order 9),
which only big blocks can serve, until none is left (target orders 9 and 10 only);
``held.thp_bytes`` says how much that took. The fill cannot take those blocks itself:
4 KiB allocations come from the smallest free blocks first, so the last order-10
blocks are what the floor, the zones' high watermarks and lowmem reserves leave
(about 25 MiB on a 5 GiB guest). A kernel without transparent huge pages (Debian's
rt flavour; ``thp`` is False in its summary) takes 4 KiB pages in bulk and has no THP
finisher; there, and wherever the THP finisher leaves blocks, a second finisher grows
the 2 MiB hugetlb pool by as many pages as there are free order-9 blocks outside
ZONE_DMA, above the same floor: ``held.pool_finish_bytes`` (0 in older summaries).
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from lab import fields
from lab.guest.memory import ZoneFree

PROFILES = ("anon-pinned", "pagecache", "slab", "mixed")
GFP_MODES = ("atomic", "kernel", "noretry", "retry_mayfail")

#: x86-64 Debian 6.1 and 6.12 kernels: buddy orders 0..10.
MAX_BUDDY_ORDER = 10
#: Below this the fragmenter's MemFree floor invites the OOM killer (the fragmenter
#: sets vm.min_free_kbytes=8192; the recipe was measured with 12 MiB).
SAFE_FLOOR_MIB = 8
DEFAULT_FLOOR_MIB = 12
DEFAULT_AREA_MIB = 448
#: Twice the 44 x 4 MiB chunks btable needs at default sizes: with this much free after
#: fragmenting, a refused btable load proves fragmentation, not exhaustion.
MIN_FREE_AFTER_MIB = 352
FAULTS = ("release-hang",)
PROBE_MAX_COUNT = 1024
PROBE_PREFIX = "hplab_allocprobe: "
SUMMARY_SCHEMA = 3
#: schema 2 summaries (before ``blockers.blocks_with``) still read, with that map empty
SUMMARY_SCHEMAS = (2, SUMMARY_SCHEMA)

#: fragment's exit status
EXIT_REACHED = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_MISSED = 3

_TAG = re.compile(r"[A-Za-z0-9_.-]{0,32}")


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Target:
    """When the fragmenter stops: at most ``max_free_blocks`` free blocks of ``order``
    outside ZONE_DMA, or an unusable index of at least ``unusable_index`` at ``order``
    (computed from buddyinfo over all zones but ZONE_DMA). Exactly one of the two."""

    order: int = 10
    max_free_blocks: int | None = 0
    unusable_index: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.order, bool) or not isinstance(self.order, int):
            raise ValueError(f"target order must be an integer, got {self.order!r}")
        if not 1 <= self.order <= MAX_BUDDY_ORDER:
            raise ValueError(
                f"target order {self.order} is impossible: buddy orders are 1..{MAX_BUDDY_ORDER}"
            )
        if (self.max_free_blocks is None) == (self.unusable_index is None):
            raise ValueError("target needs exactly one of max_free_blocks and unusable_index")
        if self.max_free_blocks is not None and self.max_free_blocks < 0:
            raise ValueError(f"max_free_blocks must be >= 0, got {self.max_free_blocks}")
        if self.unusable_index is not None and not (
            math.isfinite(self.unusable_index) and 0.0 < self.unusable_index <= 1.0
        ):
            raise ValueError(f"unusable_index must be in (0, 1], got {self.unusable_index}")

    @classmethod
    def blocks(cls, order: int = 10, max_free_blocks: int = 0) -> Target:
        return cls(order=order, max_free_blocks=max_free_blocks)

    @classmethod
    def unusable(cls, order: int, index: float) -> Target:
        return cls(order=order, max_free_blocks=None, unusable_index=index)

    def args(self) -> list[str]:
        out = ["--target-order", str(self.order)]
        if self.unusable_index is not None:
            out += ["--unusable-index", f"{self.unusable_index:.3f}"]
        else:
            out += ["--max-free-blocks", str(self.max_free_blocks)]
        return out


@dataclass(frozen=True)
class FragmentSpec:
    """One fragmenter run. Validation happens at construction; :meth:`check_machine`
    adds the checks that need the guest's MemTotal."""

    profile: str
    target: Target = field(default_factory=Target)
    seed: int = 1
    floor_mib: int = DEFAULT_FLOOR_MIB
    timeout_s: float = 600.0
    dir: str = "/tmp"
    sysctl: bool = True
    area_mib: int = DEFAULT_AREA_MIB
    fault: str | None = None  # a planted defect, one of FAULTS

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile {self.profile!r} is unknown (one of {', '.join(PROFILES)})")
        if not isinstance(self.target, Target):
            raise ValueError(f"target must be a Target, got {self.target!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.floor_mib, bool) or not isinstance(self.floor_mib, int):
            raise ValueError(f"floor_mib must be an integer, got {self.floor_mib!r}")
        if self.floor_mib < SAFE_FLOOR_MIB:
            raise ValueError(
                f"floor_mib {self.floor_mib} is below the safe minimum of {SAFE_FLOOR_MIB} MiB"
            )
        if not (math.isfinite(self.timeout_s) and 0 < self.timeout_s <= 86400):
            raise ValueError(f"timeout_s must be in (0, 86400], got {self.timeout_s}")
        if not self.dir.startswith("/") or len(self.dir) > 1024 or "\n" in self.dir:
            raise ValueError(f"dir must be an absolute path, got {self.dir!r}")
        if isinstance(self.area_mib, bool) or not isinstance(self.area_mib, int) \
                or self.area_mib < 16:
            raise ValueError(f"area_mib must be an integer >= 16, got {self.area_mib!r}")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"fault {self.fault!r} is unknown (one of {', '.join(FAULTS)})")

    def check_machine(self, mem_total_kib: int, max_order: int = MAX_BUDDY_ORDER) -> None:
        """Reject what is impossible on a machine with this MemTotal and buddy order."""
        if self.floor_mib * 1024 >= mem_total_kib:
            raise ValueError(
                f"floor_mib {self.floor_mib} is not below MemTotal ({mem_total_kib // 1024} MiB)"
            )
        if self.area_mib * 1024 >= mem_total_kib:
            raise ValueError(
                f"area_mib {self.area_mib} is not below MemTotal ({mem_total_kib // 1024} MiB)"
            )
        if self.target.order > max_order:
            raise ValueError(
                f"target order {self.target.order} is impossible: this kernel has 0..{max_order}"
            )

    def argv(
        self,
        binary: str,
        *,
        hold: bool = True,
        pidfile: str | None = None,
        summary: str | None = None,
        verbose: bool = False,
    ) -> list[str]:
        if hold and not pidfile:
            raise ValueError("pidfile is required with hold=True")
        out = [binary, "--profile", self.profile, "--seed", str(self.seed), *self.target.args()]
        out += ["--floor-mib", str(self.floor_mib), "--area-mib", str(self.area_mib),
                "--timeout", f"{self.timeout_s:g}"]
        if self.profile != "anon-pinned":
            out += ["--dir", self.dir]
        if not self.sysctl:
            out.append("--no-sysctl")
        if verbose:
            out.append("--verbose")
        if self.fault:
            out += ["--fault", self.fault]
        if hold:
            out.append("--hold")
        if pidfile:
            out += ["--pidfile", pidfile]
        if summary:
            out += ["--summary", summary]
        return out

    def command(self, binary: str, **kwargs: Any) -> str:
        """The same as :meth:`argv`, quoted for a shell (one SSH command)."""
        return shlex.join(self.argv(binary, **kwargs))


def release_argv(binary: str, pidfile: str, timeout_s: float = 60.0) -> list[str]:
    """Ask a held fragmenter to release and wait until it has (bounded)."""
    return [binary, "--release", "--pidfile", pidfile, "--timeout", f"{timeout_s:g}"]


def cleanup_argv(binary: str, files_dir: str) -> list[str]:
    """Remove what a fragmenter killed before releasing left: its message queues (they
    outlive the process) and its work directories under `files_dir`."""
    return [binary, "--cleanup", "--dir", files_dir]


@dataclass(frozen=True)
class ProbeSpec:
    """Parameters of one hplab_allocprobe load."""

    order: int = 10
    count: int = 64
    gfp: str = "kernel"
    tag: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.order <= MAX_BUDDY_ORDER:
            raise ValueError(f"probe order {self.order} is outside 0..{MAX_BUDDY_ORDER}")
        if not 1 <= self.count <= PROBE_MAX_COUNT:
            raise ValueError(f"probe count {self.count} is outside 1..{PROBE_MAX_COUNT}")
        if self.gfp not in GFP_MODES:
            raise ValueError(f"probe gfp {self.gfp!r} is unknown (one of {', '.join(GFP_MODES)})")
        if not _TAG.fullmatch(self.tag):
            raise ValueError(f"probe tag {self.tag!r} must match [A-Za-z0-9_.-]{{0,32}}")

    def params(self) -> list[str]:
        out = [f"order={self.order}", f"count={self.count}", f"gfp={self.gfp}"]
        if self.tag:
            out.append(f"tag={self.tag}")
        return out

    def command(self, ko_path: str) -> str:
        """insmod (expected to exit 1, "Operation canceled") then the result line."""
        pattern = f'{PROBE_PREFIX}{{"tag":"{self.tag}",'
        return (
            f"{shlex.join(['insmod', ko_path, *self.params()])} 2>/dev/null; "
            f"dmesg | grep -F {shlex.quote(pattern)} | tail -n 1"
        )


# --------------------------------------------------------------------------- results


def _buddy(data: Mapping[str, Any], name: str, where: str) -> tuple[ZoneFree, ...]:
    zones = []
    for i, item in enumerate(fields.objects(data, name, where, nonempty=True)):
        zone_where = f"{where}.{name}[{i}]"
        zones.append(
            ZoneFree(
                node=fields.integer(item, "node", zone_where),
                zone=fields.string(item, "zone", zone_where),
                free=fields.integers(item, "free", zone_where, low=0),
            )
        )
    return tuple(zones)


@dataclass(frozen=True)
class HeldMemory:
    bulk_bytes: int
    anon_bytes: int
    thp_bytes: int
    pagecache_files: int
    pagecache_bytes: int
    slab_entries: int
    slab_bytes: int
    #: 2 MiB hugetlb pool pages the finisher took (kernels without THP); optional
    pool_finish_bytes: int = 0


@dataclass(frozen=True)
class Blockers:
    """What stops the free memory from merging into blocks of the target order.

    ``pages``: used pages by kind (slab, anon, file, pgtable, hugetlb, other) in the
    target-order blocks that hold free pages too; ``blocks_with``: how many of those
    blocks hold pages of each kind (one such page keeps the block from merging, so a
    kind present in most of them is what breaks contiguity); the migratetype maps count free pages
    and pageblocks outside ZONE_DMA. ``error`` says why there is nothing to say.
    """

    error: str | None
    seconds: float
    blocks: int
    mixed_blocks: int
    pages: Mapping[str, int]
    blocks_with: Mapping[str, int]
    free_pages_by_migratetype: Mapping[str, int]
    pageblocks_by_migratetype: Mapping[str, int]

    def share(self, kind: str) -> float:
        """The fraction of the blocking pages that are of `kind`."""
        total = sum(self.pages.values())
        return self.pages.get(kind, 0) / total if total else 0.0

    def block_share(self, kind: str) -> float:
        """The fraction of the blocks holding free pages that also hold pages of `kind`."""
        return self.blocks_with.get(kind, 0) / self.mixed_blocks if self.mixed_blocks else 0.0

    @property
    def dominant(self) -> str | None:
        return max(self.pages, key=lambda k: self.pages[k]) if any(self.pages.values()) else None

    def free_share(self, *migratetypes: str) -> float:
        """The fraction of free pages that sit in pageblocks of these migratetypes."""
        total = sum(self.free_pages_by_migratetype.values())
        part = sum(self.free_pages_by_migratetype.get(m, 0) for m in migratetypes)
        return part / total if total else 0.0

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.pages.items(), key=lambda kv: -kv[1])
                          if v)
        free = ", ".join(f"{k} {v}" for k, v in
                         sorted(self.free_pages_by_migratetype.items(), key=lambda kv: -kv[1])
                         if v)
        held = ", ".join(f"{k} {v}" for k, v in
                         sorted(self.blocks_with.items(), key=lambda kv: -kv[1]) if v)
        return (f"{self.mixed_blocks} of {self.blocks} blocks hold free pages; blocking pages: "
                f"{kinds or 'none'}; blocks holding each kind: {held or 'not recorded'}; "
                f"free pages by migratetype: {free or 'none'}")


def _counts(data: Mapping[str, Any], name: str, where: str,
            default: dict[str, int] | fields.Required = fields.REQUIRED) -> Mapping[str, int]:
    return MappingProxyType(fields.counts(data, name, where, default=default))


def _blockers(summary: Mapping[str, Any], source: str, schema: int) -> Blockers:
    data = fields.obj(summary, "blockers", source)
    where = source + ".blockers"
    if "error" in data:
        error = fields.string(data, "error", where)
        empty: Mapping[str, int] = MappingProxyType({})
        return Blockers(error, 0.0, 0, 0, empty, empty, empty, empty)
    return Blockers(
        error=None,
        seconds=fields.number(data, "seconds", where),
        blocks=fields.integer(data, "blocks", where),
        mixed_blocks=fields.integer(data, "mixed_blocks", where),
        pages=_counts(data, "pages", where),
        blocks_with=_counts(data, "blocks_with", where,
                            default={} if schema == 2 else fields.REQUIRED),
        free_pages_by_migratetype=_counts(data, "free_pages_by_migratetype", where),
        pageblocks_by_migratetype=_counts(data, "pageblocks_by_migratetype", where),
    )


@dataclass(frozen=True)
class Release:
    elapsed_s: float
    free_blocks: int
    buddyinfo: tuple[ZoneFree, ...]


@dataclass(frozen=True)
class FragmentSummary:
    """The fragmenter's JSON summary (stdout, and --summary FILE)."""

    profile: str
    seed: int
    target: Target
    floor_mib: int
    timeout_s: float
    reached: bool
    reason: str | None
    elapsed_s: float
    rounds: int
    free_blocks_before: int
    free_blocks_after: int
    unusable_index_before: float
    unusable_index_after: float
    memfree_kib_before: int
    memfree_kib_after: int
    free_outside_dma_kib_after: int
    area_mib: int
    thp: bool  # the kernel had transparent huge pages (summaries without the field: True)
    blockers: Blockers
    buddyinfo_before: tuple[ZoneFree, ...]
    buddyinfo_after: tuple[ZoneFree, ...]
    bytes_held: int
    held: HeldMemory
    dir: str | None
    drop_method: str
    sysctl_saved: Mapping[str, str]
    hold: bool
    pid: int
    released: Release | None


#: ``held`` fields a summary from an older fragmenter does not have (their default then)
_OPTIONAL_HELD = ("pool_finish_bytes",)


def parse_fragment_summary(text: str, source: str = "fragment summary") -> FragmentSummary:
    """Parse the fragmenter's JSON; ValueError naming the field on anything unexpected."""
    data = fields.load_object(text, source)
    if data.get("tool") != "hplab-fragment" or data.get("schema") not in SUMMARY_SCHEMAS:
        raise ValueError(f"{source}: not an hplab-fragment schema {SUMMARY_SCHEMA} summary")
    t = fields.obj(data, "target", source)
    t_where = source + ".target"
    try:
        if t.get("unusable_index") is not None:
            target = Target.unusable(fields.integer(t, "order", t_where),
                                     fields.number(t, "unusable_index", t_where))
        else:
            target = Target.blocks(fields.integer(t, "order", t_where),
                                   fields.integer(t, "max_free_blocks", t_where))
    except fields.FieldError:
        raise
    except ValueError as exc:
        raise ValueError(f"{t_where}: {exc}") from exc
    reached = fields.boolean(data, "reached", source)
    reason = fields.opt_string(data, "reason", source, default=None)
    if reached and reason is not None:
        raise ValueError(f"{source}: 'reason' must be null when reached")
    if not reached and reason is None:
        raise ValueError(f"{source}: field 'reason' must say why the target was missed")
    held = fields.obj(data, "held", source)
    held_where = source + ".held"
    sysctl = fields.obj(data, "sysctl_saved", source)
    if not all(isinstance(v, str) for v in sysctl.values()):
        raise ValueError(f"{source}: field 'sysctl_saved' must map names to strings")
    released_data = fields.opt_obj(data, "released", source, default=None)
    released = None
    if released_data is not None:
        released_where = source + ".released"
        released = Release(
            elapsed_s=fields.number(released_data, "elapsed_s", released_where),
            free_blocks=fields.integer(released_data, "free_blocks", released_where),
            buddyinfo=_buddy(released_data, "buddyinfo", released_where),
        )
    return FragmentSummary(
        profile=fields.choice(data, "profile", source, PROFILES),
        seed=fields.integer(data, "seed", source),
        target=target,
        floor_mib=fields.integer(data, "floor_mib", source),
        timeout_s=fields.number(data, "timeout_s", source),
        reached=reached,
        reason=reason,
        elapsed_s=fields.number(data, "elapsed_s", source),
        rounds=fields.integer(data, "rounds", source),
        free_blocks_before=fields.integer(data, "free_blocks_before", source),
        free_blocks_after=fields.integer(data, "free_blocks_after", source),
        unusable_index_before=fields.number(data, "unusable_index_before", source),
        unusable_index_after=fields.number(data, "unusable_index_after", source),
        memfree_kib_before=fields.integer(data, "memfree_kib_before", source),
        memfree_kib_after=fields.integer(data, "memfree_kib_after", source),
        free_outside_dma_kib_after=fields.integer(data, "free_outside_dma_kib_after", source),
        area_mib=fields.integer(data, "area_mib", source),
        thp=fields.boolean(data, "thp", source, default=True),
        blockers=_blockers(data, source, data["schema"]),
        buddyinfo_before=_buddy(data, "buddyinfo_before", source),
        buddyinfo_after=_buddy(data, "buddyinfo_after", source),
        bytes_held=fields.integer(data, "bytes_held", source),
        held=HeldMemory(**{name: fields.integer(held, name, held_where)
                           for name in HeldMemory.__dataclass_fields__
                           if name in held or name not in _OPTIONAL_HELD}),
        dir=fields.opt_string(data, "dir", source, default=None),
        drop_method=fields.string(data, "drop_method", source),
        sysctl_saved=MappingProxyType(dict(sysctl)),
        hold=fields.boolean(data, "hold", source),
        pid=fields.integer(data, "pid", source),
        released=released,
    )


@dataclass(frozen=True)
class ProbeResult:
    """One hplab_allocprobe result line."""

    tag: str
    order: int
    count: int
    gfp: str
    succeeded: int
    failed: int
    zones: Mapping[str, int]
    elapsed_us: int

    @property
    def outside_dma(self) -> int:
        """Successes not served from ZONE_DMA (the recipe tolerates a stray DMA block)."""
        return self.succeeded - self.zones.get("DMA", 0)


def parse_probe_line(line: str, source: str = "kernel log") -> ProbeResult:
    """Parse one line containing ``hplab_allocprobe: {json}`` (dmesg prefixes allowed)."""
    at = line.find(PROBE_PREFIX + "{")
    if at < 0:
        raise ValueError(f"{source}: no {PROBE_PREFIX.strip()} result in {line.strip()!r}")
    data = fields.load_object(line[at + len(PROBE_PREFIX) :].strip(), source, "probe result")
    zones = fields.counts(data, "zones", source)
    result = ProbeResult(
        tag=fields.string(data, "tag", source),
        order=fields.integer(data, "order", source),
        count=fields.integer(data, "count", source),
        gfp=fields.string(data, "gfp", source),
        succeeded=fields.integer(data, "succeeded", source),
        failed=fields.integer(data, "failed", source),
        zones=MappingProxyType(dict(zones)),
        elapsed_us=fields.integer(data, "elapsed_us", source),
    )
    if result.succeeded + result.failed != result.count or sum(zones.values()) != result.succeeded:
        raise ValueError(f"{source}: probe counts do not add up: {line.strip()!r}")
    return result


def find_probe_results(log: str, tag: str | None = None) -> list[ProbeResult]:
    """All probe results in a kernel log, oldest first, optionally only one tag."""
    results = [
        parse_probe_line(line, f"kernel log line {n}")
        for n, line in enumerate(log.splitlines(), start=1)
        if PROBE_PREFIX + "{" in line
    ]
    return [r for r in results if tag is None or r.tag == tag]


def summary_from_output(stdout: str, exit_status: int) -> FragmentSummary:
    """The summary the fragmenter printed; ValueError for exit statuses without one."""
    if exit_status == EXIT_USAGE:
        raise ValueError("fragment rejected its arguments (exit 2); nothing was done")
    if exit_status not in (EXIT_REACHED, EXIT_MISSED):
        raise ValueError(f"fragment failed with exit status {exit_status}")
    summary = parse_fragment_summary(stdout.strip())
    if summary.reached != (exit_status == EXIT_REACHED):
        raise ValueError(f"exit status {exit_status} contradicts reached={summary.reached}")
    return summary


def profile_names() -> Sequence[str]:
    return PROFILES
