"""Reading a machine's memory state: buddyinfo, pagetypeinfo, zoneinfo, extfrag, vmstat, meminfo,
huge pages.

Everything is built from raw file texts, so a snapshot can be taken anywhere: on this
host, or in a guest over SSH with one command (:data:`SNAPSHOT_COMMAND`), whose output
:meth:`MemorySnapshot.from_command_output` turns back into the same texts.

Parsers are strict: a line they do not understand raises :class:`MemoryFormatError`
(a ``ValueError``) naming the file and the line number; nothing is guessed.

"Free blocks of order N" (:meth:`MemorySnapshot.free_blocks`) counts how many order-N
allocations the buddy free lists could serve right now: the sum over orders o >= N of
``count[o] << (o - N)``. For the highest order this is simply the number of free blocks
of that order. The guest fragmenter (``lab/guestsrc/fragment.c``) uses the same
definition, outside ZONE_DMA.

"Free pages above the watermarks" (:meth:`MemorySnapshot.free_above_watermarks`) is what
the fragmenter's free-memory floor is measured against: per zone above ZONE_DMA, the
free pages over the high watermark and the zone's largest lowmem reserve
(``/proc/zoneinfo``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

SNAPSHOT_SCHEMA = "hplab-memory-snapshot/1"
SNAPSHOT_MARKER = "@@hplab-memory@@"

#: Where each snapshot file name comes from. Hugepage pool files are added by glob.
SOURCE_PATHS: Mapping[str, str] = MappingProxyType(
    {
        "osrelease": "/proc/sys/kernel/osrelease",
        "uptime": "/proc/uptime",
        "buddyinfo": "/proc/buddyinfo",
        "pagetypeinfo": "/proc/pagetypeinfo",
        "zoneinfo": "/proc/zoneinfo",
        "vmstat": "/proc/vmstat",
        "meminfo": "/proc/meminfo",
        "extfrag_index": "/sys/kernel/debug/extfrag/extfrag_index",
        "unusable_index": "/sys/kernel/debug/extfrag/unusable_index",
    }
)
HUGEPAGES_DIR = "/sys/kernel/mm/hugepages"
HUGEPAGE_FIELDS = ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages")
REQUIRED_FILES = ("buddyinfo", "meminfo", "vmstat")

#: One shell command (POSIX sh, busybox ash included) printing every file above between
#: ``@@hplab-memory@@ begin PATH`` and ``@@hplab-memory@@ end PATH RC`` lines. Files that
#: are absent or unreadable (debugfs not mounted, pagetypeinfo as non-root) are skipped.
#: It changes nothing on the machine; run it as root to get pagetypeinfo and extfrag.
SNAPSHOT_COMMAND = (
    "for f in "
    + " ".join(SOURCE_PATHS.values())
    + " "
    + " ".join(f"{HUGEPAGES_DIR}/hugepages-*/{name}" for name in HUGEPAGE_FIELDS)
    + '; do [ -r "$f" ] || continue; '
    f'echo "{SNAPSHOT_MARKER} begin $f"; cat "$f"; r=$?; echo; '
    f'echo "{SNAPSHOT_MARKER} end $f $r"; done'
)

COMPACTION_COUNTERS = (
    "compact_migrate_scanned",
    "compact_free_scanned",
    "compact_isolated",
    "compact_stall",
    "compact_fail",
    "compact_success",
    "compact_daemon_wake",
    "compact_daemon_migrate_scanned",
    "compact_daemon_free_scanned",
)

_HUGEPAGE_NAME = re.compile(r"^hugepages-(\d+)kB/(" + "|".join(HUGEPAGE_FIELDS) + r")$")
_ZONE_PREFIX = re.compile(r"^Node\s+(\d+),\s+zone\s+(\S+)")


class MemoryFormatError(ValueError):
    """A memory file did not have the expected format. Names the file and the line."""

    def __init__(self, source: str, line_no: int | None, message: str, line: str = "") -> None:
        where = f"{source}:{line_no}" if line_no is not None else source
        text = f"{where}: {message}"
        if line:
            text += f": {line.strip()!r}"
        super().__init__(text)
        self.source = source
        self.line_no = line_no
        self.line = line


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ZoneFree:
    """One /proc/buddyinfo line: free blocks per order of one zone."""

    node: int
    zone: str
    free: tuple[int, ...]

    @property
    def free_pages(self) -> int:
        return sum(count << order for order, count in enumerate(self.free))

    def blocks_at_least(self, order: int) -> int:
        """Order-``order`` allocations these free lists could serve."""
        return sum(self.free[o] << (o - order) for o in range(order, len(self.free)))

    def largest_free_order(self) -> int | None:
        for order in range(len(self.free) - 1, -1, -1):
            if self.free[order]:
                return order
        return None


@dataclass(frozen=True)
class MigrateTypeFree:
    """One 'Free pages count per migrate type' line of /proc/pagetypeinfo.

    The kernel prints counts above 100000 as ``>100000``: those orders are listed in
    ``capped`` and their value is the cap, a lower bound.
    """

    node: int
    zone: str
    migratetype: str
    free: tuple[int, ...]
    capped: tuple[int, ...] = ()


@dataclass(frozen=True)
class ZoneBlocks:
    """Pageblocks per migrate type of one zone (a 'Number of blocks type' line)."""

    node: int
    zone: str
    blocks: Mapping[str, int]


@dataclass(frozen=True)
class PageTypeInfo:
    pageblock_order: int
    pages_per_block: int
    free: tuple[MigrateTypeFree, ...]
    blocks: tuple[ZoneBlocks, ...]
    mixed_blocks: tuple[ZoneBlocks, ...] = ()

    def blocks_of(self, zone: str, migratetype: str) -> int:
        return sum(b.blocks.get(migratetype, 0) for b in self.blocks if b.zone == zone)


@dataclass(frozen=True)
class ZoneWatermarks:
    """What /proc/zoneinfo says of one zone: free pages, watermarks (boost included, as
    the kernel prints them), managed pages and the lowmem reserves ("protection") it
    keeps against allocations that could have used each higher zone."""

    node: int
    zone: str
    free: int
    min: int
    low: int
    high: int
    managed: int
    protection: tuple[int, ...]

    @property
    def reserve(self) -> int:
        """The largest lowmem reserve: what an allocation that could use ZONE_NORMAL
        must leave free here on top of the watermark."""
        return max(self.protection, default=0)

    @property
    def above_high(self) -> int:
        """Free pages over the high watermark plus the reserve (0 when below)."""
        return max(0, self.free - self.high - self.reserve)


@dataclass(frozen=True)
class ZoneIndex:
    """One line of debugfs extfrag/extfrag_index or extfrag/unusable_index.

    extfrag_index: -1.0 means an allocation of that order would succeed right now;
    values towards 1.0 mean failure is due to fragmentation, towards 0 lack of memory.
    unusable_index: the fraction of free memory unusable for that order (0..1).
    """

    node: int
    zone: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class HugePagePool:
    """The persistent huge-page pool of one page size (sysfs counters)."""

    size_kib: int
    nr: int
    free: int
    resv: int
    surplus: int


# --------------------------------------------------------------------------- parsers


def _lines(text: str) -> list[tuple[int, str]]:
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1)]


def _int(source: str, line_no: int, token: str, line: str) -> int:
    if not re.fullmatch(r"-?\d+", token):
        raise MemoryFormatError(source, line_no, f"{token!r} is not an integer", line)
    return int(token)


def parse_buddyinfo(text: str, source: str = "/proc/buddyinfo") -> tuple[ZoneFree, ...]:
    zones: list[ZoneFree] = []
    width: int | None = None
    for line_no, line in _lines(text):
        if not line.strip():
            continue
        match = _ZONE_PREFIX.match(line)
        if not match:
            raise MemoryFormatError(source, line_no, "expected 'Node N, zone NAME counts...'", line)
        tokens = line[match.end() :].split()
        if not tokens:
            raise MemoryFormatError(source, line_no, "no free counts", line)
        counts = tuple(_int(source, line_no, t, line) for t in tokens)
        if any(c < 0 for c in counts):
            raise MemoryFormatError(source, line_no, "negative free count", line)
        if width is not None and len(counts) != width:
            raise MemoryFormatError(
                source, line_no, f"{len(counts)} orders where earlier lines had {width}", line
            )
        width = len(counts)
        zones.append(ZoneFree(node=int(match.group(1)), zone=match.group(2), free=counts))
    if not zones:
        raise MemoryFormatError(source, None, "no zones")
    return tuple(zones)


def parse_pagetypeinfo(text: str, source: str = "/proc/pagetypeinfo") -> PageTypeInfo:
    pageblock_order: int | None = None
    pages_per_block: int | None = None
    free: list[MigrateTypeFree] = []
    blocks: list[ZoneBlocks] = []
    mixed: list[ZoneBlocks] = []
    section = "head"
    n_orders = 0
    columns: list[str] = []
    for line_no, line in _lines(text):
        if not line.strip():
            continue
        if line.startswith("Page block order:"):
            pageblock_order = _int(source, line_no, line.split(":", 1)[1].strip(), line)
            continue
        if line.startswith("Pages per block:"):
            pages_per_block = _int(source, line_no, line.split(":", 1)[1].strip(), line)
            continue
        if line.startswith("Free pages count per migrate type at order"):
            orders = line[len("Free pages count per migrate type at order") :].split()
            expected = [str(i) for i in range(len(orders))]
            if not orders or orders != expected:
                raise MemoryFormatError(source, line_no, "order header is not 0..N", line)
            n_orders = len(orders)
            section = "free"
            continue
        if line.startswith("Number of blocks type"):
            columns = line[len("Number of blocks type") :].split()
            section = "blocks"
            continue
        if line.startswith("Number of mixed blocks"):
            columns = line[len("Number of mixed blocks") :].split()
            section = "mixed"
            continue
        match = _ZONE_PREFIX.match(line)
        if not match or section == "head":
            raise MemoryFormatError(source, line_no, "unexpected line", line)
        node, zone = int(match.group(1)), match.group(2)
        rest = line[match.end() :]
        if section == "free":
            zone = zone.rstrip(",")
            m = re.match(r"^,?\s*type\s+(\S+)\s+(.*)$", rest)
            if not m:
                raise MemoryFormatError(source, line_no, "expected ', type NAME counts'", line)
            tokens = m.group(2).split()
            if len(tokens) != n_orders:
                raise MemoryFormatError(
                    source, line_no, f"{len(tokens)} counts for {n_orders} orders", line
                )
            counts: list[int] = []
            capped: list[int] = []
            for order, token in enumerate(tokens):
                if token.startswith(">"):
                    capped.append(order)
                    token = token[1:]
                counts.append(_int(source, line_no, token, line))
            free.append(MigrateTypeFree(node, zone, m.group(1), tuple(counts), tuple(capped)))
        else:
            tokens = rest.split()
            if len(tokens) != len(columns):
                raise MemoryFormatError(
                    source, line_no, f"{len(tokens)} values for {len(columns)} columns", line
                )
            values = {
                c: _int(source, line_no, t, line) for c, t in zip(columns, tokens, strict=True)
            }
            record = ZoneBlocks(node, zone, MappingProxyType(values))
            (blocks if section == "blocks" else mixed).append(record)
    if pageblock_order is None or pages_per_block is None:
        raise MemoryFormatError(source, None, "missing 'Page block order' or 'Pages per block'")
    if not free or not blocks:
        raise MemoryFormatError(source, None, "missing free counts or block counts section")
    return PageTypeInfo(pageblock_order, pages_per_block, tuple(free), tuple(blocks), tuple(mixed))


_ZONEINFO_WATERMARKS = {"min", "low", "high", "managed"}
# What a zone's section may hold besides the fields read: counters and per-cpu lists
# ("name value" or "name: value"), the section titles, the per-cpu header.
_ZONEINFO_OTHER = re.compile(r"^\s*(?:[a-z_][a-z0-9_ ()]*?:?\s+-?\d+|per-node stats|pagesets)$")


def parse_zoneinfo(text: str, source: str = "/proc/zoneinfo") -> tuple[ZoneWatermarks, ...]:
    """The zones of /proc/zoneinfo with their free pages, watermarks and reserves.

    Zones the kernel lists without pages (an empty Movable or Device zone) are kept,
    with zeros. The per-cpu lists' "high:" (with a colon, after "pagesets") is not
    the watermark "high" (without one)."""
    zones: list[ZoneWatermarks] = []
    current: dict[str, Any] | None = None

    def close(line_no: int) -> None:
        if current is None:
            return
        missing = [k for k in ("free", *sorted(_ZONEINFO_WATERMARKS), "protection")
                   if k not in current]
        if missing and current.get("free", 0) != 0:
            raise MemoryFormatError(
                source, line_no, f"zone {current['zone']} has no {', '.join(missing)}"
            )
        zones.append(ZoneWatermarks(
            node=current["node"], zone=current["zone"], free=current.get("free", 0),
            min=current.get("min", 0), low=current.get("low", 0), high=current.get("high", 0),
            managed=current.get("managed", 0), protection=current.get("protection", ()),
        ))

    for line_no, line in _lines(text):
        if not line.strip():
            continue
        match = _ZONE_PREFIX.match(line)
        if match:
            if line[match.end():].strip():
                raise MemoryFormatError(source, line_no, "text after the zone name", line)
            close(line_no)
            current = {"node": int(match.group(1)), "zone": match.group(2), "pagesets": False}
            continue
        if current is None:
            raise MemoryFormatError(source, line_no, "expected 'Node N, zone NAME' first", line)
        tokens = line.split()
        if tokens[:2] == ["pages", "free"] and len(tokens) == 3:
            current["free"] = _int(source, line_no, tokens[2], line)
        elif (tokens[0] in _ZONEINFO_WATERMARKS and len(tokens) == 2
              and not current["pagesets"]):
            current[tokens[0]] = _int(source, line_no, tokens[1], line)
        elif tokens[0] == "protection:":
            m = re.fullmatch(r"\s*protection: \(([-\d, ]*)\)", line)
            if not m:
                raise MemoryFormatError(source, line_no, "expected 'protection: (N, ...)'", line)
            current["protection"] = tuple(
                _int(source, line_no, t.strip(), line) for t in m.group(1).split(",") if t.strip()
            )
        elif _ZONEINFO_OTHER.match(line):
            if line.strip() == "pagesets":
                current["pagesets"] = True
        else:
            raise MemoryFormatError(source, line_no, "unexpected line", line)
    close(len(text.split("\n")))
    if not zones:
        raise MemoryFormatError(source, None, "no zones")
    return tuple(zones)


def parse_frag_index(text: str, source: str) -> tuple[ZoneIndex, ...]:
    """Parse debugfs extfrag/extfrag_index or extfrag/unusable_index."""
    zones: list[ZoneIndex] = []
    width: int | None = None
    for line_no, line in _lines(text):
        if not line.strip():
            continue
        match = _ZONE_PREFIX.match(line)
        if not match:
            raise MemoryFormatError(source, line_no, "expected 'Node N, zone NAME values...'", line)
        tokens = line[match.end() :].split()
        values: list[float] = []
        for token in tokens:
            if not re.fullmatch(r"-?\d+\.\d+", token):
                raise MemoryFormatError(source, line_no, f"{token!r} is not an index", line)
            value = float(token)
            if not -1.0 <= value <= 1.0:
                raise MemoryFormatError(source, line_no, f"{token} is outside -1..1", line)
            values.append(value)
        if not values or (width is not None and len(values) != width):
            raise MemoryFormatError(source, line_no, "wrong number of orders", line)
        width = len(values)
        zones.append(ZoneIndex(int(match.group(1)), match.group(2), tuple(values)))
    if not zones:
        raise MemoryFormatError(source, None, "no zones")
    return tuple(zones)


def parse_vmstat(text: str, source: str = "/proc/vmstat") -> dict[str, int]:
    counters: dict[str, int] = {}
    for line_no, line in _lines(text):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"[a-z0-9_]+", parts[0]):
            raise MemoryFormatError(source, line_no, "expected 'name value'", line)
        if parts[0] in counters:
            raise MemoryFormatError(source, line_no, f"duplicate counter {parts[0]}", line)
        counters[parts[0]] = _int(source, line_no, parts[1], line)
    if not counters:
        raise MemoryFormatError(source, None, "no counters")
    return counters


def parse_meminfo(text: str, source: str = "/proc/meminfo") -> dict[str, int]:
    """Values as printed: kB for lines with a unit, plain counts (HugePages_*) otherwise."""
    values: dict[str, int] = {}
    for line_no, line in _lines(text):
        if not line.strip():
            continue
        match = re.fullmatch(r"([A-Za-z0-9_()]+):\s+(\d+)(?: kB)?\s*", line)
        if not match:
            raise MemoryFormatError(source, line_no, "expected 'Key: value [kB]'", line)
        if match.group(1) in values:
            raise MemoryFormatError(source, line_no, f"duplicate key {match.group(1)}", line)
        values[match.group(1)] = int(match.group(2))
    for key in ("MemTotal", "MemFree"):
        if key not in values:
            raise MemoryFormatError(source, None, f"no {key} line")
    return values


def _single_int(text: str, source: str) -> int:
    lines = [(n, line) for n, line in _lines(text) if line.strip()]
    if len(lines) != 1:
        raise MemoryFormatError(source, None, f"expected one number, got {len(lines)} lines")
    line_no, line = lines[0]
    value = _int(source, line_no, line.strip(), line)
    if value < 0:
        raise MemoryFormatError(source, line_no, "negative count", line)
    return value


def parse_hugepage_pools(files: Mapping[str, str]) -> tuple[HugePagePool, ...]:
    """Pools from snapshot names ``hugepages-<size>kB/<field>``; each size needs all four."""
    per_size: dict[int, dict[str, int]] = {}
    for name, text in files.items():
        match = _HUGEPAGE_NAME.match(name)
        if match:
            size = int(match.group(1))
            per_size.setdefault(size, {})[match.group(2)] = _single_int(
                text, f"{HUGEPAGES_DIR}/{name}"
            )
    pools = []
    for size, values in sorted(per_size.items()):
        missing = [f for f in HUGEPAGE_FIELDS if f not in values]
        if missing:
            raise MemoryFormatError(
                f"{HUGEPAGES_DIR}/hugepages-{size}kB", None, f"missing {', '.join(missing)}"
            )
        pools.append(
            HugePagePool(
                size_kib=size,
                nr=values["nr_hugepages"],
                free=values["free_hugepages"],
                resv=values["resv_hugepages"],
                surplus=values["surplus_hugepages"],
            )
        )
    return tuple(pools)


def _source_of(name: str) -> str:
    if name in SOURCE_PATHS:
        return SOURCE_PATHS[name]
    return f"{HUGEPAGES_DIR}/{name}"


def _name_of(path: str, source: str, line_no: int) -> str:
    for name, known in SOURCE_PATHS.items():
        if path == known:
            return name
    prefix = HUGEPAGES_DIR + "/"
    if path.startswith(prefix) and _HUGEPAGE_NAME.match(path[len(prefix) :]):
        return path[len(prefix) :]
    raise MemoryFormatError(source, line_no, f"unknown file {path!r}")


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True)
class MemoryDiff:
    """What changed from snapshot ``before`` to snapshot ``after`` (after minus before)."""

    elapsed_s: float | None
    free_delta: Mapping[tuple[int, str], tuple[int, ...]]
    meminfo_delta: Mapping[str, int]
    compaction_delta: Mapping[str, int]
    hugepages_before: tuple[HugePagePool, ...]
    hugepages_after: tuple[HugePagePool, ...]

    @property
    def hugepages_unchanged(self) -> bool:
        return self.hugepages_before == self.hugepages_after

    def free_pages_delta(self, zone: str | None = None) -> int:
        return sum(
            sum(count << order for order, count in enumerate(delta))
            for (_node, name), delta in self.free_delta.items()
            if zone is None or name == zone
        )


@dataclass(frozen=True)
class MemorySnapshot:
    """Parsed memory state plus the raw texts it came from (``files``: name -> text)."""

    files: Mapping[str, str]
    buddyinfo: tuple[ZoneFree, ...]
    meminfo: Mapping[str, int]
    vmstat: Mapping[str, int]
    pagetypeinfo: PageTypeInfo | None = None
    zoneinfo: tuple[ZoneWatermarks, ...] | None = None
    extfrag_index: tuple[ZoneIndex, ...] | None = None
    unusable_index: tuple[ZoneIndex, ...] | None = None
    hugepages: tuple[HugePagePool, ...] = ()
    kernel_release: str | None = None
    uptime_s: float | None = None

    # ---- construction

    @classmethod
    def from_texts(cls, files: Mapping[str, str]) -> MemorySnapshot:
        known = set(SOURCE_PATHS)
        for name in files:
            if name not in known and not _HUGEPAGE_NAME.match(name):
                raise MemoryFormatError(name, None, "unknown snapshot file name")
        for name in REQUIRED_FILES:
            if name not in files:
                raise MemoryFormatError(SOURCE_PATHS[name], None, "missing from the snapshot")
        buddy = parse_buddyinfo(files["buddyinfo"], SOURCE_PATHS["buddyinfo"])
        uptime: float | None = None
        if "uptime" in files:
            tokens = files["uptime"].split()
            if len(tokens) != 2 or not all(re.fullmatch(r"\d+\.\d+", t) for t in tokens):
                raise MemoryFormatError(
                    SOURCE_PATHS["uptime"], 1, "expected 'UP IDLE'", files["uptime"]
                )
            uptime = float(tokens[0])
        release = files["osrelease"].strip() if "osrelease" in files else None
        if release is not None and (not release or "\n" in release):
            raise MemoryFormatError(SOURCE_PATHS["osrelease"], 1, "expected one release string")
        return cls(
            files=MappingProxyType(dict(files)),
            buddyinfo=buddy,
            meminfo=MappingProxyType(parse_meminfo(files["meminfo"], SOURCE_PATHS["meminfo"])),
            vmstat=MappingProxyType(parse_vmstat(files["vmstat"], SOURCE_PATHS["vmstat"])),
            pagetypeinfo=(
                parse_pagetypeinfo(files["pagetypeinfo"], SOURCE_PATHS["pagetypeinfo"])
                if "pagetypeinfo" in files
                else None
            ),
            zoneinfo=(
                parse_zoneinfo(files["zoneinfo"], SOURCE_PATHS["zoneinfo"])
                if "zoneinfo" in files
                else None
            ),
            extfrag_index=(
                parse_frag_index(files["extfrag_index"], SOURCE_PATHS["extfrag_index"])
                if "extfrag_index" in files
                else None
            ),
            unusable_index=(
                parse_frag_index(files["unusable_index"], SOURCE_PATHS["unusable_index"])
                if "unusable_index" in files
                else None
            ),
            hugepages=parse_hugepage_pools(files),
            kernel_release=release,
            uptime_s=uptime,
        )

    @classmethod
    def from_command_output(
        cls, text: str, source: str = "snapshot command output"
    ) -> MemorySnapshot:
        """Parse what :data:`SNAPSHOT_COMMAND` printed. Lines outside blocks are ignored."""
        files: dict[str, str] = {}
        current: tuple[str, str, int] | None = None
        body: list[str] = []
        for line_no, line in _lines(text):
            if not line.startswith(SNAPSHOT_MARKER + " "):
                if current is not None:
                    body.append(line)
                continue
            parts = line[len(SNAPSHOT_MARKER) + 1 :].split()
            if len(parts) == 2 and parts[0] == "begin":
                if current is not None:
                    raise MemoryFormatError(
                        source, line_no, f"{current[1]} has no end marker", line
                    )
                current = (_name_of(parts[1], source, line_no), parts[1], line_no)
                body = []
            elif len(parts) == 3 and parts[0] == "end":
                if current is None or parts[1] != current[1]:
                    raise MemoryFormatError(source, line_no, "end marker without its begin", line)
                rc = _int(source, line_no, parts[2], line)
                if body and body[-1] == "":
                    body.pop()  # the newline the command adds after each file
                if rc == 0:
                    if current[0] in files:
                        raise MemoryFormatError(source, line_no, f"{current[1]} twice", line)
                    files[current[0]] = "\n".join(body) + ("\n" if body else "")
                current = None
            else:
                raise MemoryFormatError(source, line_no, "malformed marker", line)
        if current is not None:
            raise MemoryFormatError(source, current[2], f"{current[1]} has no end marker")
        if not files:
            raise MemoryFormatError(source, None, "no snapshot blocks found")
        return cls.from_texts(files)

    @classmethod
    def capture_local(cls, root: str = "/") -> MemorySnapshot:
        """Read the files on this machine (``root`` lets tests point at a fake tree)."""
        base = Path(root)
        files: dict[str, str] = {}
        for name, path in SOURCE_PATHS.items():
            candidate = base / path.lstrip("/")
            try:
                files[name] = candidate.read_text()
            except (FileNotFoundError, PermissionError):
                continue
        for pool in sorted((base / HUGEPAGES_DIR.lstrip("/")).glob("hugepages-*")):
            for fname in HUGEPAGE_FIELDS:
                try:
                    files[f"{pool.name}/{fname}"] = (pool / fname).read_text()
                except (FileNotFoundError, PermissionError):
                    continue
        return cls.from_texts(files)

    def to_json(self) -> str:
        return json.dumps(
            {"schema": SNAPSHOT_SCHEMA, "files": dict(self.files)}, indent=1, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str) -> MemorySnapshot:
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MemoryFormatError("snapshot JSON", exc.lineno, exc.msg) from exc
        if not isinstance(data, dict) or data.get("schema") != SNAPSHOT_SCHEMA:
            raise MemoryFormatError("snapshot JSON", None, f"schema is not {SNAPSHOT_SCHEMA!r}")
        files = data.get("files")
        if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()
        ):
            raise MemoryFormatError("snapshot JSON", None, "'files' must map names to texts")
        return cls.from_texts(files)

    # ---- queries

    @property
    def _orders(self) -> int:
        return len(self.buddyinfo[0].free)

    @property
    def max_order(self) -> int:
        return self._orders - 1

    @property
    def zone_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(z.zone for z in self.buddyinfo))

    def _zones(self, zone: str | None, exclude_dma: bool) -> Iterable[ZoneFree]:
        if zone is not None and zone not in self.zone_names:
            raise ValueError(f"zone {zone!r} is not in buddyinfo (have {self.zone_names})")
        for z in self.buddyinfo:
            if zone is not None:
                if z.zone == zone:
                    yield z
            elif not (exclude_dma and z.zone == "DMA"):
                yield z

    def _check_order(self, order: int) -> None:
        if not 0 <= order <= self.max_order:
            raise ValueError(f"order {order} is outside 0..{self.max_order}")

    def free_blocks(self, order: int, zone: str | None = None, exclude_dma: bool = True) -> int:
        """Order-``order`` allocations the free lists could serve (all nodes).

        ``zone`` limits it to that zone; otherwise every zone counts except ZONE_DMA
        when ``exclude_dma`` (the default: ZONE_DMA is not used by GFP_KERNEL).
        """
        self._check_order(order)
        return sum(z.blocks_at_least(order) for z in self._zones(zone, exclude_dma))

    def free_pages(self, zone: str | None = None, exclude_dma: bool = True) -> int:
        return sum(z.free_pages for z in self._zones(zone, exclude_dma))

    def free_above_watermarks(self) -> int | None:
        """Free pages an ordinary allocation can still take without going under a zone's
        high watermark and lowmem reserve, over every zone but ZONE_DMA (what the
        fragmenter's floor is measured against); None without /proc/zoneinfo."""
        if self.zoneinfo is None:
            return None
        return sum(z.above_high for z in self.zoneinfo if z.zone != "DMA")

    def largest_free_order(self, zone: str | None = None, exclude_dma: bool = True) -> int | None:
        """Highest order with a free block in ``zone`` (or all zones); None if nothing free."""
        orders = [z.largest_free_order() for z in self._zones(zone, exclude_dma)]
        present = [o for o in orders if o is not None]
        return max(present) if present else None

    def unusable_fraction(
        self, order: int, zone: str | None = None, exclude_dma: bool = True
    ) -> float:
        """The kernel's unusable index computed from buddyinfo over the chosen zones."""
        self._check_order(order)
        free = self.free_pages(zone, exclude_dma)
        if free == 0:
            return 1.0
        usable = sum(
            z.free[o] << o
            for z in self._zones(zone, exclude_dma)
            for o in range(order, self._orders)
        )
        return (free - usable) / free

    def extfrag(self, zone: str, order: int, node: int = 0) -> float | None:
        """The debugfs extfrag index, or None when debugfs was not readable."""
        return self._index(self.extfrag_index, zone, order, node)

    def unusable(self, zone: str, order: int, node: int = 0) -> float | None:
        """The debugfs unusable index, or None when debugfs was not readable."""
        return self._index(self.unusable_index, zone, order, node)

    @staticmethod
    def _index(
        table: tuple[ZoneIndex, ...] | None, zone: str, order: int, node: int
    ) -> float | None:
        if table is None:
            return None
        for z in table:
            if z.zone == zone and z.node == node:
                if not 0 <= order < len(z.values):
                    raise ValueError(f"order {order} is outside 0..{len(z.values) - 1}")
                return z.values[order]
        raise ValueError(f"no zone {zone!r} on node {node} in the index")

    def hugepage_pool(self, size_kib: int = 1048576) -> HugePagePool | None:
        for pool in self.hugepages:
            if pool.size_kib == size_kib:
                return pool
        return None

    @property
    def compaction(self) -> dict[str, int]:
        return {k: self.vmstat[k] for k in COMPACTION_COUNTERS if k in self.vmstat}

    def meminfo_kib(self, key: str) -> int:
        if key not in self.meminfo:
            raise ValueError(f"/proc/meminfo has no {key!r}")
        return self.meminfo[key]

    def diff(self, other: MemorySnapshot) -> MemoryDiff:
        """Changes from this snapshot to ``other`` (``other`` minus ``self``)."""
        mine = {(z.node, z.zone): z.free for z in self.buddyinfo}
        theirs = {(z.node, z.zone): z.free for z in other.buddyinfo}
        if mine.keys() != theirs.keys() or self._orders != other._orders:
            raise ValueError("snapshots have different zones or orders: not the same machine")
        free_delta = {
            key: tuple(b - a for a, b in zip(mine[key], theirs[key], strict=True)) for key in mine
        }
        meminfo_delta = {
            k: other.meminfo[k] - v for k, v in self.meminfo.items() if k in other.meminfo
        }
        compaction_delta = {
            k: other.compaction[k] - v for k, v in self.compaction.items() if k in other.compaction
        }
        elapsed = (
            other.uptime_s - self.uptime_s
            if other.uptime_s is not None and self.uptime_s is not None
            else None
        )
        return MemoryDiff(
            elapsed_s=elapsed,
            free_delta=MappingProxyType(free_delta),
            meminfo_delta=MappingProxyType(meminfo_delta),
            compaction_delta=MappingProxyType(compaction_delta),
            hugepages_before=self.hugepages,
            hugepages_after=other.hugepages,
        )

    def summary(self) -> dict[str, Any]:
        """A small JSON-able digest for logs and reports."""
        return {
            "kernel": self.kernel_release,
            "mem_free_kib": self.meminfo["MemFree"],
            "buddyinfo": {f"{z.node}/{z.zone}": list(z.free) for z in self.buddyinfo},
            "free_blocks_max_order": self.free_blocks(self.max_order),
            "hugepages": {p.size_kib: {"nr": p.nr, "free": p.free} for p in self.hugepages},
        }
