"""The module under test in the lab: built for a node's exact kernel, loaded in its guest."""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.build.kernel import Kernel
from lab.cache import CacheEntry
from lab.dut.agent_output import (
    FillResult,
    Info,
    SetupOutcome,
    parse_fill,
    parse_info,
    parse_setup,
)
from lab.errors import BuildError, GuestError
from lab.guest.ssh import Guest, Result
from lab.paths import KMOD_SOURCE
from lab.shell import digest, run
from lab.timeouts import UNLOAD_POLL_S, Timeouts

SOURCE_SUFFIXES = (".c", ".h", "Kbuild", "Makefile")
REMOTE_DIR = "/opt/vrhp"
MODULE_NAME = "vrhp"


@dataclass(frozen=True)
class ModuleBuild:
    """vrhp.ko and its agent, built for one kernel release and one version/layout."""

    kernel_release: str
    version: int
    layout: int
    key: str
    ko: Path
    agent: Path

    @property
    def label(self) -> str:
        return f"v{self.version}-layout{self.layout}"


def _source_files(source: Path) -> list[Path]:
    return sorted(p for p in source.rglob("*") if p.is_file() and p.name.endswith(SOURCE_SUFFIXES)
                  and not p.name.endswith(".mod.c"))


def module_entry(cache: Path, kind: str, release: str, key: str) -> CacheEntry:
    """<cache>/<kind>/<release>-<key>/, complete with its `done` file."""
    return CacheEntry(cache, kind, f"{release}-{key}", marker="done", lock=f".{key}.lock")


def _build_copy(source: Path, kernel: Kernel, cache: Path, kind: str, extra: tuple[str, ...],
                make: Callable[[Path], list[str | Path]], products: dict[str, str]) -> Path:
    """Build `source` in a private copy for `kernel`; cached by sources, kernel and `extra`.

    `products` maps a path inside the built tree to the name it is kept under. Returns
    the cache directory holding the products.
    """
    files = _source_files(source) if source.is_dir() else []
    if not files:
        raise BuildError(f"no module sources under {source} (files ending in "
                         f"{', '.join(SOURCE_SUFFIXES)})")
    gcc = run(["gcc", "--version"]).splitlines()[0]
    key = digest(kind, kernel.release, kernel.package_version, gcc, *extra,
                 *(f"{p.relative_to(source)}\0{p.read_text()}" for p in files))

    def build_into(out: Path) -> None:
        out.mkdir()
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / source.name
            for path in files:
                target = tree / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            run(make(tree), timeout=Timeouts.module_build)
            for built, name in products.items():
                shutil.copy2(tree / built, out / name)
        for name in products.values():
            if name.endswith(".ko"):
                vermagic = run(["modinfo", "-F", "vermagic", out / name]).strip()
                if vermagic != kernel.vermagic:
                    raise BuildError(f"{name} built with vermagic {vermagic!r}, but kernel "
                                     f"{kernel.release} expects {kernel.vermagic!r}")
        (out / "done").write_text(key)

    return module_entry(cache, kind, kernel.release, key).build(build_into)


def build(kernel: Kernel, cache: Path, *, version: int = 1, layout: int = 1,
          source: Path = KMOD_SOURCE, defect: str | None = None) -> ModuleBuild:
    """vrhp.ko and its agent for `kernel`, in a version and layout; `defect` plants one
    known defect for a mutation check (lab.mutants)."""
    def make(tree: Path) -> list[str | Path]:
        return ["make", "-C", tree, f"KDIR={kernel.headers_dir}", f"VRHP_VERSION={version}",
                f"VRHP_LAYOUT={layout}", f"VRHP_DEFECT={defect or ''}"]

    extra = (str(version), str(layout), *((f"defect={defect}",) if defect else ()))
    out = _build_copy(source, kernel, cache, "kmod", extra, make,
                      {"vrhp/vrhp.ko": "vrhp.ko", "agent/vrhp-agent": "vrhp-agent"})
    return ModuleBuild(kernel.release, version, layout, (out / "done").read_text(),
                       out / "vrhp.ko", out / "vrhp-agent")


def build_kbuild(source: Path, kernel: Kernel, cache: Path, module: str) -> Path:
    """A plain out-of-tree module (a directory with a Kbuild file) for `kernel`."""
    def make(tree: Path) -> list[str | Path]:
        return ["make", "-C", kernel.headers_dir, f"M={tree}", "modules"]

    out = _build_copy(source, kernel, cache, "modules", (), make,
                      {f"{module}.ko": f"{module}.ko"})
    return out / f"{module}.ko"


