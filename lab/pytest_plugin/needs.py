"""What a test's need markers ask of a node: the huge pages of a ``hugepages`` marker,
and why a node cannot give them (the test is then skipped on it)."""

from __future__ import annotations

import pytest

from lab.topology import PAGE_SIZES, Node


def hugepage_needs(marker: pytest.Mark) -> dict[str, int]:
    """What a hugepages marker asks, as {page size: count}, any one of which will do.

    ``hugepages(size="1G", count=2)`` (or positional) asks for one size;
    ``hugepages(count={"1G": 2, "2M": 87})`` for a pool of either size.
    """
    count = marker.kwargs.get("count", marker.args[1] if len(marker.args) > 1 else 1)
    if isinstance(count, dict):
        if not count or "size" in marker.kwargs or marker.args:
            raise pytest.UsageError(f"hugepages{marker.args}{marker.kwargs}: a count per "
                                    "size takes no size")
        needs = {str(size): int(n) for size, n in count.items()}
    else:
        size = marker.kwargs.get("size", marker.args[0] if marker.args else "1G")
        needs = {str(size): int(count)}
    unknown = sorted(set(needs) - set(PAGE_SIZES))
    if unknown:
        raise pytest.UsageError(f"hugepages marker: page size {', '.join(unknown)}: must be "
                                f"one of {', '.join(PAGE_SIZES)}")
    return needs


def hugepage_shortfall(node: Node, marker: pytest.Mark | None) -> str | None:
    """Why `node` cannot give what a hugepages marker asks, or None (see hugepage_needs)."""
    if marker is None:
        return None
    needs = hugepage_needs(marker)
    have = node.hugepages
    if have is None or have.count < needs.get(have.size, have.count + 1):
        got = f"{have.count} x {have.size}" if have else "no"
        wanted = " or ".join(f"{n} x {size}" for size, n in needs.items())
        return f"node {node.name!r} has {got} huge pages; the test needs {wanted}"
    return None
