"""`forethought bench NAME --against REV`: the revision's code really runs, and the result pairs
the two sides' numbers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from forethought.robots.config import ConfigError
from forethought.scripts.bench_against import (extract_revision, median_metrics, repository_root, resolve_commit,
                                               run_against)
from forethought.scripts.bench import host_steal_s
from forethought.scripts.cli import main

try:
    ROOT = repository_root()
except ConfigError:
    ROOT = None
needs_checkout = pytest.mark.skipif(ROOT is None, reason="the code is not in a git checkout")


@needs_checkout
def test_the_revision_is_imported_ahead_of_the_installed_package(tmp_path):
    commit = resolve_commit("HEAD", ROOT)
    path = extract_revision(commit, ROOT, tmp_path)
    env = dict(os.environ, PYTHONPATH=str(path))
    where = subprocess.run([sys.executable, "-c", "import forethought.scripts.bench as b, forethought.models as m; "
                            "print(b.__file__); print(m.__file__)"], env=env, capture_output=True, text=True, check=True)
    files = where.stdout.split()
    assert len(files) == 2 and all(f.startswith(str(tmp_path)) for f in files)
    # The package's data travels with it: the shipped experiments and scenes are the revision's.
    assert (path / "forethought" / "scripts" / "configs" / "arm-reach-ilqr.yaml").is_file()
    # So do its compiled modules (here this checkout's, copied: the same sources).
    from forethought.models.ensemble import network_kernel
    if network_kernel._planning_kernels is not None:
        where = subprocess.run([sys.executable, "-c", "from forethought.models.ensemble import network_kernel as k; "
                                "print(k._planning_kernels.__file__)"], env=env, capture_output=True, text=True, check=True)
        assert where.stdout.strip().startswith(str(tmp_path))


def test_a_revision_with_other_c_sources_gets_its_own_modules_built(tmp_path):
    from forethought.scripts.bench_against import build_extensions

    revision, here = tmp_path / "revision", tmp_path / "here"
    for tree, value in ((revision, 7), (here, 8)):
        (tree / "pkg").mkdir(parents=True)
        (tree / "pkg" / "__init__.py").touch()
        (tree / "setup.py").write_text('from setuptools import Extension, setup\n'
                                       'setup(name="t", packages=["pkg"], ext_modules=[Extension("pkg._m", ["pkg/m.c"])])\n')
        (tree / "pkg" / "m.c").write_text(
            '#include <Python.h>\n'
            f'static PyObject *value(PyObject *s, PyObject *a) {{ return PyLong_FromLong({value}); }}\n'
            'static PyMethodDef methods[] = {{"value", value, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};\n'
            'static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_m", "", -1, methods};\n'
            'PyMODINIT_FUNC PyInit__m(void) { return PyModule_Create(&module); }\n')
    build_extensions(revision, here, ["pkg"])
    value = subprocess.run([sys.executable, "-c", "import pkg._m as m; print(m.value())"], cwd=revision,
                           capture_output=True, text=True)
    assert value.stdout.strip() == "7", value.stderr


@needs_checkout
def test_a_benchmark_beside_a_revision_gives_medians_and_ratios(capsys):
    result = run_against("sim", quick=True, options={}, revision="HEAD", rounds=1)
    against = result["against"]
    assert against["commit"] == resolve_commit("HEAD", ROOT)[:12] and against["rounds"] == 1
    assert set(against["metrics"]) == set(result["metrics"]) >= {"arm_steps_per_s", "realtime_factor"}
    ratio = against["ratio"]["arm_steps_per_s"]
    assert ratio == pytest.approx(result["metrics"]["arm_steps_per_s"] / against["metrics"]["arm_steps_per_s"])
    assert against["per_round"]["this"]["arm_steps_per_s"] == [result["metrics"]["arm_steps_per_s"]]
    assert "round 1 of 1" in capsys.readouterr().err
    if host_steal_s() is not None:  # Linux counts what the hypervisor takes: both sides' and the whole run's
        assert len(against["per_round"]["host_steal_s"]["this"]) == 1 and result["machine"]["host_steal_s"] >= 0


def test_medians_over_rounds_keep_what_is_not_a_number():
    rounds = [{"hz": 100.0, "seeds": [1, 2], "ok": True}, {"hz": 300.0, "seeds": [3], "ok": False},
              {"hz": 200.0, "seeds": [4], "ok": True}]
    assert median_metrics(rounds) == {"hz": 200.0, "seeds": [4], "ok": True}


@needs_checkout
def test_bad_revisions_and_rounds_are_one_line_errors(capsys):
    assert main(["bench", "sim", "--against", "no-such-revision"]) == 2
    assert "--against: 'no-such-revision' is not a commit" in capsys.readouterr().err
    assert main(["bench", "sim", "--against", "HEAD", "--rounds", "0"]) == 2
    assert "--rounds: expected at least 1" in capsys.readouterr().err
    assert main(["bench", "sim", "--rounds", "2"]) == 2
    assert "--rounds: only with --against" in capsys.readouterr().err
    assert main(["bench", "nonesuch", "--against", "HEAD"]) == 2
    assert "unknown benchmark 'nonesuch'" in capsys.readouterr().err
    # An option this checkout's benchmark refuses is refused before any round runs.
    assert main(["bench", "sim", "--seeds", "2", "--against", "HEAD"]) == 2
    err = capsys.readouterr().err
    assert "--seeds: bench sim runs no seeds" in err and "round" not in err


@needs_checkout
def test_a_benchmark_the_revision_lacks_is_a_one_line_error(capsys):
    # `bench policies` came with the commit that registered it: its parent has no such benchmark.
    added = subprocess.run(["git", "log", "--format=%H", "-S", '"policies": "forethought.scripts.bench_policies',
                            "--", "scripts/bench.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not added:
        pytest.skip("the checkout's history does not reach the commit that added bench policies")
    assert main(["bench", "policies", "--quick", "--against", added[-1] + "~1", "--rounds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("forethought bench: error: --against: bench policies at ") and "exit code 2" in err[-1]