class GuestModule:
    """One build of vrhp installed in a guest: insmod, rmmod, the agent."""

    def __init__(self, guest: Guest, module: ModuleBuild) -> None:
        self.guest, self.build = guest, module
        self.remote_dir = f"{REMOTE_DIR}/{module.label}"
        self.ko = f"{self.remote_dir}/vrhp.ko"
        self.agent_path = f"{self.remote_dir}/vrhp-agent"

    def install(self) -> GuestModule:
        """Copy the build into the guest, once per boot (its root lives in that boot)."""
        if self.guest.installed.get(self.remote_dir) == self.build.key:
            return self
        self.guest.check(f"mkdir -p {self.remote_dir}")
        self.guest.put(self.build.ko, self.ko)
        self.guest.put(self.build.agent, self.agent_path, mode=0o755)
        self.guest.installed[self.remote_dir] = self.build.key
        return self

    def loaded(self) -> bool:
        return self.guest.run(f"test -d /sys/module/{MODULE_NAME}").ok

    def insmod(self, **params: object) -> Result:
        """Load the module; returns the result so tests can assert refusals."""
        args = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in params.items())
        return self.guest.run(f"insmod {self.ko} {args}".strip())

    def load(self, **params: object) -> None:
        result = self.insmod(**params)
        if not result.ok:
            raise GuestError(f"{self.guest.node}: insmod vrhp.ko {params} failed: "
                             f"{result.stderr.strip()}")

    def rmmod(self, timeout: float | None = None) -> None:
        self.unload(self.guest, timeout)

    @staticmethod
    def unload(guest: Guest, timeout: float | None = None) -> None:
        """Unload after the module's users are gone (refcount 0), bounded by `timeout`
        reference seconds (default the guest's module_unload)."""
        refcnt = f"/sys/module/{MODULE_NAME}/refcnt"
        bound = guest.bound(guest.timeouts.module_unload if timeout is None else timeout)
        started = time.monotonic()
        while True:
            count = guest.run(f"cat {refcnt} 2>/dev/null").stdout.strip()
            if count in ("", "0"):
                break
            elapsed = time.monotonic() - started
            if elapsed > bound.seconds:
                raise GuestError(f"{guest.node}: vrhp refcount still {count} after "
                                 f"{elapsed:.1f}s, past the unload bound of {bound}; "
                                 "cannot unload")
            time.sleep(UNLOAD_POLL_S)
        if count == "0":
            guest.check(f"rmmod {MODULE_NAME}")

    def agent(self, *args: str | int, timeout: float | None = None) -> Result:
        command = " ".join(shlex.quote(str(a)) for a in (self.agent_path, *args))
        return self.guest.run(command, timeout=timeout)

    def agent_stdout(self, *args: str | int, timeout: float | None = None,
                     exits: tuple[int, ...] = (0,)) -> str:
        """The agent's stdout; an exit status outside `exits` raises, naming the command."""
        result = self.agent(*args, timeout=timeout)
        if result.exit_status not in exits:
            raise GuestError(f"{self.guest.node}: vrhp-agent {' '.join(map(str, args))} exited "
                             f"{result.exit_status}: {result.stderr.strip()[-600:]}")
        return result.stdout

    def info(self) -> Info:
        return parse_info(self.agent_stdout("info"))

    def setup(self, *options: str) -> SetupOutcome:
        """`vrhp-agent setup`; every outcome is returned, only usage errors raise."""
        return parse_setup(self.agent_stdout("setup", *options, exits=(0, 2, 3)))

    def fill(self, table: str, count: int, seed: int = 1) -> FillResult:
        return parse_fill(self.agent_stdout("fill", table, count, seed,
                                            timeout=self.guest.timeouts.agent_fill))

    def agent_json(self, *args: str | int, timeout: float | None = None) -> Any:
        """Run the agent and parse its JSON; a failure names the command and its stderr."""
        stdout = self.agent_stdout(*args, timeout=timeout)
        try:
            return json.loads(stdout)
        except json.JSONDecodeError as exc:
            raise GuestError(f"{self.guest.node}: vrhp-agent {' '.join(map(str, args))} printed "
                             f"no JSON ({exc}): {stdout[:300]!r}") from None


def hugepage_pool(guest: Guest, size_kib: int = 1048576) -> tuple[int, int]:
    """(reserved, free) huge pages of one size in the guest, from sysfs."""
    base = f"/sys/kernel/mm/hugepages/hugepages-{size_kib}kB"
    text = guest.check(f"cat {base}/nr_hugepages {base}/free_hugepages")
    try:
        total, free = (int(v) for v in text.split())
    except ValueError:
        raise GuestError(f"{guest.node}: {base}: unexpected pool counters {text!r}") from None
    return total, free


REMOVE_HUGETLBFS_FILES = ("awk '$3 == \"hugetlbfs\" {print $2}' /proc/mounts | "
                          "while read -r dir; do rm -f \"$dir\"/* 2>/dev/null; done; true")
BUSY = 4
# One round trip when nothing holds the module; exit BUSY while something still does.
# SIGKILL and wait: a daemon or traffic generator still mapping a table's file keeps
# its huge pages from the pool. The wait is bounded by the reset command's scaled bound.
STOP_AGENTS = ("pkill -9 -x vrhp-agent; pkill -9 -x vrhp_traffic; "
               "while pgrep -x vrhp-agent || pgrep -x vrhp_traffic; do sleep 0.1; done "
               "> /dev/null")
RESET_AT_ONCE = (f"{STOP_AGENTS}; c=$(cat /sys/module/{MODULE_NAME}/refcnt 2>/dev/null); "
                 f"case \"$c\" in '') ;; 0) rmmod {MODULE_NAME} || exit 3 ;; "
                 f"*) exit {BUSY} ;; esac; {REMOVE_HUGETLBFS_FILES}")


def reset_guest(guest: Guest, timeout: float | None = None) -> None:
    """Unload vrhp and remove the files of every hugetlbfs mount: the pool is whole again."""
    result = guest.run(RESET_AT_ONCE)
    if result.ok:
        return
    if result.exit_status != BUSY:
        raise GuestError(f"{guest.node}: rmmod {MODULE_NAME} failed: {result.stderr.strip()}")
    GuestModule.unload(guest, timeout)
    guest.run(REMOVE_HUGETLBFS_FILES)
