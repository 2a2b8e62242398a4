"""`forethought bench NAME --against REV`: a benchmark run beside an earlier revision's code, in
alternating rounds, so that both see the same machine in the same hour.

Each round runs the revision's own `forethought bench NAME` (its source from `git archive`,
imported ahead of the installed package, with the dependencies installed now) and this
checkout's, each in a fresh process, the order swapped every round (revision first in odd rounds)
and each side with its own empty numba cache, so that neither finds compiled code the other lacks.
The result is this checkout's JSON with every metric that is a number in every round replaced by
its median over the rounds (anything else: the last round's), and `against`: the revision's
commit, its medians, the ratio of each such number to the revision's (this checkout's over the
revision's) and every round's numbers on both sides. On a machine whose speed drifts (a shared or
virtual one) the ratio is the number to read: a time or rate alone moves with the hour.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from forethought.robots.config import ConfigError
from forethought.robots.safety import exit_signals_raise
from forethought.scripts.bench import host_steal_s

PACKAGE = "forethought"


class BenchRunFailed(RuntimeError):
    """This checkout's side of the comparison ended with a non-zero exit code (its own output says why)."""

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode if returncode > 0 else 1


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


def _package_dirs(pyproject: Path) -> dict[str, str]:
    """tool.setuptools.package-dir of a pyproject.toml ({} where it has none)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        return dict(tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-dir"])
    except (OSError, KeyError, TypeError, ValueError):
        return {}


def _compiled_sources(tree: Path, folders) -> dict[str, bytes]:
    """setup.py and the C sources and headers under the package folders of a tree, by relative path."""
    files = [tree / "setup.py"] + [f for folder in folders for pattern in ("*.c", "*.h")
                                   for f in sorted((tree / folder).rglob(pattern))]
    return {str(f.relative_to(tree)): f.read_bytes() for f in files if f.is_file()}


def build_extensions(source: Path, root: Path, folders) -> None:
    """The revision's compiled modules (its setup.py's ext_modules) built into its source, so that
    its side runs its own kernels, not the fallbacks it has without them. Where its setup.py and C
    files are this checkout's, this checkout's built modules are copied instead. A build that
    fails is reported and the revision runs without it, as an install without a compiler would."""
    if not (source / "setup.py").is_file():
        return
    if _compiled_sources(source, folders) == _compiled_sources(root, folders):
        for folder in folders:
            for built in (root / folder).rglob("*.so"):
                target = source / built.relative_to(root)
                if target.parent.is_dir():
                    shutil.copy2(built, target)
        return
    print(f"--against: building {source.name}'s compiled modules", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "setup.py", "--quiet", "build_ext", "--inplace"], cwd=source,
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"--against: the revision's compiled modules did not build; it runs without them:\n{done.stderr[-2000:]}",
              file=sys.stderr, flush=True)


def extract_revision(commit: str, root: Path, into: Path) -> Path:
    """The source of `commit` written under `into`, laid out as an importable package as its own
    pyproject.toml maps it (package-dir), its compiled modules built (`build_extensions`); returns
    the folder to put first on PYTHONPATH."""
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=root, capture_output=True, check=True)
    source = into / "source"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(source, filter="data")
        else:  # a Python without extraction filters; git archive writes no links out of the tree
            tar.extractall(source)
    mapping = _package_dirs(source / "pyproject.toml")
    build_extensions(source, root, sorted(set(mapping.values())))
    path = into / "path"
    if PACKAGE in mapping:  # the whole package in one folder
        path.mkdir()
        (path / PACKAGE).symlink_to(source / mapping[PACKAGE], target_is_directory=True)
        return path
    package = path / PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").touch()
    linked = 0
    for name, folder in mapping.items():
        sub = name[len(PACKAGE) + 1:]
        if name.startswith(PACKAGE + ".") and sub and "." not in sub:
            (package / sub).symlink_to(source / folder, target_is_directory=True)
            linked += 1
    if not linked:
        raise ConfigError(f"--against: {commit[:12]}'s pyproject.toml maps no {PACKAGE} package folders "
                          "(tool.setuptools.package-dir)")
    return path


def bench_command(name: str, quick: bool, options: dict, out: Path) -> list[str]:
    """The command line of `forethought bench` with these settings, run by this interpreter."""
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    return [sys.executable, "-c", "import sys; from forethought.scripts.cli import main; sys.exit(main())",
            "bench", name, *(["--quick"] if quick else []), *flags, "--out", str(out)]


def _run(command: list[str], env: dict) -> int:
    """Run one benchmark process to its end (its progress on our stderr); its exit code. Interrupted
    or terminated, the child gets SIGTERM, time to put back what it changed, then SIGKILL."""
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        return child.wait()
    except BaseException:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def median_metrics(rounds: list[dict]) -> dict:
    """The last round's metrics, each one that is a number in every round as its median over them."""
    merged = {}
    for key, value in rounds[-1].items():
        values = [r.get(key) for r in rounds]
        merged[key] = statistics.median(values) if all(_is_number(v) for v in values) else value
    return merged


def run_against(name: str, quick: bool, options: dict, revision: str, rounds: int) -> dict:
    """This checkout's benchmark `name` and the same at `revision`, alternating over `rounds`; see
    the module docstring for the result. ConfigError where the revision's side fails (the benchmark
    or an option may not exist there), BenchRunFailed where this checkout's does."""
    if rounds < 1:
        raise ConfigError(f"--rounds: expected at least 1, got {rounds}")
    root = repository_root()
    commit = resolve_commit(revision, root)
    results: dict[str, list[dict]] = {"against": [], "this": []}
    steal_before = host_steal_s()
    with exit_signals_raise(), tempfile.TemporaryDirectory(prefix="forethought-against-") as scratch:
        scratch = Path(scratch)
        # The revision's package goes ahead of whatever PYTHONPATH already holds, on its side only.
        revision_path = os.pathsep.join(filter(None, [str(extract_revision(commit, root, scratch)),
                                                      os.environ.get("PYTHONPATH")]))
        labels = {"against": commit[:12], "this": "this checkout"}
        for r in range(rounds):
            for side in ("against", "this") if r % 2 == 0 else ("this", "against"):
                env = dict(os.environ, NUMBA_CACHE_DIR=str(scratch / f"numba-{side}"))
                if side == "against":
                    env["PYTHONPATH"] = revision_path
                out = scratch / f"{side}-{r}.json"
                print(f"bench {name}: round {r + 1} of {rounds}, {labels[side]}", file=sys.stderr, flush=True)
                started = time.perf_counter()
                code = _run(bench_command(name, quick, options, out), env)
                if code != 0 and side == "against":
                    raise ConfigError(f"--against: bench {name} at {commit[:12]} ended with exit code {code} (above)")
                if code != 0:
                    raise BenchRunFailed(f"bench {name} of this checkout ended with exit code {code} (above)", code)
                results[side].append(json.loads(out.read_text()))
                print(f"bench {name}: round {r + 1} of {rounds}, {labels[side]}: "
                      f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    ours, theirs = results["this"], results["against"]
    result = dict(ours[-1])
    result["metrics"] = median_metrics([o["metrics"] for o in ours])
    steal = host_steal_s()
    if steal_before is not None and steal is not None:  # over every round of both sides
        result["machine"] = dict(result["machine"], host_steal_s=round(steal - steal_before, 2))
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
