"""The mutation checks' verdicts, from JUnit files as pytest writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.cli import main as cli
from lab.cli import mutants

SHORT = mutants.MUTANTS[0]


def junit(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "junit.xml"
    path.write_text(f'<testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')
    return path


FAILED = ('<testcase classname="suites.test_sizing" name="t"><failure message="AssertionError: '
          'flow&#10;assert (524288, 8191, 128) == (524288, 8192, 128)">trace</failure>'
          '</testcase>')


def test_a_failure_with_the_expected_message_kills_the_mutant(tmp_path: Path) -> None:
    verdict = mutants.judge(SHORT, 1, junit(tmp_path, FAILED))
    assert verdict.killed and verdict.message.startswith("AssertionError: flow")


def test_a_failure_for_another_reason_does_not_kill_it(tmp_path: Path) -> None:
    other = ('<testcase classname="s" name="t"><error message="GuestError: cn1: SSH failed">'
             '</error></testcase>')
    verdict = mutants.judge(SHORT, 1, junit(tmp_path, other))
    assert (verdict.outcome, verdict.message) == ("wrong-message", "GuestError: cn1: SSH failed")


def test_a_suite_that_passes_lets_the_mutant_survive(tmp_path: Path) -> None:
    verdict = mutants.judge(SHORT, 0, junit(tmp_path, '<testcase classname="s" name="t"/>'))
    assert verdict.outcome == "survived" and not verdict.killed


def test_no_junit_is_no_result(tmp_path: Path) -> None:
    assert mutants.judge(SHORT, 4, tmp_path / "none.xml").outcome == "no-result"


def test_an_unreadable_junit_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<testsuites")
    with pytest.raises(mutants.MutantError, match=r"bad\.xml: not a readable JUnit XML file"):
        mutants.judge(SHORT, 1, bad)


def test_every_mutant_runs_only_its_suite_with_the_defect_built_in(tmp_path: Path) -> None:
    for mutant in mutants.MUTANTS:
        argv = mutants.command(mutant, tmp_path / "j.xml", ["-v"])
        assert argv[3:6] == [mutant.suite, "-k", mutant.select]
        assert argv[argv.index("--kmod-defect") + 1] == mutant.defect
        assert Path(mutant.suite).name.startswith("test_") and Path(mutant.topology).suffix
        assert (Path(__file__).parents[1] / mutant.topology).is_file()
    assert len(set(mutants.DEFECTS)) == len(mutants.MUTANTS)


def test_every_defect_is_planted_in_the_sources() -> None:
    kmod = Path(__file__).parents[1] / "kmod"
    sources = (kmod / "vrhp" / "vrhp_main.c").read_text() + \
        (kmod / "agent" / "vrhp-agent.c").read_text()
    for defect in mutants.DEFECTS:
        assert f"VRHP_PLANTED({defect})" in sources or f"VRHP_DEFECT_{defect}" in sources, defect


def test_an_unknown_defect_names_the_known_ones() -> None:
    with pytest.raises(mutants.MutantError, match=r"'NOPE': unknown defect .*SHORT_TABLE"):
        mutants.select(["NOPE"])
    assert mutants.select(["LEAKED_PIN"]) == [mutants.MUTANTS[1]]


def test_cli_passes_what_follows_the_dashes_to_pytest(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def fake_run(chosen: list[mutants.Mutant], out: Path,
                 extra: list[str]) -> list[mutants.Verdict]:
        seen.append(extra)
        return [mutants.Verdict(m, "killed", 1, "x") for m in chosen]

    monkeypatch.setattr(mutants, "run", fake_run)
    monkeypatch.setenv("HPLAB_LOCK_DIR", str(tmp_path / "locks"))  # not the host's
    code = cli.main(["mutants", "--only", "SHORT_TABLE", "--out", str(tmp_path), "--",
                     "--kernel", "debian:6.12"])
    assert code == 0 and seen == [["--kernel", "debian:6.12"]]
    assert (tmp_path / "mutants.json").exists()


@pytest.mark.parametrize(("defect", "message"), [
    ("DUMP_DROPS_ONE", "assert (119999 == 120000)"),
    ("WARN_IN_RMMOD", 'failed on teardown with "kernel warning on node cn1:\nWARNING: CPU: 0 '
                      "PID: 257 at /tmp/t/kmod/vrhp/vrhp_main.c:1909 vrhp_exit+0x41/0x4bd [vrhp]"),
])
def test_the_messages_the_suites_really_give_kill_their_mutants(
        tmp_path: Path, defect: str, message: str) -> None:
    mutant = mutants.select([defect])[0]
    escaped = message.replace("&", "&amp;").replace('"', "&quot;").replace("\n", "&#10;")
    body = f'<testcase classname="s" name="t"><failure message="{escaped}"/></testcase>'
    assert mutants.judge(mutant, 1, junit(tmp_path, body)).killed
