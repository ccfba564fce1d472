"""lab.dut.abi is a hand copy of kmod/include/vrhp_uapi.h: these tests compile a small C
program against the header with the host's gcc and compare what it prints (sizeof,
offsetof, the constants, the outcome codes, the bytes of a filled entry) with the copy."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.dut import abi
from lab.paths import KMOD_SOURCE

INCLUDE = KMOD_SOURCE / "include"
HEADER = INCLUDE / "vrhp_uapi.h"

# Every integer constant of lab.dut.abi and the header's macro it copies.
CONSTANTS = {
    "HDR_SIZE": "VRHP_HDR_SIZE",
    "BUCKET_SIZE": "VRHP_BUCKET_SIZE",
    "CHUNK_SIZE": "VRHP_CHUNK_SIZE",
    "PAGE_2M": "VRHP_PAGE_2M",
    "PAGE_1G": "VRHP_PAGE_1G",
    "FLOW_ENTRY_SIZE": "VRHP_FLOW_ENTRY_SIZE",
    "BRIDGE_ENTRY_SIZE": "VRHP_BRIDGE_ENTRY_SIZE",
    "EF_VALID": "VRHP_EF_VALID",
    "EF_LINKED": "VRHP_EF_LINKED",
    "AF_INET": "VRHP_AF_INET",
    "AF_INET6": "VRHP_AF_INET6",
}


def _run_c(tmp_path: Path, body: list[str]) -> dict[str, str]:
    """Compile and run a program against the header; `body` prints `name value` lines
    with SHOW(name, integer) or dump(name, pointer, size) (the bytes in hex)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot compile vrhp_uapi.h to compare with abi.py")
    source = tmp_path / "uapi_probe.c"
    source.write_text("\n".join([
        "#include <stddef.h>", "#include <stdio.h>", "#include <string.h>",
        '#include "vrhp_uapi.h"  /* -I kmod/include */', "",
        '#define SHOW(name, value) printf("%s %llu\\n", name, (unsigned long long)(value))',
        "static inline void dump(const char *name, const void *p, size_t n)", "{",
        "\tconst unsigned char *b = p;", '\tprintf("%s ", name);',
        '\tfor (size_t i = 0; i < n; i++)', '\t\tprintf("%02x", b[i]);', '\tprintf("\\n");',
        "}", "", "int main(void)", "{", *(f"\t{line}" for line in body), "\treturn 0;", "}",
        ""]))
    binary = tmp_path / "uapi_probe"
    build = subprocess.run([gcc, "-std=gnu11", "-Wall", "-Werror", "-I", str(INCLUDE),
                            "-o", str(binary), str(source)],
                           capture_output=True, text=True, check=False)
    assert build.returncode == 0, f"gcc failed on {source}:\n{build.stderr}"
    out = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def _ints(printed: dict[str, str]) -> dict[str, int]:
    return {name: int(value) for name, value in printed.items()}


def _public_ints() -> set[str]:
    return {name for name, value in vars(abi).items()
            if name.isupper() and isinstance(value, int) and not isinstance(value, bool)}


def test_every_constant_is_the_headers(tmp_path: Path) -> None:
    assert _public_ints() == set(CONSTANTS), (
        "a constant of lab/dut/abi.py has no header macro in CONSTANTS (or one is gone)")
    c = _ints(_run_c(tmp_path, [f'SHOW("{py}", {macro});' for py, macro in CONSTANTS.items()]))
    wrong = [f"abi.{py} is {getattr(abi, py)}, {macro} is {c[py]}"
             for py, macro in CONSTANTS.items() if getattr(abi, py) != c[py]]
    assert not wrong, "\n".join(wrong)


def test_outcomes_are_enum_vrhp_outcome(tmp_path: Path) -> None:
    in_header = re.findall(r"^\s*VRHP_OUT_(\w+)\s*=", HEADER.read_text(), re.MULTILINE)
    assert in_header, f"no VRHP_OUT_* in {HEADER}"
    assert sorted(in_header) == sorted(o.name for o in abi.Outcome), (
        "abi.Outcome and enum vrhp_outcome name different outcomes")
    c = _ints(_run_c(tmp_path, [f'SHOW("{name}", VRHP_OUT_{name});' for name in in_header]))
    wrong = [f"abi.Outcome.{o.name} is {o.value}, VRHP_OUT_{o.name} is {c[o.name]}"
             for o in abi.Outcome if o.value != c[o.name]]
    assert not wrong, "\n".join(wrong)


def test_every_layout_is_checked() -> None:
    layouts = [v for v in vars(abi).values() if isinstance(v, abi.Layout)]
    assert {id(v) for v in layouts} == {id(v) for v in abi.LAYOUTS}, (
        "a Layout of lab/dut/abi.py is missing in abi.LAYOUTS, which these tests check")


