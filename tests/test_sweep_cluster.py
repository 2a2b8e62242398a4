"""`forethought sweep --address` on a Ray cluster of two nodes on this machine (`ray start --head`
and a second `ray start --address`, one CPU each), then the cluster stopped again.

Starting two Ray nodes takes half a minute on two quiet cores (a minute on busy ones). The nodes
are stopped by their own processes (found by the cluster's temp dir), never by `ray stop`, which
would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.xdist_group("ray")  # one Ray at a time on the machine (Makefile)

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_processes(tag: str) -> None:
    """End every process whose command line names `tag` (the cluster's temp dir), and its children."""
    import psutil

    procs = [p for p in psutil.process_iter(["cmdline"])
             if p.pid != os.getpid() and any(tag in a for a in (p.info["cmdline"] or []))]
    procs += [c for p in procs for c in p.children(recursive=True)]
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        p.kill()


@pytest.fixture
def cluster():
    """The address of a two-node cluster (token authentication as Ray sets it up by default)."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    # Workers at the test's priority (Ray's default is nice 15, which starves them beside busy processes).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_worker_niceness": "0"}
    try:
        head = subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={free_port()}", "--num-cpus=1",
                               "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert head.returncode == 0, head.stderr[-2000:]
        address = re.search(r"ray start --address='([^']+)'", head.stdout + head.stderr)[1]
        node = subprocess.run([str(BIN / "ray"), "start", f"--address={address}", "--num-cpus=1",
                               "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=300)
        assert node.returncode == 0, node.stderr[-2000:]
        yield address, env
    finally:
        stop_processes(temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_sweep_runs_on_a_two_node_cluster(cluster, tmp_path):
    address, env = cluster
    out = tmp_path / "sweep"
    done = subprocess.run([str(BIN / "forethought"), "sweep", "arm-reach-ik", "--seeds", "0-1",
                           "--set", "task.horizon=20,30", "--address", address, "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "sweep.json").read_text())
    assert [s["finished"] for s in summary["settings"]] == [2, 2]
    assert all(s["success_rate"] is not None for s in summary["settings"])
    assert len({run["node"] for run in summary["runs"]}) == 2  # both nodes ran runs
