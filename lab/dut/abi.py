"""The Python copy of ``kmod/include/vrhp_uapi.h``: the constants, the HP_CONFIG outcome
codes and the byte layout (offset and size of every field) of the table entries and their
keys, with builders of the exact bytes an entry holds in the table's memory.

Everything here is written by hand from the header (layout 1, the default ``VRHP_LAYOUT``);
``tests/test_uapi_matches_header.py`` compiles the header and checks every value.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

HDR_SIZE = 4096  # VRHP_HDR_SIZE: the table header, padded; entries follow it
BUCKET_SIZE = 4  # VRHP_BUCKET_SIZE: main entries per bucket
CHUNK_SIZE = 4 << 20  # VRHP_CHUNK_SIZE: one btable chunk, an order-10 allocation
PAGE_2M = 2 << 20  # VRHP_PAGE_2M
PAGE_1G = 1 << 30  # VRHP_PAGE_1G
FLOW_ENTRY_SIZE = 256  # VRHP_FLOW_ENTRY_SIZE
BRIDGE_ENTRY_SIZE = 64  # VRHP_BRIDGE_ENTRY_SIZE

EF_VALID = 0x1  # VRHP_EF_VALID: the entry holds a key
EF_LINKED = 0x2  # VRHP_EF_LINKED: an overflow entry linked into a bucket chain
AF_INET = 4  # VRHP_AF_INET: flow key family
AF_INET6 = 6  # VRHP_AF_INET6


class Outcome(IntEnum):
    """HP_CONFIG outcome codes (``enum vrhp_outcome``)."""

    SUCCESS = 0
    MEM_FAILURE = 1
    INVALID_ARG_FALLBACK_IN_USE = 2
    HUGEPAGE_FAILURE_FALLBACK_IN_USE = 3
    ALREADY_INITIALISED = 4
    PARTIAL = 5
    LAYOUT_MISMATCH = 6
    REFUSED = 7
    NONE = 255

    @property
    def agent_exit_code(self) -> int:
        """The exit status `vrhp-agent setup` uses for this outcome."""
        if self in (Outcome.SUCCESS, Outcome.ALREADY_INITIALISED):
            return 0
        if self in (
            Outcome.PARTIAL,
            Outcome.INVALID_ARG_FALLBACK_IN_USE,
            Outcome.HUGEPAGE_FAILURE_FALLBACK_IN_USE,
        ):
            return 3
        return 2


# ---------------------------------------------------------------- entry layout


@dataclass(frozen=True)
class Field:
    """Where one field of a C struct lies: its byte offset and size."""

    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Layout:
    """A C struct of the header: its name, its size and its fields in order."""

    c_name: str
    size: int
    fields: dict[str, Field]


FLOW_KEY = Layout("vrhp_flow_key", 44, {
    "src": Field(0, 16),  # IPv4: first 4 bytes, rest zero
    "dst": Field(16, 16),
    "vrf": Field(32, 4),
    "sport": Field(36, 2),
    "dport": Field(38, 2),
    "proto": Field(40, 1),
    "family": Field(41, 1),
    "pad": Field(42, 2),
})

FLOW_ENTRY = Layout("vrhp_flow_entry", FLOW_ENTRY_SIZE, {
    "flags": Field(0, 4),
    "next": Field(4, 4),
    "key": Field(8, FLOW_KEY.size),
    "action": Field(52, 4),
    "packets": Field(56, 8),
    "bytes": Field(64, 8),
    "last_used": Field(72, 8),
    "pad": Field(80, FLOW_ENTRY_SIZE - 80),
})

BRIDGE_KEY = Layout("vrhp_bridge_key", 12, {
    "vrf": Field(0, 4),
    "mac": Field(4, 6),
    "pad": Field(10, 2),
})

BRIDGE_ENTRY = Layout("vrhp_bridge_entry", BRIDGE_ENTRY_SIZE, {
    "flags": Field(0, 4),
    "next": Field(4, 4),
    "key": Field(8, BRIDGE_KEY.size),
    "nexthop": Field(20, 4),
    "label": Field(24, 4),
    "pad0": Field(28, 4),
    "last_used": Field(32, 8),
    "packets": Field(40, 8),
    "pad": Field(48, BRIDGE_ENTRY_SIZE - 48),
})

LAYOUTS = (FLOW_KEY, FLOW_ENTRY, BRIDGE_KEY, BRIDGE_ENTRY)

_UINT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


def _put(buf: bytearray, layout: Layout, name: str, value: int | bytes) -> None:
    """Write a little-endian integer, or bytes of exactly the field's size, into a field."""
    field = layout.fields[name]
    if isinstance(value, bytes):
        if len(value) != field.size:
            raise ValueError(f"{layout.c_name}.{name} is {field.size} bytes, got {len(value)}")
        buf[field.offset:field.end] = value
    else:
        struct.pack_into(_UINT[field.size], buf, field.offset, value)


def expected_flow_entry(flags: int, key_bytes: bytes, action: int, packets: int,
                        bytes_: int, last_used: int, nxt: int = 0) -> bytes:
    """A layout-1 flow entry as the module lays it out (``struct vrhp_flow_entry``)."""
    if len(key_bytes) != FLOW_KEY.size:
        raise ValueError(f"flow key is {FLOW_KEY.size} bytes, got {len(key_bytes)}")
    entry = bytearray(FLOW_ENTRY.size)
    for name, value in (("flags", flags), ("next", nxt), ("key", key_bytes), ("action", action),
                        ("packets", packets), ("bytes", bytes_), ("last_used", last_used)):
        _put(entry, FLOW_ENTRY, name, value)
    return bytes(entry)


def flow_key_bytes(vrf: int, src: str, dst: str, proto: int, sport: int, dport: int) -> bytes:
    """``struct vrhp_flow_key`` of an IPv4 or IPv6 flow."""
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version != b.version:
        raise ValueError(f"flow key: {src} and {dst} are not the same family")
    family = AF_INET if a.version == 4 else AF_INET6
    addr_size = FLOW_KEY.fields["src"].size
    key = bytearray(FLOW_KEY.size)
    for name, value in (("src", a.packed.ljust(addr_size, b"\0")),
                        ("dst", b.packed.ljust(addr_size, b"\0")), ("vrf", vrf),
                        ("sport", sport), ("dport", dport), ("proto", proto),
                        ("family", family)):
        _put(key, FLOW_KEY, name, value)
    return bytes(key)


def expected_bridge_entry(flags: int, vrf: int, mac: str, nexthop: int, label: int,
                          last_used: int, packets: int = 0, nxt: int = 0) -> bytes:
    """A layout-1 bridge entry (``struct vrhp_bridge_entry``)."""
    mac_bytes = bytes(int(x, 16) for x in mac.split(":"))
    if len(mac_bytes) != BRIDGE_KEY.fields["mac"].size:
        raise ValueError(f"bridge key: bad MAC {mac!r}")
    key = bytearray(BRIDGE_KEY.size)
    _put(key, BRIDGE_KEY, "vrf", vrf)
    _put(key, BRIDGE_KEY, "mac", mac_bytes)
    entry = bytearray(BRIDGE_ENTRY.size)
    for name, value in (("flags", flags), ("next", nxt), ("key", bytes(key)),
                        ("nexthop", nexthop), ("label", label), ("last_used", last_used),
                        ("packets", packets)):
        _put(entry, BRIDGE_ENTRY, name, value)
    return bytes(entry)
