"""ci/nightly.gitlab-ci.yml, expanded as GitLab expands it (templates, parallel matrix,
variables), checked against the lab: a job for every kernel x shard with `--splits` the
number of shards and the groups 1..K, every job on the lab's runners, what the shard jobs
upload is what the merge job reads, which needs every shard, and every hplab command it
runs is one the CLI takes."""

from __future__ import annotations

import configparser
import copy
import fnmatch
import itertools
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from fakelab import ROOT

from lab import topology as topologies
from lab.cli import main as cli

PIPELINE = ROOT / "ci" / "nightly.gitlab-ci.yml"
LAB_TAG = "hplab"
KERNELS = ("debian:6.1", "debian:6.12")
KEYWORDS = {"stages", "variables", "default", "include", "workflow", "image", "services",
            "cache", "before_script", "after_script"}
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
SHELL_OPERATORS = {"||", "&&", ";", "|"}


@dataclass(frozen=True)
class Job:
    """One job as GitLab creates it: a parallel matrix job once per combination."""

    name: str  # "shard: [debian:6.1, lab, 1]" for a matrix job
    base: str  # the job's key in the file
    body: dict[str, Any]
    variables: dict[str, str]

    def expand(self, text: str) -> str:
        """`text` with the job's variables put in (predefined CI variables left)."""
        for _ in range(5):  # variables that name variables
            text = VARIABLE.sub(lambda m: self.variables.get(m[1] or m[2], m[0]), text)
        return text

    def lines(self, key: str = "script") -> list[str]:
        return [self.expand(str(line)) for line in self.body.get(key, [])]

    def commands(self) -> list[list[str]]:
        """Every command of the job's scripts, split as the shell would."""
        found = []
        for line in self.lines("before_script") + self.lines() + self.lines("after_script"):
            words: list[str] = []
            for word in [*shlex.split(line), ";"]:
                if word in SHELL_OPERATORS:
                    if words:
                        found.append(words)
                    words = []
                else:
                    words.append(word)
        return found

    def uploads(self) -> list[str]:
        return [self.expand(str(p)).rstrip("/") for p in
                self.body.get("artifacts", {}).get("paths", [])]


def _extended(name: str, config: dict[str, Any]) -> dict[str, Any]:
    body = config[name]
    parents = body.get("extends", [])
    merged: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged.update(_extended(parent, config))
    merged.update({k: v for k, v in body.items() if k != "extends"})
    return merged


def jobs(config: dict[str, Any]) -> list[Job]:
    found = []
    for base in config:
        if base in KEYWORDS or base.startswith("."):
            continue
        body = _extended(base, config)
        variables = {**config.get("variables", {}), **body.get("variables", {})}
        matrix = body.get("parallel", {}).get("matrix") or [{}]
        for entry in matrix:
            keys = list(entry)
            values = [v if isinstance(v, list) else [v] for v in entry.values()]
            for combination in itertools.product(*values):
                chosen = {k: str(v) for k, v in zip(keys, combination, strict=True)}
                name = f"{base}: [{', '.join(chosen.values())}]" if chosen else base
                found.append(Job(name, base, body, {**{k: str(v) for k, v in
                                                       variables.items()}, **chosen}))
    return found


def _option(words: list[str], option: str) -> str | None:
    return words[words.index(option) + 1] if option in words[:-1] else None


def _shard_command(job: Job) -> list[str] | None:
    return next((words for words in job.commands() if "--splits" in words), None)


def _hplab(words: list[str]) -> list[str] | None:
    """The arguments of an hplab command (hplab on PATH, in a venv or a tox env)."""
    return words[1:] if words and posixpath.basename(words[0]) == "hplab" else None


def tox_envs() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "tox.ini")
    return parser


def _tox_env_kernels(env: str) -> set[str]:
    commands = tox_envs()[f"testenv:{env}"]["commands"]
    match = re.search(r"--topology\s+(\S+)", commands)
    assert match is not None, f"tox env {env} names no topology"
    return {node.kernel for node in topologies.load(ROOT / match[1]).nodes}


def _tox_env_junit(env: str) -> str:
    """Where tox env `env` has pytest write its JUnit file, relative to the checkout."""
    commands = tox_envs()[f"testenv:{env}"]["commands"]
    match = re.search(r"--junitxml=(\S+)", commands)
    assert match is not None, f"tox env {env} writes no JUnit file"
    return match[1].replace("{toxworkdir}", ".tox").replace("{envname}", env)


