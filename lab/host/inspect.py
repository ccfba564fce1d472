"""Looking into the QEMU processes the lab runs: their command lines, a domain's memory
mappings (/proc/PID/smaps) and the RAM backend its machine really uses (QMP)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.vm import libvirt_calls


@dataclass(frozen=True)
class Mapping:
    """One mapping of a process, from /proc/PID/smaps."""

    start: int
    end: int
    path: str
    kernel_page_kib: int
    rss_kib: int
    hugetlb_kib: int  # hugetlbfs pages mapped (smaps counts them outside Rss)

    @property
    def size_kib(self) -> int:
        return (self.end - self.start) // 1024


def parse_smaps(text: str) -> list[Mapping]:
    mappings: list[Mapping] = []
    header: list[str] = []
    fields: dict[str, int] = {}

    def flush() -> None:
        if header:
            start, end = (int(x, 16) for x in header[0].split("-"))
            path = " ".join(header[5:]) if len(header) > 5 else ""
            mappings.append(Mapping(start, end, path, fields.get("KernelPageSize", 0),
                                    fields.get("Rss", 0),
                                    fields.get("Private_Hugetlb", 0)
                                    + fields.get("Shared_Hugetlb", 0)))

    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        if "-" in words[0] and not words[0].endswith(":"):
            flush()
            header, fields = words, {}
        elif words[0].endswith(":") and len(words) >= 2 and words[1].isdigit():
            fields[words[0][:-1]] = int(words[1])
    flush()
    return mappings


def guest_ram_mappings(domain: str, memory_mib: int) -> list[Mapping]:
    """The mappings of the domain's QEMU that are as large as the guest's RAM."""
    pid = libvirt_calls.qemu_pid(domain)
    smaps = Path(f"/proc/{pid}/smaps").read_text()
    return [m for m in parse_smaps(smaps) if m.size_kib == memory_mib * 1024]


def ram_backend(conn, domain: str) -> str:  # type: ignore[no-untyped-def]
    """The id of the memory backend QEMU really uses as the machine's RAM (via QMP)."""
    import libvirt_qemu

    dom = conn.lookupByName(domain)
    query = {"execute": "qom-get", "arguments": {"path": "/machine",
                                                 "property": "memory-backend"}}
    answer = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(query), 0))
    return str(answer["return"]).rsplit("/", 1)[-1]  # "/objects/ID" -> "ID"


def qemu_processes() -> list[str]:
    if not shutil.which("pgrep"):
        return []
    out = subprocess.run(["pgrep", "-af", "qemu-system.*guest=hplab-"], capture_output=True,
                         text=True, check=False).stdout
    return [line for line in out.splitlines() if line.strip()]
