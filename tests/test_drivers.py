"""Many drivers on one study: `slimtune search --storage postgresql://... --study-name X`
started as 4 separate processes, as on 4 machines, against a real PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

TRIALS = 20
DRIVERS = 4


def _slimtune() -> list[str]:
    return [str(Path(sys.executable).parent / "slimtune")]


@pytest.mark.slow
def test_four_drivers_share_one_study_budget_and_warm_start(postgres_url, tmp_path):
    name = f"drivers-{uuid.uuid4().hex[:8]}"
    store = tmp_path / "store"  # one store every driver reaches (a shared directory)
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    procs = []
    for i in range(DRIVERS):
        cmd = [*_slimtune(), "search", "--storage", postgres_url, "--study-name", name,
               "--trials", str(TRIALS), "--epochs", "0", "--teacher-epochs", "2",
               "--run-dir", str(tmp_path / f"driver{i}"), "--subset", "600"]
        if i < DRIVERS - 1:
            cmd += ["--artifact-store", str(store)]
        else:  # the last joins a study that exists, without naming its store: it adopts it
            deadline = time.monotonic() + 120
            while name not in optuna.get_all_study_names(postgres_url):
                assert time.monotonic() < deadline, "no driver made the study"
                time.sleep(0.2)
        procs.append(subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a driver did not finish in 10 minutes")
        outs.append((p.returncode, err))
    assert all(rc == 0 for rc, _ in outs), [e[-3000:] for rc, e in outs if rc]

    study = optuna.load_study(study_name=name, storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    assert states[TrialState.RUNNING] == 0, states
    # a warm start longer than the budget leaves its last plans queued, as one driver does
    assert all(t.user_attrs.get("phase") in ("uniform", "guided") and "retry_of" not in
               t.user_attrs for t in trials if t.state == TrialState.WAITING)
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))]
    assert len(counted) == TRIALS, [(t.number, t.state.name) for t in trials]
    assert states[TrialState.FAIL] == 0, [t.user_attrs.get("error") for t in trials]
    # no plan trained twice except as a recorded retry
    plans = Counter(tuple(sorted(t.params.items())) for t in counted
                    if "retry_of" not in t.user_attrs)
    assert max(plans.values()) == 1, [p for p, n in plans.items() if n > 1]
    # one warm start: each uniform plan once, enqueued by the driver that made the study
    uniform = [t for t in trials if t.user_attrs.get("phase") == "uniform"]
    assert uniform and len({tuple(sorted(t.params.items())) for t in uniform}) == len(uniform)
    meta = study.user_attrs["slimtune"]
    warm = [t for t in trials if "fixed_params" in t.system_attrs]
    assert len(warm) == len(uniform) + len([t for t in trials
                                            if t.user_attrs.get("phase") == "guided"])
    assert len({tuple(sorted(t.params.items())) for t in warm}) == len(warm)
    assert sum("measuring the one-shot sensitivity" in err for _, err in outs) <= 1
    assert sum("teacher (trained" in err or "teacher (reused from the cache" in err
               for _, err in outs) == 1, [err[-800:] for _, err in outs]
    drivers = study.user_attrs["drivers"]
    assert len(drivers) == DRIVERS and len({d["pid"] for d in drivers}) == DRIVERS
    assert {t.user_attrs["driver"] for t in counted} <= set(range(DRIVERS))
    assert len({t.user_attrs["driver"] for t in counted}) >= 2, "the work was not shared"
    # every driver wrote to the study's one store, and the teacher there is the study's
    assert meta["config"]["artifact_store"] == str(store)
    ids = {t.user_attrs["artifact_id"] for t in counted if t.state == TrialState.COMPLETE}
    assert ids and ids <= {p.name for p in store.iterdir()}
    assert study.user_attrs["teacher_artifact"]["id"] in {p.name for p in store.iterdir()}
    # the front and hypervolume read from the shared study are the same from any driver
    from slimtune.api import front

    a = front(tmp_path / "driver0", storage=postgres_url, study_name=name)
    b = front(tmp_path / "elsewhere", storage=postgres_url, study_name=name)
    assert a["hypervolume"] == b["hypervolume"] > 0
    assert a["hypervolume"] == pytest.approx(study.user_attrs["hypervolume"])
