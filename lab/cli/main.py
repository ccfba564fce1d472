"""The `hplab` command: a thin front end over the engine."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lab import plan as plans
from lab import topology as topologies
from lab.engine import Lab
from lab.errors import LabError
from lab.events import EventBus, ProgressPrinter
from lab.fragment.spec import PROFILES
from lab.host import inspect, liveruns, sessionlock
from lab.host import prepare as hostprep
from lab.paths import cache_dir, lab_dir
from lab.reap import RunRecord, owned_runs, reap, run_of, runs, stray_qemu
from lab.rundir import NodeState, remove_work_files
from lab.timeouts import SESSION_WAIT_S
from lab.vm import domain, libvirt_calls


def _bus(quiet: bool = False) -> EventBus:
    bus = EventBus()
    if not quiet:
        bus.subscribe(ProgressPrinter())
    return bus


def _load(args: argparse.Namespace) -> topologies.Topology:
    overrides = {"kernel": args.kernel} if getattr(args, "kernel", None) else None
    return topologies.load(args.topology, overrides)


def _kept_runs(base: Path, run_id: str | None) -> list[RunRecord]:
    records = [r for r in runs(base) if r.state.status in ("kept", "running")]
    if run_id:
        records = [r for r in records if r.run_id == run_id]
        if not records:
            raise LabError(f"no running lab with run id {run_id!r} in {base / 'runs'}")
    return records


def cmd_up(args: argparse.Namespace) -> int:
    topology = _load(args)
    base = lab_dir(args.lab_dir)
    if args.dry_run:
        return _dry_run(topology, base)
    bus = _bus()
    lab = Lab(topology, base, bus, keep=True)
    with sessionlock.hold(run_id=lab.run_id, lab_dir=base, wait_s=args.session_wait, bus=bus):
        lab.start()
        lab.stop()  # closes connections; keep=True leaves the domains running
    print(f"lab {lab.run_id} is up ({len(lab.nodes)} nodes): hplab ssh NODE, hplab down")
    for name, rt in lab.nodes.items():
        print(f"  {name}: {rt.kernel.release}, {rt.accel}, ssh on 127.0.0.1:{rt.port}, "
              f"booted in {rt.boot_seconds:.1f}s, console {rt.console}")
    return 0


DRY_RUN_ID = "DRYRUN"


def dry_run_text(plan: plans.Plan, base: Path) -> str:
    """What `up` would boot: each node's plan, then its domain XML as the engine writes
    it, with the run id, SSH port (0) and accel verdict (tcg for auto) left as placeholders."""
    out = []
    for planned in plan.nodes:
        accel = planned.node.accel if planned.node.accel != "auto" else "tcg"
        spec = planned.domain_spec(run_id=DRY_RUN_ID,
                                   node_dir=base / "runs" / DRY_RUN_ID / planned.node.name,
                                   accel=accel, ssh_port=0)
        out += [f"<!-- {planned.describe()} -->", domain.domain_xml(spec)]
    return "\n".join(out)


def _dry_run(topology: topologies.Topology, base: Path) -> int:
    """Print the plan from the cache alone: a dry run downloads and builds nothing."""
    print(dry_run_text(plans.make(topology, cache_dir(base), _bus(), offline=True), base))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    base = lab_dir(args.lab_dir)
    records = _kept_runs(base, args.run)
    if not records:
        print("no lab is up")
        return 0
    for record in records if args.all or args.run else records[-1:]:
        conns: dict[str, object] = {}
        for name, node in record.state.nodes.items():
            conns.setdefault(node.uri, libvirt_calls.connect(node.uri))
            libvirt_calls.destroy(conns[node.uri], node.domain)
            print(f"destroyed {node.domain} ({name})")
        record.state.status = "stopped"
        record.state.write(record.path)
        remove_work_files(record.path)
    return 0


def _node_state(args: argparse.Namespace) -> tuple[RunRecord, NodeState]:
    records = _kept_runs(lab_dir(args.lab_dir), args.run)
    if not records:
        raise LabError("no lab is up: start one with 'hplab up TOPOLOGY'")
    record = records[-1]
    nodes = record.state.nodes
    if args.node not in nodes:
        raise LabError(f"lab {record.run_id} has no node {args.node!r} "
                       f"(nodes: {', '.join(nodes)})")
    return record, nodes[args.node]


def cmd_ssh(args: argparse.Namespace) -> int:
    record, node = _node_state(args)
    known = record.path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{node.port} {node.host_key}\n")
    argv = ["ssh", "-i", str(record.path / "id_ed25519"), "-p", str(node.port),
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "root@127.0.0.1",
            *args.command]
    os.execvp("ssh", argv)
    return 127


def cmd_console(args: argparse.Namespace) -> int:
    _, node = _node_state(args)
    sys.stdout.write(Path(node.console).read_text(errors="replace"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    base = lab_dir(args.lab_dir)
    conn = libvirt_calls.connect("qemu:///system")
    live = set(libvirt_calls.lab_domains(conn))
    conn.close()
    for record in runs(base)[-args.last:]:
        nodes = record.state.nodes
        up = sum(1 for n in nodes.values() if n.domain in live)
        owner = "owner alive" if record.probe_owner_lock() else "no owner"
        print(f"{record.run_id}  {record.state.status:8}  {up}/{len(nodes)} domains up  "
              f"{owner}  {record.state.topology}")
    stray = live - {domain for r in runs(base) for domain in r.state.domains()}
    elsewhere = liveruns.live_runs()
    for name in sorted(stray):
        run_id = run_of(name)
        if run_id in elsewhere:
            print(f"domain {name}: {liveruns.describe(run_id, elsewhere[run_id])}")
        else:
            print(f"stray domain {name} (no run directory; 'hplab reap' removes it)")
    print(sessionlock.status())
    return 0


def cmd_reap(args: argparse.Namespace) -> int:
    base = lab_dir(args.lab_dir)
    reaped = reap(base, include_kept=args.all)
    removed = reaped.removed
    for name in removed:
        print(f"reaped {name}")
    for name, why in reaped.left.items():
        print(f"left {name} alone: {why}")
    leftovers = stray_qemu(inspect.qemu_processes(), owned_runs(base))
    for line in leftovers:
        print(f"warning: QEMU process still running: {line}", file=sys.stderr)
    if not removed:
        print("nothing to reap")
    if args.check and removed:
        print(f"hplab: {len(removed)} domains were left behind by runs that ended: a teardown "
              "leaks", file=sys.stderr)
        return 1
    return 1 if leftovers else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    return hostprep.main(["doctor"])


def cmd_host(args: argparse.Namespace) -> int:
    return hostprep.main([args.action])


def cmd_kernel_build_debug(args: argparse.Namespace) -> int:
    """Build (or reuse) the debug kernel and print where it is and how to boot it."""
    from lab.build import debugkernel

    kernel = debugkernel.fetch(f"{debugkernel.SPEC_PREFIX}{args.series}",
                               cache_dir(lab_dir(args.lab_dir)))
    print(kernel.root)
    print(f"  {kernel.release}, headers {kernel.headers_dir}")
    print(f"  boot it: hplab up topologies/single.yaml --kernel local:{kernel.root}")
    return 0


def cmd_bench_boot(args: argparse.Namespace) -> int:
    """Median seconds from domain create to SSH ready, and image build cold/warm,
    per image kind (one topology each) and kernel."""
    from lab.cli import bootbench

    base = lab_dir(args.lab_dir)
    cache = cache_dir(base)
    rows = [bootbench.measure(Path(topology), spec, base, cache, args.repeat, _bus(quiet=True))
            for topology in args.topology for spec in args.kernels]
    print("\n".join(bootbench.table(rows)))
    return 0


def cmd_bench_fragment(args: argparse.Namespace) -> int:
    """Seconds to the fragmentation target per profile, and failed allocations per order."""
    from lab.cli import bench

    profiles = list(PROFILES) if args.profiles == ["all"] else args.profiles
    specs = bench.specs(profiles, args.repeat, args.seed)
    samples = bench.run(Path(args.topology), specs, lab_dir(args.lab_dir), _bus(quiet=True))
    print("\n".join(bench.table(samples)))
    return 0


def cmd_bench_vrhp(args: argparse.Namespace) -> int:
    """Bulk fill rate, agent scan throughput and a plain anonymous read, per backend."""
    from lab.cli import bench

    samples = bench.vrhp_run(Path(args.topology), args.repeat, args.entries,
                             lab_dir(args.lab_dir), _bus(quiet=True),
                             Path(args.kmod_source).resolve())
    print("\n".join(bench.vrhp_table(samples)))
    return 0


def cmd_repro(args: argparse.Namespace) -> int:
    """Fragment a node, try both backends, write a run directory that replays itself."""
    from lab.cli import repro

    request = repro.ReproRequest(Path(args.topology), args.profile, args.seed, args.node,
                                 args.kernel, Path(args.kmod_source).resolve(),
                                 args.target_order, args.max_free_blocks, args.floor_mib)
    repro.prepare(request)
    run_dir, steps = repro.run(request, lab_dir(args.lab_dir), _bus())
    for step in steps:
        print(f"{'ok  ' if step.passed else 'FAIL'} {step.name}: {step.detail}")
    print(f"run directory: {run_dir} (replay: {run_dir / 'reproduce.sh'})")
    hugepage_failed = any(s.name.startswith("hugepage") and not s.passed for s in steps)
    return 1 if hugepage_failed or not steps else 0


def cmd_report(args: argparse.Namespace) -> int:
    from lab.report.compare import compare_paths
    from lab.report.html import COMPARE_NAME, write_compare, write_report

    if args.compare is None:
        if args.run_dir is None or args.output is not None:
            raise LabError("hplab report: give a run directory, or --compare OLD NEW "
                           "(-o names the compare page)")
        print(write_report(Path(args.run_dir)))
        return 0
    if args.run_dir is not None:
        raise LabError("hplab report: --compare OLD NEW takes no run directory besides")
    old, new = (Path(side) for side in args.compare)
    comparison = compare_paths(old, new)
    print(comparison.summary_text())
    print(write_compare(comparison, Path(args.output or COMPARE_NAME)))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Shards or kernels' runs into one results.json, JUnit file and report.html."""
    from lab.cli.matrix import counts_text
    from lab.report.merge import JUNIT_NAME, merge

    merged = merge([Path(p) for p in args.inputs], Path(args.out))
    for part in merged.parts:
        print(f"{part.label}: {counts_text(merged.counts(part))}, "
              f"{part.suite.seconds:.1f} s wall")
    for name in (JUNIT_NAME, "results.json", "report.html"):
        print(merged.out_dir / name)
    return 0