def _shard_problems(shards: list[Job]) -> list[str]:
    problems = []
    by_kernel: dict[str, list[tuple[Job, int, int]]] = {}
    for job in shards:
        words = _shard_command(job) or []
        splits, group = _option(words, "--splits"), _option(words, "--group")
        if not (splits and splits.isdigit() and group and group.isdigit()):
            problems.append(f"job '{job.name}': --splits {splits} --group {group} are not "
                            "numbers")
            continue
        kernel = job.variables.get("KERNEL", "")
        env = _option(words, "-e") or ""
        if kernel not in _tox_env_kernels(env):
            problems.append(f"job '{job.name}': tox env {env!r} does not run {kernel!r}")
        by_kernel.setdefault(kernel, []).append((job, int(splits), int(group)))
    if sorted(by_kernel) != sorted(KERNELS):
        problems.append(f"shard jobs for kernels {sorted(by_kernel)}, expected "
                        f"{sorted(KERNELS)}")
    for kernel, found in by_kernel.items():
        for job, of, _ in found:
            if of != len(found):
                problems.append(f"job '{job.name}': --splits {of}, but {kernel} has "
                                f"{len(found)} shard jobs")
        groups = sorted(group for _, _, group in found)
        count = max(of for _, of, _ in found)
        if groups != list(range(1, count + 1)):
            problems.append(f"kernel {kernel}: the groups of jobs "
                            f"{', '.join(repr(j.name) for j, _, _ in found)} are {groups}, "
                            f"not 1..{count}")
    return problems


def _copied_to(job: Job) -> list[str]:
    """Where the job's `cp` commands put files, a directory target ending in '/'."""
    return [words[-1] for words in job.commands() if words[0] == "cp"]


def _under(path: str, uploads: list[str]) -> bool:
    return any(path.rstrip("/") == u or path.startswith(u + "/") for u in uploads)


def _artifact_problems(shards: list[Job], merges: list[Job]) -> list[str]:
    problems = []
    reads = [arg for job in merges for words in job.commands()
             if (args := _hplab(words)) and args[:1] == ["merge"]
             for arg in args[1:] if not arg.startswith("-") and arg != _option(args, "-o")]
    for job in shards:
        env = _option(_shard_command(job) or [], "-e") or ""
        junit = _tox_env_junit(env)
        copied = _copied_to(job)
        junit_copies = [words[-1] for words in job.commands()
                        if words[0] == "cp" and words[-2] == junit]
        if not junit_copies:
            problems.append(f"job '{job.name}': does not copy its JUnit file {junit}")
        problems += [f"job '{job.name}': copies to {target}, which it does not upload "
                     f"({', '.join(job.uploads())})" for target in copied
                     if not _under(target, job.uploads())]
        if not any(fnmatch.fnmatch(c, pattern) for c in junit_copies for pattern in reads):
            problems.append(f"job '{job.name}': uploads its JUnit file as "
                            f"{', '.join(junit_copies) or 'nothing'}, which the merge job "
                            f"does not read ({', '.join(reads) or 'no input'})")
    for pattern in reads:
        if not any(fnmatch.fnmatch(c, pattern) for job in shards for c in _copied_to(job)):
            problems.append(f"the merge job reads {pattern}, which no shard job uploads")
    return problems


def _need_problems(shards: list[Job], merges: list[Job]) -> list[str]:
    problems = []
    for merge in merges:
        needs = merge.body.get("needs", [])
        named = {n if isinstance(n, str) else n["job"] for n in needs}
        without = {n["job"] for n in needs if isinstance(n, dict)
                   and n.get("artifacts") is False}
        problems += [f"job '{merge.name}' does not need job '{job.name}'" for job in shards
                     if not ({job.name, job.base} & named)]
        problems += [f"job '{merge.name}' needs job '{name}' without its artifacts"
                     for name in sorted(without)]
    return problems


def _cli_problems(found: list[Job]) -> list[str]:
    problems = []
    for job in found:
        for words in job.commands():
            args = _hplab(words)
            if args is None:
                continue
            try:
                cli.parser().parse_args(args)
            except SystemExit:
                problems.append(f"job '{job.name}': the hplab command line refuses "
                                f"'{' '.join(words)}'")
    return problems


def problems(config: dict[str, Any]) -> list[str]:
    found = jobs(config)
    shards = [job for job in found if _shard_command(job) is not None]
    merges = [job for job in found if any((args := _hplab(w)) and args[:1] == ["merge"]
                                          for w in job.commands())]
    said = [f"job '{job.name}' runs on tags {job.body.get('tags')}, not on the lab's "
            f"'{LAB_TAG}'" for job in found if LAB_TAG not in (job.body.get("tags") or [])]
    if len(merges) != 1:
        said.append(f"{len(merges)} jobs run hplab merge, expected one")
    return (said + _shard_problems(shards) + _artifact_problems(shards, merges)
            + _need_problems(shards, merges) + _cli_problems(found))


