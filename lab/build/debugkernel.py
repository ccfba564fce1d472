"""A debug kernel built from Debian's own source: KASAN, lockdep, DEBUG_VM and friends.

`fetch("debug:6.1", cache)` builds once per key and reuses: the key hashes the config
fragment (lab/build/debugkernel.config), the version of Debian's `linux-source-6.1` package and
RECIPE_VERSION. The configuration is allnoconfig + kernel/configs/kvm_guest.config + the
fragment; every option of the fragment is then checked in the final .config, because
Kconfig silently drops an option whose dependencies are unmet.

The result, under <cache>/debug-kernels/<key>/, has the layout of an unpacked Debian
kernel, so `local:<dir>` boots it: boot/vmlinuz-REL, boot/vmlinux-REL (the ELF the
lab boots through its PVH entry), boot/config-REL, lib/modules/REL/ with
lib/modules/REL/build pointing at the build tree usr/src/linux-headers-REL (cleaned,
then `make modules_prepare`d: a KDIR for out-of-tree modules), and `vermagic`.
build.log is the whole build's output (<cache>/debug-kernels/<key>.build.log while it
builds, kept there when it fails); hplab-kernel.json is written last, and the entry is
built in a temporary directory beside it and renamed into place (lab.cache).

Guest memory: generic KASAN takes 1/8 of guest RAM for its shadow (640 MiB of a 5 GiB
guest) early in boot, before `hugepages=` reserves the 1 GiB pages, so a node meant to
hold 2 x 1 GiB huge pages needs RAM for those plus the shadow plus what lockdep and
KASAN's quarantine use; the shadow can also take a 1 GiB-aligned range a page needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lab.build.debiankernel import package_version
from lab.build.kernel import Kernel, read_vermagic
from lab.cache import CacheEntry
from lab.errors import BuildError
from lab.shell import digest, run

RECIPE_VERSION = "1"
FRAGMENT = Path(__file__).with_name("debugkernel.config")
BASE_FRAGMENTS = ("kernel/configs/kvm_guest.config",)
SPEC_PREFIX = "debug:"
DEFAULT_SERIES = "6.1"
META = "hplab-kernel.json"
LOG = "build.log"
JOBS = 2
# Instrumented code runs several times slower under TCG (a boot-time insmod of virtio_pci
# took 23 s): a soft lockup is reported after 2 x 60 s, not 2 x 10 s.
SLOW_KERNEL_ARGS = "watchdog_thresh=60"
NICE = ("nice", "-n", "19", "ionice", "-c3")
PROGRESS_EVERY_S = 30.0
LOG_TAIL_LINES = 20
COMPILED = re.compile(r"^\s+CC(?: \[M\])?\s+(\S+)$", re.MULTILINE)

Say = Callable[[str], None]


def say_stderr(message: str) -> None:
    print(f"[hplab] debug kernel {message}", file=sys.stderr, flush=True)


def cache_key(fragment: str, source_version: str, recipe: str = RECIPE_VERSION) -> str:
    return digest("debugkernel", recipe, source_version, fragment)


def parse_config(text: str) -> dict[str, str]:
    """CONFIG_X=value and '# CONFIG_X is not set' (value 'n') lines of a config file."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        if m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line.strip()):
            options[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"# (CONFIG_\w+) is not set", line.strip()):
            options[m.group(1)] = "n"
    return options


def check_config(fragment: str, final: str, final_name: str) -> None:
    """Every option the fragment sets has that value in the final config (absent = n)."""
    have = parse_config(final)
    for name, wanted in parse_config(fragment).items():
        actual = have.get(name, "n")
        if actual != wanted:
            raise BuildError(f"{final_name}: {name} is {actual}, the fragment {FRAGMENT.name} "
                             f"asks for {wanted} (a dependency Kconfig found unmet?)")


def kernel_release(makefile: str, suffix: str) -> str:
    """The release a kernel Makefile builds, with CONFIG_LOCALVERSION = `suffix`."""
    fields = dict(re.findall(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION) = ?(.*)$", makefile,
                             re.MULTILINE))
    if not all(fields.get(k) for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL")):
        raise BuildError("kernel Makefile has no VERSION, PATCHLEVEL and SUBLEVEL lines")
    base = f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields['SUBLEVEL']}"
    return f"{base}{fields.get('EXTRAVERSION', '').strip()}{suffix}"