def cmd_durations(args: argparse.Namespace) -> int:
    """pytest-split's durations file from JUnit files or run directories."""
    from lab.cli import durations

    text = durations.durations_json(durations.durations([Path(p) for p in args.inputs],
                                                        Path(args.root)))
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(args.output)
    return 0


def cmd_repeat(args: argparse.Namespace) -> int:
    from lab.cli import repeat
    pytest_args = list(args.pytest_args)
    out = Path(args.out)
    with sessionlock.hold(lab_dir=lab_dir(args.lab_dir), wait_s=args.session_wait):
        records, codes = repeat.run(args.times, pytest_args, out)
    print(repeat.table(records))
    repeat.write_json(records, codes, out / "repeat.json")
    print(f"{out / 'repeat.json'}")
    bad = ("failed", "error", "missing")
    return 1 if any(o in bad for r in records for o in r.outcomes) else 0


def cmd_mutants(args: argparse.Namespace) -> int:
    from lab.cli import mutants
    out = Path(args.out)
    selected = mutants.select(args.only)
    with sessionlock.hold(lab_dir=lab_dir(args.lab_dir), wait_s=args.session_wait):
        verdicts = mutants.run(selected, out, list(args.pytest_args))
    print(mutants.table(verdicts))
    mutants.write_json(verdicts, out / "mutants.json")
    print(out / "mutants.json")
    return 0 if all(v.killed for v in verdicts) else 1


