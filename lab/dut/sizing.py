"""The module's size model of its two tables: the arithmetic and validation it applies
to the entry counts it is loaded with (``flow_entries``, ``oflow_entries``,
``bridge_entries``, ``bridge_oentries``), so tests know the exact bytes, btable chunks and
huge pages of a table before any memory exists, and can tell a btable load that
fragmentation left short of chunks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lab.dut.abi import (
    BRIDGE_ENTRY_SIZE,
    BUCKET_SIZE,
    CHUNK_SIZE,
    FLOW_ENTRY_SIZE,
    HDR_SIZE,
    PAGE_1G,
    PAGE_2M,
)

MAX_ENTRIES = 0xFFFFFFF0  # VRHP_MAX_INDEX of kmod/vrhp/vrhp_main.c: chain indices are 32 bit
U64_MAX = (1 << 64) - 1

# The module parameters' defaults (kmod/vrhp/vrhp_main.c)
DEFAULT_FLOW_ENTRIES = 524_288
DEFAULT_BRIDGE_ENTRIES = 262_144


def default_oentries(entries: int) -> int:
    """Overflow entries the module picks: 20% of main, rounded up to a multiple of 1024."""
    twenty = -(-entries * 2 // 10)
    return -(-twenty // 1024) * 1024


@dataclass(frozen=True)
class TableSizes:
    entries: int
    oentries: int
    entry_size: int

    @property
    def total_entries(self) -> int:
        return self.entries + self.oentries

    @property
    def buckets(self) -> int:
        return self.entries // BUCKET_SIZE

    @property
    def table_bytes(self) -> int:
        return self.total_entries * self.entry_size

    @property
    def file_bytes(self) -> int:
        """Header plus entries: what INFO reports as ``file_bytes``."""
        return HDR_SIZE + self.table_bytes

    @property
    def btable_chunks(self) -> int:
        """Order-10 (4 MiB) allocations the btable backend needs."""
        return math.ceil(self.file_bytes / CHUNK_SIZE)

    def hugepage_file_bytes(self, page_size: int) -> int:
        """Size of the hugetlbfs file the agent creates and maps."""
        if page_size not in (PAGE_2M, PAGE_1G):
            raise ValueError(f"page_size {page_size}: must be {PAGE_2M} or {PAGE_1G}")
        return math.ceil(self.file_bytes / page_size) * page_size

    def huge_pages(self, page_size: int) -> int:
        return self.hugepage_file_bytes(page_size) // page_size


def table_sizes(
    main: int, oflow: int | None, entry_size: int, *, main_name: str, oflow_name: str
) -> TableSizes:
    """Apply the module's validation and size arithmetic for one table."""
    if main <= 0 or main % BUCKET_SIZE:
        raise ValueError(f"{main_name}={main} invalid: must be a non-zero multiple of 4")
    if oflow is None or oflow == -1:
        o = default_oentries(main)
    elif oflow <= 0 or oflow % BUCKET_SIZE:
        raise ValueError(f"{oflow_name}={oflow} invalid: must be a non-zero multiple of 4")
    else:
        o = oflow
    file_bytes = (main + o) * entry_size + HDR_SIZE
    if main > U64_MAX or main + o > U64_MAX or file_bytes > U64_MAX - PAGE_1G:
        raise ValueError(f"{main_name}={main} {oflow_name}={o}: table size overflows 64 bits")
    if main + o > MAX_ENTRIES:
        raise ValueError(f"{main_name}={main} {oflow_name}={o}: more than {MAX_ENTRIES} entries")
    return TableSizes(main, o, entry_size)


def flow_sizes(
    flow_entries: int = DEFAULT_FLOW_ENTRIES, oflow_entries: int | None = None
) -> TableSizes:
    return table_sizes(
        flow_entries,
        oflow_entries,
        FLOW_ENTRY_SIZE,
        main_name="flow_entries",
        oflow_name="oflow_entries",
    )


def bridge_sizes(
    bridge_entries: int = DEFAULT_BRIDGE_ENTRIES, bridge_oentries: int | None = None
) -> TableSizes:
    return table_sizes(
        bridge_entries,
        bridge_oentries,
        BRIDGE_ENTRY_SIZE,
        main_name="bridge_entries",
        oflow_name="bridge_oentries",
    )


def default_table_pages() -> dict[str, int]:
    """Huge pages the agent's default flow and bridge tables take, per page size: a
    hugepages(count=...) marker for tests that set up the default tables."""
    sizes = (flow_sizes(), bridge_sizes())
    return {"1G": sum(t.huge_pages(PAGE_1G) for t in sizes),
            "2M": sum(t.huge_pages(PAGE_2M) for t in sizes)}


@dataclass(frozen=True)
class BtableFailure:
    """The module's account of a mem=btable load that fragmentation defeated."""

    table: str
    got: int  # 4 MiB chunks allocated before one failed
    wanted: int


ENOMEM_TEXT = "Cannot allocate memory"  # how insmod reports the module's -ENOMEM
_BTABLE_FAILURE = re.compile(
    r"vrhp: (flow|bridge) table: btable allocation failed: got (\d+) of (\d+) 4 MiB chunks")


def btable_failure(insmod_stderr: str, dmesg: str) -> BtableFailure | None:
    """The btable refusal that fragmentation causes: ENOMEM from insmod and the kernel
    log's line naming the table and its chunks, short of what the table needs. None for
    any other refusal (another errno, no such line, every chunk allocated)."""
    found = _BTABLE_FAILURE.search(dmesg)
    if ENOMEM_TEXT not in insmod_stderr or not found:
        return None
    failure = BtableFailure(found.group(1), int(found.group(2)), int(found.group(3)))
    return failure if failure.got < failure.wanted else None