def release_suffix(key: str) -> str:
    return f"-hplab-debug-{key[:8]}"


def install_layout(tree: Path, root: Path, release: str, vermagic: str) -> None:
    """Boot files from the build tree `tree` into `root`, in an unpacked Debian kernel's
    layout; `make modules_install` has already filled root/lib/modules/REL."""
    modules = root / "lib" / "modules" / release
    for name in ("modules.dep", "modules.builtin"):
        if not (modules / name).is_file():
            raise BuildError(f"{modules}: no {name} (did 'make modules_install' run?)")
    boot = root / "boot"
    boot.mkdir(parents=True, exist_ok=True)
    for built, name in (("arch/x86/boot/bzImage", "vmlinuz"), ("vmlinux", "vmlinux"),
                        (".config", "config"), ("System.map", "System.map")):
        if not (tree / built).is_file():
            raise BuildError(f"{tree}: no {built} after the build")
        shutil.copy2(tree / built, boot / f"{name}-{release}")
    for link in ("build", "source"):
        path = modules / link
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(os.path.relpath(tree, modules))
    (root / "vermagic").write_text(vermagic + "\n")


def headers_dir(root: Path, release: str) -> Path:
    return root / "usr" / "src" / f"linux-headers-{release}"


def _series(spec: str) -> str:
    series = spec.removeprefix(SPEC_PREFIX)
    if not re.fullmatch(r"\d+\.\d+", series):
        raise BuildError(f"debug kernel {spec!r}: expected {SPEC_PREFIX}SERIES, e.g. "
                         f"{SPEC_PREFIX}{DEFAULT_SERIES}")
    return series


def _source_version(package: str) -> str:
    try:
        return package_version(package)
    except (BuildError, IndexError):
        raise BuildError(f"no package {package} in the apt lists; run 'apt-get update' "
                         "(hplab host prepare does)") from None


def _log_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _progress(log: Path, offset: int, compiled: int) -> tuple[int, int, str]:
    """Objects compiled so far and the last one, from the log past `offset`."""
    with log.open("rb") as handle:
        handle.seek(offset)
        chunk = handle.read()
    cut = chunk.rfind(b"\n") + 1
    found = COMPILED.findall(chunk[:cut].decode(errors="replace"))
    return offset + cut, compiled + len(found), found[-1] if found else ""


