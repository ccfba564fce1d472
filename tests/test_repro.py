"""hplab repro and bench fragment: what is refused before a VM boots, what is written."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from lab import topology as topologies
from lab.cli import bench, repro
from lab.dut.agent_output import BenchResult
from lab.errors import LabError

ROOT = Path(__file__).resolve().parent.parent
SINGLE = ROOT / "topologies" / "single.yaml"
KMOD = ROOT / "kmod"


def request(**changes: object) -> repro.ReproRequest:
    fields: dict[str, object] = {"topology": SINGLE, "kmod_source": KMOD}
    fields.update(changes)
    return repro.ReproRequest(**fields)  # type: ignore[arg-type]


def test_prepare_accepts_the_defaults() -> None:
    topology, node, spec = repro.prepare(request())
    assert (topology.name, node, spec.profile, spec.seed) == ("single", "cn1", "anon-pinned", 1)
    assert (spec.target.order, spec.target.max_free_blocks) == (10, 0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"profile": "swap"}, "profile 'swap' is unknown"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"target_order": 11}, "target order 11 is impossible"),
    ({"max_free_blocks": -3}, "max_free_blocks must be >= 0"),
    ({"floor_mib": 4}, "below the safe minimum"),
    ({"floor_mib": 6000}, "is not below MemTotal (5120 MiB)"),
    ({"node": "cn9"}, "--node 'cn9' is not in"),
    ({"kmod_source": Path("/nonexistent")}, "--kmod-source /nonexistent: no Makefile"),
])
def test_prepare_refuses_bad_input_naming_it(changes: dict[str, object], message: str) -> None:
    with pytest.raises(LabError) as caught:
        repro.prepare(request(**changes))
    assert message in str(caught.value)


def test_replay_script_pins_kernel_seed_and_sources(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "vrhp").mkdir(parents=True)
    (source / "Makefile").write_text("all:\n")
    (source / "vrhp" / "vrhp_main.c").write_text("int x;\n")
    (source / "vrhp" / "vrhp.ko").write_bytes(b"\x7fELF")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    req = request(kmod_source=source, profile="slab", seed=9)
    script = repro.write_replay(run_dir, req, topologies.load(SINGLE), "6.1.0-56-amd64", "cn1")
    argv = shlex.split(script.read_text().splitlines()[-1].split("exec ", 1)[1])
    assert argv[:2] == ["hplab", "repro"]
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert options["--kernel"] == "debian:6.1.0-56-amd64"
    assert (options["--profile"], options["--seed"]) == ("slab", "9")
    assert (run_dir / options["--topology"]).read_text() == SINGLE.read_text()
    copied = run_dir / options["--kmod-source"]
    assert (copied / "vrhp" / "vrhp_main.c").is_file()
    assert not (copied / "vrhp" / "vrhp.ko").exists()
    assert script.stat().st_mode & 0o111


def test_step_is_recorded_like_a_test_result() -> None:
    step = repro.Step("btable-insmod-fails", True, "Cannot allocate memory", {"chunks": 2})
    assert step.result().to_json() == {"nodeid": "repro::btable-insmod-fails", "outcome": "passed",
                             "duration": 0.0, "reason": "Cannot allocate memory",
                             "properties": {"chunks": "2"}}


def test_bench_specs_validate_before_booting() -> None:
    assert [(s.profile, s.seed) for s in bench.specs(["slab"], 2, 5)] == [("slab", 5),
                                                                           ("slab", 6)]
    with pytest.raises(LabError, match="profile 'nope' is unknown"):
        bench.specs(["anon-pinned", "nope"], 1, 1)
    with pytest.raises(LabError, match="--repeat must be >= 1"):
        bench.specs(["slab"], 0, 1)


def test_bench_table_reports_medians_per_profile() -> None:
    fractions = tuple([0.0] * 10 + [1.0])
    samples = [bench.FragmentSample("anon-pinned", seed, True, seconds, release, 480,
                                    "anon", 0.8, "Movable", fractions)
               for seed, seconds, release in ((1, 12.0, 0.2), (2, 30.0, 0.9), (3, 14.0, 0.3))]
    lines = bench.table(samples)
    assert len(lines) == 2
    row = lines[1].split()
    assert row[:8] == ["anon-pinned", "14.0", "12.0", "30.0", "0.30", "3/3", "480", "anon"]
    assert row[8:10] == ["(80%)", "Movable"]
    assert row[-1] == "1.00" and row[-11] == "0.00"


def test_vrhp_bench_table_reports_medians_and_ratio_spread() -> None:
    def sample(backend: str, fill: float, scan: float, anon: float) -> bench.VrhpSample:
        return bench.VrhpSample(backend, BenchResult(
            fill_requested=400_000, fill_inserted=400_000, fill_entries_per_s=fill,
            backend=backend, scan_bytes=1 << 20, scan_mib_per_s=scan,
            map_read_mib_per_s=scan, anon_read_mib_per_s=anon, scan_vs_anon=scan / anon,
            map_vs_anon=scan / anon))

    samples = [sample("hugepage", f, s, 1000.0) for f, s in ((1e5, 900.0), (3e5, 1100.0),
                                                             (2e5, 1000.0))]
    lines = bench.vrhp_table([*samples, sample("btable", 5e4, 500.0, 1000.0)])
    assert [line.split()[0] for line in lines[1:]] == ["hugepage", "btable"]
    hugepage = lines[1].split()
    assert hugepage[1:3] == ["200,000", "1,000"]
    assert hugepage[-4:] == ["1.00", "0.90", "1.10", "3"]
