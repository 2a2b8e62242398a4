"""`forethought bench NAME --against REV`: a benchmark run beside an earlier revision's code, in
alternating rounds, so that both see the same machine in the same hour.

Each round runs the revision's own `forethought bench NAME` (its source from `git archive`,
imported ahead of the installed package) and then this checkout's, each in a fresh process; the
result is this checkout's JSON with every number the median over the rounds, and `against`: the
revision's commit, its medians, the ratio of each number to the revision's (this checkout's over
the revision's) and every round's numbers on both sides. On a machine whose speed drifts (a shared
or virtual one) the ratio is the number to read: a time or rate alone moves with the hour.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from forethought.robots.config import ConfigError
from forethought.scripts.bench import host_steal_s, machine_info

PACKAGE = "forethought"


def repository_root() -> Path:
    """The git checkout this code runs from; ConfigError outside one."""
    here = Path(__file__).resolve().parent
    found = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True)
    if found.returncode != 0:
        raise ConfigError(f"--against: the code at {here} is not in a git checkout, so there is no revision to run")
    return Path(found.stdout.strip())


def resolve_commit(revision: str, root: Path) -> str:
    """The full hash of `revision` (a hash, tag, branch or HEAD~N) in the checkout at root."""
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"], cwd=root,
                           capture_output=True, text=True)
    if found.returncode != 0:
        raise ConfigError(f"--against: '{revision}' is not a commit of the checkout at {root}")
    return found.stdout.strip()


def extract_revision(commit: str, root: Path, into: Path) -> Path:
    """The source of `commit` written under `into`, laid out as an importable package as its own
    pyproject.toml maps it (package-dir); returns the folder to put first on PYTHONPATH."""
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=root, capture_output=True, check=True)
    source = into / "source"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(source, filter="data")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        mapping = tomllib.loads((source / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        raise ConfigError(f"--against: {commit[:12]}'s pyproject.toml maps no package folders "
                          "(tool.setuptools.package-dir)") from None
    path = into / "path"
    package = path / PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").touch()
    for name, folder in mapping.items():
        if name.startswith(PACKAGE + ".") and "." not in name[len(PACKAGE) + 1:]:
            (package / name[len(PACKAGE) + 1:]).symlink_to(source / folder, target_is_directory=True)
    return path


def bench_command(name: str, quick: bool, options: dict, out: Path) -> list[str]:
    """The command line of `forethought bench` with these settings, run by this interpreter."""
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    return [sys.executable, "-c", "import sys; from forethought.scripts.cli import main; sys.exit(main())",
            "bench", name, *(["--quick"] if quick else []), *flags, "--out", str(out)]


def _run(command: list[str], pythonpath: Path | None, who: str) -> dict:
    """One benchmark process (its progress on our stderr); its JSON result."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ConfigError(f"--against: the benchmark of {who} ended with exit code {done.returncode} (above)")
    return json.loads(Path(command[-1]).read_text())


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def median_metrics(rounds: list[dict]) -> dict:
    """Each metric's median over the rounds where it is a number in every round, else its last value."""
    merged = {}
    for key, value in rounds[-1].items():
        values = [r.get(key) for r in rounds]
        merged[key] = statistics.median(values) if all(_is_number(v) for v in values) else value
    return merged


def run_against(name: str, quick: bool, options: dict, revision: str, rounds: int) -> dict:
    """This checkout's benchmark `name` and the same at `revision`, alternating over `rounds`
    (the revision first in each); see the module docstring for the result."""
    if rounds < 1:
        raise ConfigError(f"--rounds: expected at least 1, got {rounds}")
    root = repository_root()
    commit = resolve_commit(revision, root)
    theirs, ours = [], []
    steal_before = host_steal_s()
    with tempfile.TemporaryDirectory(prefix="forethought-against-") as scratch:
        pythonpath = extract_revision(commit, root, Path(scratch))
        for r in range(rounds):
            for side, path, results in ((commit[:12], pythonpath, theirs), ("this checkout", None, ours)):
                started = time.perf_counter()
                print(f"bench {name}: round {r + 1} of {rounds}, {side}", file=sys.stderr, flush=True)
                out = Path(scratch) / f"{len(theirs) + len(ours)}.json"
                results.append(_run(bench_command(name, quick, options, out), path, side))
                print(f"bench {name}: round {r + 1} of {rounds}, {side}: {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)
    result = dict(ours[-1])
    result["machine"] = machine_info(steal_before)  # the steal over every round of both sides
    result["metrics"] = median_metrics([o["metrics"] for o in ours])
    against = median_metrics([t["metrics"] for t in theirs])
    result["against"] = {
        "commit": commit[:12],
        "rounds": rounds,
        "metrics": against,
        "ratio": {key: value / against[key] for key, value in result["metrics"].items()
                  if _is_number(value) and _is_number(against.get(key)) and against[key] != 0},
        "per_round": {
            "this": {key: [o["metrics"].get(key) for o in ours] for key in result["metrics"]},
            "against": {key: [t["metrics"].get(key) for t in theirs] for key in against},
            "host_steal_s": {"this": [o["machine"].get("host_steal_s") for o in ours],
                             "against": [t["machine"].get("host_steal_s") for t in theirs]},
        },
    }
    return result