def _step(argv: list[str | Path], tree: Path, log: Path, label: str, say: Say) -> None:
    """Run one build step nice'd, its output appended to `log`, a progress line every
    PROGRESS_EVERY_S; BuildError naming the log and its last lines."""
    args = [*NICE, *(str(a) for a in argv)]
    with log.open("a") as out:
        out.write(f"\n### {label}: {' '.join(args)}\n")
        out.flush()
        offset = log.stat().st_size
        started = time.monotonic()
        compiled, last = 0, ""
        proc = subprocess.Popen(args, cwd=tree, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            while True:
                try:
                    code = proc.wait(timeout=PROGRESS_EVERY_S)
                    break
                except subprocess.TimeoutExpired:
                    offset, compiled, newest = _progress(log, offset, compiled)
                    last = newest.removeprefix(f"{tree}/") or last
                    say(f"{label}: {compiled} objects compiled, last {last or '-'} "
                        f"({_minutes(time.monotonic() - started)})")
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
    if code != 0:
        raise BuildError(f"debug kernel {label} failed with exit status {code}; full log "
                         f"{log}, last lines:\n{_log_tail(log)}")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _unpack_source(package: str, version: str, dest: Path) -> Path:
    """Debian's source tarball of `package`=`version`, unpacked under `dest`."""
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        work = Path(tmp)
        work.chmod(0o777)  # apt's download sandbox user writes here
        run(["apt-get", "download", f"{package}={version}"], cwd=work)
        deb = next(work.glob("*.deb"))
        run(["dpkg-deb", "-x", deb, work / "deb"])
        tarballs = sorted((work / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
        if not tarballs:
            raise BuildError(f"{deb.name}: no linux-source-*.tar.* under /usr/src")
        run(["tar", "-xf", tarballs[0], "-C", dest], timeout=1800)
    trees = [p for p in dest.iterdir() if p.is_dir() and p.name.startswith("linux-source")]
    if len(trees) != 1:
        raise BuildError(f"{tarballs[0].name}: expected one linux-source-* directory in it")
    return trees[0]


def _build(series: str, version: str, key: str, root: Path, say: Say, log: Path) -> str:
    """Build into `root`, the output going to `log` (moved into root/LOG at the end)."""
    started = time.monotonic()
    src = root / "usr" / "src"
    src.mkdir(parents=True)
    log.unlink(missing_ok=True)
    package = f"linux-source-{series}"
    say(f"{package} {version} (key {key}): downloading and unpacking the source")
    unpacked = _unpack_source(package, version, src)
    suffix = release_suffix(key)
    release = kernel_release((unpacked / "Makefile").read_text(), suffix)
    tree = headers_dir(root, release)
    unpacked.rename(tree)
    localversion = root / "localversion.config"
    localversion.write_text(f'CONFIG_LOCALVERSION="{suffix}"\n')
    say(f"{release}: configuring; log {log}")
    _step(["scripts/kconfig/merge_config.sh", "-n", *BASE_FRAGMENTS, FRAGMENT, localversion],
          tree, log, f"{release}: configure", say)
    check_config(FRAGMENT.read_text(), (tree / ".config").read_text(), str(tree / ".config"))
    built_release = run(["make", "-s", "kernelrelease"], cwd=tree).strip()
    if built_release != release:
        raise BuildError(f"{tree}: make kernelrelease says {built_release!r}, "
                         f"expected {release!r}")
    say(f"{release}: compiling (make -j{JOBS}, nice 19); a line every "
        f"{PROGRESS_EVERY_S:.0f}s")
    _step(["make", f"-j{JOBS}", "all"], tree, log, f"{release}: compile", say)
    _step(["make", f"-j{JOBS}", "modules_install", f"INSTALL_MOD_PATH={root}"], tree, log,
          f"{release}: modules_install", say)
    install_layout(tree, root, release, read_vermagic(root / "lib" / "modules" / release, release))
    say(f"{release}: trimming the build tree to what out-of-tree modules need")
    _step(["make", "clean"], tree, log, f"{release}: clean", say)
    _step(["make", f"-j{JOBS}", "modules_prepare"], tree, log, f"{release}: modules_prepare",
          say)
    if not (tree / "Module.symvers").is_file():
        raise BuildError(f"{tree}: no Module.symvers after the build")
    seconds = time.monotonic() - started
    log.rename(root / LOG)
    (root / META).write_text(json.dumps({
        "spec": f"{SPEC_PREFIX}{series}", "release": release, "version": version,
        "packages": [f"{package}={version}"], "key": key, "recipe": RECIPE_VERSION,
        "build_seconds": round(seconds)}, indent=1))
    say(f"{release}: built in {_minutes(seconds)}")
    return release


def entry(cache: Path, key: str) -> CacheEntry:
    """<cache>/debug-kernels/<key>/: the kernel, then hplab-kernel.json; a build waits
    hours for another builder of the same key."""
    return CacheEntry(cache, "debug-kernels", key, marker=META, wait_s=6 * 3600)


def fetch(spec: str, cache: Path, say: Say = say_stderr, *, offline: bool = False) -> Kernel:
    """Build the debug kernel of `spec` ('debug:6.1') once; later calls reuse it;
    `offline`: only taken from the cache (NotCached when absent)."""
    series = _series(spec)
    package = f"linux-source-{series}"
    version = _source_version(package)
    key = cache_key(FRAGMENT.read_text(), version)
    cached = entry(cache, key)
    if offline:
        root = cached.require(f"kernel {spec} ({package} {version}, key {key})",
                              f"hplab kernel build-debug --series {series}")
    else:
        # the log lives beside the entry while it builds, so a failed build keeps it
        log = cached.parent / f"{key}.{LOG}"
        root = cached.build(lambda stage: _build(series, version, key, stage, say, log))
    info = json.loads((root / META).read_text())
    return Kernel(spec=spec, release=info["release"], package_version=info["version"],
                  root=root, pvh_boots=False, cmdline=SLOW_KERNEL_ARGS)