def load() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(PIPELINE.read_text())
    return config


def test_the_pipeline_holds_together() -> None:
    config = load()
    found = problems(config)
    assert not found, "\n".join(found)
    assert [job.name for job in jobs(config)] == [
        "shard: [debian:6.1, lab, 1]", "shard: [debian:6.1, lab, 2]",
        "shard: [debian:6.12, lab-612, 1]", "shard: [debian:6.12, lab-612, 2]", "merge"]


def _matrix(config: dict[str, Any]) -> list[dict[str, Any]]:
    matrix: list[dict[str, Any]] = config["shard"]["parallel"]["matrix"]
    return matrix


def _dropped_group(config: dict[str, Any]) -> None:
    _matrix(config)[1]["GROUP"] = ["1"]


def _wrong_tag(config: dict[str, Any]) -> None:
    config["merge"]["tags"] = ["docker"]


def _splits_of_three(config: dict[str, Any]) -> None:
    config["variables"]["SHARDS"] = "3"


def _merge_reads_elsewhere(config: dict[str, Any]) -> None:
    script = config["merge"]["script"]
    script[-1] = script[-1].replace("shards/*/junit.xml", "shard/*/junit.xml")


def _not_uploaded(config: dict[str, Any]) -> None:
    config["shard"]["artifacts"]["paths"] = ["shards/$TOX_ENV/"]


def _merge_needs_less(config: dict[str, Any]) -> None:
    config["merge"]["needs"] = [{"job": "shard: [debian:6.1, lab, 1]"}]


def _unknown_subcommand(config: dict[str, Any]) -> None:
    script = config["merge"]["script"]
    script[-1] = script[-1].replace("hplab merge", "hplab merges")


def _wrong_env(config: dict[str, Any]) -> None:
    _matrix(config)[1]["TOX_ENV"] = "lab"


@pytest.mark.parametrize(("plant", "said"), [
    (_dropped_group, "kernel debian:6.12: the groups of jobs 'shard: [debian:6.12, lab-612, "
                     "1]' are [1], not 1..2"),
    (_dropped_group, "job 'shard: [debian:6.12, lab-612, 1]': --splits 2, but debian:6.12 "
                     "has 1 shard jobs"),
    (_wrong_tag, "job 'merge' runs on tags ['docker'], not on the lab's 'hplab'"),
    (_splits_of_three, "job 'shard: [debian:6.1, lab, 1]': --splits 3, but debian:6.1 has 2 "
                       "shard jobs"),
    (_merge_reads_elsewhere, "job 'shard: [debian:6.1, lab, 2]': uploads its JUnit file as "
                             "shards/lab-2/junit.xml, which the merge job does not read "
                             "(shard/*/junit.xml)"),
    (_merge_reads_elsewhere, "the merge job reads shard/*/junit.xml, which no shard job "
                             "uploads"),
    (_not_uploaded, "job 'shard: [debian:6.12, lab-612, 2]': copies to "
                    "shards/lab-612-2/junit.xml, which it does not upload (shards/lab-612)"),
    (_merge_needs_less, "job 'merge' does not need job 'shard: [debian:6.12, lab-612, 2]'"),
    (_unknown_subcommand, "job 'merge': the hplab command line refuses "
                          "'.merge-venv/bin/hplab merges shards/*/junit.xml -o merged'"),
    (_wrong_env, "job 'shard: [debian:6.12, lab, 1]': tox env 'lab' does not run "
                 "'debian:6.12'"),
])
def test_a_planted_defect_is_named_with_its_job(plant: Any, said: str) -> None:
    config = copy.deepcopy(load())
    plant(config)
    assert said in problems(config)


def test_the_shard_jobs_run_the_readmes_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "tox -e lab -- --splits 2 --group 1" in readme
    for job in jobs(load()):
        words = _shard_command(job)
        if words is not None:
            assert words[:5] == ["python3", "-m", "tox", "-e", job.variables["TOX_ENV"]]
            assert words[5:] == ["--", "--splits", "2", "--group", job.variables["GROUP"]]


def test_the_tox_envs_find_the_committed_durations() -> None:
    for env in ("lab", "lab-612"):
        commands = tox_envs()[f"testenv:{env}"]["commands"]
        assert "--durations-path={toxinidir}/suites/durations.json" in commands
    assert (ROOT / "suites" / "durations.json").is_file()
