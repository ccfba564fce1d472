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

import json
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

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


def _field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in data:
        raise ValueError(f"{where}: field {name!r} is missing")
    value = data[name]
    if (
        isinstance(value, bool)
        and kind is not bool
        and (not isinstance(kind, tuple) or bool not in kind)
    ):
        raise ValueError(f"{where}: field {name!r} must not be a boolean")
    if not isinstance(value, kind):
        raise ValueError(f"{where}: field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _buddy(data: Any, where: str) -> tuple[ZoneFree, ...]:
    if not isinstance(data, list) or not data:
        raise ValueError(f"{where}: expected a non-empty list of zones")
    zones = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{where}[{i}]: expected an object")
        free = _field(item, "free", list, f"{where}[{i}]")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in free):
            raise ValueError(f"{where}[{i}].free: expected non-negative integers")
        zones.append(
            ZoneFree(
                node=_field(item, "node", int, f"{where}[{i}]"),
                zone=_field(item, "zone", str, f"{where}[{i}]"),
                free=tuple(free),
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


def _counts(data: Any, where: str) -> Mapping[str, int]:
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in data.items()):
        raise ValueError(f"{where}: expected an object of non-negative counts")
    return MappingProxyType(dict(data))


def _blockers(data: Any, where: str, schema: int) -> Blockers:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object")
    if "error" in data:
        error = data["error"]
        if not isinstance(error, str):
            raise ValueError(f"{where}: field 'error' must be a string")
        empty: Mapping[str, int] = MappingProxyType({})
        return Blockers(error, 0.0, 0, 0, empty, empty, empty, empty)
    return Blockers(
        error=None,
        seconds=float(_field(data, "seconds", (int, float), where)),
        blocks=_field(data, "blocks", int, where),
        mixed_blocks=_field(data, "mixed_blocks", int, where),
        pages=_counts(data.get("pages"), where + ".pages"),
        blocks_with=_counts(data.get("blocks_with", {} if schema == 2 else None),
                            where + ".blocks_with"),
        free_pages_by_migratetype=_counts(data.get("free_pages_by_migratetype"),
                                          where + ".free_pages_by_migratetype"),
        pageblocks_by_migratetype=_counts(data.get("pageblocks_by_migratetype"),
                                          where + ".pageblocks_by_migratetype"),
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
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object")
    if data.get("tool") != "hplab-fragment" or data.get("schema") not in SUMMARY_SCHEMAS:
        raise ValueError(f"{source}: not an hplab-fragment schema {SUMMARY_SCHEMA} summary")
    num = (int, float)
    t = _field(data, "target", dict, source)
    try:
        if t.get("unusable_index") is not None:
            target = Target.unusable(
                _field(t, "order", int, source + ".target"),
                float(_field(t, "unusable_index", num, source + ".target")),
            )
        else:
            target = Target.blocks(
                _field(t, "order", int, source + ".target"),
                _field(t, "max_free_blocks", int, source + ".target"),
            )
    except ValueError as exc:
        raise ValueError(f"{source}.target: {exc}") from exc
    profile = _field(data, "profile", str, source)
    if profile not in PROFILES:
        raise ValueError(f"{source}: field 'profile' is unknown: {profile!r}")
    reached = _field(data, "reached", bool, source)
    reason = data.get("reason")
    if reached and reason is not None:
        raise ValueError(f"{source}: 'reason' must be null when reached")
    if not reached and not isinstance(reason, str):
        raise ValueError(f"{source}: field 'reason' must say why the target was missed")
    held = _field(data, "held", dict, source)
    sysctl = _field(data, "sysctl_saved", dict, source)
    if not all(isinstance(v, str) for v in sysctl.values()):
        raise ValueError(f"{source}: field 'sysctl_saved' must map names to strings")
    released_data = data.get("released")
    released = None
    if released_data is not None:
        if not isinstance(released_data, dict):
            raise ValueError(f"{source}: field 'released' must be an object or null")
        released = Release(
            elapsed_s=float(_field(released_data, "elapsed_s", num, source + ".released")),
            free_blocks=_field(released_data, "free_blocks", int, source + ".released"),
            buddyinfo=_buddy(released_data.get("buddyinfo"), source + ".released.buddyinfo"),
        )
    dir_value = data.get("dir")
    if dir_value is not None and not isinstance(dir_value, str):
        raise ValueError(f"{source}: field 'dir' must be a string or null")
    return FragmentSummary(
        profile=profile,
        seed=_field(data, "seed", int, source),
        target=target,
        floor_mib=_field(data, "floor_mib", int, source),
        timeout_s=float(_field(data, "timeout_s", num, source)),
        reached=reached,
        reason=reason,
        elapsed_s=float(_field(data, "elapsed_s", num, source)),
        rounds=_field(data, "rounds", int, source),
        free_blocks_before=_field(data, "free_blocks_before", int, source),
        free_blocks_after=_field(data, "free_blocks_after", int, source),
        unusable_index_before=float(_field(data, "unusable_index_before", num, source)),
        unusable_index_after=float(_field(data, "unusable_index_after", num, source)),
        memfree_kib_before=_field(data, "memfree_kib_before", int, source),
        memfree_kib_after=_field(data, "memfree_kib_after", int, source),
        free_outside_dma_kib_after=_field(data, "free_outside_dma_kib_after", int, source),
        area_mib=_field(data, "area_mib", int, source),
        thp=_field(data, "thp", bool, source) if "thp" in data else True,
        blockers=_blockers(data.get("blockers"), source + ".blockers", data["schema"]),
        buddyinfo_before=_buddy(data.get("buddyinfo_before"), source + ".buddyinfo_before"),
        buddyinfo_after=_buddy(data.get("buddyinfo_after"), source + ".buddyinfo_after"),
        bytes_held=_field(data, "bytes_held", int, source),
        held=HeldMemory(**{name: _field(held, name, int, source + ".held")
                           for name in HeldMemory.__dataclass_fields__
                           if name in held or name not in _OPTIONAL_HELD}),
        dir=dir_value,
        drop_method=_field(data, "drop_method", str, source),
        sysctl_saved=MappingProxyType(dict(sysctl)),
        hold=_field(data, "hold", bool, source),
        pid=_field(data, "pid", int, source),
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
    try:
        data = json.loads(line[at + len(PROBE_PREFIX) :].strip())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: probe result is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{source}: probe result is not an object")
    zones = _field(data, "zones", dict, source)
    if not all(isinstance(v, int) and v >= 0 for v in zones.values()):
        raise ValueError(f"{source}: field 'zones' must map zone names to counts")
    result = ProbeResult(
        tag=_field(data, "tag", str, source),
        order=_field(data, "order", int, source),
        count=_field(data, "count", int, source),
        gfp=_field(data, "gfp", str, source),
        succeeded=_field(data, "succeeded", int, source),
        failed=_field(data, "failed", int, source),
        zones=MappingProxyType(dict(zones)),
        elapsed_us=_field(data, "elapsed_us", int, source),
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
