"""A Ray node lost mid-search (``ray.cluster_utils.Cluster``: a head and a worker node on
this machine, the worker killed while trials run on it; tests/node_loss_cluster.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("node_loss_cluster.py")


@pytest.fixture(scope="module")
def lost(tmp_path_factory):
    # a short private RAY_TMPDIR (socket paths stay under 108 characters), so that the
    # cluster's address file is not found by other searches on this machine
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    env.pop("RAY_ADDRESS", None)
    work = tmp_path_factory.mktemp("node-loss")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(work)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=Path(__file__).parents[1])
    try:
        out, err = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the node-loss script hung:\n{out[-2000:]}\n{err[-3000:]}")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, (proc.returncode, out[-2000:], err[-4000:])
    return json.loads(lines[-1])


@pytest.mark.slow
def test_trials_of_a_lost_node_run_again_and_the_search_ends_with_all_of_them(lost):
    a = lost["a"]
    assert a["removed"], "the worker node was never used"
    assert "error" not in a, a.get("error")
    states = [t["state"] for t in a["trials"]]
    assert states == ["COMPLETE"] * 6, a["trials"]  # exactly N, none lost, none RUNNING
    assert sorted(t["number"] for t in a["trials"]) == list(range(6))  # each recorded once
    retried = [t for t in a["trials"] if t["retries"]]
    assert retried, "no trial was running on the node that was lost"
    for t in retried:
        assert all("NodeDiedError" in r["error"] for r in t["retries"]), t["retries"]
    assert a["counts"]["nodes_lost"] == 1
    assert a["counts"]["retried_lost"] == sum(len(t["retries"]) for t in retried)
    assert len(a["notes"]) == a["counts"]["retried_lost"]
    assert all("was lost with Ray node" in n and "runs again" in n for n in a["notes"])


@pytest.mark.slow
def test_with_no_node_left_that_fits_a_trial_the_search_stops_resumable(lost):
    b = lost["b"]
    assert b["removed"]
    msg = b["error"]
    assert msg.startswith("no Ray node left can run a trial (each needs 2 CPUs on one node)")
    assert "--resume" in msg and "\n" not in msg
    states = [t["state"] for t in b["trials"]]
    assert "RUNNING" not in states, b["trials"]
    # what was running is marked interrupted and waits in the queue for --resume
    interrupted = [t for t in b["trials"] if t["interrupted"]]
    assert interrupted and all(t["state"] == "FAIL" for t in interrupted)
    waiting = [t for t in b["trials"] if t["state"] == "WAITING"]
    assert {t["retry_of"] for t in waiting} == {t["number"] for t in interrupted}