def cmd_matrix(args: argparse.Namespace) -> int:
    from lab.cli import matrix
    from lab.report.matrixpage import write_matrix

    specs = matrix.kernel_specs(args.kernels)
    topology = matrix.topology_file(args.topology)
    matrix.check_pytest_args(list(args.pytest_args))
    base = lab_dir(args.lab_dir)
    out = Path(args.out) if args.out else matrix.default_out(base)
    with sessionlock.hold(lab_dir=base, wait_s=args.session_wait):
        result = matrix.run(specs, topology, list(args.pytest_args), out, cache_dir(base))
    print(matrix.table(result))
    print(write_matrix(result, out / matrix.MATRIX_HTML))
    print(matrix.write_json(result, out / matrix.MATRIX_JSON))
    if result.interrupted:
        return 130
    return 0 if result.ok else 1


def _session_wait_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session-wait", type=sessionlock.wait_option, default=None,
                   metavar="SECONDS",
                   help="how long to wait while another lab session holds the host "
                        f"(default: ${sessionlock.WAIT_ENV} or "
                        f"{SESSION_WAIT_S:.0f}; 0: refuse at once)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hplab", description=__doc__)
    top.add_argument("--lab-dir", default=None,
                     help="cache and run directory (default: $HPLAB_DIR or /var/tmp/hplab)")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="boot a topology and leave it running")
    p.add_argument("topology")
    p.add_argument("--kernel",
                   help="kernel for every node (e.g. debian:6.12, debian:6.1-cloud, "
                        "local:DIR, debug:6.1)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and each node's domain XML, boot nothing")
    _session_wait_option(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="destroy the lab started by 'hplab up'")
    p.add_argument("--run", help="run id (default: the newest lab that is up)")
    p.add_argument("--all", action="store_true", help="every lab that is up")
    p.set_defaults(func=cmd_down)

    for name, func, text in (("ssh", cmd_ssh, "open a shell (or run a command) on a node"),
                             ("console", cmd_console, "print a node's serial console")):
        p = sub.add_parser(name, help=text)
        p.add_argument("node")
        p.add_argument("--run", help="run id (default: the newest lab that is up)")
        if name == "ssh":
            p.add_argument("command", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)

    p = sub.add_parser("status", help="runs and their domains")
    p.add_argument("--last", type=int, default=10)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("reap", help="destroy domains and files left by killed runs")
    p.add_argument("--all", action="store_true", help="also labs left up by 'hplab up'")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if anything had to be reaped (a leak check for CI)")
    p.set_defaults(func=cmd_reap)

    p = sub.add_parser("doctor", help="check the host")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("host", help="prepare the host (packages, daemons)")
    p.add_argument("action", choices=["prepare", "doctor"])
    p.set_defaults(func=cmd_host)

    kernel = sub.add_parser("kernel", help="guest kernels")
    kernel_sub = kernel.add_subparsers(dest="kernel_command", required=True)
    p = kernel_sub.add_parser("build-debug", help="build (once) a KASAN + lockdep kernel from "
                              "Debian's linux-source package")
    p.add_argument("--series", default="6.1", help="linux-source-SERIES (default: 6.1)")
    p.set_defaults(func=cmd_kernel_build_debug)

    bench = sub.add_parser("bench", help="benchmarks that print numbers")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    p = bench_sub.add_parser("boot", help="image build cold/warm and boot-to-SSH medians")
    p.add_argument("--topology", nargs="+", default=["topologies/single.yaml"],
                   help="one topology per image kind (e.g. topologies/single-debian.yaml)")
    p.add_argument("--kernels", nargs="+", default=["debian:6.1", "debian:6.12"])
    p.add_argument("--repeat", type=int, default=5)
    p.set_defaults(func=cmd_bench_boot)
    p = bench_sub.add_parser("fragment", help="seconds to the fragmentation target per "
                             "profile and failed allocations per order")
    p.add_argument("--topology", default="topologies/small.yaml")
    p.add_argument("--profiles", nargs="+", default=["all"],
                   help=f"profiles to measure: all or some of {', '.join(PROFILES)}")
    p.add_argument("--repeat", type=int, default=3, help="runs per profile (seeds seed..)")
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=cmd_bench_fragment)
    p = bench_sub.add_parser("vrhp", help="fill rate, scan throughput against a plain read")
    p.add_argument("--topology", default="topologies/single.yaml")
    p.add_argument("--repeat", type=int, default=5, help="fresh module per repetition")
    p.add_argument("--entries", type=int, default=400_000, help="flow entries filled")
    p.add_argument("--kmod-source", default="kmod", help="vrhp sources (default: ./kmod)")
    p.set_defaults(func=cmd_bench_vrhp)

    p = sub.add_parser("repro", help="fragment a node, try both backends, write a replayable "
                       "run directory")
    p.add_argument("--topology", default="topologies/single.yaml")
    p.add_argument("--node", help="node to fragment (default: the first)")
    p.add_argument("--kernel",
                   help="kernel for every node (e.g. debian:6.12, debian:6.1-cloud, "
                        "local:DIR, debug:6.1)")
    p.add_argument("--profile", default="anon-pinned", help=", ".join(PROFILES))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--target-order", type=int, default=10,
                   help="stop when no more than --max-free-blocks of this order are free")
    p.add_argument("--max-free-blocks", type=int, default=0)
    p.add_argument("--floor-mib", type=int, default=12, help="free memory never taken")
    p.add_argument("--kmod-source", default="kmod", help="vrhp sources (default: ./kmod)")
    p.set_defaults(func=cmd_repro)
    p = sub.add_parser("report", help="(re)render a run directory's report.html, or compare "
                       "two runs")
    p.add_argument("run_dir", nargs="?",
                   help="a run directory, e.g. /var/tmp/hplab/runs/<run id>")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                   help="compare two runs, each a run directory, results.json, JUnit XML "
                   "file or 'hplab repeat' output directory: new failures, fixed, slower, "
                   "added, removed, kernel and module versions")
    p.add_argument("-o", "--output", help="the compare page (default: ./compare.html)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("merge", help="merge shards (or runs of several kernels) into one "
                       "report.html, results.json and JUnit file")
    p.add_argument("inputs", nargs="+", metavar="RUN_DIR|JUNIT",
                   help="run directories or JUnit files of runs with the lab plugin")
    p.add_argument("-o", "--out", default="merged",
                   help="where the merged files go (default: ./merged)")
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("durations", help="pytest-split's durations file (test id -> "
                       "seconds) from JUnit files or run directories")
    p.add_argument("inputs", nargs="+", metavar="JUNIT|RUN_DIR")
    p.add_argument("-o", "--output", help="the durations file (default: standard output), "
                   "e.g. suites/durations.json")
    p.add_argument("--root", default=".", help="where pytest runs, to find the modules "
                   "JUnit classnames name (default: .)")
    p.set_defaults(func=cmd_durations)
    p = sub.add_parser("repeat", help="run pytest N times; per-test pass rate and durations")
    p.add_argument("times", type=int, help="how many runs")
    p.add_argument("--out", default="repeat-out", help="JUnit files and repeat.json go here")
    p.add_argument("pytest_args", nargs="*", help="pytest arguments, after --")
    _session_wait_option(p)
    p.set_defaults(func=cmd_repeat)
    p = sub.add_parser("mutants", help="plant each known defect in vrhp; the suite named for "
                                       "it must fail with the expected message")
    p.add_argument("--only", action="append", default=[], metavar="DEFECT",
                   help="this defect only (repeatable)")
    p.add_argument("--out", default="mutants-out", help="JUnit files and mutants.json go here")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    _session_wait_option(p)
    p.set_defaults(func=cmd_mutants)
    p = sub.add_parser("matrix", help="run suites on each of several kernels, one session "
                       "after another; a table of test x kernel")
    p.add_argument("--kernels", required=True, metavar="SPEC,SPEC,...",
                   help="the kernels, each as --kernel takes it (e.g. debian:6.1,debian:6.12)")
    p.add_argument("--topology", help="topology of every session (default: the plugin's)")
    p.add_argument("-o", "--out", help="a lab directory per kernel, matrix.html and "
                   "matrix.json go here (default: <lab dir>/matrix/<time>; QEMU must reach it)")
    p.add_argument("pytest_args", nargs="*", help="suites and pytest arguments, after --")
    _session_wait_option(p)
    p.set_defaults(func=cmd_matrix)
    return top


def _split_repeat(argv: list[str]) -> tuple[list[str], list[str]]:
    """`hplab repeat N -- ARGS`: ARGS go to pytest untouched, never to our parser."""
    if "--" in argv and {"repeat", "mutants", "matrix"} & set(argv[: argv.index("--")]):
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    ours, pytest_args = _split_repeat(list(sys.argv[1:] if argv is None else argv))
    args = parser().parse_args(ours)
    if args.command in ("repeat", "mutants", "matrix"):
        args.pytest_args = [*args.pytest_args, *pytest_args]
    try:
        return int(args.func(args))
    except LabError as exc:
        print(f"hplab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hplab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