@pytest.mark.parametrize("layout", abi.LAYOUTS, ids=lambda layout: layout.c_name)
def test_struct_layout_is_the_headers(tmp_path: Path, layout: abi.Layout) -> None:
    """Size, and offset and size of each field; and the fields cover the struct in order,
    so a field the header has and abi.py lacks shows as a gap."""
    struct = f"struct {layout.c_name}"
    lines = [f'SHOW("sizeof", sizeof({struct}));']
    for name in layout.fields:
        lines += [f'SHOW("{name}.offset", offsetof({struct}, {name}));',
                  f'SHOW("{name}.size", sizeof((({struct} *)0)->{name}));']
    c = _ints(_run_c(tmp_path, lines))
    wrong = [] if layout.size == c["sizeof"] else [
        f"sizeof({struct}) is {c['sizeof']}, abi.py says {layout.size}"]
    for name, field in layout.fields.items():
        for what, mine in (("offset", field.offset), ("size", field.size)):
            theirs = c[f"{name}.{what}"]
            if mine != theirs:
                wrong.append(f"{struct}.{name}: {what} is {theirs} in vrhp_uapi.h, "
                             f"{mine} in abi.py")
    assert not wrong, "\n".join(wrong)
    end = 0
    for name, field in layout.fields.items():
        assert field.offset == end, f"{struct}.{name}: abi.py leaves bytes {end}..{field.offset}"
        end = field.end
    assert end == layout.size, f"{struct}: abi.py's fields end at {end} of {layout.size}"


def _difference(layout: abi.Layout, mine: bytes, theirs_hex: str) -> str:
    """Where abi's bytes first differ from C's, named by the field that holds that byte."""
    theirs = bytes.fromhex(theirs_hex)
    if len(mine) != len(theirs):
        return f"struct {layout.c_name}: {len(mine)} bytes from abi.py, {len(theirs)} from C"
    at = next(i for i, (x, y) in enumerate(zip(mine, theirs, strict=True)) if x != y)
    name = next((n for n, f in layout.fields.items() if f.offset <= at < f.end), "?")
    return (f"struct {layout.c_name}.{name}: byte {at} is {mine[at]:#04x} from abi.py, "
            f"{theirs[at]:#04x} from C")


def test_entries_built_in_python_are_the_bytes_c_lays_out(tmp_path: Path) -> None:
    """Every field filled with a distinct value, in C through the header's structs and in
    Python through abi's builders: the same bytes (also no field written to another's)."""
    body = [
        "struct vrhp_flow_entry f; struct vrhp_bridge_entry b;",
        "memset(&f, 0, sizeof(f)); memset(&b, 0, sizeof(b));",
        "f.flags = 0x01020304; f.next = 0x05060708;",
        "memcpy(f.key.src, (unsigned char[]){203, 0, 113, 1}, 4);",
        "memcpy(f.key.dst, (unsigned char[]){198, 51, 100, 2}, 4);",
        "f.key.vrf = 0x0a0b0c0d; f.key.sport = 0x1112; f.key.dport = 0x1314;",
        "f.key.proto = 17; f.key.family = VRHP_AF_INET;",
        "f.action = 0x21222324; f.packets = 0x3132333435363738ULL;",
        "f.bytes = 0x4142434445464748ULL; f.last_used = 0x5152535455565758ULL;",
        "b.flags = 0x61626364; b.next = 0x65666768; b.key.vrf = 0x71727374;",
        "memcpy(b.key.mac, (unsigned char[]){0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}, 6);",
        "b.nexthop = 0x81828384; b.label = 0x85868788;",
        "b.last_used = 0x9192939495969798ULL; b.packets = 0xa1a2a3a4a5a6a7a8ULL;",
        'dump("flow", &f, sizeof(f)); dump("bridge", &b, sizeof(b));',
        "struct vrhp_flow_key k6; memset(&k6, 0, sizeof(k6));",
        "for (int i = 0; i < 16; i++) { k6.src[i] = 0x20 + i; k6.dst[i] = 0x40 + i; }",
        "k6.vrf = 7; k6.sport = 1; k6.dport = 2; k6.proto = 6; k6.family = VRHP_AF_INET6;",
        'dump("key6", &k6, sizeof(k6));',
    ]
    c = _run_c(tmp_path, body)
    key = abi.flow_key_bytes(0x0A0B0C0D, "203.0.113.1", "198.51.100.2", 17, 0x1112, 0x1314)
    flow = abi.expected_flow_entry(0x01020304, key, 0x21222324, 0x3132333435363738,
                                   0x4142434445464748, 0x5152535455565758, nxt=0x05060708)
    assert flow.hex() == c["flow"], _difference(abi.FLOW_ENTRY, flow, c["flow"])
    bridge = abi.expected_bridge_entry(0x61626364, 0x71727374, "02:aa:bb:cc:dd:ee",
                                       0x81828384, 0x85868788, 0x9192939495969798,
                                       0xA1A2A3A4A5A6A7A8, nxt=0x65666768)
    assert bridge.hex() == c["bridge"], _difference(abi.BRIDGE_ENTRY, bridge, c["bridge"])
    src6 = ":".join(f"{0x20 + i:02x}{0x21 + i:02x}" for i in range(0, 16, 2))
    dst6 = ":".join(f"{0x40 + i:02x}{0x41 + i:02x}" for i in range(0, 16, 2))
    key6 = abi.flow_key_bytes(7, src6, dst6, 6, 1, 2)
    assert key6.hex() == c["key6"], _difference(abi.FLOW_KEY, key6, c["key6"])
