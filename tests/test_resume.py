"""Crashes and resume: SIGKILL of the search process, SIGINT, the run-directory lock.

The search runs as a real `slimtune search` process that joins this session's Ray cluster
with `--address auto` (so this also tests joining a running cluster)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from slimtune.errors import RunDirError
from slimtune.search import SearchConfig
from slimtune.search.engine import _RunLock, resume, search
from slimtune.search.study import open_storage, storage_url

S = optuna.trial.TrialState
# 20 epochs make a digits trial last seconds: after the test sees the n-th finished trial
# the search has many seconds of work left, so the signal lands mid-search with a wide margin
ARGS = ["--trials", "14", "--epochs", "20", "--teacher-epochs", "3", "--no-early-stop",
        "--address", "auto", "--seed", "2"]


def _default_sigint() -> None:
    # a test run started in the background by a script (`cmd &`) ignores SIGINT, and its
    # children inherit that: Python then installs no KeyboardInterrupt handler and the
    # search would never see the SIGINT this test sends. Give the search the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(run_dir, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "slimtune.cli", "search", "--run-dir", str(run_dir), *ARGS,
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )


def _wait_for_complete(proc, run_dir, n, timeout=300):
    """Poll the study until ``n`` trials are complete (and some are still running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the search ended before it could be killed: {err[-2000:]}")
        if (run_dir / "study.db").exists():
            try:
                # read-only, as `slimtune front` reads: a writable open could create the
                # schema at the moment the search creates it (a UNIQUE constraint race)
                study = optuna.load_study(study_name="slimtune",
                                          storage=open_storage(run_dir, read_only=True))
                trials = study.get_trials(deepcopy=False)
                done = [t for t in trials if t.state == S.COMPLETE]
                if len(done) >= n and any(t.state == S.RUNNING for t in trials):
                    return
            except Exception:  # noqa: BLE001 - the study is still being created
                pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail("no trials finished in time")


def _study(run_dir):
    return optuna.load_study(study_name="slimtune", storage=storage_url(run_dir))


def test_sigkill_loses_no_finished_trial_and_resume_ends_at_the_budget(ray_session, tmp_path):
    run_dir = tmp_path / "killed"
    proc = _start(run_dir)
    _wait_for_complete(proc, run_dir, 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = {t.number: t for t in _study(run_dir).trials}
    finished = {n: t.values for n, t in before.items() if t.state == S.COMPLETE}
    running = {n: t.params for n, t in before.items() if t.state == S.RUNNING}
    assert len(finished) >= 4 and running  # killed in the middle

    result = resume(run_dir)
    trials = {t.number: t for t in result.run.study.trials}
    for n, values in finished.items():  # every trial finished before the kill is still there
        assert trials[n].state == S.COMPLETE and trials[n].values == values
    for n, params in running.items():  # left running: marked failed, its plan retried
        assert trials[n].state == S.FAIL and trials[n].user_attrs["interrupted"] is True
        assert "died" in trials[n].user_attrs["error"]
        retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == n]
        # (a trial killed while its plan was being drawn has only part of it: the retry
        # keeps that part and draws the rest). The retry ran although the 14-trial budget
        # ends before the 16-plan warm start does: retries go first in the queue.
        assert len(retry) == 1 and {k: retry[0].params[k] for k in params} == params
        assert retry[0].state == S.COMPLETE
    assert len([t for t in trials.values() if t.state == S.COMPLETE]) == 14
    assert not [t for t in trials.values() if t.state == S.RUNNING]
    # what still waits is queued plans never started (warm-start plans past the budget,
    # for a later `--resume --trials N`), never a retry
    waiting = [t for t in trials.values() if t.state == S.WAITING]
    assert all(t.datetime_start is None and t.user_attrs.get("retry_of") is None
               for t in waiting)
    assert result.counts["retried"] == len(running)


def test_sigint_marks_running_trials_and_says_how_to_resume(ray_session, tmp_path):
    run_dir = tmp_path / "interrupted"
    proc = _start(run_dir)
    _wait_for_complete(proc, run_dir, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert f"slimtune search --resume {run_dir}" in " ".join(err.split())
    trials = _study(run_dir).trials
    assert not [t for t in trials if t.state == S.RUNNING]
    stopped = [t for t in trials if t.state == S.FAIL]
    assert stopped and all(t.user_attrs["interrupted"] for t in stopped)
    assert all("SIGINT" in t.user_attrs["error"] for t in stopped)
    # their plans wait, enqueued, for the resumed search
    waiting = [t for t in trials if t.state == S.WAITING]
    assert {t.user_attrs.get("retry_of") for t in waiting} >= {t.number for t in stopped}


def test_sigterm_is_handled_as_sigint_and_retries_keep_their_seed(ray_session, tmp_path):
    """docker stop, SLURM, systemd and `timeout` send SIGTERM: the same clean stop as
    Ctrl-C (no stack dump of Ray's, no trial left RUNNING), exit 128 + 15."""
    run_dir = tmp_path / "terminated"
    proc = _start(run_dir)
    _wait_for_complete(proc, run_dir, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err and "Traceback" not in err and "***" not in err
    assert f"slimtune search --resume {run_dir}" in " ".join(err.split())
    trials = _study(run_dir).trials
    assert not [t for t in trials if t.state == S.RUNNING]
    stopped = [t for t in trials if t.state == S.FAIL]
    assert stopped and all("SIGTERM" in t.user_attrs["error"] for t in stopped)

    result = resume(run_dir, trials=len([t for t in trials if t.state == S.COMPLETE]) + 1)
    retried = [t for t in result.run.study.trials
               if t.state == S.COMPLETE and t.user_attrs.get("retry_of") is not None]
    assert retried
    for t in retried:  # trained with the seed of the trial it retries, not a new one
        assert t.user_attrs["seed_of"] == t.user_attrs["retry_of"]
        assert t.user_attrs["seed"] == 2 * 100003 + t.user_attrs["retry_of"]


def test_a_run_dir_in_use_by_a_live_search_is_refused(ray_session, tmp_path):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    lock = _RunLock(run_dir)  # as a running search holds it
    try:
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            search(SearchConfig(trials=1, epochs=0, teacher_epochs=2, run_dir=run_dir))
    finally:
        lock.release()


def test_resume_of_a_directory_without_a_search_says_so(tmp_path):
    with pytest.raises(RunDirError, match="no slimtune search to resume"):
        resume(tmp_path)
